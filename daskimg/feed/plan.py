"""Feed: :class:`EpochPlan`, what one worker of a consumer loads and yields in one epoch (pure data).

Plans are made by :func:`daskimg.feed.shuffle.plan_epoch` and executed by
:class:`~daskimg.feed.BatchIterator` and :class:`~daskimg.feed.batches.BatchReader`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .checks import check_positive

__all__ = ["EpochPlan"]


@dataclass(frozen=True, eq=False)
class EpochPlan:
    """What one worker of a consumer does in one epoch: the chunks it loads, the batches it yields.

    Parameters
    ----------
    groups
        int64 chunk ids loaded together, one array per group, in load order.
    batches
        int64 global sample indices, one array per batch, in yield order. Every sample of
        ``batches[i]`` lies in a chunk of group ``group_of_batch()[i]`` or of the group before
        it, so the iterator never needs more than two groups in memory.
    chunk_len
        Samples per chunk of the store (maps a sample ``s`` to its chunk ``s // chunk_len``).
    batch_ids
        Each batch's index in its consumer's epoch (int64; default ``0, 1, ...``): the workers
        of a consumer share its batches, and augmentation draws from this index, so a batch is
        augmented alike whatever the number of workers.

    Examples
    --------
    >>> from daskimg.feed.shuffle import plan_epoch
    >>> plan = plan_epoch(10, 4, batch_size=3, shuffle=False, buffer_chunks=1)
    >>> plan
    EpochPlan(3 groups, 4 batches, 10 samples, chunk_len=4)
    >>> [b.tolist() for b in plan.batches]
    [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    >>> plan.group_of_batch()
    array([0, 1, 2, 2])
    >>> plan_epoch(10, 4, batch_size=3, shuffle=False, worker=1, num_workers=2).batch_ids
    array([1, 3])
    """

    groups: tuple[np.ndarray, ...]
    batches: tuple[np.ndarray, ...]
    chunk_len: int
    batch_ids: np.ndarray = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        check_positive("chunk_len", self.chunk_len)
        object.__setattr__(self, "groups", _int64_arrays("groups", self.groups))
        object.__setattr__(self, "batches", _int64_arrays("batches", self.batches))
        if self.batch_ids is None:
            ids = np.arange(len(self.batches), dtype=np.int64)
        else:
            (ids,) = _int64_arrays("batch_ids", (self.batch_ids,))
            if ids.shape != (len(self.batches),):
                raise ValueError(
                    f"batch_ids must hold one id per batch ({len(self.batches)}); got shape {ids.shape}"
                )
            ids = ids.copy()
        ids.flags.writeable = False
        object.__setattr__(self, "batch_ids", ids)

    @property
    def num_samples(self) -> int:
        """Samples yielded by the plan (with repeats, if any)."""
        return sum(len(b) for b in self.batches)

    def group_of_batch(self) -> np.ndarray:
        """For each batch, the index of the last group it needs (int64, non-decreasing).

        The iterator loads group ``g`` before the first batch with ``group_of_batch() == g``
        and may release every group before ``g - 1`` then. Computed on each call, O(samples).
        """
        if not self.batches:
            return np.empty(0, dtype=np.int64)
        flat = np.concatenate(self.batches) // self.chunk_len
        top = max(int(flat.max()), *(int(g.max()) for g in self.groups if g.size)) + 1
        group_of_chunk = np.full(top, -1, dtype=np.int64)
        for i, chunks in enumerate(self.groups):
            group_of_chunk[chunks] = i
        owner = group_of_chunk[flat]
        if (owner < 0).any():
            chunk = int(flat[np.flatnonzero(owner < 0)[0]])
            raise ValueError(f"a batch uses chunk {chunk}, which is in no group of this plan")
        starts = np.cumsum([0] + [len(b) for b in self.batches[:-1]])
        return np.maximum.reduceat(owner, starts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EpochPlan):
            return NotImplemented
        return (
            self.chunk_len == other.chunk_len
            and len(self.groups) == len(other.groups)
            and len(self.batches) == len(other.batches)
            and np.array_equal(self.batch_ids, other.batch_ids)
            and all(np.array_equal(a, b) for a, b in zip(self.groups, other.groups, strict=True))
            and all(np.array_equal(a, b) for a, b in zip(self.batches, other.batches, strict=True))
        )

    def __repr__(self) -> str:
        return (
            f"EpochPlan({len(self.groups)} groups, {len(self.batches)} batches, "
            f"{self.num_samples} samples, chunk_len={self.chunk_len})"
        )


def _int64_arrays(name: str, arrays: Any) -> tuple[np.ndarray, ...]:
    """``arrays`` as a tuple of 1-D int64 arrays (no copy when they already are)."""
    out = []
    for i, a in enumerate(arrays):
        arr = a if isinstance(a, np.ndarray) else np.asarray(a)
        if arr.dtype != np.int64:
            if arr.size and arr.dtype.kind not in "iu":
                raise ValueError(f"{name}[{i}] must hold integer indices; got dtype {arr.dtype}")
            arr = arr.astype(np.int64)
        if arr.ndim != 1:
            raise ValueError(f"{name}[{i}] must be 1-D; got shape {arr.shape}")
        out.append(arr)
    return tuple(out)
