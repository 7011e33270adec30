"""Properties of the chunk-aware shuffle plan (daskimg.feed.shuffle): pure data, checked with hypothesis.

A plan belongs to one worker (a DataLoader worker) of one consumer (a DDP rank); the properties
are checked over every combination of consumers x workers x ``even`` x ``drop_last`` x ``shuffle``.
"""

from __future__ import annotations

import collections
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daskimg.feed.shuffle import (
    EpochPlan,
    assign_chunks,
    batch_rng,
    check_fills_a_batch,
    chunk_bounds,
    chunk_order,
    epoch_rng,
    even_cost,
    num_batches,
    plan_epoch,
    split_consumer,
)

PROPERTY = settings(max_examples=200, deadline=None)

layouts = st.fixed_dictionaries(
    {
        "num_samples": st.integers(0, 3000),
        "chunk_len": st.integers(1, 200),
        "batch_size": st.integers(1, 300),
        "buffer_chunks": st.integers(1, 10),
        "num_consumers": st.integers(1, 8),
        "num_workers": st.integers(1, 5),
        "seed": st.integers(0, 2**32),
        "epoch": st.integers(0, 5),
        "shuffle": st.booleans(),
    }
)
flags = st.fixed_dictionaries({"drop_last": st.booleans(), "even": st.booleans()})


def consumer_plans(layout: dict, **kw: object) -> list[list[EpochPlan]]:
    """The plans of every worker of every consumer of ``layout``: ``[consumer][worker]``."""
    p = dict(layout)
    n, length, m = p.pop("num_samples"), p.pop("chunk_len"), p.pop("num_workers")
    return [
        [plan_epoch(n, length, consumer=k, worker=w, num_workers=m, **p, **kw) for w in range(m)]
        for k in range(p["num_consumers"])
    ]


def plans(layout: dict, **kw: object) -> list[EpochPlan]:
    """The plans of every consumer of ``layout`` with one worker each."""
    return [c[0] for c in consumer_plans({**layout, "num_workers": 1}, **kw)]


def stream(plan: EpochPlan) -> np.ndarray:
    return np.concatenate(plan.batches) if plan.batches else np.empty(0, dtype=np.int64)


def streams(worker_plans: list[EpochPlan]) -> np.ndarray:
    """A consumer's samples, its workers' streams one after the other."""
    return np.concatenate([stream(p) for p in worker_plans])


def dataloader_order(worker_plans: list[EpochPlan]) -> list[int]:
    """The consumer batch ids in the order a DataLoader yields them: it asks worker 0, 1, ...,
    0, 1, ... in turn for the next batch, and skips a worker once it has run out."""
    pending = [list(p.batch_ids) for p in worker_plans]
    out: list[int] = []
    while any(pending):
        for ids in pending:
            if ids:
                out.append(int(ids.pop(0)))
    return out


def own_counts(layout: dict) -> list[int]:
    """Samples of each consumer's own chunks (the plans without drop_last or even)."""
    return [p.num_samples for p in plans(layout)]


def group_chunks(layout: dict) -> int:
    """Chunks per group: buffer_chunks, raised so that a group holds at least one batch."""
    return max(layout["buffer_chunks"], -(-layout["batch_size"] // layout["chunk_len"]))


def epoch_chunk_order(layout: dict) -> np.ndarray:
    n, length = layout["num_samples"], layout["chunk_len"]
    return chunk_order(
        len(chunk_bounds(n, length)) - 1,
        seed=layout["seed"],
        epoch=layout["epoch"],
        shuffle=layout["shuffle"],
        keep_last=n % length != 0,
    )


def n_batches(layout: dict, consumer: int, worker: int = 0, num_workers: int = 1, **kw) -> int:
    return num_batches(
        layout["num_samples"],
        layout["chunk_len"],
        batch_size=layout["batch_size"],
        consumer=consumer,
        num_consumers=layout["num_consumers"],
        worker=worker,
        num_workers=num_workers,
        shuffle=layout["shuffle"],
        **kw,
    )


# -- coverage -------------------------------------------------------------------------------------
@PROPERTY
@given(layouts)
def test_every_sample_exactly_once_across_consumers_and_workers(layout: dict) -> None:
    every = np.concatenate([streams(c) for c in consumer_plans(layout)])
    np.testing.assert_array_equal(np.sort(every), np.arange(layout["num_samples"]))


@PROPERTY
@given(layouts)
def test_a_consumers_samples_do_not_depend_on_its_workers(layout: dict) -> None:
    alone = plans(layout)
    for k, workers in enumerate(consumer_plans(layout)):
        np.testing.assert_array_equal(np.sort(streams(workers)), np.sort(stream(alone[k])))


@PROPERTY
@given(layouts.filter(lambda lay: lay["shuffle"]))
def test_consumers_load_disjoint_chunks_covering_the_store(layout: dict) -> None:
    order = epoch_chunk_order(layout)
    loaded = []
    for k, workers in enumerate(consumer_plans(layout)):
        expected = assign_chunks(order, consumer=k, num_consumers=layout["num_consumers"])
        mine = [np.concatenate(p.groups) for p in workers if p.groups]
        got = np.concatenate(mine) if mine else np.empty(0, dtype=np.int64)
        # each worker reads a contiguous run of the consumer's chunks: a chunk at the border of
        # two runs is read by both, so the reads exceed the chunks by at most num_workers - 1
        np.testing.assert_array_equal(np.unique(got), np.unique(expected))
        assert len(got) <= len(expected) + len(workers) - 1
        if len(workers) == 1:
            np.testing.assert_array_equal(got, expected)
        loaded.append(expected)
    np.testing.assert_array_equal(np.sort(np.concatenate(loaded)), np.arange(len(order)))


@PROPERTY
@given(layouts)
def test_drop_last_drops_less_than_a_batch_per_consumer(layout: dict) -> None:
    for workers, own in zip(
        consumer_plans(layout, drop_last=True), own_counts(layout), strict=True
    ):
        every = streams(workers)
        assert len(np.unique(every)) == len(every)
        assert len(every) % layout["batch_size"] == 0
        assert all(len(b) == layout["batch_size"] for p in workers for b in p.batches)
        if layout["shuffle"] or layout["num_consumers"] == 1:
            assert 0 <= own - len(every) < layout["batch_size"]
    every = np.concatenate([streams(c) for c in consumer_plans(layout, drop_last=True)])
    if not layout["shuffle"]:  # only the store's short last batch is left out
        n, b = layout["num_samples"], layout["batch_size"]
        np.testing.assert_array_equal(np.sort(every), np.arange(n - n % b))


@PROPERTY
@given(layouts, st.booleans())
def test_even_gives_every_consumer_the_same_number_of_batches(
    layout: dict, drop_last: bool
) -> None:
    even = consumer_plans(layout, even=True, drop_last=drop_last)
    assert len({sum(len(p.batches) for p in workers) for workers in even}) == 1
    if layout["shuffle"]:
        assert len({sum(p.num_samples for p in workers) for workers in even}) == 1
        if not drop_last:
            assert sum(p.num_samples for p in even[0]) == max(own_counts(layout))
    every = np.concatenate([streams(c) for c in even])
    if not drop_last:
        np.testing.assert_array_equal(np.unique(every), np.arange(layout["num_samples"]))


@PROPERTY
@given(layouts)
def test_even_with_drop_last_repeats_nothing(layout: dict) -> None:
    # DDP with drop_last: every rank yields the full batches the smallest rank can fill,
    # so nothing is repeated (it padded to the largest, then dropped: samples came twice)
    own, b = own_counts(layout), layout["batch_size"]
    even = consumer_plans(layout, even=True, drop_last=True)
    every = np.concatenate([streams(c) for c in even])
    n = layout["num_consumers"]
    if layout["shuffle"] and min(own) >= b:
        assert len(np.unique(every)) == len(every) == n * (min(own) - min(own) % b)
        for workers, mine in zip(even, own, strict=True):
            assert 0 <= mine - len(streams(workers)) < layout["chunk_len"] + b
    full = layout["num_samples"] // b
    if not layout["shuffle"] and full >= n:
        # store order: the full batches dealt round-robin, cut to those every rank has
        np.testing.assert_array_equal(np.sort(every), np.arange(full // n * n * b))


@PROPERTY
@given(layouts)
def test_even_with_drop_last_is_never_silently_empty(layout: dict) -> None:
    # 70 samples in chunks of 16 on 2 ranks, batch 40: both ranks' epochs were empty (the
    # largest share, 38, fills no batch), where one process yields a batch. Refused now;
    # whatever passes the check yields at least a batch on every rank
    n, b, k = layout["num_samples"], layout["batch_size"], layout["num_consumers"]
    shuffled = {**layout, "shuffle": True}
    shares = [len(streams(c)) for c in consumer_plans(shuffled, even=False)]
    if max(shares) < b <= n:
        with pytest.raises(ValueError, match=f"batch_size={b} .*empty epoch"):
            check_fills_a_batch(n, layout["chunk_len"], k, batch_size=b)
        return
    check_fills_a_batch(n, layout["chunk_len"], k, batch_size=b)
    kw = {"batch_size": b, "num_consumers": k, "even": True, "drop_last": True, "shuffle": True}
    counts = [num_batches(n, layout["chunk_len"], consumer=c, **kw) for c in range(k)]
    if n >= b:
        assert min(counts) >= 1
    else:  # as in one process
        assert max(counts) == 0


@PROPERTY
@given(layouts)
def test_even_repeats_are_few(layout: dict) -> None:
    own = own_counts(layout)
    for workers, plain in zip(consumer_plans(layout, even=True), plans(layout), strict=True):
        s = streams(workers)
        mine = stream(plain)
        # the consumer's own samples once each, then at most one chunk's worth of repeats
        if len(mine):
            assert Counter(s.tolist()) >= Counter(mine.tolist())
        extra = len(s) - len(mine)
        if layout["shuffle"]:
            assert 0 <= extra <= layout["chunk_len"] and len(s) == max(own)
        else:
            assert 0 <= extra <= layout["batch_size"]


@PROPERTY
@given(layouts.filter(lambda lay: lay["shuffle"]))
def test_even_repeats_with_one_worker_are_bounded_as_documented(layout: dict) -> None:
    length = layout["chunk_len"]
    even = plans(layout, even=True)
    every = np.concatenate([stream(p) for p in even])
    np.testing.assert_array_equal(np.unique(every), np.arange(layout["num_samples"]))
    first_chunk = epoch_chunk_order(layout)[:1]
    for p, own in zip(even, own_counts(layout), strict=True):
        s = stream(p)
        if own == 0 and p.groups:
            # no chunks of its own: distinct samples of the order's first chunk
            np.testing.assert_array_equal(p.groups[0], first_chunk)
            assert len(np.unique(s)) == len(s) <= length
            assert set((s // length).tolist()) == set(first_chunk.tolist())
            continue
        assert len(np.unique(s[:own])) == own  # its own samples once, then the repeats
        pad = s[own:]
        assert len(pad) <= length
        if len(pad):
            last = p.groups[-1]
            assert np.isin(pad // length, last).all()
            group_size = np.isin(s[:own] // length, last).sum()
            most = max(Counter(s.tolist()).values())
            assert most <= 1 + -(-len(pad) // group_size)
            if own >= length:
                # the last group holds a full chunk (one that is only the short final chunk
                # is mixed with the group before it): no sample comes more than twice
                assert most <= 2


@PROPERTY
@given(layouts.filter(lambda lay: lay["shuffle"]))
def test_even_repeats_with_workers_are_bounded_as_documented(layout: dict) -> None:
    for workers, own in zip(consumer_plans(layout, even=True), own_counts(layout), strict=True):
        s = streams(workers)
        if own >= layout["chunk_len"] and len(s):
            assert max(Counter(s.tolist()).values()) <= (2 if len(workers) == 1 else 3)


def test_even_never_repeats_a_short_final_chunk_a_chunks_worth_of_times() -> None:
    # 49 samples in chunks of 16 on 2 ranks, one chunk per group: rank 1 holds a full chunk
    # and the 1-sample final chunk, 17 samples, and pads to 32. Its last group was that one
    # sample alone, yielded 16 times every epoch; it is now mixed with the group before it
    for epoch in range(4):
        for workers in (1, 2):
            got = np.concatenate(
                [
                    stream(
                        plan_epoch(49, 16, batch_size=8, buffer_chunks=1, epoch=epoch, even=True,
                                   consumer=1, num_consumers=2, worker=w, num_workers=workers)
                    )
                    for w in range(workers)
                ]
            )  # fmt: skip
            assert len(got) == 32 and 48 in got
            assert max(Counter(got.tolist()).values()) <= 2


# -- batches and groups ---------------------------------------------------------------------------
@PROPERTY
@given(layouts, flags)
def test_only_a_consumers_last_batch_may_be_short(layout: dict, flags: dict) -> None:
    size, n = layout["batch_size"], layout["num_samples"]
    for k, workers in enumerate(consumer_plans(layout, **flags)):
        last = n_batches(layout, k, **flags) - 1
        for p in workers:
            for i, b in zip(p.batch_ids.tolist(), p.batches, strict=True):
                assert 0 < len(b) <= size
                if len(b) < size:
                    assert not flags["drop_last"]
                    # shuffled: the consumer's last batch; in store order: the store's last batch
                    assert i == last if layout["shuffle"] else b[-1] == n - 1


@PROPERTY
@given(layouts, flags)
def test_a_batch_needs_only_its_group_and_the_one_before(layout: dict, flags: dict) -> None:
    length, per_group = layout["chunk_len"], group_chunks(layout)
    for workers in consumer_plans(layout, **flags):
        for p in workers:
            sizes = [len(g) for g in p.groups]
            assert all(s == per_group for s in sizes[:-1])
            # drop_last mixes a last group it would drop whole, holding the short final
            # chunk, into the one before; so does even a last group too small for its repeats
            short = (flags["drop_last"] or flags["even"]) and layout["num_samples"] % length
            assert all(0 < s <= (2 * per_group if short else per_group) for s in sizes[-1:])
            last = p.group_of_batch()
            assert last.dtype == np.int64
            assert len(last) == len(p.batches)
            assert (np.diff(last) >= 0).all()
            for b, g in zip(p.batches, last, strict=True):
                chunks = b // length
                assert np.isin(chunks, p.groups[g]).any()  # it is the last group the batch needs
                allowed = p.groups[g] if g == 0 else np.concatenate(p.groups[g - 1 : g + 1])
                assert np.isin(chunks, allowed).all()
            # a chunk is loaded once; no group is loaded in vain (drop_last may leave out a
            # group whose samples are all dropped)
            loaded = np.concatenate(p.groups) if p.groups else np.empty(0, dtype=np.int64)
            assert len(np.unique(loaded)) == len(loaded)
            used = np.unique(stream(p) // length)
            assert all(np.isin(g, used).any() for g in p.groups)


@PROPERTY
@given(layouts, flags)
def test_num_batches_matches_the_plan_and_not_the_workers(layout: dict, flags: dict) -> None:
    m = layout["num_workers"]
    for k, workers in enumerate(consumer_plans(layout, **flags)):
        counts = [n_batches(layout, k, w, m, **flags) for w in range(m)]
        assert counts == [len(p.batches) for p in workers]
        # workers share the consumer's batches: its total never depends on how many there are
        assert sum(counts) == n_batches(layout, k, **flags)
        ids = np.sort(np.concatenate([p.batch_ids for p in workers]))
        np.testing.assert_array_equal(ids, np.arange(sum(counts)))


@PROPERTY
@given(layouts, flags)
def test_a_dataloader_yields_a_consumers_batches_in_order(layout: dict, flags: dict) -> None:
    # dealt as a DataLoader asks (worker 0, 1, ..., skipping those that are done): batch ids
    # come in order, so in ascending store order without shuffle
    for workers in consumer_plans(layout, **flags):
        order = dataloader_order(workers)
        if not layout["shuffle"] or layout["num_workers"] == 1:
            assert order == sorted(order)
        if not layout["shuffle"]:
            by_id = {
                int(i): b for p in workers for i, b in zip(p.batch_ids, p.batches, strict=True)
            }
            s = np.concatenate([by_id[i] for i in order]) if order else np.empty(0, int)
            assert (np.diff(s) > 0).all() or flags["even"]  # ascending store order


# -- randomness -----------------------------------------------------------------------------------
@PROPERTY
@given(layouts, flags)
def test_plans_are_deterministic(layout: dict, flags: dict) -> None:
    assert consumer_plans(layout, **flags) == consumer_plans(layout, **flags)


@PROPERTY
@given(layouts.filter(lambda lay: lay["num_samples"] >= 4))
def test_the_epoch_changes_the_order(layout: dict) -> None:
    # the least random layout with N >= 4 (two chunks of two, a group each) repeats with p = 1/8
    layout = {**layout, "shuffle": True, "num_consumers": 1}
    orders = {tuple(stream(plans({**layout, "epoch": e})[0]).tolist()) for e in range(20)}
    assert len(orders) > 1


@PROPERTY
@given(layouts, st.booleans())
def test_without_shuffle_one_consumer_reads_in_store_order(layout: dict, even: bool) -> None:
    layout = {**layout, "shuffle": False, "num_consumers": 1}
    (p,) = plans(layout, even=even)
    np.testing.assert_array_equal(stream(p), np.arange(layout["num_samples"]))
    (workers,) = consumer_plans(layout, even=even)
    by_id = {int(i): b for p in workers for i, b in zip(p.batch_ids, p.batches, strict=True)}
    order = dataloader_order(workers)
    got = np.concatenate([by_id[i] for i in order]) if order else np.empty(0, int)
    np.testing.assert_array_equal(got, np.arange(layout["num_samples"]))


def test_workers_deal_store_order_batches_round_robin() -> None:
    # 10 samples, batches of 2, 2 consumers x 2 workers: consumer 1 takes batches 1 and 3 of
    # the store, worker 0 the first of them, worker 1 the second
    got = {
        (k, w): [
            b.tolist()
            for b in plan_epoch(
                10,
                4,
                batch_size=2,
                shuffle=False,
                consumer=k,
                num_consumers=2,
                worker=w,
                num_workers=2,
            ).batches
        ]
        for k in range(2)
        for w in range(2)
    }
    assert got == {
        (0, 0): [[0, 1], [8, 9]],
        (0, 1): [[4, 5]],
        (1, 0): [[2, 3]],
        (1, 1): [[6, 7]],
    }


def test_chunk_order_depends_on_seed_and_epoch() -> None:
    a = chunk_order(100, seed=0, epoch=0, shuffle=True)
    np.testing.assert_array_equal(np.sort(a), np.arange(100))
    np.testing.assert_array_equal(a, chunk_order(100, seed=0, epoch=0, shuffle=True))
    assert not np.array_equal(a, chunk_order(100, seed=0, epoch=1, shuffle=True))
    assert not np.array_equal(a, chunk_order(100, seed=1, epoch=0, shuffle=True))
    assert chunk_order(100, seed=0, epoch=5, shuffle=True, keep_last=True)[-1] == 99


def test_mixing_depends_only_on_the_group_not_the_consumer() -> None:
    # with one chunk per group and per batch, a batch is one mixed chunk, whoever reads it
    alone = plan_epoch(640, 64, batch_size=64, buffer_chunks=1, seed=3, epoch=2)
    by_chunk = {int(b[0] // 64): b for b in alone.batches}
    for k in range(3):
        p = plan_epoch(
            640, 64, batch_size=64, buffer_chunks=1, seed=3, epoch=2, consumer=k, num_consumers=3
        )
        for b in p.batches:
            np.testing.assert_array_equal(b, by_chunk[int(b[0] // 64)])
    assert any(not np.array_equal(b, np.sort(b)) for b in alone.batches)


def test_seed_none_is_nondeterministic_and_single_consumer_only() -> None:
    a, b = (stream(plan_epoch(5000, 10, batch_size=7, seed=None)) for _ in range(2))
    np.testing.assert_array_equal(np.sort(a), np.arange(5000))
    assert not np.array_equal(a, b)
    with pytest.raises(ValueError, match=r"seed=None .* 2 consumers"):
        plan_epoch(5000, 10, batch_size=7, seed=None, num_consumers=2)


def test_epoch_rng() -> None:
    draw = lambda *a: epoch_rng(*a).integers(2**63, size=4).tolist()  # noqa: E731
    assert draw(0, 1) == draw(0, 1)
    assert draw(0, 1) != draw(0, 2)
    assert draw(0, 1, 5) != draw(0, 1, 6)
    assert draw(None, 1) != draw(None, 1)


def test_a_batch_s_transform_stream_is_none_of_the_order_s() -> None:
    # numpy pads a short seed with zeros: the rng of batch 0, epoch_rng(s, e, 0, 0), was the
    # epoch's chunk order's own stream (and with seed 0, to_zarr's shuffled order's too), so
    # a transform drawing a permutation of the chunks' size drew the chunk order itself
    for seed, epoch in ((0, 0), (3, 5)):
        order = chunk_order(40, seed=seed, epoch=epoch, shuffle=True)
        drawn = batch_rng(seed, epoch, 0, 0).permutation(40)
        assert not np.array_equal(drawn, order)
        first = batch_rng(seed, epoch, 0, 0).integers(2**63, size=4).tolist()
        assert first != epoch_rng(seed, epoch).integers(2**63, size=4).tolist()
        assert first != np.random.default_rng(seed).integers(2**63, size=4).tolist()
        assert first == batch_rng(seed, epoch, 0, 0).integers(2**63, size=4).tolist()
        assert first != batch_rng(seed, epoch, 1, 0).integers(2**63, size=4).tolist()
        assert first != batch_rng(seed, epoch, 0, 1).integers(2**63, size=4).tolist()


# -- mixing quality -------------------------------------------------------------------------------
def mean_classes_per_batch(labels: np.ndarray, buffer_chunks: int) -> float:
    p = plan_epoch(len(labels), 64, batch_size=64, buffer_chunks=buffer_chunks, seed=0)
    return float(np.mean([len(np.unique(labels[b])) for b in p.batches]))


def test_batches_mix_classes_of_a_shuffled_store() -> None:
    # 8 classes of 512 written in a seeded random order (to_zarr's default order="shuffled"):
    # 64 random samples out of 8 balanced classes cover 8 * (1 - (7/8)**64) = 7.998 on average
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(8), 512))
    assert mean_classes_per_batch(labels, buffer_chunks=8) > 7.9


def test_buffer_chunks_sets_the_mixing_of_a_store_in_source_order() -> None:
    # A store written in source order (class-sorted: each 64-sample chunk is one class, 8 chunks
    # per class) relies on the buffer alone: a batch sees only the classes of its group's
    # chunks. buffer_chunks=1 gives one class per batch; 8 random chunks out of 64 hold about
    # 8 * (1 - C(56, 8) / C(64, 8)) = 5.4 classes; a buffer of every chunk (64) gives ~8.
    # So for such stores raise buffer_chunks (memory: two groups) or write with order="shuffled".
    labels = np.repeat(np.arange(8), 512)
    one, eight, whole = (mean_classes_per_batch(labels, b) for b in (1, 8, 64))
    assert one == 1
    assert 4.5 < eight < 6.5
    assert whole > 7.9


# -- edges, helpers, validation -------------------------------------------------------------------
@pytest.mark.parametrize("even", [False, True])
def test_no_samples_give_an_empty_plan(even: bool) -> None:
    p = plan_epoch(0, 8, batch_size=4, even=even, num_consumers=3, consumer=2)
    assert p.groups == ()
    assert p.batches == ()
    assert p.num_samples == 0
    assert p.group_of_batch().shape == (0,)
    assert num_batches(0, 8, batch_size=4, even=even) == 0


def test_small_groups_are_raised_to_hold_a_batch() -> None:
    p = plan_epoch(1000, 10, batch_size=64, buffer_chunks=2)
    assert {len(g) for g in p.groups[:-1]} == {7}


def test_an_empty_consumer_pads_from_the_first_chunk_when_even() -> None:
    order = chunk_order(2, seed=0, epoch=0, shuffle=True)
    p = plan_epoch(128, 64, batch_size=32, num_consumers=3, consumer=2, even=True)
    np.testing.assert_array_equal(p.groups[0], order[:1])
    assert p.num_samples == 64
    assert len(np.unique(stream(p))) == 64
    assert plan_epoch(128, 64, batch_size=32, num_consumers=3, consumer=2).batches == ()


def test_helpers() -> None:
    np.testing.assert_array_equal(chunk_bounds(10, 4), [0, 4, 8, 10])
    np.testing.assert_array_equal(chunk_bounds(8, 4), [0, 4, 8])
    np.testing.assert_array_equal(
        assign_chunks(np.arange(10), consumer=1, num_consumers=3), [1, 4, 7]
    )
    pairs = {split_consumer(r, 3, w, 4) for r in range(3) for w in range(4)}
    assert pairs == {(k, 12) for k in range(12)}


def test_plan_repr_and_equality() -> None:
    p = plan_epoch(10, 4, batch_size=3, shuffle=False, buffer_chunks=1)
    assert repr(p) == "EpochPlan(3 groups, 4 batches, 10 samples, chunk_len=4)"
    assert p == EpochPlan(
        tuple(g.tolist() for g in p.groups), tuple(b.tolist() for b in p.batches), 4
    )
    assert p != plan_epoch(10, 4, batch_size=3, shuffle=False, buffer_chunks=2)
    with pytest.raises(TypeError):
        hash(p)
    with pytest.raises(ValueError, match=r"batches\[0\] must be 1-D"):
        EpochPlan((), (np.zeros((2, 2), dtype=np.int64),), 4)


def test_plan_arrays_are_read_only() -> None:
    p = plan_epoch(100, 10, batch_size=8)
    with pytest.raises(ValueError, match="read-only"):
        p.batches[0][0] = 1
    with pytest.raises(ValueError, match="read-only"):
        p.groups[0][0] = 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_samples": -1}, r"num_samples must be a non-negative int; got -1"),
        ({"chunk_len": 0}, r"chunk_len must be a positive int; got 0"),
        ({"batch_size": 2.5}, r"batch_size must be a positive int; got 2.5"),
        ({"batch_size": True}, r"batch_size must be a positive int; got True"),
        ({"buffer_chunks": 0}, r"buffer_chunks must be a positive int; got 0"),
        ({"num_consumers": 0}, r"num_consumers must be a positive int; got 0"),
        (
            {"consumer": 4, "num_consumers": 4},
            r"consumer must be an int in \[0, num_consumers=4\); got 4",
        ),
        ({"consumer": -1}, r"consumer must be an int in \[0, num_consumers=1\); got -1"),
        ({"seed": -3}, r"seed must be a non-negative int, or None .*; got -3"),
        ({"epoch": -1}, r"epoch must be a non-negative int; got -1"),
        ({"shuffle": "yes"}, r"shuffle must be True or False; got 'yes'"),
        ({"even": 1}, r"even must be True or False; got 1"),
    ],
)
def test_plan_epoch_validates_arguments(kwargs: dict, match: str) -> None:
    args = {"num_samples": 100, "chunk_len": 10, "batch_size": 8, **kwargs}
    with pytest.raises(ValueError, match=match):
        plan_epoch(args.pop("num_samples"), args.pop("chunk_len"), **args)
    if not {"buffer_chunks", "seed", "epoch", "shuffle"} & kwargs.keys():
        args = {"num_samples": 100, "chunk_len": 10, "batch_size": 8, **kwargs}
        with pytest.raises(ValueError, match=match):
            num_batches(args.pop("num_samples"), args.pop("chunk_len"), **args)


def test_helpers_validate_arguments() -> None:
    with pytest.raises(ValueError, match=r"rank must be an int in \[0, world_size=2\); got 2"):
        split_consumer(2, 2, 0, 1)
    with pytest.raises(ValueError, match=r"worker must be an int in \[0, num_workers=4\); got 4"):
        split_consumer(0, 2, 4, 4)
    with pytest.raises(ValueError, match=r"order must be a 1-D array"):
        assign_chunks(np.zeros((2, 2), dtype=int), consumer=0, num_consumers=1)
    with pytest.raises(ValueError, match=r"num_chunks must be a non-negative int"):
        chunk_order(-1, seed=0, epoch=0, shuffle=True)
    with pytest.raises(ValueError, match=r"extra\[1\] must be a non-negative int; got -2"):
        epoch_rng(0, 0, 1, -2)


def test_planning_a_million_samples_covers_them() -> None:
    # speed is measured in bench/, not asserted here
    p = plan_epoch(1_000_000, 64, batch_size=64, buffer_chunks=8, seed=0, epoch=1)
    assert p.num_samples == 1_000_000
    allidx = np.concatenate(p.batches)
    assert np.array_equal(np.sort(allidx), np.arange(1_000_000))


@pytest.mark.parametrize(
    ("n", "length", "batch", "consumers", "workers"),
    [(8230, 64, 64, 1, 1), (8230, 64, 64, 1, 4), (16420, 128, 256, 2, 1), (522, 64, 32, 1, 1), (203, 8, 16, 3, 1)],
)  # fmt: skip
def test_drop_last_does_not_leave_out_the_short_final_chunk_every_epoch(
    n, length, batch, consumers, workers
):
    # the short final chunk stays last in the order; drop_last cut the last group, which was
    # often that chunk alone: its samples (38 of 8230 here) were never trained on, any epoch
    seen = np.zeros(n, dtype=np.int64)
    for epoch in range(10):
        for k in range(consumers):
            for w in range(workers):
                p = plan_epoch(
                    n, length, batch_size=batch, seed=0, epoch=epoch, drop_last=True,
                    consumer=k, num_consumers=consumers, worker=w, num_workers=workers,
                )  # fmt: skip
                for b in p.batches:
                    assert len(b) == batch
                    seen[b] += 1
    short = np.arange(n - n % length, n)
    assert (seen[short] > 0).all()
    assert (seen > 0).all()


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize(("n", "length", "consumers", "batch"), [(65, 64, 2, 8), (129, 64, 3, 32),
                                                                 (130, 64, 3, 1), (20, 8, 4, 4)])  # fmt: skip
def test_a_consumer_with_few_samples_pads_from_other_chunks_not_one_sample(
    n, length, consumers, batch, workers, drop_last
):
    # 65 samples in chunks of 64 on 2 ranks left one rank a single sample, which its even
    # padding repeated 64 times an epoch (torch's DistributedSampler repeats none)
    seen = collections.Counter()
    counts = []
    for k in range(consumers):
        mine = []
        for w in range(workers):
            plan = plan_epoch(n, length, batch_size=batch, seed=3, consumer=k,
                              num_consumers=consumers, even=True, worker=w,
                              num_workers=workers, drop_last=drop_last)  # fmt: skip
            mine += [int(i) for b in plan.batches for i in b]
        counts.append(len(mine))
        seen.update(mine)
    assert len(set(counts)) == 1  # even: every consumer the same number
    assert set(seen) == set(range(n)) or drop_last  # every sample, without drop_last
    assert max(seen.values()) <= (2 if workers == 1 else 3)


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 400),
    chunk=st.integers(1, 120),
    consumers=st.integers(2, 5),
    batch=st.integers(1, 50),
    drop=st.booleans(),
)
def test_even_cost_counts_what_the_plans_repeat_and_leave_out(n, chunk, consumers, batch, drop):
    # oracle: every consumer's plan, built, counted against the store's samples
    yielded = sum(
        sum(
            len(b)
            for b in plan_epoch(
                n, chunk, batch_size=batch, seed=3, epoch=1, num_consumers=consumers,
                consumer=k, even=True, drop_last=drop,
            ).batches
        )
        for k in range(consumers)
    )  # fmt: skip
    repeated, left_out = even_cost(n, chunk, consumers, batch_size=batch, drop_last=drop)
    assert repeated == max(0, yielded - n) and left_out == max(0, n - yielded)
