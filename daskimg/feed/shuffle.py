"""Chunk-aware shuffle planning: which chunks a consumer loads, and which samples form its batches.

A store holds ``N`` samples in chunks of ``chunk_len`` (chunk ``c`` holds samples
``[c * chunk_len, min((c + 1) * chunk_len, N))``). Reading whole chunks is fast, reading
single samples is slow, so each epoch:

1. the chunks are put in a random order drawn from ``epoch_rng(seed, epoch)``
   (:func:`chunk_order`);
2. consumer ``k`` of ``n`` (a DDP rank) takes every ``n``-th chunk of that order, starting at
   ``k`` (:func:`assign_chunks`), and cuts its samples into batches; the number of batches is
   fixed by the consumer alone (``even=True``: the same for every consumer);
3. ``num_workers`` workers of a consumer (DataLoader workers) share its batches: worker ``w``
   takes a contiguous run of them, reading only the chunks (or parts of chunks) they need;
4. each worker loads its chunks ``buffer_chunks`` at a time (a *group*), mixes the samples of
   each group and cuts the concatenated stream into batches (:func:`plan_epoch`).

Without ``shuffle`` the batches are the store order cut every ``batch_size`` samples, dealt
round-robin: consumer ``k`` takes batches ``k, k + n, ...`` and its worker ``w`` every
``num_workers``-th of those, starting at ``w``, which is the order in which a DataLoader
asks its workers for batches, so a DataLoader hands them out in store order.

A consumer's batch count never depends on ``num_workers`` (the workers' counts add up to it), so
``len()`` of a DataLoader is known without knowing how many workers it has.

Everything here is pure planning (no I/O, no threads): an :class:`EpochPlan` is data that tests
can check and that the iterator in :mod:`daskimg.feed` only executes. :func:`num_batches` gives
the length of a plan without building it.

The plan itself is :mod:`.plan`; the in-group mixing is :mod:`.mixing`, store-order plans
(``shuffle=False``) :mod:`.ordered`, and the argument checks :mod:`.checks`.
"""

from __future__ import annotations

import numpy as np

from .checks import (
    check_consumer,
    check_count,
    check_flag,
    check_int,
    check_positive,
    check_seed,
    check_worker,
)
from .mixing import MIX_STREAM, chunk_samples, mix, take_run
from .ordered import ordered_batches, ordered_plan
from .plan import EpochPlan

__all__ = [
    "EpochPlan",
    "assign_chunks",
    "batch_rng",
    "chunk_bounds",
    "chunk_order",
    "epoch_rng",
    "even_cost",
    "num_batches",
    "plan_epoch",
    "split_consumer",
]


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
    n = check_count("num_samples", num_samples)
    length = check_positive("chunk_len", chunk_len)
    return np.append(np.arange(0, n, length, dtype=np.int64), np.int64(n))


#: what selects the transforms' streams (``"tran"``, ``"sfor"``): numpy pads a short seed
#: with zeros, so ``(seed, epoch, 0, 0)`` for batch 0 was the epoch's chunk order's own stream
TRANSFORM_STREAM = (0x7472616E, 0x73666F72)


def batch_rng(seed: int | None, epoch: int, batch: int, consumer: int) -> np.random.Generator:
    """The generator a transform gets for batch ``batch`` of ``consumer`` in ``epoch``: its own
    stream, independent of the epoch's chunk order and mixing (and of ``to_zarr``'s order)."""
    return epoch_rng(seed, epoch, *TRANSFORM_STREAM, batch, consumer)


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
    s = check_seed(seed)
    if s is None:
        s = int(np.random.SeedSequence().entropy)  # type: ignore[arg-type]
    e = check_count("epoch", epoch)
    words = [check_count(f"extra[{i}]", x) for i, x in enumerate(extra)]
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
    c = check_count("num_chunks", num_chunks)
    if not check_flag("shuffle", shuffle):
        return np.arange(c, dtype=np.int64)
    rng = epoch_rng(seed, epoch)
    if check_flag("keep_last", keep_last) and c > 1:
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
    k, n = check_consumer(consumer, num_consumers)
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
    w = check_positive("world_size", world_size)
    r = check_int("rank", rank, low=0, high=w, allowed=f"an int in [0, world_size={w})")
    m = check_positive("num_workers", num_workers)
    k = check_int("worker", worker, low=0, high=m, allowed=f"an int in [0, num_workers={m})")
    return r * m + k, w * m


# -- how many samples and batches each consumer and worker gets ---------------------------
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


def even_cost(
    num_samples: int, chunk_len: int, num_consumers: int, *, batch_size: int, drop_last: bool
) -> tuple[int, int]:
    """``(repeated, left_out)``: samples an epoch shared chunk by chunk among
    ``num_consumers`` with ``even=True`` (and ``shuffle``) yields twice, and leaves out
    (``drop_last``: every consumer cut to the smallest share's full batches), across the
    consumers. Large when chunks are few per consumer.

    >>> even_cost(2000, 2000, 2, batch_size=64, drop_last=False)  # one chunk: all of it again
    (2000, 0)
    >>> even_cost(2000, 341, 2, batch_size=64, drop_last=False)  # 3 chunks each, one short
    (46, 0)
    """
    n_samples = check_count("num_samples", num_samples)
    length = check_positive("chunk_len", chunk_len)
    _, n = check_consumer(0, num_consumers)
    yielded = sum(
        _consumer_samples(n_samples, length, c, n, True, batch_size, drop_last)[1] for c in range(n)
    )
    return max(0, yielded - n_samples), max(0, n_samples - yielded)


def check_a_batch(num_samples: int, *, batch_size: int, drop_last: bool) -> None:
    """Refuse ``drop_last`` with a ``batch_size`` larger than the set: every epoch would be
    empty, a training loop running on nothing without a word (torch's DataLoader allows it)."""
    if drop_last and batch_size > num_samples:
        raise ValueError(
            f"batch_size={batch_size} with drop_last=True leaves no batch of the "
            f"{num_samples} samples: every epoch would be empty. Pass a smaller batch_size, or "
            "drop_last=False"
        )


def check_fills_a_batch(
    num_samples: int, chunk_len: int, num_consumers: int, *, batch_size: int
) -> None:
    """Refuse ``drop_last`` with ``even`` shares (DDP ranks, shuffled) when no consumer's
    share of whole chunks fills a batch, though the samples do: every consumer's epoch
    would be empty (one process yields a batch). ``batch_size > num_samples`` is
    :func:`check_a_batch`'s."""
    largest = int(_samples_per_consumer(num_samples, chunk_len, num_consumers).max())
    if largest < batch_size <= num_samples:
        raise ValueError(
            f"batch_size={batch_size} with drop_last=True leaves each of the {num_consumers} "
            f"ranks an empty epoch: ranks read whole chunks of {chunk_len} samples, and the "
            f"largest rank's share of the {num_samples} samples is {largest}. Use a "
            f"batch_size of at most {largest}, fewer ranks, a store of smaller chunks "
            "(di.to_zarr(di.open_zarr(old), new, chunks=..., order='source')), or "
            "drop_last=False"
        )


def _consumer_samples(
    num_samples: int,
    chunk_len: int,
    consumer: int,
    num_consumers: int,
    even: bool,
    batch_size: int,
    drop_last: bool,
) -> tuple[int, int]:
    """(samples of the consumer's own chunks, samples it yields).

    ``even``: every consumer yields as many as the largest, repeating some of its own, or
    with ``drop_last`` as many full batches as the smallest fills, repeating none (unless
    the smallest cannot fill one: then as without ``drop_last``, so an epoch is never empty).
    """
    sizes = _samples_per_consumer(num_samples, chunk_len, num_consumers)
    own = int(sizes[consumer])
    if not even:
        total = own
    elif drop_last and int(sizes.min()) >= batch_size:
        total = int(sizes.min())
    else:
        total = int(sizes.max())
    return own, (total - total % batch_size if drop_last else total)


def _consumer_batches(
    num_samples: int,
    chunk_len: int,
    batch_size: int,
    consumer: int,
    num_consumers: int,
    *,
    shuffle: bool,
    drop_last: bool,
    even: bool,
) -> int:
    """Batches of a consumer's epoch, shared by its workers (never depends on their number)."""
    if not shuffle:
        return ordered_batches(
            num_samples, batch_size, consumer, num_consumers, drop_last=drop_last, even=even
        )
    _, usable = _consumer_samples(
        num_samples, chunk_len, consumer, num_consumers, even, batch_size, drop_last
    )
    return -(-usable // batch_size)


def _worker_share(num_batches: int, worker: int, num_workers: int) -> tuple[int, int]:
    """``(first, count)``: worker ``w`` of ``m`` takes ``count`` of ``num_batches`` batches, from
    ``first`` on (shuffled; counts as for round-robin dealing: the first workers get one more)."""
    base, rest = divmod(num_batches, num_workers)
    return worker * base + min(worker, rest), base + (worker < rest)


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
    worker: int = 0,
    num_workers: int = 1,
) -> EpochPlan:
    """Plan one epoch of one worker of one consumer: the chunk groups it loads and its batches.

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
        entropy on every call (nondeterministic) and is refused with more than one consumer
        or worker, since they would disagree on the chunk order.
    epoch
        Non-negative int; each epoch has its own chunk order and mixing.
    shuffle
        True: chunks in the order of :func:`chunk_order` and samples mixed within each group.
        False: store order, no mixing, batches dealt round-robin (see Notes).
    buffer_chunks
        Chunks per group. Raised to ``ceil(batch_size / chunk_len)`` when smaller, so that a
        batch never needs more than two groups.
    drop_last
        Leave out the consumer's last batch when it is shorter than ``batch_size``.
    consumer, num_consumers
        This consumer (a DDP rank) and how many there are.
    even
        Give every consumer the same number of batches (needed by DDP, where unequal batch
        counts hang training); see Notes.
    worker, num_workers
        This worker of the consumer (a DataLoader worker) and how many it has. The workers'
        batches add up to the consumer's, whatever ``num_workers``.

    Returns
    -------
    EpochPlan

    Notes
    -----
    *Chunks.* The order is ``chunk_order(C, seed=seed, epoch=epoch, shuffle=shuffle,
    keep_last=N % chunk_len != 0)``: a short last chunk stays last in the order, so it always
    belongs to consumer ``(C - 1) % n``. Consumer ``k`` takes ``assign_chunks(order,
    consumer=k, num_consumers=n)``; their samples, concatenated in that order, are the
    consumer's *stream*. Hence each consumer's sample count, and :func:`num_batches`, are the
    same in every epoch.

    *Workers.* The consumer's ``B`` batches are shared out as round-robin dealing would count
    them (worker ``w`` gets ``len(range(w, B, num_workers))``), each worker a contiguous run
    of them, i.e. of the stream: it reads only the chunks of its run, so two workers read a
    chunk they share at their border.

    *Groups* are consecutive runs of ``buffer_chunks`` of the worker's chunks (the last run
    may be shorter).

    *Mixing.* Sample ``i`` gets the key ``splitmix64(k_e + (i + 1) * 0x9E3779B97F4A7C15)``, with a
    64-bit ``k_e`` drawn from ``epoch_rng(seed, epoch, 0x6D697869, 0x6E675F6B)``; a group yields its samples
    in increasing key order, which is a random permutation of the group that depends only on
    ``(seed, epoch)`` and which samples the group holds, never on the consumer.

    *Batches* are consecutive slices of ``batch_size`` of the worker's mixed stream.

    *even=True.* Every consumer yields ``M`` samples, the largest own sample count of any
    consumer: ``ceil(C / n) * chunk_len``, less the short chunk's shortfall when its owner is
    the only consumer with ``ceil(C / n)`` chunks. It depends on ``N``, ``chunk_len`` and ``n``
    only, so every consumer computes it alone. A consumer whose chunks hold ``c < M`` samples
    yields them, then ``M - c`` repeats: a worker whose run reaches past ``c`` repeats its last
    group's samples, cyclically in that group's mixed order (data still in memory). A last
    group smaller than its repeats (the short final chunk alone, or the end of the chunk a
    worker's run starts in) is mixed with the group before it, or, for a worker whose run is
    that group alone, loaded whole with the consumer's chunks before it (at most twice a
    group's chunks in all), whose samples serve as repeats only. A worker whose run lies wholly past
    ``c`` repeats the consumer's last ``buffer_chunks`` chunks (one more when the short
    final chunk is among them). A consumer with no chunks (only when ``C < n``) repeats the
    order's first chunk. When those hold fewer samples than the repeats (a store of few
    chunks: 65 samples in chunks of 64 on two consumers leave one a single sample), other
    consumers' chunks, nearest before in the order, are loaded with them for the repeats
    (within the same bound of twice a group's chunks). So, without ``drop_last``:

    - every sample is yielded at least once per epoch, across consumers;
    - a consumer yields at most ``chunk_len`` repeats (``M - c <= chunk_len``), an epoch at
      most ``num_consumers * chunk_len``;
    - within a consumer holding at least a chunk's worth of samples, a sample is yielded at
      most twice with one worker, at most three times with several (its own, a repeat of
      the worker whose run reaches past ``c``, one of a worker wholly past it);
    - a consumer without chunks yields ``M`` distinct samples of the order's first chunk
      (so with ``C < n`` those samples also appear once per such consumer).

    *even=True with drop_last* repeats nothing: every consumer yields ``(m // batch_size) *
    batch_size`` samples, ``m`` being the smallest own sample count of any consumer, so a
    consumer leaves out fewer than ``chunk_len + batch_size`` of its own (as
    ``DistributedSampler(drop_last=True)`` pads none). Only when ``m < batch_size`` (some
    consumer cannot fill one batch) does it pad as above, then drop, so that an epoch is
    never empty.

    *drop_last.* The worker with the consumer's last batch drops the consumer's trailing
    samples from the end of its mixed stream. When that would drop its whole last group
    (the short final chunk, always there, would never be seen), the last group is mixed
    and loaded with the one before it (in practice at most twice a group's chunks), so the
    samples dropped are a new random few of both each epoch.

    *shuffle=False.* The store order cut into batches of ``batch_size`` (``drop_last``: the
    short last one left out): consumer ``k`` takes batches ``k, k + n, ...`` and its worker
    ``w`` every ``num_workers``-th of those, from the ``w``-th on. A DataLoader asks its
    workers for batches in turn (worker 0, 1, ..., 0, 1, ..., skipping those that are done),
    so with one consumer it yields exactly the store order. ``even=True`` gives the
    consumers that are a batch short a repeat of their last batch; with ``drop_last`` (and
    at least one full batch per consumer) it cuts every consumer to the batches all have.

    Examples
    --------
    >>> plan = plan_epoch(1000, 64, batch_size=100, seed=0, epoch=0, num_consumers=2, consumer=1)
    >>> len(plan.batches), plan.num_samples, [len(g) for g in plan.groups]
    (5, 488, [8])
    >>> len(plan.batches) == num_batches(1000, 64, batch_size=100, num_consumers=2, consumer=1)
    True
    >>> plan_epoch(1000, 64, batch_size=100, num_consumers=2, consumer=1, even=True).num_samples
    512
    >>> [len(plan_epoch(1000, 64, batch_size=100, worker=w, num_workers=3).batches) for w in range(3)]
    [4, 3, 3]
    """
    n_samples = check_count("num_samples", num_samples)
    length = check_positive("chunk_len", chunk_len)
    batch = check_positive("batch_size", batch_size)
    per_group = max(check_positive("buffer_chunks", buffer_chunks), -(-batch // length))
    k, n = check_consumer(consumer, num_consumers)
    w, m = check_worker(worker, num_workers)
    s = check_seed(seed)
    e = check_count("epoch", epoch)
    mixed, drop, pad = (
        check_flag("shuffle", shuffle),
        check_flag("drop_last", drop_last),
        check_flag("even", even),
    )
    if s is None:
        if n * m > 1:
            raise ValueError(
                f"seed=None draws a different chunk order in every consumer, so the {n} consumers "
                f"x {m} workers would overlap and miss samples; pass the same int seed to all of "
                "them (e.g. one drawn with np.random.SeedSequence().entropy)"
            )
        s = int(np.random.SeedSequence().entropy)  # type: ignore[arg-type]

    bounds = chunk_bounds(n_samples, length)
    if not mixed:
        return ordered_plan(bounds, length, batch, per_group, k, n, w, m, drop, pad)
    n_batches = _consumer_batches(
        n_samples, length, batch, k, n, shuffle=True, drop_last=drop, even=pad
    )
    first, count = _worker_share(n_batches, w, m)
    if not count:
        return EpochPlan((), (), length)
    own, usable = _consumer_samples(n_samples, length, k, n, pad, batch, drop)
    start, stop = first * batch, min((first + count) * batch, usable)
    # the worker with the consumer's last batch takes its stream's end, the part drop_last drops
    end = own if first + count == n_batches else min(stop, own)

    num_chunks = bounds.size - 1
    has_short = n_samples % length != 0  # the final chunk is short (and kept last)
    order = chunk_order(num_chunks, seed=s, epoch=e, shuffle=True, keep_last=has_short)
    mine = assign_chunks(order, consumer=k, num_consumers=n)
    key = epoch_rng(s, e, *MIX_STREAM).integers(2**64, dtype=np.uint64)
    chunks, samples, starts = take_run(bounds, mine, min(start, own), end, per_group)
    size = stop - start
    # drop_last would leave out the whole last group: the short final chunk, always last in
    # the order, was then never trained on. It is mixed with the group before it instead, so
    # the samples dropped are a new random few of both each epoch
    short_last = has_short and chunks.size > 0 and chunks[-1] == num_chunks - 1
    while drop and short_last and starts.size > 1 and size <= starts[-1]:
        starts = starts[:-1]
    # even: repeats come from the last group; when that is too small for them (the short
    # final chunk alone, or the end of a chunk where this worker's run starts: one sample
    # repeated up to a chunk's worth of times every epoch), it is mixed and repeated with
    # the group before it, or, with none, with the consumer's chunks before this run
    if starts.size > 1 and samples.size - starts[-1] < size - samples.size:
        starts = starts[:-1]
    samples = mix(samples, starts, key)
    if size <= samples.size:
        stream = samples[:size]
    elif samples.size:  # even: repeats of the last group, still in memory
        last = samples[starts[-1] :]
        need = size - samples.size
        if starts.size == 1 and last.size < need and own > samples.size:
            # this worker's whole run (one of several) is too small for its repeats: its
            # chunks, whole, and the consumer's chunks before them are its one group, the
            # samples outside the run for the repeats only
            i0 = int(np.flatnonzero(mine == chunks[0])[0])
            room = max(0, 2 * per_group - chunks.size)  # a group holds at most twice its chunks
            chunks = mine[max(0, i0 - room) : i0 + chunks.size]
            last = mix(chunk_samples(bounds, chunks), starts, key)
        if starts.size == 1 and last.size < need:
            # the consumer's own samples are fewer than its repeats (a store of few chunks:
            # 65 samples in chunks of 64 on 2 ranks left one rank one sample, repeated 64
            # times): other consumers' chunks, nearest before in the order, are loaded
            # with them for the repeats, as a consumer without chunks takes the order's first
            have = set(chunks.tolist())
            others = [c for c in order.tolist() if c not in have]
            room = max(0, 2 * per_group - chunks.size)
            if room and others:
                chunks = np.concatenate([np.asarray(others[-room:], np.int64), chunks])
                last = mix(chunk_samples(bounds, chunks), starts, key)
        stream = np.concatenate([samples, last[np.arange(need) % last.size]])
    else:  # even, a run of repeats only: the consumer's last chunks (none: the order's first)
        take = per_group
        held = int(np.sum(bounds[mine[-take:] + 1] - bounds[mine[-take:]]))
        if own and take < mine.size and held < usable - own:
            # the short final chunk is among them: one more, so none repeats often (decided
            # on the consumer's repeats, so that all its workers draw from one pool)
            take += 1
        chunks = mine[-take:] if own else order[:1]
        if int(np.sum(bounds[chunks + 1] - bounds[chunks])) < usable - own:
            # fewer samples than the consumer's repeats (a store of few chunks): other
            # consumers' chunks, nearest before in the order, serve too (decided on the
            # consumer's counts: all its workers draw from one pool)
            have = set(chunks.tolist())
            others = [c for c in order.tolist() if c not in have]
            room = max(0, 2 * per_group - chunks.size)
            chunks = np.concatenate([np.asarray(others[-room:] if room else [], np.int64), chunks])
        starts = np.zeros(1, dtype=np.int64)
        pool = mix(chunk_samples(bounds, chunks), starts, key)
        stream = pool[(start - own + np.arange(size)) % pool.size]
    stream.flags.writeable = False
    chunks.flags.writeable = False

    # a group none of whose samples survive drop_last is not loaded at all
    used = min(size, samples.size) if samples.size else size
    n_groups = int(np.searchsorted(starts, used, side="left"))
    edges = [*range(0, per_group * starts.size, per_group), chunks.size]  # one per group
    groups = tuple(chunks[edges[i] : edges[i + 1]] for i in range(n_groups))
    batches = tuple(stream[i : i + batch] for i in range(0, size, batch))
    return EpochPlan(groups, batches, length, np.arange(first, first + count, dtype=np.int64))


def num_batches(
    num_samples: int,
    chunk_len: int,
    *,
    batch_size: int,
    drop_last: bool = False,
    consumer: int = 0,
    num_consumers: int = 1,
    even: bool = False,
    worker: int = 0,
    num_workers: int = 1,
    shuffle: bool = True,
) -> int:
    """Batches in the worker's plan, ``len(plan_epoch(...).batches)``, without building it.

    The same for every seed, epoch and ``buffer_chunks``; O(num_consumers). Summed over the
    workers of a consumer, it is the same for every ``num_workers``. ``shuffle`` matters only
    with several consumers (``shuffle=False`` deals batches, not chunks, to them).

    Examples
    --------
    >>> num_batches(1000, 64, batch_size=100)
    10
    >>> num_batches(1000, 64, batch_size=100, drop_last=True)
    10
    >>> num_batches(1000, 64, batch_size=100, num_consumers=2, consumer=1, drop_last=True)
    4
    >>> [num_batches(1000, 64, batch_size=100, worker=w, num_workers=4) for w in range(4)]
    [3, 3, 2, 2]
    """
    n_samples = check_count("num_samples", num_samples)
    length = check_positive("chunk_len", chunk_len)
    batch = check_positive("batch_size", batch_size)
    k, n = check_consumer(consumer, num_consumers)
    w, m = check_worker(worker, num_workers)
    total = _consumer_batches(
        n_samples,
        length,
        batch,
        k,
        n,
        shuffle=check_flag("shuffle", shuffle),
        drop_last=check_flag("drop_last", drop_last),
        even=check_flag("even", even),
    )
    return _worker_share(total, w, m)[1]
