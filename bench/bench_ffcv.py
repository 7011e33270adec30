"""daskimg against FFCV 1.0.2, litdata and WebDataset: shuffled batches per second, same run.

Run with the venv of ``bench/setup_ffcv.sh`` (FFCV builds from source; never in the test
suite or CI)::

    bash bench/setup_ffcv.sh                                      # once, ~3 minutes
    /tmp/daskimg-bench/venv-ffcv/bin/python bench/bench_ffcv.py   # ~10 minutes (+1 the first time)
    /tmp/daskimg-bench/venv-ffcv/bin/python bench/bench_ffcv.py --quick   # ~2.5 minutes

N photos (default 4,000; 8 classes of ~500x375 JPEGs, ``_common.photo_folder``) are decoded
once to 224x224x3 uint8 by ``daskimg.from_folder`` (as ``bench_feed`` does), *class-sorted*,
and written every way compared (cached under ``$DASKIMG_BENCH_CACHE/ffcv``):

* FFCV ``.beton``: ``RGBImageField(write_mode="raw")`` and ``write_mode="jpg"``,
  ``jpeg_quality=90``, with an ``IntField`` label (default 8 MiB pages);
* a litdata ``optimize``d dataset ({"image": uint8 array, "label": int}, 64 MB chunks);
* WebDataset tar shards of the raw pixels (``.npy`` per sample, 32 shards);
* daskimg stores ``to_zarr(ImageSet(dask images, labels), codec=C)`` for each codec: lz4,
  zstd, none, jpeg (q90, as FFCV's) and jpeg:75 (``order="shuffled"``, the default; rebuilt
  when daskimg's store code changes).

Every loader yields a uint8 (64, 224, 224, 3) HWC batch and its labels, 2 workers/threads
each; each method runs in a fresh subprocess (its peak RSS is its own) for one warm-up epoch
(discarded: FFCV compiles its pipeline with numba then) and ``--epochs`` timed full epochs;
the methods run round-robin for ``--rounds`` rounds (the order rotates each round), then
medians. Warm: files read once before each epoch (FFCV ``os_cache=True``). Cold: the files
are evicted (``posix_fadvise(DONTNEED)``) before each epoch, checked with ``fincore``;
FFCV then uses ``os_cache=False`` (its own pread page cache: a memory map that stays mapped
cannot be evicted), litdata non-persistent workers (for the same reason); daskimg keeps
one ``BatchIterator``, as FFCV keeps its ``Loader``: ``daskimg.bench.evict`` releases
daskimg's memory maps of the store before dropping it. The daskimg package is copied aside at the start and imported
from there by every worker, so edits to ``daskimg/`` during the run change nothing.

Rows: FFCV raw RANDOM with copy-out (``np.copy`` of each batch: FFCV reuses its output
buffers, so a batch kept past the next one must be copied; the reference row), raw RANDOM
and QUASI_RANDOM without copy, JPEG RANDOM with copy-out (``SimpleRGBImageDecoder`` and
``IntDecoder``: uint8 HWC numpy, no torch transforms); litdata ``StreamingDataLoader``
(shuffle, ``batch_decode=0``, persistent workers when warm); WebDataset (shard shuffle + 1,000-sample
buffer, ``np.load`` per sample, ``DataLoader``, persistent workers); daskimg
``BatchIterator(store, batch_size=64, shuffle=True, threads=2)`` per codec (its batches are
new arrays, nothing to copy).

Columns: samples/s (median over all timed epochs), ratio to FFCV raw RANDOM copy-out
(median of per-round ratios of the round medians), on-disk size and its ratio to the raw
pixels, mean distinct classes per batch (a global shuffle of 8 classes gives ~8.0), peak
RSS of the process tree (FFCV's memory map of the file counts once it is touched). Then
a verdict per "done when" criterion of issue 8 (item 5).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    CACHE,
    CLASSES,
    TARGET,
    MiB,
    PeakRSS,
    base_parser,
    code_key,
    evict,
    machine,
    median,
    photo_folder,
    prepare_cache,
    print_table,
    run_json,
)

BATCH = 64
WORKERS = 2
WDS_SHARDS = 32
SHUFFLE_BUFFER = 1000
#: mean distinct classes per batch that counts as "global-shuffle quality" (8 classes, 64 per batch)
GLOBAL_MIX = 7.9
DASKIMG_CODECS = ("lz4", "zstd", "none", "jpeg", "jpeg:75")


# --- inputs ------------------------------------------------------------------------------


def _files(paths: Iterable[Path]) -> list[str]:
    out = []
    for p in paths:
        if p.is_dir():
            out += sorted(os.fspath(f) for f in p.rglob("*") if f.is_file())
        elif p.is_file():
            out.append(os.fspath(p))
    return out


def disk_bytes(paths: Iterable[Path]) -> int:
    return sum(os.path.getsize(f) for f in _files(paths))


def resident_bytes(paths: Iterable[Path]) -> int:
    """Bytes of the files in the page cache (util-linux ``fincore``); -1 if it is missing."""
    files = _files(paths)
    if not files or shutil.which("fincore") is None:
        return -1
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--raw", "-o", "RES", *files],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sum(int(x) for x in out.split())


class _Rows:
    """Sample ``i`` of the cached pixels, for the writers (picklable: litdata spawns workers)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._x: np.ndarray | None = None
        self._y: np.ndarray | None = None

    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        if self._x is None or self._y is None:
            self._x = np.load(os.path.join(self.folder, "pixels.npy"), mmap_mode="r")
            self._y = np.load(os.path.join(self.folder, "labels.npy"))
        return self._x, self._y

    def __getstate__(self) -> dict[str, Any]:
        return {"folder": self.folder}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["folder"])  # type: ignore[misc]

    def __len__(self) -> int:
        return len(self._load()[1])

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        x, y = self._load()
        return np.ascontiguousarray(x[i]), int(y[i])

    def litdata_item(self, i: int) -> dict[str, Any]:
        x, y = self[i]
        return {"image": x, "label": y}


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send what a step prints (litdata's workers print progress) to stderr: stdout is the table."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _step(what: str, out: Path, build: Callable[[Path], None]) -> None:
    """Build ``out`` once (into a temporary name, then renamed)."""
    if out.exists():
        return
    tmp = out.with_name(out.name + ".tmp")
    if tmp.is_dir():
        shutil.rmtree(tmp)
    elif tmp.exists():
        tmp.unlink()
    t = time.perf_counter()
    print(f"[setup] {what} -> {out} ...", file=sys.stderr, flush=True)
    with _stdout_to_stderr():
        build(tmp)
    os.replace(tmp, out)
    print(f"[setup]   {time.perf_counter() - t:.0f}s", file=sys.stderr, flush=True)


def build_inputs(n: int) -> Path:
    """Every dataset of the comparison for ``n`` photos, cached (daskimg's by its code too)."""
    import daskimg as di

    root = CACHE / "ffcv" / f"n{n}"
    root.mkdir(parents=True, exist_ok=True)
    rows = _Rows(os.fspath(root))

    def pixels(tmp: Path) -> None:
        ds = di.from_folder(photo_folder(n), size=TARGET)  # class-sorted, like bench_feed
        assert tuple(ds.classes) == tuple(sorted(CLASSES)), ds.classes
        np.save(root / "labels.npy", np.asarray(ds.labels, dtype=np.int64))
        with open(tmp, "wb") as fh:
            np.save(fh, ds.images.compute())

    _step("decoding the photos to 224x224x3 uint8", root / "pixels.npy", pixels)

    def beton(mode: str) -> Callable[[Path], None]:
        def build(tmp: Path) -> None:
            from ffcv.fields import IntField, RGBImageField
            from ffcv.writer import DatasetWriter

            field = RGBImageField(write_mode=mode, jpeg_quality=90)
            writer = DatasetWriter(
                os.fspath(tmp), {"image": field, "label": IntField()}, num_workers=WORKERS
            )
            writer.from_indexed_dataset(rows)

        return build

    _step("FFCV .beton, raw pixels", root / "ffcv-raw.beton", beton("raw"))
    _step("FFCV .beton, JPEG q90", root / "ffcv-jpg.beton", beton("jpg"))

    def litdata(tmp: Path) -> None:
        import litdata as ld

        ld.optimize(
            fn=rows.litdata_item,
            inputs=list(range(n)),
            output_dir=os.fspath(tmp),
            num_workers=WORKERS,
            chunk_bytes="64MB",
        )

    _step("litdata optimize", root / "litdata", litdata)

    def shards(tmp: Path) -> None:
        tmp.mkdir()
        labels = np.load(root / "labels.npy")
        per = math.ceil(n / WDS_SHARDS)
        for s in range(WDS_SHARDS):
            with tarfile.open(tmp / f"shard-{s:06d}.tar", "w") as tar:
                for i in range(s * per, min(n, (s + 1) * per)):
                    buf = io.BytesIO()
                    np.save(buf, rows[i][0])
                    for ext, data in (("npy", buf.getvalue()), ("cls", str(labels[i]).encode())):
                        info = tarfile.TarInfo(f"{i:07d}.{ext}")
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))

    _step("WebDataset shards (.npy per sample)", root / "wds", shards)

    key = code_key()
    for old in root.glob("daskimg-*"):  # stores of an older daskimg
        if old.name != f"daskimg-{key}":
            shutil.rmtree(old, ignore_errors=True)

    def stores(tmp: Path) -> None:
        import dask.array as da

        tmp.mkdir()
        x = da.from_array(np.load(root / "pixels.npy", mmap_mode="r"), chunks=(256, *TARGET, 3))
        ds = di.ImageSet(x, np.load(root / "labels.npy"), classes=sorted(CLASSES))
        for codec in DASKIMG_CODECS:
            di.to_zarr(ds, daskimg_store(root, codec, tmp), codec=codec)  # order="shuffled"

    _step(f"daskimg stores ({', '.join(DASKIMG_CODECS)})", root / f"daskimg-{key}", stores)
    return root


def daskimg_store(data: Path, codec: str, folder: Path | None = None) -> Path:
    folder = folder or data / f"daskimg-{code_key()}"
    return folder / f"{codec.replace(':', '-q')}.zarr.zip"


# --- the methods (each runs in its own subprocess) ---------------------------------------


def _ffcv(data: Path, a: argparse.Namespace, fmt: str, order: str, copy: bool) -> dict[str, Any]:
    from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    path = data / f"ffcv-{fmt}.beton"
    loader = Loader(
        os.fspath(path),
        batch_size=BATCH,
        num_workers=WORKERS,
        os_cache=not a.cold,
        order=getattr(OrderOption, order),
        seed=a.seed,
        drop_last=False,
        pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]},
    )

    def epoch(e: int) -> Iterable[tuple[Any, Any]]:
        if not copy:
            return loader
        return ((np.copy(x), np.copy(y)) for x, y in loader)

    return epochs([path], epoch, a)


def m_litdata(data: Path, a: argparse.Namespace) -> dict[str, Any]:
    import litdata as ld

    path = data / "litdata"
    # batch_decode=0: deserialize only the requested sample (0.2.76's "auto" decodes a window
    # of samples per request and throws most away under shuffle: ~10x slower here);
    # persistent workers (warm): no worker start-up in every epoch (each epoch still
    # reshuffles); not when cold: the workers memory-map the chunks, and a map that stays
    # mapped keeps its pages in the page cache (fincore showed all of them after an eviction)
    ds = ld.StreamingDataset(os.fspath(path), shuffle=True, seed=a.seed, batch_decode=0)
    loader = ld.StreamingDataLoader(
        ds, batch_size=BATCH, num_workers=WORKERS, persistent_workers=not a.cold
    )

    def epoch(e: int) -> Iterable[tuple[Any, Any]]:
        return ((b["image"], b["label"]) for b in loader)

    return epochs([path], epoch, a)


def _wds_decode(sample: dict[str, Any]) -> tuple[np.ndarray, int]:
    return np.load(io.BytesIO(sample["npy"])), int(sample["cls"])


def m_webdataset(data: Path, a: argparse.Namespace) -> dict[str, Any]:
    import webdataset as wds
    from torch.utils.data import DataLoader

    shards = sorted(os.fspath(p) for p in (data / "wds").glob("*.tar"))
    pipeline = (
        wds.WebDataset(shards, shardshuffle=len(shards), seed=a.seed, empty_check=False)
        .shuffle(SHUFFLE_BUFFER, seed=a.seed)
        .map(_wds_decode)
        .batched(BATCH)
    )
    loader = DataLoader(pipeline, batch_size=None, num_workers=WORKERS, persistent_workers=True)

    def epoch(e: int) -> Iterable[tuple[Any, Any]]:
        return loader

    return epochs([data / "wds"], epoch, a)


def m_daskimg(data: Path, a: argparse.Namespace, codec: str) -> dict[str, Any]:
    import daskimg as di

    path = daskimg_store(data, codec)
    # one iterator for all epochs, as FFCV's Loader; cold epochs stay cold because the
    # eviction (daskimg.bench.evict) releases daskimg's memory maps first (fincore checks)
    it = di.BatchIterator(
        os.fspath(path), batch_size=BATCH, shuffle=True, seed=a.seed, threads=WORKERS
    )

    def epoch(e: int) -> Iterable[tuple[Any, Any]]:
        it.set_epoch(e)
        return it

    return {**epochs([path], epoch, a), "daskimg_file": di.__file__}


def epochs(
    paths: list[Path],
    epoch: Callable[[int], Iterable[tuple[Any, Any]]],
    a: argparse.Namespace,
    *,
    before: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """One warm-up epoch (discarded) and ``a.epochs`` timed full epochs."""
    rates, classes, resident = [], [], []
    warmup_s = math.nan
    t_start = time.perf_counter()
    with PeakRSS() as peak:
        for e in range(a.epochs + 1):
            if before is not None:
                before(e)
            prepare_cache(paths, cold=a.cold)
            if a.cold:
                resident.append(resident_bytes(paths))
            n = 0
            distinct = []
            t0 = time.perf_counter()
            for images, labels in epoch(e):
                n += len(images)
                distinct.append(len(np.unique(np.asarray(labels))))
            dt = time.perf_counter() - t0
            if n != a.n:
                raise RuntimeError(f"an epoch gave {n} samples, expected {a.n}")
            if e == 0:
                warmup_s = time.perf_counter() - t_start  # loader start-up + first epoch
                continue
            rates.append(n / dt)
            classes.append(float(np.mean(distinct)))
    return {
        "rates": rates,
        "classes": float(np.mean(classes)),
        "warmup_s": warmup_s,
        "resident": max(resident) if resident else None,
        "peak": peak.peak,
        "images_shape": list(np.asarray(images).shape[1:]),
        "images_dtype": str(np.asarray(images).dtype),
    }


# key: (table name, dataset files relative to the data folder (or a callable), runner)
METHODS: dict[str, tuple[str, Callable[[Path], list[Path]], Callable[..., dict[str, Any]]]] = {
    "ffcv-raw-random-copy": (
        "FFCV raw, RANDOM, copy-out",
        lambda d: [d / "ffcv-raw.beton"],
        lambda d, a: _ffcv(d, a, "raw", "RANDOM", True),
    ),
    "ffcv-raw-random": (
        "FFCV raw, RANDOM, no copy",
        lambda d: [d / "ffcv-raw.beton"],
        lambda d, a: _ffcv(d, a, "raw", "RANDOM", False),
    ),
    "ffcv-raw-quasi": (
        "FFCV raw, QUASI_RANDOM, no copy",
        lambda d: [d / "ffcv-raw.beton"],
        lambda d, a: _ffcv(d, a, "raw", "QUASI_RANDOM", False),
    ),
    "ffcv-jpg-random-copy": (
        "FFCV JPEG q90, RANDOM, copy-out",
        lambda d: [d / "ffcv-jpg.beton"],
        lambda d, a: _ffcv(d, a, "jpg", "RANDOM", True),
    ),
    "litdata": (
        "litdata StreamingDataLoader, shuffle",
        lambda d: [d / "litdata"],
        m_litdata,
    ),
    "webdataset": (
        f"WebDataset .npy, buffer {SHUFFLE_BUFFER}",
        lambda d: [d / "wds"],
        m_webdataset,
    ),
    **{
        f"daskimg-{c}": (
            f"daskimg BatchIterator, {c}",
            lambda d, c=c: [daskimg_store(d, c)],
            lambda d, a, c=c: m_daskimg(d, a, c),
        )
        for c in DASKIMG_CODECS
    },
}
REF = "ffcv-raw-random-copy"


# --- driver ------------------------------------------------------------------------------


def run_mode(
    data: Path, n: int, cold: bool, methods: list[str], a: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    """Every method for ``a.rounds`` rounds (round-robin, rotated), in fresh subprocesses."""
    script = os.fspath(Path(__file__).resolve())
    res: dict[str, dict[str, Any]] = {m: {"rounds": []} for m in methods}
    mode = "cold" if cold else "warm"
    for r in range(a.rounds):
        order = methods[r % len(methods) :] + methods[: r % len(methods)]
        for m in order:
            argv = [
                script,
                "--worker",
                m,
                "--data",
                os.fspath(data),
                "--n",
                str(n),
                "--epochs",
                str(a.epochs),
                "--seed",
                str(r),
            ] + (["--cold"] if cold else [])
            t = time.perf_counter()
            out = run_json(argv, timeout=900)
            if "daskimg_file" in out and not out["daskimg_file"].startswith(sys.path[0]):
                raise RuntimeError(
                    f"worker imported {out['daskimg_file']}, not the copy in {sys.path[0]}"
                )
            res[m]["rounds"].append(out)
            print(
                f"  [{mode} round {r + 1}/{a.rounds}] {m}: {median(out['rates']):,.0f} samples/s "
                f"(epochs {', '.join(f'{x:,.0f}' for x in out['rates'])}; "
                f"{time.perf_counter() - t:.0f}s incl. start-up)",
                file=sys.stderr,
                flush=True,
            )
    for r in res.values():
        rounds = r["rounds"]
        r["rate"] = median([x for o in rounds for x in o["rates"]])
        r["classes"] = float(np.mean([o["classes"] for o in rounds]))
        r["peak"] = max(o["peak"] for o in rounds)
        r["warmup_s"] = median([o["warmup_s"] for o in rounds])
        res_ = [o["resident"] for o in rounds if o["resident"] is not None]
        r["resident"] = max(res_) if res_ else None
        r["shape"] = (rounds[0]["images_shape"], rounds[0]["images_dtype"])
    if REF in res:
        for r in res.values():
            per_round = [
                median(o["rates"]) / median(ref["rates"])
                for o, ref in zip(r["rounds"], res[REF]["rounds"], strict=True)
            ]
            r["ratio"] = median(per_round)
            r["ratio_range"] = (min(per_round), max(per_round))
    return res


def table(
    res: dict[str, dict[str, Any]], sizes: dict[str, int], raw: int, n: int, cold: bool, a: Any
) -> None:
    rows = []
    for m, r in res.items():
        lo, hi = r.get("ratio_range", (math.nan, math.nan))
        rows.append(
            [
                METHODS[m][0],
                f"{r['rate']:,.0f}",
                f"{r['ratio']:.2f} ({lo:.2f}-{hi:.2f})" if "ratio" in r else "-",
                f"{sizes[m] / MiB:,.1f}",
                f"{sizes[m] / raw:.3f}",
                f"{r['classes']:.2f}",
                f"{r['warmup_s']:.1f}",
                f"{r['peak'] / MiB:,.0f}",
            ]
            + ([f"{r['resident'] / MiB:.1f}" if r["resident"] is not None else "-"] if cold else [])
        )
    print()
    print_table(
        f"{'COLD' if cold else 'WARM'} page cache: {n} samples 224x224x3 uint8, batch {BATCH}, "
        f"{WORKERS} workers each; median of {a.rounds} rounds x {a.epochs} epochs "
        "(after 1 warm-up epoch per run)",
        [
            "method",
            "samples/s",
            "x FFCV raw RANDOM copy (range)",
            "disk MiB",
            "x raw",
            "classes/batch",
            "start+1st epoch s",
            "peak RSS MiB",
        ]
        + (["max resident after evict MiB"] if cold else []),
        rows,
    )


def verdicts(
    warm: dict[str, dict[str, Any]] | None,
    cold: dict[str, dict[str, Any]] | None,
    sizes: dict[str, int],
) -> None:
    print("\nverdicts (issue 8, item 5, 'done when'; all numbers from this run):")
    dk = [f"daskimg-{c}" for c in DASKIMG_CODECS]
    if warm and REF in warm and "ffcv-raw-quasi" in warm:
        mixed = [m for m in dk if m in warm and warm[m]["classes"] >= GLOBAL_MIX]
        if mixed:
            best = max(mixed, key=lambda m: warm[m]["rate"])
            b, ref, q = warm[best], warm[REF], warm["ffcv-raw-quasi"]
            ok = b["rate"] >= ref["rate"]
            print(
                f"  [{'PASS' if ok else 'FAIL'}] warm: daskimg with global-shuffle mixing "
                f"({best}, {b['classes']:.2f} classes/batch >= {GLOBAL_MIX}) {b['rate']:,.0f}/s "
                f">= FFCV raw RANDOM copy-out {ref['rate']:,.0f}/s ({ref['classes']:.2f} classes/batch): "
                f"x{b['ratio']:.2f} (per-round range {b['ratio_range'][0]:.2f}-{b['ratio_range'][1]:.2f}); "
                f"against FFCV QUASI_RANDOM without copy {q['rate']:,.0f}/s "
                f"({q['classes']:.2f} classes/batch): x{b['rate'] / q['rate']:.2f}"
            )
        else:
            print(f"  [FAIL] warm: no daskimg row mixes to >= {GLOBAL_MIX} classes/batch")
    else:
        print(
            "  [----] warm criterion: needs the warm FFCV raw RANDOM copy-out and QUASI_RANDOM rows"
        )
    if cold and REF in cold:
        have = [m for m in dk if m in cold]
        if have:
            best = max(have, key=lambda m: cold[m]["rate"])
            b, ref = cold[best], cold[REF]
            ffcv_raw = [
                m
                for m in ("ffcv-raw-random-copy", "ffcv-raw-random", "ffcv-raw-quasi")
                if m in cold
            ]
            fastest = max(ffcv_raw, key=lambda m: cold[m]["rate"])
            ok = b["rate"] >= 2 * ref["rate"]
            print(
                f"  [{'PASS' if ok else 'FAIL'}] cold: daskimg's best codec ({best}) "
                f"{b['rate']:,.0f}/s >= 2 x FFCV raw RANDOM copy-out {ref['rate']:,.0f}/s: "
                f"x{b['ratio']:.2f} (per-round range {b['ratio_range'][0]:.2f}-{b['ratio_range'][1]:.2f}); "
                f"against the fastest cold FFCV raw row ({fastest}, {cold[fastest]['rate']:,.0f}/s): "
                f"x{b['rate'] / cold[fastest]['rate']:.2f}"
            )
            lossless = [m for m in have if not m.startswith("daskimg-jpeg")]
            if lossless and best not in lossless:
                bl = max(lossless, key=lambda m: cold[m]["rate"])
                print(
                    f"         ({best} is lossy; the best lossless codec, {bl}, "
                    f"{cold[bl]['rate']:,.0f}/s: x{cold[bl]['ratio']:.2f})"
                )
    else:
        print("  [----] cold criterion: needs a cold run (default, or --cold)")
    for name, res in (("warm", warm), ("cold", cold)):
        if res and "daskimg-jpeg" in res and "ffcv-jpg-random-copy" in res:
            d, f = res["daskimg-jpeg"], res["ffcv-jpg-random-copy"]
            sd, sf = sizes["daskimg-jpeg"], sizes["ffcv-jpg-random-copy"]
            ok = d["rate"] >= f["rate"] and sd <= sf
            print(
                f"  [{'PASS' if ok else 'FAIL'}] {name}: daskimg jpeg {d['rate']:,.0f}/s at "
                f"{sd / MiB:.1f} MiB >= FFCV JPEG q90 RANDOM copy-out {f['rate']:,.0f}/s at "
                f"{sf / MiB:.1f} MiB: rate x{d['rate'] / f['rate']:.2f}, size x{sd / sf:.2f}"
            )


def snapshot_daskimg() -> Path:
    """Copy the daskimg package aside and import it from there, here and in every worker.

    Other people edit ``daskimg/`` while a 10-minute run goes on: every round must measure
    the same code (and find the stores built for it).
    """
    import importlib.util

    spec = importlib.util.find_spec("daskimg")  # locates it without importing it
    if spec is None or spec.origin is None:
        raise SystemExit("daskimg is not installed in this venv: run bench/setup_ffcv.sh")
    dst = CACHE / "ffcv" / f"src-{os.getpid()}"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(
        Path(spec.origin).parent, dst / "daskimg", ignore=shutil.ignore_patterns("__pycache__")
    )
    sys.path.insert(0, os.fspath(dst))
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.fspath(dst) + (os.pathsep + old if old else "")
    return dst


def main() -> None:
    p = base_parser(__doc__)
    p.add_argument(
        "--warm", action="store_true", help="warm page cache only (default: warm, then cold)"
    )
    p.add_argument(
        "--rounds", type=int, default=None, help="round-robin rounds (default 3, quick 1)"
    )
    p.add_argument(
        "--epochs", type=int, default=None, help="timed epochs per run (default 4, quick 2)"
    )
    p.add_argument("--only", nargs="+", choices=list(METHODS), default=None, help="run only these")
    p.add_argument("--worker", choices=list(METHODS), help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(METHODS[a.worker][2](Path(a.data), a)))
        return

    snapshot = snapshot_daskimg()
    try:
        run(a, snapshot)
    finally:
        shutil.rmtree(snapshot, ignore_errors=True)


def run(a: argparse.Namespace, snapshot: Path) -> None:
    import daskimg

    assert Path(daskimg.__file__).parent == snapshot / "daskimg", daskimg.__file__
    n = a.n or (1000 if a.quick else 4000)
    a.rounds = a.rounds or (1 if a.quick else 3)
    a.epochs = a.epochs or (2 if a.quick else 4)
    t_run = time.perf_counter()
    data = build_inputs(n)
    methods = a.only or list(METHODS)
    print(
        f"bench_ffcv: {machine()}; {n} samples of {TARGET[0]}x{TARGET[1]}x3 uint8 (class-sorted "
        f"source, {len(CLASSES)} classes), batch {BATCH}; daskimg code {code_key()} "
        f"(a copy of the package taken at the start: {snapshot})"
    )
    from importlib.metadata import version

    import ffcv
    import litdata
    import torch
    import webdataset  # noqa: F401

    print(
        f"versions: ffcv {version('ffcv')}, litdata {litdata.__version__}, webdataset "
        f"{version('webdataset')}, numpy {np.__version__}, torch {torch.__version__}, "
        f"numba {version('numba')}; ffcv at {Path(ffcv.__file__).parent}"
    )
    raw = n * TARGET[0] * TARGET[1] * 3
    sizes = {m: disk_bytes(METHODS[m][1](data)) for m in METHODS}
    modes = [True] if a.cold else [False] if a.warm else [False, True]
    results: dict[bool, dict[str, dict[str, Any]]] = {}
    for cold in modes:
        if cold:  # nothing of the datasets left in the page cache from the warm pass
            evict([p for m in methods for p in METHODS[m][1](data)])
        results[cold] = run_mode(data, n, cold, methods, a)
    for cold in modes:
        table(results[cold], sizes, raw, n, cold, a)
        for m, r in results[cold].items():
            if cold and r["resident"] is not None and r["resident"] > 0.01 * sizes[m]:
                print(
                    f"WARNING: {m} kept {r['resident'] / MiB:.0f} MiB in the page cache after the "
                    "eviction: its cold number is partly warm"
                )
    verdicts(results.get(False), results.get(True), sizes)
    shapes = {tuple(map(str, r["shape"])) for res in results.values() for r in res.values()}
    print(
        f"notes: every loader yielded uint8 batches of {sorted(shapes)}; 'x raw' = on-disk bytes / "
        f"{raw / MiB:.0f} MiB of raw pixels; ratios are medians of per-round ratios (same run); "
        "peak RSS sums the process and its workers; cold runs evict the files before every epoch "
        f"(resident after evict: fincore). Total {time.perf_counter() - t_run:.0f}s."
    )


if __name__ == "__main__":
    main()
