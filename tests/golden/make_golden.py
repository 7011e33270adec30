"""Write the golden stores of on-disk format version 1 (run once; the results are committed).

Never regenerate these to make a test pass: they lock the format, so a future daskimg that
cannot open them has broken users' stores. This script only adds stores that are missing.

The first four (lz4/zstd/none .zarr.zip, lz4.zarr) were written by daskimg 0.1.0 before
images moved to one inner chunk per sample; the ``*-samples`` ones have that layout. Both
are format version 1 and must keep opening.

    python tests/golden/make_golden.py
"""

from __future__ import annotations

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
    HERE.mkdir(parents=True, exist_ok=True)
    e = expected()
    ds = di.ImageSet(
        e["images"],
        e["labels"],
        classes=["a", "b", "c"],
        paths=e["paths"],
        columns={"bbox": e["bbox"]},
    )
    stores = {f"{codec}-samples.zarr.zip": codec for codec in ("lz4", "zstd", "none", "jpeg")}
    stores["lz4-samples.zarr"] = "lz4"
    for name, codec in stores.items():
        if not (HERE / name).exists():  # never overwrite a golden store
            di.to_zarr(
                ds,
                HERE / name,
                chunks=3,
                shard_chunks=2,
                codec=codec,
                order="source",
                split="train",
            )
    if not (HERE / "expected.npz").exists():
        np.savez(HERE / "expected.npz", **e)


if __name__ == "__main__":
    main()
