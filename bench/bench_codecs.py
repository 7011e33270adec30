"""Codecs: size, write speed and read speed of decoded photo pixels, per codec.

N photos (default 1,000 JPEGs of ~500x375, 8 classes) are decoded once to 224x224x3
uint8 and kept in memory. Then, for every codec ``daskimg bench --codecs`` compares
(``daskimg.bench.BENCH_CODECS``: lz4, zstd, none, and JPEG at quality 90 and 75):

* compression ratio: raw pixel bytes / stored bytes of the ``images`` array;
* write MB/s: ``daskimg.to_zarr`` of an in-memory ImageSet to a ``.zarr.zip``,
  ``order="source"`` (raw pixel MB, 10^6 bytes, per second; includes packing and fsync);
* random-chunk read samples/s: ``daskimg.bench.raw_limit`` (whole chunks in random
  order, checked and decompressed, 2 threads);
* shuffled batches samples/s: ``daskimg.BatchIterator`` (batch 64, shuffled, 2 threads).

Next to them: HDF5 (h5py) with LZF and with gzip level 4, chunked by 64 samples (ratio,
write MB/s incl. fsync, random-chunk read ``dset[a:b]`` samples/s, one thread: h5py
holds a global lock), and the source JPEGs (ratio = raw 224x224 pixel bytes / JPEG file
bytes; the JPEGs are the larger ~500x375 originals at quality 90).

Reads run from a warm page cache (``--cold``: files evicted before each read).
``--write-docs`` writes the table of this run to ``docs/codecs.md``.

    python bench/bench_codecs.py --write-docs   # ~1 minute
    python bench/bench_codecs.py --quick        # < 1 minute
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    TARGET,
    base_parser,
    list_photos,
    machine,
    markdown_table,
    median,
    photo_folder,
    prepare_cache,
    print_table,
    timer,
)

BATCH = 64
H5_CHUNK = 64
DOCS = Path(__file__).resolve().parent.parent / "docs" / "codecs.md"


def stored_bytes(path: str) -> int:
    """Bytes of the ``images`` chunks of a daskimg store (with their 4-byte checksums)."""
    from daskimg.storeinfo import info

    return int(info(path)["arrays"]["images"]["stored_bytes"])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB (inf when identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def shuffled_rate(path: str, *, epochs: int, cold: bool) -> float:
    import daskimg as di

    it = di.BatchIterator(path, batch_size=BATCH, shuffle=True, seed=0, threads=2)
    rates = []
    for epoch in range(epochs):
        prepare_cache([path], cold=cold)
        it.set_epoch(epoch)
        n = 0
        with timer() as t:
            for images, _ in it:
                n += len(images)
        rates.append(n / t[0])
    return median(rates)


def bench_daskimg(
    pixels: np.ndarray, labels: np.ndarray, classes: list[str], tmp: Path, a
) -> list[dict]:
    import daskimg as di
    from daskimg.bench import BENCH_CODECS, raw_limit

    mem = di.ImageSet(pixels, labels, classes=classes)
    out = []
    for codec in BENCH_CODECS:
        path = os.fspath(tmp / f"{codec.replace(':', '-q')}.zarr.zip")
        writes = []
        for _ in range(a.reps):
            with timer() as t:
                di.to_zarr(mem, path, codec=codec, order="source", overwrite=True)
            writes.append(t[0])
        limits = []
        for rep in range(a.epochs):
            prepare_cache([path], cold=a.cold)
            limits.append(raw_limit(path, threads=2, seed=rep))
        back = di.open_zarr(path).images[: min(len(pixels), 256)].compute()
        row = {
            "name": f'daskimg "{codec}"',
            "psnr": psnr(pixels[: len(back)], back),
            "ratio": pixels.nbytes / stored_bytes(path),
            "write": pixels.nbytes / median(writes) / 1e6,
            "chunks": median(limits),
            "shuffled": shuffled_rate(path, epochs=a.epochs, cold=False),
            "cold": shuffled_rate(path, epochs=a.epochs, cold=True),
        }
        print(f"  {row['name']}: done", file=sys.stderr, flush=True)
        out.append(row)
    return out


def bench_h5(pixels: np.ndarray, tmp: Path, a) -> list[dict]:
    import h5py

    out = []
    for name, kw in (
        ("HDF5 LZF", {"compression": "lzf"}),
        ("HDF5 gzip-4", {"compression": "gzip", "compression_opts": 4}),
    ):
        path = tmp / f"{name.split()[1]}.h5"
        writes = []
        for _ in range(a.reps):
            path.unlink(missing_ok=True)
            with timer() as t:
                with h5py.File(path, "w") as f:
                    f.create_dataset(
                        "images", data=pixels, chunks=(H5_CHUNK, *pixels.shape[1:]), **kw
                    )
                fd = os.open(path, os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
            writes.append(t[0])
        rates = []
        n = len(pixels)
        for rep in range(a.epochs):
            prepare_cache([path], cold=a.cold)
            order = np.random.default_rng(rep).permutation(-(-n // H5_CHUNK))
            with h5py.File(path, "r") as f:
                dset = f["images"]
                storage = dset.id.get_storage_size()
                exact = bool((dset[:H5_CHUNK] == pixels[:H5_CHUNK]).all())
                with timer() as t:
                    for c in order:
                        dset[c * H5_CHUNK : (c + 1) * H5_CHUNK]
            rates.append(n / t[0])
        out.append(
            {
                "name": f"{name} (h5py, {H5_CHUNK} samples/chunk)",
                "psnr": float("inf") if exact else float("nan"),
                "ratio": pixels.nbytes / storage,
                "write": pixels.nbytes / median(writes) / 1e6,
                "chunks": median(rates),
                "shuffled": None,
            }
        )
        print(f"  {name}: done", file=sys.stderr, flush=True)
    return out


def cell(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def quality(v: float | None) -> str:
    if v is None or np.isnan(v):
        return "-"
    return "lossless" if np.isinf(v) else f"{v:.1f} dB"


def table_rows(rows: list[dict]) -> list[list[str]]:
    return [
        [
            r["name"],
            quality(r["psnr"]),
            f"{r['ratio']:.2f}x",
            cell(r["write"], ",.0f"),
            cell(r["chunks"], ",.0f"),
            cell(r["shuffled"], ",.0f"),
            cell(r.get("cold"), ",.0f"),
        ]
        for r in rows
    ]


HEADER = [
    "storage",
    "pixels (PSNR)",
    "ratio",
    "write MB/s",
    "random-chunk read samples/s",
    "shuffled warm samples/s",
    "shuffled cold samples/s",
]

TARGETS = (1_000, 5_000, 10_000, 20_000, 30_000)


def recommendations(rows: list[dict]) -> list[list[str]]:
    """``daskimg.bench.recommend`` for a few target rates, for a store in and beyond RAM."""
    from daskimg.bench import CodecResult, recommend

    results = [
        # the size of a 1 GB (raw) store in each codec: the smallest that keeps up wins
        CodecResult(
            r["name"].split('"')[1],
            r["ratio"],
            r["shuffled"],
            r["cold"],
            r["psnr"],
            int(1e9 / r["ratio"]),
        )
        for r in rows
        if r["name"].startswith("daskimg")
    ]
    out = []
    for target in TARGETS:
        cells = [f"{target:,}"]
        for memory in (10**18, 1):  # the store fits in memory / it does not
            rec = recommend(results, target=target, memory=memory)
            mark = "" if rec.meets_target else " (too slow: the fastest)"
            cells.append(f'"{rec.codec}" {rec.rate:,.0f}/s{mark}')
        out.append(cells)
    return out


def write_docs(rows: list[dict], n: int, jpeg_note: str, cold: bool, where: str) -> None:
    by = {r["name"]: r for r in rows}
    lz4 = by.get('daskimg "lz4"')
    zstd = by.get('daskimg "zstd"')
    none = by.get('daskimg "none"')
    lines = [
        "# Codecs: which one to use",
        "",
        "<!-- written by `python bench/bench_codecs.py --write-docs`; re-run it to update -->",
        "",
        f"Measured {dt.date.today().isoformat()} on {where} (at the start), with "
        f"{n} photos (8 classes, ~500x375 JPEGs from scikit-image's bundled pictures) decoded "
        f"to {TARGET[0]}x{TARGET[1]}x3 uint8 and stored in source order. Reads are from a "
        f"{'cold' if cold else 'warm'} page cache for the random-chunk reads; shuffled batches "
        "both warm and cold (the store dropped from the page cache before each epoch, as when "
        "it is bigger than RAM). The numbers compare within this one run; "
        "on your machine run `python bench/bench_codecs.py` (or `daskimg bench STORE` on "
        "your own store).",
        "",
        markdown_table(HEADER, table_rows(rows)),
        "",
        "- *pixels (PSNR)*: what reading back gives, against the pixels written (PSNR over "
        "the first 256 samples; lossless = identical).",
        "- *ratio*: raw pixel bytes / stored bytes of the images (for the source JPEGs: raw "
        "224x224 pixel bytes / bytes of the source files, which are larger images). Zarr "
        "stores the last, partial chunk at full length, so a small uncompressed store can "
        "come out slightly below 1x.",
        "- *write MB/s*: raw pixel MB (10^6 bytes) per second, from pixels already in memory, "
        "including packing the zip and fsync (`daskimg.to_zarr`) or closing and fsync (h5py).",
        "- *random-chunk read*: whole chunks in random order, checksum-checked and "
        "decompressed (`daskimg.bench.raw_limit`, 2 threads; h5py: `dset[a:b]`, one thread).",
        "- *shuffled warm / cold*: `daskimg.BatchIterator(batch_size=64, shuffle=True)` from "
        "the page cache / from disk (`daskimg.bench.evict` before every epoch).",
        "",
        "## For a target rate",
        "",
        "What `daskimg.bench.recommend` picks here for a target (e.g. your GPU's images/s): "
        "a store that fits in half the memory is read warm after its first epoch, a bigger "
        "one from disk every epoch. Lossless first, the smallest that keeps up; JPEG only "
        "when no lossless codec does, at the highest quality that keeps up. `daskimg bench STORE --codecs --target N` measures "
        "this on your own data, disk and CPU.",
        "",
        markdown_table(
            ["target samples/s", "store fits in memory", "store bigger than memory"],
            recommendations(rows),
        ),
        "",
        "## Which to use when",
        "",
        '- **`"lz4"` (the default)**: the fastest to read of the compressed codecs'
        + (
            f" ({lz4['ratio']:.2f}x smaller than raw, {lz4['shuffled']:,.0f} shuffled samples/s "
            "here)"
            if lz4
            else ""
        )
        + ". Use it unless you have a reason not to.",
        '- **`"zstd"`**: when disk space or network/disk bandwidth matters more than CPU'
        + (
            f" ({zstd['ratio']:.2f}x smaller than raw vs lz4's {lz4['ratio']:.2f}x; "
            f"{zstd['shuffled']:,.0f} shuffled samples/s)"
            if zstd and lz4
            else ""
        )
        + ". On a slow or shared disk, or a cold page cache, the fewer bytes can make it the "
        "fastest too.",
        '- **`"none"`**: when the data fits in the page cache (warm data, repeated epochs on one '
        "machine): no decompression at all"
        + (
            f" ({none['chunks']:,.0f} random-chunk samples/s vs lz4's {lz4['chunks']:,.0f})"
            if none and lz4
            else ""
        )
        + ", at the cost of the full raw size on disk.",
        "- **HDF5** (for comparison): LZF and gzip files are what many existing pipelines use; "
        "they read a chunk at a time under h5py's global lock.",
        f"- {jpeg_note}",
        "",
    ]
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text("\n".join(lines))
    print(f"wrote {DOCS}")


def main() -> None:
    p = base_parser(__doc__)
    p.add_argument("--epochs", type=int, default=None, help="read passes (default 5, quick 2)")
    p.add_argument("--reps", type=int, default=None, help="writes per codec (default 2, quick 1)")
    p.add_argument("--write-docs", action="store_true", help=f"write {DOCS}")
    a = p.parse_args()
    n = a.n or (300 if a.quick else 1000)
    a.epochs = a.epochs or (2 if a.quick else 5)
    a.reps = a.reps or (1 if a.quick else 2)

    import daskimg as di

    folder = photo_folder(n)
    paths, labels = list_photos(folder)
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    pixels = di.imread(paths, size=TARGET).compute()
    labels_arr = np.asarray(labels, dtype=np.int64)
    jpeg_bytes = sum(os.path.getsize(f) for f in paths)

    where = machine()
    print(f"bench_codecs: {where}; {n} samples of {TARGET[0]}x{TARGET[1]}x3", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="daskimg-bench-codecs-"))
    try:
        rows = bench_daskimg(pixels, labels_arr, classes, tmp, a)
        rows += bench_h5(pixels, tmp, a)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows.append(
        {
            "name": "source JPEGs (q90, ~500x375)",
            "psnr": None,
            "ratio": pixels.nbytes / jpeg_bytes,
            "write": None,
            "chunks": None,
            "shuffled": None,
        }
    )
    print()
    print_table(
        f"codecs: {n} samples of {TARGET[0]}x{TARGET[1]}x3 uint8 "
        f"({pixels.nbytes / 1e6:,.0f} MB raw), {'cold' if a.cold else 'warm'} page cache, "
        f"reads median of {a.epochs}",
        HEADER,
        table_rows(rows),
    )
    jpg = next((r for r in rows if r["name"] == 'daskimg "jpeg:90"'), None)
    q75 = next((r for r in rows if r["name"] == 'daskimg "jpeg:75"'), None)
    jpeg_note = '**`"jpeg"`** (quality 90; `"jpeg:Q"` for another): see its rows in the table.'
    if jpg is not None:
        jpeg_note = (
            f'**`"jpeg"`** (= `"jpeg:90"`) is lossy ({quality(jpg["psnr"])} PSNR here) and '
            f"{jpg['ratio']:.1f}x smaller than raw: use it when disk or network is the "
            "bottleneck and the model tolerates JPEG artefacts (it trains on JPEGs anyway)"
        )
        lz4 = next((r for r in rows if r["name"] == 'daskimg "lz4"'), None)
        if lz4 is not None and jpg["shuffled"] < lz4["shuffled"]:
            jpeg_note += (
                f"; decoding costs CPU, so from a warm page cache it feeds "
                f"{jpg['shuffled']:,.0f} samples/s against lz4's {lz4['shuffled']:,.0f}"
            )
        jpeg_note += "."
        if q75 is not None:
            jpeg_note += (
                f' `"jpeg:75"` trades fidelity ({quality(q75["psnr"])}) for size '
                f"({q75['ratio']:.1f}x) and decoding speed ({q75['shuffled']:,.0f} warm, "
                f"{q75['cold']:,.0f} cold samples/s)."
            )
    if a.write_docs:
        write_docs(rows, n, jpeg_note, a.cold, where)


if __name__ == "__main__":
    main()
