"""Write back: ``ArrayWriter.append`` throughput against bare compress-and-write of the same chunks.

float32 features (default 20,000 x 2048 = 164 MB, ReLU outputs: about half zeros)
appended in batches of 256 rows, then closed, into a ``*.zarr`` folder and a
``*.zarr.zip`` file. The baseline does only what any such store must do for the same
chunks (1024 rows, 8 MiB): numcodecs Blosc-lz4 (clevel 5, byte shuffle — the chain the
writer uses) compress, crc32c append, one file write per chunk, one fsync per file at
the end. Rates are MB of uncompressed features per second; the ratio is writer /
baseline. Methods run round-robin ``--reps`` times and the median is shown, so a slow
spell of a shared machine hits all of them alike. Each run is its own process; "RSS +"
is its peak resident memory above what it held once the features were in memory.

    python bench/bench_writer.py            # ~1 minute
    python bench/bench_writer.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import google_crc32c
import numpy as np
import psutil
from numcodecs import Blosc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    base_parser,
    fmt,
    hwm_self,
    machine,
    median,
    print_table,
    run_json,
    timer,
)

from daskimg.writeback.writer import ArrayWriter

CHUNK = 1024  # rows per chunk: what ArrayWriter picks for 2048 float32 (8 MiB)
BATCH = 256


def bare(x: np.ndarray, out: Path) -> None:
    """Blosc-lz4 + crc32c per chunk, one file each, fsync at the end: the floor of any writer."""
    codec = Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE, blocksize=0)
    out.mkdir()
    files = []
    for i, a in enumerate(range(0, len(x), CHUNK)):
        data = codec.encode(np.ascontiguousarray(x[a : a + CHUNK]))
        path = out / str(i)
        with open(path, "wb") as fh:
            fh.write(data)
            fh.write(google_crc32c.value(data).to_bytes(4, "little"))
        files.append(path)
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


def writer(ext: str) -> Callable[[np.ndarray, Path], None]:
    def run(x: np.ndarray, out: Path) -> None:
        path = out.with_name(out.name + ext)
        with ArrayWriter(path, shape=x.shape[1:], dtype=x.dtype) as w:
            for a in range(0, len(x), BATCH):
                w.append(x[a : a + BATCH])
        assert w.chunk_len == CHUNK, w.chunk_len

    return run


def stored_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


METHODS: dict[str, Callable[[np.ndarray, Path], None]] = {
    "bare blosc-lz4 + crc32c + write": bare,
    "ArrayWriter -> .zarr": writer(".zarr"),
    "ArrayWriter -> .zarr.zip": writer(".zarr.zip"),
}


def features(n: int, dim: int) -> np.ndarray:
    """ReLU outputs, built in place (no temporary copy that would inflate the peak RSS)."""
    x = np.random.default_rng(0).standard_normal((n, dim), dtype=np.float32)
    return np.maximum(x, 0, out=x)


def one(method: str, n: int, dim: int, tmp: Path | None) -> dict[str, float]:
    """Run one method in this process; its time, extra peak memory and bytes stored."""
    x = features(n, dim)
    before = psutil.Process().memory_info().rss
    root = Path(tempfile.mkdtemp(dir=tmp, prefix="daskimg-bench-writer-"))
    try:
        with timer() as t:
            METHODS[method](x, root / "out")
        stored = stored_bytes(root)
    finally:
        shutil.rmtree(root)
    return {"seconds": t[0], "rss_extra": hwm_self() - before, "stored": stored}


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--dim", type=int, default=2048, help="features per sample")
    parser.add_argument("--reps", type=int, default=None, help="rounds (default 3, --quick 1)")
    parser.add_argument("--tmp", type=Path, default=None, help="folder to write into")
    parser.add_argument("--one", choices=list(METHODS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    n = args.n or (4000 if args.quick else 20000)
    if args.one:
        print(json.dumps(one(args.one, n, args.dim, args.tmp)))
        return
    reps = args.reps or (1 if args.quick else 3)
    nbytes = n * args.dim * 4
    print(f"bench_writer: {machine()}", flush=True)
    print(
        f"{n} x {args.dim} float32 = {nbytes / 1e6:.0f} MB, batches of {BATCH}, {reps} round(s)\n"
    )
    results: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS}
    for _ in range(reps):
        for method in METHODS:
            argv = [__file__, "--one", method, "--n", str(n), "--dim", str(args.dim)]
            results[method].append(run_json(argv + (["--tmp", str(args.tmp)] if args.tmp else [])))
    seconds = {m: median([r["seconds"] for r in rs]) for m, rs in results.items()}
    base = seconds["bare blosc-lz4 + crc32c + write"]
    rows = [
        [
            m,
            fmt(nbytes / 1e6 / seconds[m], ".0f"),
            fmt(base / seconds[m], ".2f"),
            fmt(nbytes / rs[-1]["stored"], ".2f"),
            fmt(max(r["rss_extra"] for r in rs) / 2**20, ".0f"),
        ]
        for m, rs in results.items()
    ]
    print_table(
        "append throughput (median)", ["method", "MB/s", "x bare", "compression", "RSS + MiB"], rows
    )


if __name__ == "__main__":
    main()
