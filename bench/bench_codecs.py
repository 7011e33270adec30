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

Next to them: HDF5 (h5py) with LZF and with gzip level 4, chunked like daskimg (55 samples
a chunk; ratio, stored MiB, write MB/s incl. fsync, random-chunk read ``dset[a:b]``
samples/s, one thread: h5py holds a global lock), and the source JPEGs (ratio = raw 224x224 pixel bytes / JPEG file
bytes; the JPEGs are the larger ~500x375 originals at quality 90).

Codecs are measured interleaved (each write repetition and each read round goes through
every store in turn), so a change of machine load hits them all; medians are reported.
Reads run from a warm page cache (``--cold``: files evicted before each read).
``--write-docs`` writes the table of this run to ``docs/codecs.md``.

    python bench/bench_codecs.py --write-docs   # ~5 minutes on 2 busy cores
    python bench/bench_codecs.py --quick        # ~1 minute
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
#: samples per chunk, in every store and HDF5 file: what daskimg picks for 224x224x3 uint8
#: in a large store (about 8 MiB of pixels; a store of fewer than ~7,000 such samples gets
#: smaller chunks by default, store/format.auto_chunk_len), so all of them compress the
#: same runs of samples and the figures are a large store's
CHUNK = 55
MiB = 2**20
DOCS = Path(__file__).resolve().parent.parent / "docs" / "codecs.md"


def stored_bytes(path: str) -> int:
    """Bytes of the ``images`` chunks of a daskimg store (with their 4-byte checksums)."""
    from daskimg.storeinfo import info

    return int(info(path)["arrays"]["images"]["stored_bytes"])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB (inf when identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def bench_all(
    pixels: np.ndarray, labels: np.ndarray, classes: list[str], tmp: Path, a
) -> list[dict]:
    """Every daskimg codec and HDF5 (LZF, gzip-4), measured interleaved.

    The machine is shared and its load changes by the minute, so no codec gets a quiet
    minute the others do not: every write repetition writes each store in turn, and
    every read round reads each store in turn (daskimg: the random-chunk limit, one warm
    and one cold shuffled epoch; HDF5: the random-chunk read). Medians are reported; a
    first read round warms buffers and is not counted.
    """
    import daskimg as di
    from daskimg.bench import BENCH_CODECS, raw_limit
    from daskimg.store.format import auto_chunk_len

    if auto_chunk_len(pixels.shape[1:], pixels.dtype, 10**6) != CHUNK:
        raise SystemExit(
            f"daskimg no longer picks {CHUNK} samples per chunk for a large store: update CHUNK"
        )
    mem = di.ImageSet(pixels, labels, classes=classes)
    stores = {c: os.fspath(tmp / f"{c.replace(':', '-q')}.zarr.zip") for c in BENCH_CODECS}
    h5 = {
        "HDF5 LZF": (tmp / "lzf.h5", {"compression": "lzf"}),
        "HDF5 gzip-4": (tmp / "gzip.h5", {"compression": "gzip", "compression_opts": 4}),
    }
    writes: dict[str, list[float]] = {k: [] for k in [*stores, *h5]}
    for rep in range(a.reps):
        for codec, path in stores.items():
            with timer() as t:
                di.to_zarr(mem, path, chunks=CHUNK, codec=codec, order="source", overwrite=True)
            writes[codec].append(t[0])
        for name, (path, kw) in h5.items():
            writes[name].append(write_h5(pixels, path, kw))
        print(f"  writes {rep + 1}/{a.reps} done", file=sys.stderr, flush=True)

    iters = {
        c: di.BatchIterator(p, batch_size=BATCH, shuffle=True, seed=0, threads=2)
        for c, p in stores.items()
    }
    reads: dict[str, dict[str, list[float]]] = {
        k: {"chunks": [], "shuffled": [], "cold": []} for k in [*stores, *h5]
    }
    for rnd in range(a.epochs + 1):
        for codec, path in stores.items():
            prepare_cache([path], cold=a.cold)
            limit = raw_limit(path, threads=2, seed=rnd)
            prepare_cache([path], cold=False)
            warm = epoch_rate(iters[codec], rnd)
            prepare_cache([path], cold=True)
            cold = epoch_rate(iters[codec], rnd)
            if rnd:
                reads[codec]["chunks"].append(limit)
                reads[codec]["shuffled"].append(warm)
                reads[codec]["cold"].append(cold)
        for name, (path, _) in h5.items():
            prepare_cache([path], cold=a.cold)
            rate = read_h5(path, len(pixels), seed=rnd)
            if rnd:
                reads[name]["chunks"].append(rate)
        print(f"  read round {rnd + 1}/{a.epochs + 1} done", file=sys.stderr, flush=True)
    for it in iters.values():
        it.close()

    out = []
    for codec, path in stores.items():
        back = di.open_zarr(path).images[: min(len(pixels), 256)].compute()
        stored = stored_bytes(path)
        out.append(
            {
                "name": f'daskimg "{codec}"',
                "psnr": psnr(pixels[: len(back)], back),
                "ratio": pixels.nbytes / stored,
                "mib": stored / MiB,
                "write": pixels.nbytes / median(writes[codec]) / 1e6,
                **{k: median(v) for k, v in reads[codec].items()},
            }
        )
    import h5py

    for name, (path, _) in h5.items():
        with h5py.File(path, "r") as f:
            dset = f["images"]
            stored = dset.id.get_storage_size()
            exact = bool((dset[:CHUNK] == pixels[:CHUNK]).all())
        out.append(
            {
                "name": f"{name} (h5py, {CHUNK} samples/chunk)",
                "psnr": float("inf") if exact else float("nan"),
                "ratio": pixels.nbytes / stored,
                "mib": stored / MiB,
                "write": pixels.nbytes / median(writes[name]) / 1e6,
                "chunks": median(reads[name]["chunks"]),
                "shuffled": None,
            }
        )
    return out


def epoch_rate(it, epoch: int) -> float:
    """Samples/s of one shuffled epoch of a BatchIterator."""
    it.set_epoch(epoch)
    n = 0
    with timer() as t:
        for images, _ in it:
            n += len(images)
    return n / t[0]


def write_h5(pixels: np.ndarray, path: Path, kw: dict) -> float:
    """Seconds to write the pixels as one chunked HDF5 dataset, close and fsync."""
    import h5py

    path.unlink(missing_ok=True)
    with timer() as t:
        with h5py.File(path, "w") as f:
            f.create_dataset("images", data=pixels, chunks=(CHUNK, *pixels.shape[1:]), **kw)
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    return t[0]


def read_h5(path: Path, n: int, *, seed: int) -> float:
    """Samples/s reading every HDF5 chunk (``dset[a:b]``) in random order, one thread."""
    import h5py

    order = np.random.default_rng(seed).permutation(-(-n // CHUNK))
    with h5py.File(path, "r") as f:
        dset = f["images"]
        with timer() as t:
            for c in order:
                dset[c * CHUNK : (c + 1) * CHUNK]
    return n / t[0]


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
            cell(r.get("mib"), ",.1f"),
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
    "stored MiB",
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


def versus(a: float, b: float) -> str:
    """``"14% smaller than"``: ``a`` against ``b``."""
    change = a / b - 1
    return f"{abs(change):.0%} {'smaller' if change < 0 else 'larger'} than"


def write_docs(rows: list[dict], n: int, jpeg_note: str, cold: bool, where: str) -> None:
    by = {r["name"]: r for r in rows}
    lzf = by.get(f"HDF5 LZF (h5py, {CHUNK} samples/chunk)")
    gz = by.get(f"HDF5 gzip-4 (h5py, {CHUNK} samples/chunk)")
    lossless = [r for r in rows if r["name"].startswith("daskimg") and r["psnr"] == np.inf]
    smallest = min(lossless, key=lambda r: r["mib"]) if lossless else None
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
        "Without a target it picks the fastest lossless codec; with `--goal size` "
        '(`recommend(..., goal="size")`) the smallest lossless one that keeps up with the '
        "target, or the smallest lossless one when there is no target"
        + (f' (here: "{smallest["name"].split(chr(34))[1]}")' if smallest else "")
        + ", and it says what that costs against the fastest.",
        "",
        "## Which to use when",
        "",
        '- **`"lz4"` (the default)**: the fastest to read of the compressed codecs'
        + (
            f" ({lz4['ratio']:.2f}x smaller than raw, {lz4['shuffled']:,.0f} warm / "
            f"{lz4['cold']:,.0f} cold shuffled samples/s here)"
            if lz4
            else ""
        )
        + ". Use it when feeding speed matters more than disk space"
        + (
            f"; it is not the smallest: {lz4['mib']:,.1f} MiB here, "
            f"{versus(lz4['mib'], lzf['mib'])} HDF5 LZF ({lzf['mib']:,.1f} MiB)"
            if lz4 and lzf
            else ""
        )
        + ".",
        '- **`"zstd"`**: when disk space or network/disk bandwidth matters more than CPU'
        + (
            f": the smallest lossless codec here, {zstd['mib']:,.1f} MiB "
            f"({zstd['ratio']:.2f}x), {versus(zstd['mib'], lzf['mib'])} HDF5 LZF and "
            f"{versus(zstd['mib'], lz4['mib'])} lz4. It costs reading speed "
            f"({zstd['shuffled']:,.0f} warm / {zstd['cold']:,.0f} cold shuffled samples/s "
            f"against lz4's {lz4['shuffled']:,.0f} / {lz4['cold']:,.0f}) and writing speed "
            f"({zstd['write']:,.0f} MB/s against {lz4['write']:,.0f})"
            if zstd and lz4 and lzf
            else ""
        )
        + ". `daskimg bench STORE --goal size` names the smallest lossless codec for your data "
        "and says how it compares with HDF5 LZF.",
        '- **`"none"`**: when the data fits in the page cache (warm data, repeated epochs on one '
        "machine): no decompression at all"
        + (
            f" ({none['chunks']:,.0f} random-chunk samples/s vs lz4's {lz4['chunks']:,.0f})"
            if none and lz4
            else ""
        )
        + ", at the cost of the full raw size on disk.",
        "- **HDF5** (for comparison): LZF and gzip files are what many existing pipelines use; "
        "they read a chunk at a time under h5py's global lock"
        + (
            f". LZF ({lzf['mib']:,.1f} MiB) is {versus(lzf['mib'], lz4['mib'])} lz4 and "
            f"{versus(lzf['mib'], zstd['mib'])} zstd; gzip-4 "
            f"({gz['mib']:,.1f} MiB, {versus(gz['mib'], zstd['mib'])} zstd) is "
            f"{'smaller' if gz['mib'] < zstd['mib'] else 'no smaller'} than daskimg's smallest "
            f"lossless codec, but reads {gz['chunks']:,.0f} samples/s in random chunks "
            f"(one thread; zstd {zstd['chunks']:,.0f} with two) and writes "
            f"{gz['write']:,.0f} MB/s (zstd {zstd['write']:,.0f})"
            if lzf and gz and zstd and lz4
            else ""
        )
        + ".",
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
        rows = bench_all(pixels, labels_arr, classes, tmp, a)
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
