"""Feeding: shuffled training batches per second, against the bare read limit, same run.

N photos (default 4,000; 8 classes of ~500x375 JPEGs) are decoded once to 224x224x3
uint8, *class-sorted* (as a folder walk gives them), and stored every way compared:

* daskimg ``.zarr.zip`` stores, lz4 and codec "none", written with ``order="shuffled"``
  (daskimg's default), and an lz4 store written with ``order="source"`` (class-sorted);
* an HDF5 file (LZF, one chunk per sample, class-sorted);
* WebDataset tar shards of the original JPEGs (class-sorted, so 8 shards = 8 classes);
* the JPEG folder itself (for an ImageFolder-style dataset).

Each method runs in a fresh subprocess (so its peak RSS is its own) with batch 64:

* bare limits, interleaved with the daskimg epochs: the issue's whole-chunk limit (the same
  pixels as 55-sample Blosc-lz4 chunks back to back in one file: ``pread`` in random order
  + crc32c + decompress, 2 threads, nothing else), the same plus copying every sample into
  its row of a batch (what any loader handing out batches must add), and
  ``daskimg.bench.raw_limit`` on each
  store (the same reads and decoding the loader does, without shuffle or batches);
* ``daskimg.BatchIterator`` (shuffled, 2 threads) epochs on the same store;
* zarr-python: whole chunks in random order through the zarr array API (``arr[a:b]``),
  rows permuted inside each chunk, cut into batches;
* naive dask: ``da.from_zarr(...)[sorted random batch indices].compute()`` (a few batches);
* h5py: ``dset[sorted random batch indices]`` on the LZF file (a limited number of batches);
* ImageFolder + PIL in a torch ``DataLoader(num_workers=2, batch_size=64, shuffle=True)``
  (torchvision's ImageFolder is re-implemented in ten lines: torchvision is not installed);
* WebDataset: shard shuffle + 1,000-sample shuffle buffer + PIL decode, DataLoader(2 workers).

Columns: samples/s over the whole pass (first batch included), ratio to the lz4 bare limit,
mean number of distinct classes per batch (a global shuffle of 8 classes gives ~8.0),
first-batch latency (from creating the loader), peak RSS of the process tree.
The page cache is warm (files read once before each pass) unless ``--cold``, which evicts
the files (``posix_fadvise(DONTNEED)``) before every pass, including every daskimg epoch.

    python bench/bench_feed.py            # ~1 minute (+1-2 minutes the first time: inputs)
    python bench/bench_feed.py --quick    # < 1 minute
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import math
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    CACHE,
    TARGET,
    MiB,
    PeakRSS,
    base_parser,
    code_key,
    list_photos,
    machine,
    median,
    photo_folder,
    prepare_cache,
    print_table,
    run_json,
)

BATCH = 64
SHARDS = 8
SHUFFLE_BUFFER = 1000


# --- inputs ------------------------------------------------------------------------------


def build_inputs(n: int, *, rebuild: bool = False) -> Path:
    """Every store of the comparison for ``n`` photos, cached by ``n`` and daskimg's code."""
    import h5py
    import webdataset as wds

    import daskimg as di

    photos = photo_folder(n)
    key = code_key()
    root = CACHE / "feed"
    out = root / f"n{n}-{key}"
    if (out / ".done").is_file() and not rebuild:
        return out
    for old in root.glob(f"n{n}-*"):  # inputs of an older daskimg, or --rebuild
        shutil.rmtree(old, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    print(f"[setup] building stores for {n} samples in {out} ...", file=sys.stderr, flush=True)

    ds = di.from_folder(photos, size=TARGET)  # class-sorted, like the folder walk
    pixels = ds.images.compute()
    labels = np.asarray(ds.labels)
    mem = di.ImageSet(pixels, labels, classes=ds.classes, paths=ds.paths)
    di.to_zarr(mem, out / "lz4.zarr.zip", codec="lz4", overwrite=True)
    di.to_zarr(mem, out / "none.zarr.zip", codec="none", overwrite=True)
    di.to_zarr(mem, out / "lz4-source.zarr.zip", codec="lz4", order="source", overwrite=True)
    write_whole_chunks(pixels, out / "wholechunk-lz4.bin")

    with h5py.File(out / "lzf.h5", "w") as f:
        f.create_dataset("images", data=pixels, chunks=(1, *pixels.shape[1:]), compression="lzf")
        f.create_dataset("labels", data=labels)

    paths, file_labels = list_photos(photos)
    assert file_labels == labels.tolist(), "folder order differs from daskimg.from_folder"
    shard_dir = out / "shards"
    shard_dir.mkdir()
    per = math.ceil(n / SHARDS)
    for s in range(SHARDS):
        with wds.TarWriter(os.fspath(shard_dir / f"shard-{s:06d}.tar")) as sink:
            for i in range(s * per, min(n, (s + 1) * per)):
                with open(paths[i], "rb") as fh:
                    sink.write({"__key__": f"{i:07d}", "jpg": fh.read(), "cls": int(labels[i])})
    (out / "photos").symlink_to(photos)
    (out / ".done").write_text("")
    print(f"[setup] done in {time.perf_counter() - t:.0f}s", file=sys.stderr, flush=True)
    return out


# --- a yardstick independent of daskimg's layout ------------------------------------------

WHOLE_CHUNK = 55  # samples per chunk, as daskimg's default for 224x224x3 (about 8 MiB)


def write_whole_chunks(pixels: np.ndarray, path: Path) -> None:
    """Blosc-lz4 chunks of WHOLE_CHUNK samples (+ crc32c) back to back in one file."""
    import crc32c
    from numcodecs import blosc

    index = []
    with open(path, "wb") as fh:
        for a in range(0, len(pixels), WHOLE_CHUNK):
            block = np.ascontiguousarray(pixels[a : a + WHOLE_CHUNK])
            data = blosc.compress(block, b"lz4", 5, blosc.NOSHUFFLE)
            index.append((fh.tell(), len(data) + 4, len(block)))
            fh.write(data)
            fh.write(crc32c.crc32c(data).to_bytes(4, "little"))
    path.with_suffix(".json").write_text(json.dumps(index))


def whole_chunk_limit(
    path: Path, *, seed: int = 0, threads: int = 2, deliver: bool = False
) -> float:
    """Samples/s of the issue's bare limit: pread whole chunks in random order, check, decompress.

    Two threads, each into its own reused buffer; nothing else is done with the data.
    ``deliver``: also copy every sample into its row of a batch, as any loader that hands
    out batches must (batch buffers rotate through as many as the loader keeps in flight,
    rows in a random order). This copy writes every byte to memory the CPU cache does not
    hold, which the plain limit never does.
    """
    import crc32c
    from numcodecs import blosc

    index = json.loads(path.with_suffix(".json").read_text())
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(index))
    fd = os.open(path, os.O_RDONLY)
    local = threading.local()
    batches = [np.empty((BATCH, *TARGET, 3), np.uint8) for _ in range(24)] if deliver else []
    for b in batches:
        b.fill(0)  # touched before timing: page faults are not the loader's cost either
    rows = rng.permutation(BATCH)[:WHOLE_CHUNK].tolist()

    def work(i: int) -> None:
        off, size, n = index[order[i]]
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = np.empty((WHOLE_CHUNK, *TARGET, 3), np.uint8)
        data = os.pread(fd, size, off)
        if crc32c.crc32c(memoryview(data)[:-4]) != int.from_bytes(data[-4:], "little"):
            raise RuntimeError("checksum")
        blosc.decompress(memoryview(data)[:-4], buf[:n])
        if deliver:
            dest = batches[i % len(batches)]
            for r, p in zip(range(n), rows, strict=False):
                dest[p] = buf[r]

    t = time.perf_counter()
    try:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            list(pool.map(work, range(len(index))))
    finally:
        os.close(fd)
    return sum(r for _, _, r in index) / (time.perf_counter() - t)


# --- measuring a pass --------------------------------------------------------------------


def measure(
    batches: Iterable[tuple[Any, Any]], limit: int | None, started: float
) -> dict[str, float]:
    """Consume batches (up to ``limit`` samples); rate over the whole pass."""
    n = 0
    first = None
    distinct = []
    t0 = time.perf_counter()
    for images, labels in batches:
        if first is None:
            first = time.perf_counter() - started
        n += len(images)
        distinct.append(len(np.unique(np.asarray(labels))))
        if limit is not None and n >= limit:
            break
    dt = time.perf_counter() - t0
    return {
        "samples": n,
        "seconds": dt,
        "rate": n / dt,
        "first_s": first or math.nan,
        "classes": float(np.mean(distinct)),
    }


def rebatch(chunks: Iterable[tuple[np.ndarray, np.ndarray]]) -> Iterator[tuple[np.ndarray, ...]]:
    """Cut a stream of (images, labels) chunks into batches of ``BATCH`` samples."""
    imgs: list[np.ndarray] = []
    labs: list[np.ndarray] = []
    have = 0
    for x, y in chunks:
        imgs.append(x)
        labs.append(y)
        have += len(x)
        while have >= BATCH:
            xs, ys = np.concatenate(imgs), np.concatenate(labs)
            yield xs[:BATCH], ys[:BATCH]
            imgs, labs, have = [xs[BATCH:]], [ys[BATCH:]], have - BATCH
    if have:
        yield np.concatenate(imgs), np.concatenate(labs)


# --- methods (each runs in its own subprocess) -------------------------------------------


def m_daskimg(data: Path, store: str, a: argparse.Namespace) -> dict[str, Any]:
    """raw_limit and BatchIterator epochs, interleaved, on one store."""
    import daskimg as di
    from daskimg.bench import raw_limit

    path = os.fspath(data / store)
    limits, runs, wlimits, dlimits = [], [], [], []
    with PeakRSS() as peak:
        prepare_cache([path], cold=a.cold)
        t0 = time.perf_counter()
        it = di.BatchIterator(path, batch_size=BATCH, shuffle=True, seed=0, threads=2)
        build_s = time.perf_counter() - t0
        for epoch in range(a.epochs):
            prepare_cache([path], cold=a.cold)
            limits.append(raw_limit(path, threads=2, seed=epoch))
            wlimits.append(whole_chunk_limit(data / "wholechunk-lz4.bin", seed=epoch))
            dlimits.append(whole_chunk_limit(data / "wholechunk-lz4.bin", seed=epoch, deliver=True))
            prepare_cache([path], cold=a.cold)
            it.set_epoch(epoch)
            # epoch 0's first batch counts the construction too, like the other loaders
            started = time.perf_counter() - (build_s if epoch == 0 else 0.0)
            runs.append(measure(it, None, started))
    rates = [r["rate"] for r in runs]
    return {
        "limit": median(limits),
        "limits": limits,
        "rate": median(rates),
        "rates": rates,
        "ratio": median([x / y for x, y in zip(rates, limits, strict=True)]),
        "wlimit": median(wlimits),
        "wratio": median([x / y for x, y in zip(rates, wlimits, strict=True)]),
        "wratios": [x / y for x, y in zip(rates, wlimits, strict=True)],
        "dlimit": median(dlimits),
        "dratio": median([x / y for x, y in zip(rates, dlimits, strict=True)]),
        "first_s": runs[0]["first_s"],
        "classes": float(np.mean([r["classes"] for r in runs])),
        "samples": runs[0]["samples"],
        "peak": peak.peak,
    }


def m_zarr_chunks(data: Path, a: argparse.Namespace) -> dict[str, Any]:
    import zarr

    path = os.fspath(data / "lz4-source.zarr.zip")
    prepare_cache([path], cold=a.cold)
    with PeakRSS() as peak:
        started = time.perf_counter()
        group = zarr.open_group(zarr.storage.ZipStore(path, mode="r"), mode="r")
        arr = group["images"]
        labels = group["labels"][...]
        step = arr.chunks[0]
        rng = np.random.default_rng(0)
        order = rng.permutation(-(-arr.shape[0] // step))

        def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for c in order:
                a0, b0 = int(c) * step, min((int(c) + 1) * step, arr.shape[0])
                perm = rng.permutation(b0 - a0)
                yield arr[a0:b0][perm], labels[a0:b0][perm]

        res = measure(rebatch(chunks()), None, started)
    return {**res, "peak": peak.peak}


def m_dask_fancy(data: Path, a: argparse.Namespace) -> dict[str, Any]:
    import dask.array as da
    import zarr

    path = os.fspath(data / "lz4-source.zarr.zip")
    prepare_cache([path], cold=a.cold)
    with PeakRSS() as peak:
        started = time.perf_counter()
        group = zarr.open_group(zarr.storage.ZipStore(path, mode="r"), mode="r")
        x = da.from_zarr(group["images"])
        labels = group["labels"][...]
        rng = np.random.default_rng(0)
        perm = rng.permutation(len(labels))

        def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for b in range(0, len(perm), BATCH):
                idx = np.sort(perm[b : b + BATCH])
                yield x[idx].compute(), labels[idx]

        res = measure(batches(), a.limit_batches * BATCH, started)
    return {**res, "peak": peak.peak}


def m_h5(data: Path, a: argparse.Namespace, *, one_by_one: bool = False) -> dict[str, Any]:
    """Random batches from the LZF file: sorted fancy indexing, or one read per sample
    (``one_by_one``; h5py's fancy indexing is the slow part)."""
    import h5py

    path = os.fspath(data / "lzf.h5")
    prepare_cache([path], cold=a.cold)
    with PeakRSS() as peak:
        started = time.perf_counter()
        with h5py.File(path, "r") as f:
            dset = f["images"]
            labels = f["labels"][...]
            perm = np.random.default_rng(0).permutation(len(labels))
            out = np.empty((BATCH, *dset.shape[1:]), dset.dtype)

            def read(idx: np.ndarray) -> np.ndarray:
                if not one_by_one:
                    return dset[np.sort(idx)]
                for j, i in enumerate(idx):
                    dset.read_direct(out, np.s_[i], np.s_[j])
                return out[: len(idx)].copy()

            def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
                for b in range(0, len(perm), BATCH):
                    idx = perm[b : b + BATCH]
                    if not one_by_one:
                        idx = np.sort(idx)
                    yield read(idx), labels[idx]

            res = measure(batches(), a.limit_batches * BATCH, started)
    return {**res, "peak": peak.peak}


def _pil_224(im: Any) -> np.ndarray:
    from PIL import Image

    rgb = im.convert("RGB").resize((TARGET[1], TARGET[0]), Image.Resampling.BILINEAR)
    return np.asarray(rgb)


class ImageFolderPIL:
    """torchvision's ``ImageFolder`` with its default PIL loader and a 224x224 resize."""

    def __init__(self, root: Path) -> None:
        self.paths, self.labels = list_photos(root)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        import torch
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            return torch.from_numpy(_pil_224(im)), self.labels[i]


def m_imagefolder(data: Path, a: argparse.Namespace) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader

    folder = (data / "photos").resolve()
    prepare_cache([folder], cold=a.cold)
    with PeakRSS() as peak:
        started = time.perf_counter()
        ds = ImageFolderPIL(folder)
        loader = DataLoader(
            ds,
            batch_size=BATCH,
            shuffle=True,
            num_workers=2,
            generator=torch.Generator().manual_seed(0),
        )
        res = measure(loader, a.limit_samples, started)
    return {**res, "peak": peak.peak}


def _wds_sample(sample: dict[str, Any]) -> tuple[np.ndarray, int]:
    return _pil_224(sample["jpg"]), int(sample["cls"])


def m_webdataset(data: Path, a: argparse.Namespace) -> dict[str, Any]:
    import webdataset as wds
    from torch.utils.data import DataLoader

    shards = sorted(os.fspath(p) for p in (data / "shards").glob("*.tar"))
    prepare_cache(shards, cold=a.cold)
    with PeakRSS() as peak:
        started = time.perf_counter()
        pipeline = (
            wds.WebDataset(shards, shardshuffle=len(shards), seed=0, empty_check=False)
            .shuffle(SHUFFLE_BUFFER, seed=0)  # shuffle the encoded samples, decode afterwards
            .decode("pil")
            .map(_wds_sample)
            .batched(BATCH)
        )
        loader = DataLoader(pipeline, batch_size=None, num_workers=2)
        res = measure(loader, a.limit_samples, started)
    return {**res, "peak": peak.peak}


METHODS: dict[str, tuple[str, str, str]] = {
    # key: (table name, store, ordering of what is read)
    "daskimg-lz4": ("daskimg BatchIterator, lz4", "lz4.zarr.zip", "shuffled"),
    "daskimg-none": ("daskimg BatchIterator, codec none", "none.zarr.zip", "shuffled"),
    "daskimg-source": ("daskimg BatchIterator, lz4", "lz4-source.zarr.zip", "class-sorted"),
    "zarr-chunks": ("zarr-python, random whole chunks", "lz4-source.zarr.zip", "class-sorted"),
    "dask-fancy": ("dask from_zarr()[sorted idx]", "lz4-source.zarr.zip", "class-sorted"),
    "h5-lzf": ("h5py LZF dset[sorted idx]", "lzf.h5 (1 sample/chunk)", "class-sorted"),
    "h5-loop": ("h5py LZF, one read per sample", "lzf.h5 (1 sample/chunk)", "class-sorted"),
    "imagefolder": ("ImageFolder + PIL, DataLoader(2)", "JPEG folder", "class-sorted"),
    "webdataset": ("WebDataset, buffer 1000, DataLoader(2)", "8 tar shards", "class-sorted"),
}


def run_worker(a: argparse.Namespace) -> dict[str, Any]:
    data = Path(a.data)
    m = a.worker
    if m.startswith("daskimg-"):
        return m_daskimg(data, METHODS[m][1], a)
    fn = {
        "zarr-chunks": m_zarr_chunks,
        "dask-fancy": m_dask_fancy,
        "h5-lzf": m_h5,
        "h5-loop": functools.partial(m_h5, one_by_one=True),
        "imagefolder": m_imagefolder,
        "webdataset": m_webdataset,
    }[m]
    return fn(data, a)


# --- driver ------------------------------------------------------------------------------


def main() -> None:
    p = base_parser(__doc__)
    p.add_argument("--epochs", type=int, default=None, help="daskimg epochs (default 10, quick 4)")
    p.add_argument(
        "--limit-batches",
        type=int,
        default=None,
        help="batches for dask fancy indexing, h5py fancy, h5py loop (default 4, 10, 20; quick 2, 3, 5)",
    )
    p.add_argument(
        "--limit-samples",
        type=int,
        default=None,
        help="samples for ImageFolder and WebDataset (default 1280, quick 320)",
    )
    p.add_argument(
        "--only", nargs="+", choices=list(METHODS), default=None, help="run only these methods"
    )
    p.add_argument("--rebuild", action="store_true", help="rebuild the cached stores")
    p.add_argument("--worker", choices=list(METHODS), help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        res = run_worker(a)
        print(json.dumps(res))
        return

    n = a.n or (1000 if a.quick else 4000)
    epochs = a.epochs or (4 if a.quick else 10)
    limit_samples = a.limit_samples or (320 if a.quick else 1280)
    data = build_inputs(n, rebuild=a.rebuild)
    print(
        f"bench_feed: {machine()}; {n} samples of {TARGET[0]}x{TARGET[1]}x3, batch {BATCH}; "
        f"daskimg code {code_key()}"
    )

    results: dict[str, dict[str, Any]] = {}
    script = os.fspath(Path(__file__).resolve())
    for m in a.only or list(METHODS):
        if m in ("dask-fancy", "h5-lzf", "h5-loop"):
            default = {"dask-fancy": (2, 4), "h5-lzf": (3, 10), "h5-loop": (5, 20)}
            lb = a.limit_batches or default[m][0 if a.quick else 1]
        else:
            lb = 0
        argv = [
            script,
            "--worker",
            m,
            "--data",
            os.fspath(data),
            "--epochs",
            str(epochs),
            "--limit-batches",
            str(lb),
            "--limit-samples",
            str(limit_samples),
        ] + (["--cold"] if a.cold else [])
        t = time.perf_counter()
        results[m] = run_json(argv)
        r = results[m]
        print(
            f"  {m}: {r['rate']:,.0f} samples/s over {r['samples']} samples "
            f"({time.perf_counter() - t:.0f}s incl. start-up)",
            file=sys.stderr,
            flush=True,
        )

    ref = results.get("daskimg-lz4", {}).get("limit")
    rows = []
    for m, r in results.items():
        name, store, order = METHODS[m]
        if m.startswith("daskimg-"):
            rows.append(
                [
                    f"bare limit: raw_limit({store})",
                    store,
                    "-",
                    f"{r['limit']:,.0f}",
                    f"{r['limit'] / ref:.2f}" if ref else "-",
                    "-",
                    "-",
                    "-",
                ]
            )
        rows.append(
            [
                name,
                store,
                order,
                f"{r['rate']:,.0f}",
                f"{r['rate'] / ref:.2f}" if ref else "-",
                f"{r['classes']:.2f}",
                f"{r['first_s'] * 1000:,.0f}",
                f"{r['peak'] / MiB:,.0f}",
            ]
        )
    # the lz4-source run repeats the lz4 limit; keep one bare-limit row per store file
    seen: set[str] = set()
    rows = [r for r in rows if not (r[0].startswith("bare") and (r[1] in seen or seen.add(r[1])))]
    print()
    print_table(
        f"feeding {n} samples, batch {BATCH}, {'cold' if a.cold else 'warm'} page cache "
        f"(daskimg: median of {epochs} epochs, first batch of epoch 0)",
        [
            "method",
            "store",
            "store order",
            "samples/s",
            "x limit",
            "classes/batch",
            "first batch ms",
            "peak RSS MiB",
        ],
        rows,
    )
    if "daskimg-lz4" in results:
        print(
            f"whole-chunk bare limit (the issue's: pread {WHOLE_CHUNK}-sample Blosc-lz4 chunks in random "
            f"order + crc32c + decompress, 2 threads, one file): {results['daskimg-lz4']['wlimit']:,.0f} samples/s; "
            f"the same plus copying each sample into its batch row: {results['daskimg-lz4']['dlimit']:,.0f} samples/s"
        )
    for m in ("daskimg-lz4", "daskimg-none", "daskimg-source"):
        if m in results:
            r = results[m]
            print(
                f"{m}: BatchIterator = {r['wratio']:.2f} of the whole-chunk bare limit "
                f"(median of per-epoch ratios, range {min(r['wratios']):.2f}-{max(r['wratios']):.2f}), "
                f"{r['dratio']:.2f} of that limit plus the copy into batches, "
                f"{r['ratio']:.2f} of its own store's bare limit (raw_limit: the same reads and "
                "decoding, no shuffle or batches)"
            )
    print(
        "notes: 'x limit' is relative to raw_limit on the lz4 store; samples/s counts the whole "
        "pass, first batch included; limited passes (samples): "
        + ", ".join(
            f"{m} {r['samples']}" for m, r in results.items() if not m.startswith("daskimg")
        )
        + "; ImageFolder and WebDataset decode the 500x375 JPEGs (2 workers); "
        "peak RSS sums the process and its DataLoader workers (shared pages counted per process)."
    )


if __name__ == "__main__":
    main()
