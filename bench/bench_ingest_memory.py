"""Ingest memory: peak RSS of decoding a JPEG folder into a store, for two sizes 4x apart.

``daskimg.from_folder(SRC, size=(224, 224))`` + ``daskimg.to_zarr(ds, OUT.zarr.zip)``
(what ``daskimg ingest`` does per split) runs in a fresh subprocess per dataset size,
which reports its own peak RSS (the kernel's ``VmHWM``), its RSS after the imports
(before any work) and the time taken; with the default ``--scheduler auto`` (no dask
scheduler chosen: ``to_zarr`` forks decode workers) also the largest peak RSS of a
worker (shared pages counted in each). The ``daskimg ingest`` command itself (three
splits) is measured the same way. If ingest streams, as it should, the peak does not
grow with the number of images: the ratio of the two peaks stays near 1 (the issue asks
for 10,000 against 40,000 files, the default).

The folders are 8-class JPEG libraries (~500x375) from ``daskimg.testing``; above 4,000
files they repeat files (hard links), which changes nothing for memory.

    python bench/bench_ingest_memory.py            # 10,000 and 40,000 JPEGs, ~6 minutes
    python bench/bench_ingest_memory.py --no-cli   # the same, API only, ~3 minutes
    python bench/bench_ingest_memory.py --quick    # 1,000 and 4,000, API only, ~30 s
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    TARGET,
    MiB,
    base_parser,
    hwm_self,
    machine,
    photo_folder,
    print_table,
    run_json,
)


def worker(mode: str, src: str, out: str, scheduler: str) -> None:
    """Runs in the fresh subprocess: import, note the RSS, ingest, report the peak."""
    import dask
    import psutil

    import daskimg as di
    from daskimg.cli import main as cli

    base = psutil.Process().memory_info().rss
    t = time.perf_counter()
    # "auto": no scheduler chosen, to_zarr's default (decode workers forked for the write)
    with dask.config.set({} if scheduler == "auto" else {"scheduler": scheduler}):
        if mode == "api":
            ds = di.from_folder(src, size=TARGET)
            n = len(ds)
            di.to_zarr(ds, os.path.join(out, "train.zarr.zip"))
        else:
            status = cli(
                ["ingest", src, out, "--size", *map(str, TARGET), "--scheduler", scheduler]
            )
            if status:
                raise SystemExit(status)
            n = sum(1 for _ in Path(src).rglob("*.jpg"))
    secs = time.perf_counter() - t
    size = sum(f.stat().st_size for f in Path(out).glob("*.zarr.zip"))
    from daskimg.store.reader import StoreReader

    shard = StoreReader(os.path.join(out, "train.zarr.zip")).layout("images").shard_len
    print(
        json.dumps(
            {
                "n": n,
                "peak": hwm_self(),
                # the largest peak of a reaped child: a forked decode worker
                "worker_peak": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
                "base": base,
                "seconds": secs,
                "bytes": size,
                "shard": shard,
            }
        ),
        flush=True,
    )


def main() -> None:
    p = base_parser(__doc__)
    p.add_argument("--scheduler", default="auto", choices=("auto", "threads", "processes", "sync"))
    p.add_argument("--no-cli", action="store_true", help="skip the `daskimg ingest` rows")
    p.add_argument("--worker", nargs=4, help=argparse_suppress())
    a = p.parse_args()
    if a.worker:
        worker(*a.worker)
        return
    big = a.n or (4000 if a.quick else 40000)
    if a.quick:
        a.no_cli = True
    sizes = (max(8, big // 4), big)
    folders = {n: photo_folder(n) for n in sizes}

    print(f"bench_ingest_memory: {machine()}; scheduler {a.scheduler}", flush=True)
    rows = []
    shard = 0
    peaks: dict[str, list[int]] = {}
    script = os.fspath(Path(__file__).resolve())
    for mode in ("api", "cli")[: 1 if a.no_cli else 2]:
        for n in sizes:
            out = tempfile.mkdtemp(prefix="daskimg-bench-ingest-")
            try:
                r = run_json(
                    [script, "--worker", mode, os.fspath(folders[n]), out, a.scheduler],
                    timeout=3600,
                )
            finally:
                shutil.rmtree(out, ignore_errors=True)
            peaks.setdefault(mode, []).append(r["peak"])
            shard = max(shard, r["shard"])
            name = (
                "from_folder + to_zarr (.zarr.zip)"
                if mode == "api"
                else "daskimg ingest (train/valid/test)"
            )
            rows.append(
                [
                    name,
                    f"{n:,}",
                    f"{n * TARGET[0] * TARGET[1] * 3 / MiB:,.0f}",
                    f"{r['base'] / MiB:,.0f}",
                    f"{r['peak'] / MiB:,.0f}",
                    f"{(r['peak'] - r['base']) / MiB:,.0f}",
                    f"{r['worker_peak'] / MiB:,.0f}" if r["worker_peak"] else "-",
                    f"{r['seconds']:.1f}",
                    f"{n / r['seconds']:,.0f}",
                ]
            )
            print(f"  {name}, {n}: {r['peak'] / MiB:,.0f} MiB", file=sys.stderr, flush=True)
    print()
    print_table(
        f"ingest peak memory, {TARGET[0]}x{TARGET[1]} RGB, fresh process per run",
        [
            "work",
            "JPEGs",
            "pixels MiB",
            "RSS after imports MiB",
            "peak RSS MiB",
            "peak - imports MiB",
            "peak RSS of a worker MiB",
            "seconds",
            "images/s",
        ],
        rows,
    )
    for mode, (small, large) in peaks.items():
        print(
            f"{'from_folder + to_zarr' if mode == 'api' else 'daskimg ingest'}: peak at "
            f"{sizes[1]:,} / peak at {sizes[0]:,} = {large / small:.2f} "
            f"(flat if ~1; the data grew {sizes[1] / sizes[0]:.0f}x)"
        )
    print(
        f"note: to_zarr writes one shard ({shard} samples, "
        f"{shard * TARGET[0] * TARGET[1] * 3 / MiB:.0f} MiB of pixels) per task, so a set of "
        "fewer than a few shards never fills the pipeline and peaks lower; compare sizes of "
        "several shards (the default compares 10,000 and 40,000)"
    )


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
