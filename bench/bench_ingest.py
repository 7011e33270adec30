"""Ingest: JPEG folder -> single-file store, on the threaded scheduler and on a cluster.

N photos (default 3,000; 8 classes of ~500x375 JPEGs) are decoded, resized to 224x224 and
written to a ``.zarr.zip`` (lz4, shuffled order, seed 0) by ``daskimg.to_zarr``:

* on dask's threaded scheduler (the default, 2 threads);
* on a ``distributed.LocalCluster`` of 2 worker processes x 1 thread (workers decode and
  write their own shards; the client packs the zip at the end);
* on dask's ``processes`` scheduler (2 processes).

Runs alternate (``--reps`` rounds, default 2) and the median images/s is reported, with
the ratio to the threaded scheduler; every store is compared array for array with the
first threaded one (same seed: identical).

    python bench/bench_ingest.py            # ~2 minutes
    python bench/bench_ingest.py --quick    # < 1 minute
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import TARGET, base_parser, machine, median, photo_folder, prepare_cache, print_table


def ingest(folder: Path, out: Path, scheduler: str) -> float:
    """Seconds to ingest ``folder`` into ``out`` on ``scheduler``."""
    import dask

    import daskimg as di

    ds = di.from_folder(folder, size=TARGET)
    if scheduler == "cluster":
        import distributed

        with (
            distributed.LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            distributed.Client(cluster),
        ):
            t = time.perf_counter()
            di.to_zarr(ds, out, overwrite=True)
            return time.perf_counter() - t
    with dask.config.set(scheduler=scheduler):
        t = time.perf_counter()
        di.to_zarr(ds, out, overwrite=True)
        return time.perf_counter() - t


def same_store(a: Path, b: Path) -> bool:
    import daskimg as di

    x, y = di.open_zarr(a), di.open_zarr(b)
    return all(
        np.array_equal(np.asarray(x.arrays[k]), np.asarray(y.arrays[k]))
        if not hasattr(x.arrays[k], "compute")
        else np.array_equal(x.arrays[k].compute(), y.arrays[k].compute())
        for k in x.arrays
    )


def main() -> None:
    p = base_parser(__doc__)
    p.add_argument("--reps", type=int, default=None, help="rounds (default 2, quick 1)")
    a = p.parse_args()
    n = a.n or (600 if a.quick else 3000)
    reps = a.reps or (1 if a.quick else 2)
    folder = photo_folder(n)
    print(f"bench_ingest: {machine()}; {n} JPEGs -> {TARGET[0]}x{TARGET[1]}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="daskimg-bench-ingest-"))
    methods = {
        "threads (2)": "threads",
        "LocalCluster, 2 processes x 1 thread": "cluster",
        "processes scheduler (2)": "processes",
    }
    times: dict[str, list[float]] = {m: [] for m in methods}
    same: dict[str, bool] = {}
    try:
        for rep in range(reps):
            for name, scheduler in methods.items():
                prepare_cache([folder], cold=a.cold)
                out = tmp / f"{scheduler}.zarr.zip"
                times[name].append(ingest(folder, out, scheduler))
                print(f"  round {rep}: {name}: {n / times[name][-1]:,.0f} img/s", flush=True)
                same[name] = same_store(tmp / "threads.zarr.zip", out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = n / median(times["threads (2)"])
    rows = [
        [
            name,
            f"{n / median(t):,.0f}",
            f"{n / median(t) / base:.2f}",
            "yes" if same[name] else "NO",
        ]
        for name, t in times.items()
    ]
    print()
    print_table(
        f"ingest {n} JPEGs to one .zarr.zip (lz4, shuffled), median of {reps} "
        f"({'cold' if a.cold else 'warm'} page cache)",
        ["scheduler", "img/s", "x threads", "store identical to threads"],
        rows,
    )
    if not all(same.values()):
        sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
