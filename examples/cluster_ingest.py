"""Ingest on a dask.distributed cluster, then feed from it.

Workers decode and write their own shards straight into the target's staging folder (on
storage every worker can reach — here the local disk); only small results come back to
the client, and the single file is packed at the end. Same seed, same store as a local
ingest.

    python examples/cluster_ingest.py --out cluster-out            # a LocalCluster here
    python examples/cluster_ingest.py --out /shared/out --scheduler tcp://host:8786
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import distributed

import daskimg as di


def main(out: Path, scheduler: str | None, per_class: int) -> None:
    photos = out / "photos"
    if not photos.exists():
        di.testing.make_photo_folder(photos, n_per_class=per_class, seed=0)
    cluster = None
    if scheduler is None:
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True)
    with distributed.Client(scheduler or cluster) as client:
        print(f"dashboard: {client.dashboard_link}")
        ds = di.from_folder(photos, size=(224, 224))
        parts = ds.split({"train": 0.9, "valid": 0.1}, seed=0)
        for name, part in parts.items():
            t = time.perf_counter()
            path = di.to_zarr(
                part, out / f"{name}.zarr.zip", split=name, overwrite=True, progress=True
            )
            print(f"\n{name}: {len(part)} samples in {time.perf_counter() - t:.1f}s -> {path}")
        # feeding from lazy arrays computes their blocks on the workers
        it = di.BatchIterator((parts["valid"].images, parts["valid"].labels), batch_size=32)
        print(f"fed {sum(len(b[0]) for b in it)} validation samples from the cluster")
    if cluster is not None:
        cluster.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("cluster-out"))
    p.add_argument("--scheduler", default=None, help="address of a running dask scheduler")
    p.add_argument("--per-class", type=int, default=40)
    a = p.parse_args()
    main(a.out, a.scheduler, a.per_class)
