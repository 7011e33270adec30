"""Chunk-aware shuffle planning: which chunks a consumer loads, and which samples form its batches.

A store holds ``N`` samples in chunks of ``chunk_len`` (chunk ``c`` holds samples
``[c * chunk_len, min((c + 1) * chunk_len, N))``). Reading whole chunks is fast, reading
single samples is slow, so each epoch:

1. the chunks are put in a random order drawn from ``epoch_rng(seed, epoch)``
   (:func:`chunk_order`);
2. consumer ``k`` of ``n`` (DataLoader workers x DDP ranks, see :func:`split_consumer`) takes
   every ``n``-th chunk of that order, starting at ``k`` (:func:`assign_chunks`);
3. it loads its chunks ``buffer_chunks`` at a time (a *group*), mixes the samples of each group
   and cuts the concatenated stream into batches (:func:`plan_epoch`).

Everything here is pure planning (no I/O, no threads): an :class:`EpochPlan` is data that tests
can check and that the iterator in :mod:`daskimg.feed` only executes. :func:`num_batches` gives
the length of a plan without building it.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "EpochPlan",
    "assign_chunks",
    "chunk_bounds",
    "chunk_order",
    "epoch_rng",
    "num_batches",
    "plan_epoch",
    "split_consumer",
]

# Extra words for ``epoch_rng`` that select the stream of the in-group mixing key. Large on purpose:
# SeedSequence pads short entropy with zeros, so small tags would collide with other streams of the
# same (seed, epoch), e.g. the iterator's per-batch ``epoch_rng(seed, epoch, batch, consumer)``.
_MIX_STREAM = (0x6D697869, 0x6E675F6B)

# splitmix64 constants (Steele, Lea & Flood 2014)
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)


# -- validation -------------------------------------------------------------------------------
def _int(name: str, value: object, *, low: int, high: int | None = None, allowed: str) -> int:
    """``value`` as a Python int in ``[low, high)``, or a ValueError naming ``name``."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
    if ok:
        v = int(value)  # type: ignore[call-overload]
        if v >= low and (high is None or v < high):
            return v
    raise ValueError(f"{name} must be {allowed}; got {value!r}")


def _count(name: str, value: object) -> int:
    return _int(name, value, low=0, allowed="a non-negative int")


def _positive(name: str, value: object) -> int:
    return _int(name, value, low=1, allowed="a positive int")


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False; got {value!r}")
    return bool(value)


def _consumer(consumer: object, num_consumers: object) -> tuple[int, int]:
    n = _positive("num_consumers", num_consumers)
    k = _int("consumer", consumer, low=0, high=n, allowed=f"an int in [0, num_consumers={n})")
    return k, n


def _seed(seed: object) -> int | None:
    if seed is None:
        return None
    return _int(
        "seed", seed, low=0, allowed="a non-negative int, or None for a nondeterministic order"
    )


# -- public helpers ---------------------------------------------------------------------------
def chunk_bounds(num_samples: int, chunk_len: int) -> np.ndarray:
    """Sample offsets of the chunks: chunk ``c`` holds samples ``[bounds[c], bounds[c + 1])``.

    Parameters
    ----------
    num_samples
        Number of samples ``N`` (>= 0).
    chunk_len
        Samples per chunk (> 0); the last chunk may be shorter.

    Returns
    -------
    numpy.ndarray
        int64 array of length ``ceil(N / chunk_len) + 1``, from 0 to ``N``.

    Examples
    --------
    >>> chunk_bounds(10, 4)
    array([ 0,  4,  8, 10])
    >>> chunk_bounds(0, 4)
    array([0])
    """
    n = _count("num_samples", num_samples)
    length = _positive("chunk_len", chunk_len)
    return np.append(np.arange(0, n, length, dtype=np.int64), np.int64(n))


def epoch_rng(seed: int | None, epoch: int, *extra: int) -> np.random.Generator:
    """The random generator of ``(seed, epoch, *extra)``.

    Built from ``np.random.SeedSequence((seed, epoch, *extra))``, so equal arguments give equal
    streams in every process (the order of an epoch never depends on pid or time).

    Parameters
    ----------
    seed
        Non-negative int, or None for fresh OS entropy: the result is then *not* reproducible
        and differs on every call.
    epoch
        Non-negative int.
    *extra
        Further non-negative ints that select an independent stream (e.g. a batch index).

    Examples
    --------
    >>> a, b = epoch_rng(0, 1).integers(1000, size=3), epoch_rng(0, 1).integers(1000, size=3)
    >>> bool((a == b).all())
    True
    """
    s = _seed(seed)
    if s is None:
        s = int(np.random.SeedSequence().entropy)  # type: ignore[arg-type]
    e = _count("epoch", epoch)
    words = [_count(f"extra[{i}]", x) for i, x in enumerate(extra)]
    return np.random.default_rng(np.random.SeedSequence((s, e, *words)))


def chunk_order(
    num_chunks: int, *, seed: int | None, epoch: int, shuffle: bool, keep_last: bool = False
) -> np.ndarray:
    """The order in which an epoch reads the chunks.

    Parameters
    ----------
    num_chunks
        Number of chunks (>= 0).
    seed, epoch
        With ``shuffle``, the order is a permutation drawn from ``epoch_rng(seed, epoch)``.
    shuffle
        False gives ``0, 1, ..., num_chunks - 1``.
    keep_last
        Leave chunk ``num_chunks - 1`` at the end and permute only the others.
        :func:`plan_epoch` asks for this when the last chunk is shorter than ``chunk_len``: the
        short chunk then always goes to the same consumer and into that consumer's last group,
        so sample and batch counts do not depend on the epoch (:func:`num_batches` needs no
        permutation) and every group but a consumer's last holds exactly
        ``buffer_chunks * chunk_len`` samples. Its samples are still mixed with the other
        chunks of that group.

    Returns
    -------
    numpy.ndarray
        int64 permutation of ``range(num_chunks)``.

    Examples
    --------
    >>> chunk_order(5, seed=0, epoch=0, shuffle=False)
    array([0, 1, 2, 3, 4])
    >>> sorted(chunk_order(5, seed=0, epoch=0, shuffle=True).tolist())
    [0, 1, 2, 3, 4]
    >>> int(chunk_order(5, seed=0, epoch=3, shuffle=True, keep_last=True)[-1])
    4
    """
    c = _count("num_chunks", num_chunks)
    if not _flag("shuffle", shuffle):
        return np.arange(c, dtype=np.int64)
    rng = epoch_rng(seed, epoch)
    if _flag("keep_last", keep_last) and c > 1:
        return np.append(rng.permutation(c - 1).astype(np.int64), np.int64(c - 1))
    return rng.permutation(c).astype(np.int64)


def assign_chunks(order: np.ndarray, *, consumer: int, num_consumers: int) -> np.ndarray:
    """The chunks of consumer ``consumer`` of ``num_consumers``: ``order[consumer::num_consumers]``.

    The consumers' chunk sets are disjoint and together cover ``order``; their sizes differ by
    at most one chunk.

    Examples
    --------
    >>> assign_chunks(np.array([5, 3, 0, 4, 1, 2]), consumer=1, num_consumers=4)
    array([3, 2])
    """
    k, n = _consumer(consumer, num_consumers)
    arr = np.asarray(order)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise ValueError(
            f"order must be a 1-D array of chunk ids; got shape {arr.shape}, dtype {arr.dtype}"
        )
    return arr[k::n].astype(np.int64)  # astype copies: the result never aliases ``order``


def split_consumer(rank: int, world_size: int, worker: int, num_workers: int) -> tuple[int, int]:
    """``(consumer, num_consumers)`` of DataLoader worker ``worker`` on DDP rank ``rank``.

    Returns ``(rank * num_workers + worker, world_size * num_workers)``.

    Examples
    --------
    >>> split_consumer(1, 2, 3, 4)
    (7, 8)
    """
    w = _positive("world_size", world_size)
    r = _int("rank", rank, low=0, high=w, allowed=f"an int in [0, world_size={w})")
    m = _positive("num_workers", num_workers)
    k = _int("worker", worker, low=0, high=m, allowed=f"an int in [0, num_workers={m})")
    return r * m + k, w * m


# -- the plan ---------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class EpochPlan:
    """What one consumer does in one epoch: the chunks it loads and the batches it yields.

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

    Examples
    --------
    >>> plan = plan_epoch(10, 4, batch_size=3, shuffle=False, buffer_chunks=1)
    >>> plan
    EpochPlan(3 groups, 4 batches, 10 samples, chunk_len=4)
    >>> [b.tolist() for b in plan.batches]
    [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    >>> plan.group_of_batch()
    array([0, 1, 2, 2])
    """

    groups: tuple[np.ndarray, ...]
    batches: tuple[np.ndarray, ...]
    chunk_len: int

    def __post_init__(self) -> None:
        _positive("chunk_len", self.chunk_len)
        object.__setattr__(self, "groups", _int64_arrays("groups", self.groups))
        object.__setattr__(self, "batches", _int64_arrays("batches", self.batches))

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


def _samples_per_consumer(num_samples: int, chunk_len: int, num_consumers: int) -> np.ndarray:
    """Samples of each consumer's own chunks (independent of the order; see ``keep_last``)."""
    num_chunks = -(-num_samples // chunk_len)
    k = np.arange(num_consumers)
    chunks = np.maximum(0, -(-(num_chunks - k) // num_consumers))  # len(range(k, C, n))
    sizes = chunks * chunk_len
    if num_chunks:
        # the last chunk, possibly short, sits last in the order: position C - 1
        sizes[(num_chunks - 1) % num_consumers] -= num_chunks * chunk_len - num_samples
    return sizes


def _consumer_samples(
    num_samples: int, chunk_len: int, consumer: int, num_consumers: int, even: bool
) -> tuple[int, int]:
    """(samples of the consumer's own chunks, samples it yields before ``drop_last``)."""
    sizes = _samples_per_consumer(num_samples, chunk_len, num_consumers)
    own = int(sizes[consumer])
    return own, (int(sizes.max()) if even else own)


def _sample_keys(key: np.uint64, samples: np.ndarray) -> np.ndarray:
    """splitmix64 of each global sample index under ``key``: one random 64-bit sort key per sample."""
    z = (samples.astype(np.uint64) + np.uint64(1)) * _GAMMA + key
    z ^= z >> np.uint64(30)
    z *= _MUL1
    z ^= z >> np.uint64(27)
    z *= _MUL2
    z ^= z >> np.uint64(31)
    return z


def _chunk_samples(bounds: np.ndarray, chunks: np.ndarray) -> np.ndarray:
    """The samples of ``chunks`` concatenated in that order (vectorised, no loop per chunk)."""
    starts = bounds[chunks]
    sizes = bounds[chunks + 1] - starts
    ends = np.cumsum(sizes)
    return np.repeat(starts - (ends - sizes), sizes) + np.arange(ends[-1] if ends.size else 0)


def _mix(samples: np.ndarray, group_len: int, key: np.uint64) -> np.ndarray:
    """Each run of ``group_len`` samples (and the shorter rest) sorted by the samples' keys."""
    keys = _sample_keys(key, samples)
    head = samples.size - samples.size % group_len
    rows = samples[:head].reshape(-1, group_len)
    by_key = np.argsort(keys[:head].reshape(-1, group_len), axis=1)
    tail = samples[head:]
    return np.concatenate(
        [np.take_along_axis(rows, by_key, axis=1).ravel(), tail[np.argsort(keys[head:])]]
    )


def plan_epoch(
    num_samples: int,
    chunk_len: int,
    *,
    batch_size: int,
    seed: int | None = 0,
    epoch: int = 0,
    shuffle: bool = True,
    buffer_chunks: int = 8,
    drop_last: bool = False,
    consumer: int = 0,
    num_consumers: int = 1,
    even: bool = False,
) -> EpochPlan:
    """Plan one epoch of one consumer: the chunk groups it loads and the batches it yields.

    Parameters
    ----------
    num_samples
        Samples in the store, ``N`` (0 gives an empty plan).
    chunk_len
        Samples per chunk; the last chunk may be shorter.
    batch_size
        Samples per batch; only a consumer's last batch may be shorter (see ``drop_last``).
    seed
        Non-negative int; the plan is a pure function of the arguments. None draws fresh
        entropy on every call (nondeterministic) and is refused when ``num_consumers > 1``,
        since the consumers would disagree on the chunk order.
    epoch
        Non-negative int; each epoch has its own chunk order and mixing.
    shuffle
        True: chunks in the order of :func:`chunk_order` and samples mixed within each group.
        False: chunks and samples in store order, no mixing.
    buffer_chunks
        Chunks per group. Raised to ``ceil(batch_size / chunk_len)`` when smaller, so that a
        batch never needs more than two groups.
    drop_last
        Leave out the consumer's last batch when it is shorter than ``batch_size``.
    consumer, num_consumers
        This consumer and how many there are (:func:`split_consumer`); consumer ``k`` takes
        ``assign_chunks(order, consumer=k, num_consumers=n)``.
    even
        Give every consumer the same number of samples and batches (needed by DDP, where
        unequal batch counts hang training); see Notes.

    Returns
    -------
    EpochPlan

    Notes
    -----
    *Chunks.* The order is ``chunk_order(C, seed=seed, epoch=epoch, shuffle=shuffle,
    keep_last=N % chunk_len != 0)``: a short last chunk stays last in the order, so it always
    belongs to consumer ``(C - 1) % n`` and lands in that consumer's last group. Hence each
    consumer's sample count, and :func:`num_batches`, are the same in every epoch.

    *Groups* are consecutive runs of ``buffer_chunks`` of the consumer's chunks (the last run
    may be shorter); all groups but the last hold ``buffer_chunks * chunk_len`` samples.

    *Mixing.* Sample ``i`` gets the key ``splitmix64(k_e + (i + 1) * 0x9E3779B97F4A7C15)``, with a
    64-bit ``k_e`` drawn from ``epoch_rng(seed, epoch, 0x6D697869, 0x6E675F6B)``; a group yields its samples
    in increasing key order, which is a random permutation of the group that depends only on
    ``(seed, epoch)`` and which chunks the group holds, never on the consumer.

    *Batches* are consecutive slices of ``batch_size`` of the consumer's stream, the
    concatenation of its mixed groups.

    *even=True.* Every consumer yields ``M`` samples, the largest own sample count of any
    consumer: ``ceil(C / n) * chunk_len``, less the short chunk's shortfall when its owner is
    the only consumer with ``ceil(C / n)`` chunks. It depends on ``N``, ``chunk_len`` and ``n``
    only, so every consumer computes it alone. A consumer whose chunks hold ``c < M`` samples
    yields them, then ``M - c`` repeats of its last group's samples, cyclically in that
    group's mixed order (data still in memory). A consumer with no chunks (only when
    ``C < n``) gets one group holding the order's first chunk and yields ``M`` of its
    samples. So, without ``drop_last``:

    - every sample is yielded at least once per epoch, across consumers;
    - a consumer yields at most ``chunk_len`` repeats (``M - c <= chunk_len``), an epoch at
      most ``num_consumers * chunk_len``;
    - within a consumer with chunks of its own, a sample is yielded at most
      ``1 + ceil((M - c) / g)`` times, ``g`` being the size of its last group: at most twice,
      unless that group is only the short final chunk;
    - a consumer without chunks yields ``M`` distinct samples of the order's first chunk
      (so with ``C < n`` those samples also appear once per such consumer).

    With ``drop_last`` each consumer then drops the same number (fewer than ``batch_size``)
    of its trailing samples.

    Examples
    --------
    >>> plan = plan_epoch(1000, 64, batch_size=100, seed=0, epoch=0, num_consumers=2, consumer=1)
    >>> len(plan.batches), plan.num_samples, [len(g) for g in plan.groups]
    (5, 488, [8])
    >>> len(plan.batches) == num_batches(1000, 64, batch_size=100, num_consumers=2, consumer=1)
    True
    >>> plan_epoch(1000, 64, batch_size=100, num_consumers=2, consumer=1, even=True).num_samples
    512
    """
    n_samples = _count("num_samples", num_samples)
    length = _positive("chunk_len", chunk_len)
    batch = _positive("batch_size", batch_size)
    per_group = max(_positive("buffer_chunks", buffer_chunks), -(-batch // length))
    k, n = _consumer(consumer, num_consumers)
    s = _seed(seed)
    e = _count("epoch", epoch)
    mixed, drop, pad = _flag("shuffle", shuffle), _flag("drop_last", drop_last), _flag("even", even)
    if s is None:
        if n > 1:
            raise ValueError(
                f"seed=None draws a different chunk order in every consumer, so the {n} consumers "
                "would overlap and miss samples; pass the same int seed to all of them "
                "(e.g. one drawn with np.random.SeedSequence().entropy)"
            )
        s = int(np.random.SeedSequence().entropy)  # type: ignore[arg-type]

    bounds = chunk_bounds(n_samples, length)
    num_chunks = bounds.size - 1
    order = chunk_order(
        num_chunks, seed=s, epoch=e, shuffle=mixed, keep_last=n_samples % length != 0
    )
    mine = assign_chunks(order, consumer=k, num_consumers=n)
    own, total = _consumer_samples(n_samples, length, k, n, pad)
    if pad and mine.size == 0 and num_chunks:
        mine = order[:1].copy()  # nothing of its own: pad from the order's first chunk

    samples = _chunk_samples(bounds, mine)
    if mixed and samples.size:
        key = epoch_rng(s, e, *_MIX_STREAM).integers(2**64, dtype=np.uint64)
        samples = _mix(samples, per_group * length, key)
    # where each group starts in ``samples``: all groups before the last are full
    group_starts = np.minimum(np.arange(0, mine.size, per_group) * length, samples.size)
    stream = samples[:own]
    if total > own:
        last = samples[group_starts[-1] :]
        stream = np.concatenate([stream, last[np.arange(total - own) % last.size]])
    usable = total - total % batch if drop else total
    stream = stream[:usable]
    stream.flags.writeable = False
    mine.flags.writeable = False

    # a group none of whose samples survive drop_last is not loaded at all
    n_groups = int(np.searchsorted(group_starts, usable, side="left"))
    groups = tuple(mine[i : i + per_group] for i in range(0, n_groups * per_group, per_group))
    batches = tuple(stream[i : i + batch] for i in range(0, usable, batch))
    return EpochPlan(groups, batches, length)


def num_batches(
    num_samples: int,
    chunk_len: int,
    *,
    batch_size: int,
    drop_last: bool = False,
    consumer: int = 0,
    num_consumers: int = 1,
    even: bool = False,
) -> int:
    """Batches in the consumer's plan, ``len(plan_epoch(...).batches)``, without building it.

    The same for every seed, epoch, ``shuffle`` and ``buffer_chunks``; O(num_consumers).

    Examples
    --------
    >>> num_batches(1000, 64, batch_size=100)
    10
    >>> num_batches(1000, 64, batch_size=100, drop_last=True)
    10
    >>> num_batches(1000, 64, batch_size=100, num_consumers=2, consumer=1, drop_last=True)
    4
    """
    n_samples = _count("num_samples", num_samples)
    length = _positive("chunk_len", chunk_len)
    batch = _positive("batch_size", batch_size)
    k, n = _consumer(consumer, num_consumers)
    _, total = _consumer_samples(n_samples, length, k, n, _flag("even", even))
    return total // batch if _flag("drop_last", drop_last) else -(-total // batch)
