"""Write the golden stores of on-disk format version 1 (run once; the results are committed).

Never regenerate these to make a test pass: they lock the format, so a future daskimg that
cannot open them has broken users' stores.

    python tests/golden/make_golden.py
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

import daskimg as di

HERE = Path(__file__).parent / "v1"


def expected() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2026)
    n = 11
    return {
        "images": rng.integers(0, 256, (n, 5, 4, 3), dtype=np.uint8),
        "labels": np.arange(n, dtype=np.int64) % 3,
        "bbox": rng.random((n, 4), dtype=np.float32),
        "paths": np.array([f"cls{i % 3}/img_{i:02d}.png" for i in range(n)]),
    }


def main() -> None:
    shutil.rmtree(HERE, ignore_errors=True)
    HERE.mkdir(parents=True)
    e = expected()
    ds = di.ImageSet(
        e["images"],
        e["labels"],
        classes=["a", "b", "c"],
        paths=e["paths"],
        columns={"bbox": e["bbox"]},
    )
    for codec in ("lz4", "zstd", "none"):
        di.to_zarr(
            ds,
            HERE / f"{codec}.zarr.zip",
            chunks=3,
            shard_chunks=2,
            codec=codec,
            order="source",
            split="train",
        )
    di.to_zarr(ds, HERE / "lz4.zarr", chunks=3, shard_chunks=2, order="source", split="train")
    np.savez(HERE / "expected.npz", **e)


if __name__ == "__main__":
    main()
