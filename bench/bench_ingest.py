"""Ingest: a JPEG folder -> one store, against the bare limits of decoding and resizing.

On the same N photos (default 4,000; 8 classes of ~500x375 JPEGs from
``daskimg.testing.make_photo_folder``), resized to 224x224 RGB, one run measures:

* **bare limits**, 2 worker processes (a spawned ``multiprocessing.Pool``, started and
  warmed before timing), each decoding + resizing its share of the files, 64 per task,
  into one reused buffer and returning nothing but a checksum: nothing is stored, copied
  back or compressed:
  - Pillow: ``Image.open`` -> ``convert("RGB")`` -> ``resize(BILINEAR)``;
  - Pillow draft: the same with ``draft("RGB", (224, 224))`` first (libjpeg's DCT
    scaling by 1/2, 1/4, 1/8: none fits a 500x375 photo and a 224x224 target);
  - simplejpeg DCT: ``simplejpeg.decode_jpeg(min_height=224, min_width=224)``, which
    lets libjpeg-turbo scale by any M/8 (5/8 here: 313x235) + Pillow's resize; faster,
    but other pixels (its PSNR against the Pillow row is printed);
  - simplejpeg + daskimg's resize: what ``daskimg.read.decode`` does for these files,
    bare: simplejpeg's full decode (DCT scaling only by 1/2, 1/4, 1/8, when the photo is
    at least 2x the target) + ``daskimg.read.resample.resize_into``, Pillow's BILINEAR
    bit for bit;
* ``daskimg.imread(files, size=(224, 224))`` alone: its blocks computed on the threaded
  scheduler (2 threads) into one preallocated array (``da.store``);
* end to end, ``daskimg.to_zarr(daskimg.from_folder(folder, size=(224, 224)), out)``
  (lz4, shuffled order, the defaults) into a ``.zarr.zip`` and a ``.zarr`` folder, three
  ways: as a user calls it, with no scheduler chosen (daskimg's default: 2 worker
  processes forked for the write, :mod:`daskimg.store.procpool`; their start is in the
  row); on the threaded scheduler (``scheduler="threads"``, 2 threads); and on a
  ``distributed.LocalCluster`` of 2 worker processes x 1 thread. The cluster is started
  for each of its rows and warmed (imports, the compiled resize loaded, then an ingest
  of 256 photos, as a cluster that has ingested before) before the clock starts, and
  closed after: an idle cluster beside the other rows (its
  scheduler's event loop in this process, each nanny's memory monitor waking 10 times a
  second) took about a tenth from them on this 2-core machine. Its start is printed
  separately. Each is a first ingest: the store an earlier round wrote is removed before
  the clock starts;
* the default ``.zarr.zip`` once more with ``codec="none"``: the same pipeline without
  Blosc-lz4, so the table separates what compressing costs from the rest.

Every row is printed as images/s and as a ratio to the best bare limit. Methods run in
interleaved rounds (``--rounds``, default 3, the order rotating each round); the table
shows the median rate and the median (and range) of the per-round ratios. Every store is
compared array by array with the first default ``.zarr.zip`` (same seed: identical),
and the fast decode path is compared pixel by pixel with Pillow on a sample of the photos.

    python bench/bench_ingest.py            # ~5 minutes (+30 s the first time)
    python bench/bench_ingest.py --quick    # ~1 minute: 800 photos, 2 rounds
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    TARGET,
    base_parser,
    list_photos,
    machine,
    median,
    photo_folder,
    prepare_cache,
    print_table,
)

BLOCK = 64  # files per bare-limit task, as daskimg's decode tasks
WORKERS = 2

# --- bare limits: run in the pool's worker processes ---------------------------------

_BUF: dict[str, np.ndarray] = {}


def _out() -> np.ndarray:
    if "out" not in _BUF:
        _BUF["out"] = np.empty((*TARGET, 3), np.uint8)
    return _BUF["out"]


def _pillow(path: str, draft: bool) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if draft:
            im.draft("RGB", (TARGET[1], TARGET[0]))
        rgb = im.convert("RGB").resize((TARGET[1], TARGET[0]), Image.Resampling.BILINEAR)
        out = _out()
        out[...] = np.asarray(rgb)
        return out


def _simplejpeg_dct(path: str) -> np.ndarray:
    import simplejpeg
    from PIL import Image

    with open(path, "rb") as fh:
        data = fh.read()
    pixels = simplejpeg.decode_jpeg(data, min_height=TARGET[0], min_width=TARGET[1])
    rgb = Image.fromarray(pixels).resize((TARGET[1], TARGET[0]), Image.Resampling.BILINEAR)
    out = _out()
    out[...] = np.asarray(rgb)
    return out


def _simplejpeg_daskimg(path: str) -> np.ndarray:
    import simplejpeg

    from daskimg.read.resample import resize_into

    with open(path, "rb") as fh:
        data = fh.read()
    h, w = simplejpeg.decode_jpeg_header(data)[:2]
    limit = min(w / TARGET[1], h / TARGET[0])
    s = next((s for s in (8, 4, 2) if limit >= s), 1)
    if s > 1:
        pixels = simplejpeg.decode_jpeg(data, min_height=-(-h // s), min_width=-(-w // s))
    else:
        pixels = simplejpeg.decode_jpeg(data)
    out = _out()
    resize_into(pixels, (0, 0, w / s, h / s), out)
    return out


BARE: dict[str, Callable[[str], np.ndarray]] = {
    "bare: Pillow decode + resize": lambda p: _pillow(p, False),
    "bare: Pillow draft + resize": lambda p: _pillow(p, True),
    "bare: simplejpeg DCT (M/8) + Pillow resize": _simplejpeg_dct,
    "bare: simplejpeg + daskimg resize": _simplejpeg_daskimg,
}


def bare_task(args: tuple[str, list[str]]) -> int:
    """Decode + resize a block of files with one bare method; a checksum, nothing else."""
    name, paths = args
    load = BARE[name]
    total = 0
    for p in paths:
        total += int(load(p)[0, 0, 0])
    return total


def warm_worker(photo: str) -> str:
    """Import everything and decode one photo each way (loads numba's cache)."""
    for name in BARE:
        bare_task((name, [photo]))
    import daskimg

    return daskimg.__file__


def bare(pool: Any, pids: list[int], name: str, paths: list[str]) -> Clock:
    tasks = [(name, paths[i : i + BLOCK]) for i in range(0, len(paths), BLOCK)]
    with Clock(pids) as c:
        pool.map(bare_task, tasks, chunksize=1)
    return c


class Clock:
    """Wall seconds of one timed run, and the CPU seconds it took: this process's (all its
    threads) and those of the processes ``pids`` (the pool's or the cluster's workers),
    read from ``/proc`` (``cpu`` is None without it). CPU time does not depend on what
    else the machine runs as much as wall time does, so it separates the work a row does
    from the noise of a shared machine."""

    def __init__(self, pids: list[int] | None = None) -> None:
        self.pids = pids or []
        self.wall = 0.0
        self.cpu: float | None = None

    def __enter__(self) -> Clock:
        self._cpu = cpu_seconds(self.pids)
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._t
        # a write's worker processes are reaped on a thread of their own once it has
        # returned: their CPU time counts once they are
        from daskimg.store.procpool import wait_ended

        wait_ended()
        end = cpu_seconds(self.pids)
        self.cpu = None if end is None or self._cpu is None else end - self._cpu


def cpu_seconds(pids: list[int]) -> float | None:
    """User + system CPU seconds of this process and of ``pids`` so far (None: no /proc)."""
    t = os.times()
    total = t.user + t.system + t.children_user + t.children_system  # children: reaped ones
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


# --- daskimg ---------------------------------------------------------------------------


IMREAD = "daskimg.imread alone (threads)"


def imread_alone(paths: list[str], sink: np.ndarray | None) -> Clock:
    import dask
    import dask.array as da

    import daskimg as di

    assert sink is not None
    with dask.config.set(scheduler="threads", num_workers=WORKERS), Clock() as c:
        x = di.imread(paths, size=TARGET)
        da.store(x, sink, lock=False)
    return c


def end_to_end(
    folder: Path,
    out: Path,
    pids: list[int] | None,
    codec: str | None = None,
    how: str = "",
    client: Any = None,
) -> Clock:
    """One first ingest (``pids``: the workers of ``client``'s cluster; else ``how``: ``"threads"``, or
    ``""`` for no scheduler chosen: daskimg's default, worker processes forked for the
    write, whose CPU time is counted when they are reaped). A store left at ``out`` by an
    earlier round is removed before the clock starts (replacing a store also frees the
    old one's blocks, which is not ingest: 0.2 s for 600 MB on a disk mounted with
    ``discard``)."""
    import dask

    import daskimg as di

    remove(out)
    settings: dict[str, Any] = {"scheduler": how} if pids is None and how else {}
    settings["num_workers"] = WORKERS
    current = client.as_current() if client is not None else contextlib.nullcontext()
    with current, dask.config.set(settings), Clock(pids) as c:
        di.to_zarr(di.from_folder(folder, size=TARGET), out, codec=codec)
    return c


def remove(out: Path) -> None:
    if out.is_dir():
        shutil.rmtree(out)
    else:
        out.unlink(missing_ok=True)


def same_store(a: Path, b: Path) -> bool:
    import dask

    import daskimg as di

    with dask.config.set(scheduler="threads"):
        x, y = di.open_zarr(a), di.open_zarr(b)
        if set(x.arrays) != set(y.arrays):
            return False
        return all(
            np.array_equal(np.asarray(x.arrays[k]), np.asarray(y.arrays[k])) for k in x.arrays
        )


# --- fidelity and graph size ----------------------------------------------------------


def fidelity(paths: list[str]) -> tuple[int, int, float, float]:
    """daskimg's decode (the fast path where it applies) against Pillow on the same decode.

    Two references, over stretch, crop and pad to 224x224 RGB and 96x96 gray: Pillow's
    own ``resize`` / ``ImageOps.fit`` / ``ImageOps.pad`` of ``Image.open(...).convert()``
    with DCT scaling off (``draft=False``; 224x224 RGB), and daskimg's Pillow path
    (the same ``draft`` first, then Pillow's resize) everywhere. Returns (files, cases,
    largest absolute difference, smallest PSNR in dB; inf if identical).
    """
    from PIL import Image, ImageOps

    from daskimg.read import fastjpeg
    from daskimg.read.decode import DecodeSpec, decode_file

    bil = Image.Resampling.BILINEAR
    worst, psnr, cases = 0.0, float("inf"), 0

    def compare(got: np.ndarray, ref: np.ndarray) -> None:
        nonlocal worst, psnr, cases
        diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
        worst = max(worst, float(diff.max()))
        mse = float((diff**2).mean())
        if mse:
            psnr = min(psnr, 10 * np.log10(255**2 / mse))
        cases += 1

    header = fastjpeg.read_header
    for p in paths:
        for size, channels in [(TARGET, 3), ((96, 96), 1)]:
            for resize in ("stretch", "crop", "pad"):
                spec = DecodeSpec(size, channels=channels, resize=resize)
                got = decode_file(p, spec)
                fastjpeg.read_header = lambda data: None  # type: ignore[assignment]
                try:
                    compare(got, decode_file(p, spec))
                finally:
                    fastjpeg.read_header = header
                if size != TARGET:
                    continue  # 96x96 from ~500x375 is DCT-scaled: Pillow's plain resize differs
                # against plain Pillow, no DCT scaling (which "pad" to 224x224 would use here:
                # the picture is 224x168, and 375 / 168 >= 2)
                got = decode_file(
                    p, DecodeSpec(size, channels=channels, resize=resize, draft=False)
                )
                with Image.open(p) as im:
                    im = im.convert("RGB")
                    wh = (size[1], size[0])
                    if resize == "crop":
                        ref = ImageOps.fit(im, wh, bil)
                    elif resize == "pad":
                        ref = ImageOps.pad(im, wh, bil)
                    else:
                        ref = im.resize(wh, bil)
                compare(got, np.asarray(ref))
    return len(paths), cases, worst, psnr


def bare_psnr(paths: list[str]) -> float:
    """Smallest PSNR (dB) of the simplejpeg M/8 bare row against the Pillow bare row."""
    worst = float("inf")
    for p in paths:
        ref = _pillow(p, False).astype(np.float64)
        got = _simplejpeg_dct(p).astype(np.float64)
        mse = float(((got - ref) ** 2).mean())
        if mse:
            worst = min(worst, 10 * np.log10(255**2 / mse))
    return worst


def graph_seconds(n: int = 1_000_000) -> float:
    """Seconds to build the decode graph of imread for n made-up paths (nothing opened)."""
    import daskimg as di

    paths = [f"/nonexistent/class_{i % 8}/img_{i:07d}.jpg" for i in range(n)]
    t = time.perf_counter()
    di.imread(paths, size=TARGET)
    return time.perf_counter() - t


# --- the run ---------------------------------------------------------------------------


def main() -> None:
    p = base_parser(__doc__)
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (3; quick 2)")
    p.add_argument("--only", default="", help="comma-separated substrings of the rows to run")
    a = p.parse_args()
    n = a.n or (800 if a.quick else 4000)
    rounds = a.rounds or (2 if a.quick else 3)
    folder = photo_folder(n)
    paths, _ = list_photos(folder)
    print(f"bench_ingest: {machine()}; {n} JPEGs -> {TARGET[0]}x{TARGET[1]} RGB", flush=True)

    import distributed

    import daskimg
    from daskimg.read import resample

    if not resample.compiled():
        print("note: numba is not available: daskimg resizes with Pillow", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="daskimg-bench-ingest-"))
    ctx = multiprocessing.get_context("spawn")
    pool = ctx.Pool(WORKERS)
    pool.map(warm_worker, [paths[0]] * 4 * WORKERS, chunksize=1)  # every worker gets one
    pool_pids = [p.pid for p in multiprocessing.active_children() if p.pid is not None]
    keep = [s.strip() for s in a.only.split(",") if s.strip()]

    def wanted(row: str) -> bool:
        return not keep or row in BARE or any(s in row for s in keep)

    t = time.perf_counter()
    resample.warm()  # this process (its threads; the workers forked from it inherit it)
    warmed_here = time.perf_counter() - t
    # the sink imread writes into only if that row runs: this process forks the default
    # rows' workers, and 600 MB more of its memory to map would be theirs to copy
    sink = np.empty((n, *TARGET, 3), np.uint8) if wanted(IMREAD) else None
    if sink is not None:
        sink.fill(0)  # touched now, so no row pays for its pages
    cluster_setup: list[tuple[float, float]] = []  # started, warmed: each cluster row's

    warmup = photo_folder(256)

    def on_cluster(out: Path) -> Clock:
        """The ingest on a LocalCluster started and warmed for it, closed after: an idle
        cluster (its scheduler's event loop in this process, each nanny's memory monitor
        waking 10 times a second) took 10% from the rows measured beside it here. Warmed
        as a cluster that has ingested before: the imports and the compiled resize in its
        workers, then a small ingest (256 photos; the client's connections to the workers,
        their first tasks) before the clock starts."""
        t = time.perf_counter()
        with (
            distributed.LocalCluster(
                n_workers=WORKERS, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            distributed.Client(cluster, set_as_default=False) as client,
        ):
            started = time.perf_counter() - t
            t = time.perf_counter()
            where = client.run(warm_worker, paths[0])
            if any(Path(f).resolve() != Path(daskimg.__file__).resolve() for f in where.values()):
                print(f"warning: the workers import another daskimg: {where}", flush=True)
            pids = list(client.run(os.getpid).values())
            first = out.with_name("warmup" + "".join(out.suffixes))
            end_to_end(warmup, first, pids, client=client)
            remove(first)
            cluster_setup.append((started, time.perf_counter() - t))
            return end_to_end(folder, out, pids, client=client)

    rows: dict[str, Callable[[int], Clock]] = {
        **{name: (lambda r, name=name: bare(pool, pool_pids, name, paths)) for name in BARE},
        IMREAD: lambda r: imread_alone(paths, sink),
    }
    stores: dict[str, Path] = {}
    for kind in (".zarr.zip", ".zarr"):
        for how in ("", "threads", "cluster"):
            where_ = {
                "": "default: 2 forked processes",
                "threads": "threads",
                "cluster": "LocalCluster 2 processes",
            }[how]
            name = f"to_zarr(from_folder) -> {kind} ({where_})"
            out = tmp / f"{how or 'default'}{kind}"
            stores[name] = out
            if how == "cluster":
                rows[name] = lambda r, out=out: on_cluster(out)
            else:
                rows[name] = lambda r, out=out, how=how: end_to_end(folder, out, None, how=how)
    # the same without compression: what the pipeline costs apart from Blosc-lz4
    raw_name = "to_zarr(codec='none') -> .zarr.zip (default)"
    stores[raw_name] = tmp / "default-none.zarr.zip"
    rows[raw_name] = lambda r: end_to_end(folder, tmp / "default-none.zarr.zip", None, "none")
    rows = {k: v for k, v in rows.items() if wanted(k)}

    first_zip = stores["to_zarr(from_folder) -> .zarr.zip (default: 2 forked processes)"]
    times: dict[str, list[float]] = {k: [] for k in rows}
    cpus: dict[str, list[float | None]] = {k: [] for k in rows}
    same: dict[str, bool] = {}
    names = list(rows)
    try:
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                prepare_cache([folder], cold=a.cold)
                clock = rows[name](r)
                times[name].append(clock.wall)
                cpus[name].append(clock.cpu)
                print(f"  round {r}: {name}: {n / times[name][-1]:,.0f} img/s", flush=True)
            for name, out in stores.items():  # compare once, then free the disk
                if name in same or not out.exists() or not first_zip.exists():
                    continue
                same[name] = out == first_zip or same_store(first_zip, out)
            for out in stores.values():
                if out != first_zip:
                    remove(out)
    finally:
        pool.close()
        pool.join()
        shutil.rmtree(tmp, ignore_errors=True)

    # per-round ratios to that round's best bare limit, and the median rates
    best_bare = [max(n / times[b][r] for b in BARE if b in times) for r in range(rounds)]
    best_name = max((b for b in BARE if b in times), key=lambda b: n / median(times[b]))
    best_rate = n / median(times[best_name])
    # CPU per image: its median over the rounds, and the best bare row's against it
    cpu_ms = {
        k: median([c for c in v if c is not None]) * 1000 / n if None not in v else None
        for k, v in cpus.items()
    }
    table = []
    for name, ts in times.items():
        ratios = [n / ts[r] / best_bare[r] for r in range(rounds)]
        ms, bare_ms = cpu_ms[name], cpu_ms[best_name]
        table.append(
            [
                name,
                f"{n / median(ts):,.0f}",
                f"{n / median(ts) / best_rate:.2f}",
                f"{median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})",
                "-" if ms is None else f"{ms:.2f}",
                "-" if ms is None or bare_ms is None else f"{bare_ms / ms:.2f}",
                {True: "yes", False: "NO"}.get(same.get(name), "-") if name in stores else "-",
            ]
        )
    print()
    print_table(
        f"ingest {n} JPEGs (~500x375) -> 224x224 RGB, median of {rounds} interleaved rounds "
        f"({'cold' if a.cold else 'warm'} page cache); best bare limit: {best_name}",
        [
            "what", "img/s", "/ best bare", "per-round ratio (range)", "CPU ms/img",
            "bare CPU / CPU", "store = default zip",
        ],
        table,
    )  # fmt: skip
    print(
        "CPU ms/img: CPU time per image of every process doing the work (this one, and the "
        "pool's or the cluster's workers; not the cluster's nannies), median of the rounds; "
        "bare CPU / CPU: the best bare row's against it (1.00: no work beyond decoding and "
        "resizing)"
    )
    if cluster_setup:
        up = [c[0] for c in cluster_setup]
        warm = [c[1] for c in cluster_setup]
        print(
            f"LocalCluster: started for each of its rows in {min(up):.1f}-{max(up):.1f} s, "
            f"warmed (imports, compiled resize, an ingest of 256 photos) in "
            f"{min(warm):.1f}-{max(warm):.1f} s; not in the rows"
        )
    print(
        f"this process's compiled resize loaded in {warmed_here:.1f} s, once, not in the rows "
        "(a first ingest in a fresh process pays it)"
    )
    files, cases, worst, psnr = fidelity(paths[:: max(1, len(paths) // 64)])
    print(
        f"fidelity: daskimg's decode vs Pillow's resize of the same decode, {cases} cases on "
        f"{files} photos (stretch, crop, pad; RGB 224x224, gray 96x96 DCT-scaled): max abs "
        f"difference {worst:.0f}, min PSNR "
        f"{'inf (identical)' if psnr == float('inf') else f'{psnr:.1f} dB'}"
    )
    print(
        f"the simplejpeg DCT (M/8) bare row against the Pillow bare row: min PSNR "
        f"{bare_psnr(paths[:: max(1, len(paths) // 64)]):.1f} dB (other pixels)"
    )
    print(f"graph: imread of 1,000,000 made-up paths builds in {graph_seconds():.2f} s")
    if not all(same.values()):
        sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
