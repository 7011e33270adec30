"""Feed: store-order plans (``shuffle=False``), for evaluation and ordered inference.

The store order is cut into batches of ``batch_size``, dealt round-robin: consumer ``k`` of
``n`` takes batches ``k, k + n, ...`` and its worker ``w`` every ``num_workers``-th of those,
from the ``w``-th on — the order in which a DataLoader asks its workers for batches, so a
DataLoader yields exactly the store order (see :func:`daskimg.feed.shuffle.plan_epoch`).
"""

from __future__ import annotations

import itertools

import numpy as np

from .plan import EpochPlan

__all__ = ["ordered_batches", "ordered_plan"]


def ordered_plan(
    bounds: np.ndarray,
    length: int,
    batch: int,
    per_group: int,
    consumer: int,
    num_consumers: int,
    worker: int,
    num_workers: int,
    drop: bool,
    pad: bool,
) -> EpochPlan:
    """``plan_epoch(..., shuffle=False)``: store-order batches dealt round-robin."""
    n_samples = int(bounds[-1])
    total = n_samples // batch if drop else -(-n_samples // batch)
    mine = np.arange(consumer, total, num_consumers, dtype=np.int64)
    if pad and drop and total >= num_consumers:
        mine = mine[: total // num_consumers]  # drop_last: the batches every consumer has
    elif pad and total and mine.size < -(-total // num_consumers):
        # a batch short: a repeat of its last batch (none: of batch `consumer % total`)
        mine = np.append(mine, mine[-1] if mine.size else consumer % total)
    ids = np.arange(worker, mine.size, num_workers, dtype=np.int64)
    if not ids.size:
        return EpochPlan((), (), length)
    firsts = mine[ids] * batch
    sizes = np.minimum(firsts + batch, n_samples) - firsts
    ends = np.cumsum(sizes)
    stream = np.repeat(firsts - (ends - sizes), sizes) + np.arange(ends[-1])
    stream.flags.writeable = False
    chunks = np.unique(stream // length)  # the stream never goes back: this is the load order
    chunks.flags.writeable = False
    groups = tuple(chunks[i : i + per_group] for i in range(0, chunks.size, per_group))
    cuts = np.append(0, ends).tolist()
    batches = tuple(stream[a:b] for a, b in itertools.pairwise(cuts))
    return EpochPlan(groups, batches, length, ids)


def ordered_batches(
    num_samples: int,
    batch_size: int,
    consumer: int,
    num_consumers: int,
    *,
    drop_last: bool,
    even: bool,
) -> int:
    """Batches of a consumer's store-order epoch (``shuffle=False``), shared by its workers."""
    total = num_samples // batch_size if drop_last else -(-num_samples // batch_size)
    mine = len(range(consumer, total, num_consumers))
    if even and drop_last and total >= num_consumers:
        return total // num_consumers  # no repeats: the batches every consumer has
    return -(-total // num_consumers) if even else mine
