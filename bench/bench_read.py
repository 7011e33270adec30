"""Reading: graph-build time of ``daskimg.imread`` and decode+resize rate of JPEGs.

(a) Graph build: ``daskimg.imread`` on 1,000,000 made-up paths (no file is opened;
only the dask array is built) against the one-task-per-file recipe
``da.stack([da.from_delayed(dask.delayed(load)(p), shape, dtype) for p in paths])``,
timed on 20,000 paths and extrapolated linearly to 1,000,000.

(b) Decode + resize of ~2,000 JPEGs (about 500x375) to 224x224 RGB uint8, every
method producing one (N, 224, 224, 3) array in this process, on 2 workers:
daskimg on the threaded scheduler and on ``scheduler="processes"``; bare Pillow
(open, convert RGB, bilinear resize) in a 2-process ``multiprocessing.Pool``; Pillow
with ``draft`` (libjpeg DCT scaling: the upper limit) in the same pool; and the
per-file delayed recipe on the threaded scheduler. Times include building the graph
and starting the pool. Files are in the page cache unless ``--cold``.

    python bench/bench_read.py            # ~1 minute
    python bench/bench_read.py --quick    # < 1 minute, small sizes
"""

from __future__ import annotations

import multiprocessing
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    PHOTO_SIZE,
    TARGET,
    base_parser,
    list_photos,
    machine,
    median,
    photo_folder,
    prepare_cache,
    print_table,
    timer,
)

BLOCK = 64  # files per pool task, the same as daskimg's default block


# --- Pillow baselines (module level so the pool can pickle them) -----------------------


def pil_load(path: str, draft: bool = False) -> np.ndarray:
    """Open, (optionally) draft, convert to RGB and resize to 224x224 with BILINEAR."""
    from PIL import Image

    with Image.open(path) as im:
        if draft:
            im.draft("RGB", (TARGET[1], TARGET[0]))
        rgb = im.convert("RGB").resize((TARGET[1], TARGET[0]), Image.Resampling.BILINEAR)
    return np.asarray(rgb)


def pil_block(args: tuple[list[str], bool]) -> np.ndarray:
    paths, draft = args
    out = np.empty((len(paths), *TARGET, 3), np.uint8)
    for i, p in enumerate(paths):
        out[i] = pil_load(p, draft)
    return out


def pil_pool(paths: list[str], *, draft: bool, workers: int) -> np.ndarray:
    out = np.empty((len(paths), *TARGET, 3), np.uint8)
    blocks = [(paths[i : i + BLOCK], draft) for i in range(0, len(paths), BLOCK)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for i, arr in enumerate(pool.imap(pil_block, blocks)):
            out[i * BLOCK : i * BLOCK + len(arr)] = arr
    return out


def per_file_array(paths: list[str]):
    """The one-task-per-file recipe (what daskimg replaces)."""
    import dask
    import dask.array as da

    load = dask.delayed(pil_load, pure=True)
    return da.stack([da.from_delayed(load(p), shape=(*TARGET, 3), dtype=np.uint8) for p in paths])


# --- (a) graph build ---------------------------------------------------------------------


def bench_graph(n_big: int, n_small: int, reps: int) -> list[list[str]]:
    import daskimg as di

    fake_big = [f"/no/such/dir/class_{i % 1000:03d}/img_{i:07d}.jpg" for i in range(n_big)]
    times = []
    for _ in range(reps):
        with timer() as t:
            x = di.imread(fake_big, size=TARGET)
        times.append(t[0])
    t_di = median(times)
    tasks_di = len(x.__dask_graph__())

    rows = [
        [
            f"daskimg.imread ({n_big:,} paths)",
            f"{n_big:,}",
            f"{tasks_di:,}",
            f"{t_di:.2f}",
            f"{t_di / n_big * 1e6:.2f}",
            f"{t_di * 1_000_000 / n_big:.1f}",
            "1.0",
        ]
    ]
    for n in sorted({max(1, n_small // 4), n_small}):
        fake = fake_big[:n]
        with timer() as t:
            y = per_file_array(fake)
        tasks = len(y.__dask_graph__())
        per_path = t[0] / n
        extrap = per_path * 1_000_000
        rows.append(
            [
                f"per-file delayed + da.stack ({n:,} paths)",
                f"{n:,}",
                f"{tasks:,}",
                f"{t[0]:.2f}",
                f"{per_path * 1e6:.1f}",
                f"{extrap:.0f} (extrapolated)",
                f"{extrap / (t_di * 1_000_000 / n_big):.0f}",
            ]
        )
    return rows


# --- (b) decode rate ---------------------------------------------------------------------


def bench_decode(
    paths: list[str], *, workers: int, cold: bool, reps: int
) -> tuple[list[list[str]], str]:
    import daskimg as di

    n = len(paths)
    limit_name = f"PIL + draft (DCT scaling), Pool({workers}) = limit"
    pil_name = f"PIL, no draft, Pool({workers})"
    methods = {
        f"daskimg imread().compute(), threads ({workers})": lambda: di.imread(
            paths, size=TARGET
        ).compute(num_workers=workers),
        f'daskimg imread().compute(scheduler="processes", {workers})': lambda: di.imread(
            paths, size=TARGET
        ).compute(scheduler="processes", num_workers=workers),
        pil_name: lambda: pil_pool(paths, draft=False, workers=workers),
        limit_name: lambda: pil_pool(paths, draft=True, workers=workers),
        f"per-file delayed + da.stack, threads ({workers})": lambda: per_file_array(paths).compute(
            num_workers=workers
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in methods}
    last: dict[str, np.ndarray] = {}
    pil_load(paths[0])  # import the plugins before timing anything
    # round-robin, so a slow spell of a shared machine hits every method alike
    for rep in range(reps):
        for name, fn in methods.items():
            prepare_cache(paths, cold=cold)
            with timer() as t:
                arr = fn()
            assert arr.shape == (n, *TARGET, 3), arr.shape
            times[name].append(t[0])
            last[name] = arr
            print(
                f"  [{rep + 1}/{reps}] {name}: {n / t[0]:,.0f} images/s",
                file=sys.stderr,
                flush=True,
            )
            del arr

    limit = n / median(times[limit_name])
    ref = last[pil_name]
    rows = []
    for name, ts in times.items():
        rate = n / median(ts)
        diff = np.abs(last[name].astype(np.int16) - ref).mean()
        spread = f"{n / max(ts):,.0f}-{n / min(ts):,.0f}"
        rows.append(
            [
                name,
                f"{median(ts):.2f}",
                f"{rate:,.0f}",
                spread,
                f"{rate / limit:.2f}",
                f"{diff:.2f}",
            ]
        )

    # what draft can do for these files: libjpeg scales by 1/2, 1/4, 1/8 only when the
    # result still covers the target in both directions
    from PIL import Image

    with Image.open(paths[0]) as im:
        full = im.size
        im.draft("RGB", (TARGET[1], TARGET[0]))
        drafted = im.size
    note = (
        f"draft on a {full[0]}x{full[1]} JPEG for {TARGET[1]}x{TARGET[0]}: decodes at "
        f"{drafted[0]}x{drafted[1]}"
        + (
            " (no reduction: 1/2 scale would fall below the target height)"
            if drafted == full
            else ""
        )
    )
    return rows, note


def main() -> None:
    p = base_parser(__doc__)
    p.add_argument(
        "--paths", type=int, default=None, help="fake paths for the graph build (default 1,000,000)"
    )
    p.add_argument(
        "--per-file-paths",
        type=int,
        default=None,
        help="fake paths for the per-file recipe (default 20,000)",
    )
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--reps", type=int, default=None, help="rounds of (b) (default 3, quick 1)")
    p.add_argument(
        "--photo-size",
        type=int,
        nargs=2,
        default=PHOTO_SIZE,
        metavar=("H", "W"),
        help="height and width of the JPEGs (default 375 500)",
    )
    args = p.parse_args()
    n = args.n or (400 if args.quick else 2000)
    n_big = args.paths or (200_000 if args.quick else 1_000_000)
    n_small = args.per_file_paths or (4_000 if args.quick else 20_000)

    folder = photo_folder(n, size=tuple(args.photo_size))
    paths, _ = list_photos(folder)

    print(f"bench_read: {machine()}", flush=True)
    print()
    graph_rows = bench_graph(n_big, n_small, reps=1 if args.quick else 3)
    print_table(
        "(a) building the lazy array (no file opened)",
        ["method", "paths", "tasks", "seconds", "us/path", "s per 1M paths", "x daskimg"],
        graph_rows,
    )
    print()
    reps = args.reps or (1 if args.quick else 3)
    rows, note = bench_decode(paths, workers=args.workers, cold=args.cold, reps=reps)
    h, w = args.photo_size
    print_table(
        f"(b) decode + resize {len(paths)} JPEGs ({w}x{h}) to {TARGET[1]}x{TARGET[0]} RGB, "
        f"{'cold' if args.cold else 'warm'} page cache, median of {reps}",
        ["method", "seconds", "images/s", "range", "x limit", "mean |diff| vs PIL"],
        rows,
    )
    print(f"note: {note}")
    print(
        "note: times include graph building, pool start-up and gathering the result; with "
        'scheduler="processes" dask also runs the final concatenate in a worker, so every '
        "pixel crosses a process boundary twice"
    )


if __name__ == "__main__":
    main()
