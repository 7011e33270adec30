"""What a DataLoader over TorchDataset must yield, computed from the pure plans (an oracle for the
torch, DDP and Lightning tests)."""

from __future__ import annotations

import numpy as np

from daskimg.feed.shuffle import plan_epoch


def dataloader_batches(
    num_samples: int,
    chunk_len: int,
    epoch: int,
    workers: int = 1,
    rank: int = 0,
    world: int = 1,
    **kw: object,
) -> list[np.ndarray]:
    """The batches (store indices) of one epoch of one rank, in the order a DataLoader yields
    them: it asks worker 0, 1, ... in turn and skips a worker once it has run out."""
    plans = [
        plan_epoch(
            num_samples,
            chunk_len,
            epoch=epoch,
            worker=w,
            num_workers=workers,
            consumer=rank,
            num_consumers=world,
            **kw,  # type: ignore[arg-type]
        )
        for w in range(workers)
    ]
    pending = [list(p.batches) for p in plans]
    out = []
    while any(pending):
        for batches in pending:
            if batches:
                out.append(batches.pop(0))
    return out


def decoded_ids(images: np.ndarray) -> np.ndarray:
    """The original sample ids the test stores' pixels encode (channel 0 + 256 * channel 1)."""
    return images[:, 0, 0, 0].astype(np.int64) + 256 * images[:, 0, 0, 1].astype(np.int64)
