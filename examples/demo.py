"""The README's demo: sample library -> ingest -> info -> verify -> an epoch of batches.

Builds a small photo library from the pictures bundled with scikit-image (nothing is
downloaded), ingests it into one Zarr file per split, prints what is inside, checks
every chunk, and iterates a shuffled epoch, printing the throughput it measured.

    python examples/demo.py --out demo-out
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

import daskimg as di
from daskimg.cli import main as cli


def run(out: Path, *, per_class: int) -> None:
    src = out / "photos"
    if out.exists():
        shutil.rmtree(out)
    t = time.perf_counter()
    files = di.testing.make_photo_folder(src, n_per_class=per_class, seed=0)
    print(
        f"made a sample library of {len(files)} JPEGs in {src} ({time.perf_counter() - t:.1f}s)\n"
    )

    stores = out / "stores"
    status = cli(
        ["ingest", str(src), str(stores), "--size", "224", "224", "--valid", "0.1", "--test", "0.1"]
    )
    if status:
        raise SystemExit(status)
    train = stores / "train.zarr.zip"
    print()
    cli(["info", str(train)])
    print()
    if cli(["verify", str(train)]):
        raise SystemExit("verify found damage")
    try:
        if cli(["show", str(train), "-o", str(out / "grid.png"), "--n", "16"]) == 0:
            print(f"look at {out / 'grid.png'} to check orientation, colours and labels")
    except ImportError as e:
        print(f"(no grid picture: {e})")

    it = di.BatchIterator(train, batch_size=64, seed=0)
    classes = di.open_zarr(train).classes
    for epoch in range(2):
        t = time.perf_counter()
        n, mixed = 0, []
        for images, labels in it:
            n += len(images)
            mixed.append(len(np.unique(labels)))
        dt = time.perf_counter() - t
        print(
            f"epoch {epoch}: {n} samples in {len(mixed)} batches, {n / dt:,.0f} samples/s, "
            f"{np.mean(mixed):.2f} distinct classes per batch (of {len(classes)})"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-out"))
    parser.add_argument("--per-class", type=int, default=60, help="JPEGs per class")
    args = parser.parse_args()
    run(args.out, per_class=args.per_class)
