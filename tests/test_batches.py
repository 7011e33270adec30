"""Reading any batch of an epoch plan by its index (``daskimg.feed.batches``)."""

from __future__ import annotations

import pickle

import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import daskimg as di
from daskimg.feed.batches import INDEX, BatchReader, EpochBatches, source_fingerprint
from daskimg.feed.shuffle import plan_epoch
from daskimg.feed.source import FeedSource


def _source(n, chunk_len):
    rows = np.arange(n, dtype=np.int64)[:, None] * np.ones((1, 3), np.int64)  # row k holds k
    return FeedSource(
        {"x": da.from_array(rows, chunks=(chunk_len, 3)), "y": rows[:, 0] * 10}, ["x", "y"]
    )


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 60),
    chunk_len=st.integers(1, 9),
    batch_size=st.integers(1, 12),
    buffer_chunks=st.integers(1, 4),
    cache_chunks=st.integers(1, 10),
    seed=st.integers(0, 3),
    order_seed=st.integers(0, 3),
)
def test_any_order_reads_every_batch_of_the_plan(
    n, chunk_len, batch_size, buffer_chunks, cache_chunks, seed, order_seed
):
    src = _source(n, chunk_len)
    chunk_len = src.chunk_len  # dask's chunks of a short array may be shorter
    plan = plan_epoch(
        n, chunk_len, batch_size=batch_size, seed=seed, buffer_chunks=buffer_chunks, epoch=1
    )
    reader = BatchReader(src, cache_chunks=cache_chunks, names=["x", INDEX, "y"])
    order = np.random.default_rng(order_seed).permutation(len(plan.batches)).tolist()
    for i in order:
        batch = reader.read(plan, i)
        assert list(batch) == ["x", INDEX, "y"]
        np.testing.assert_array_equal(batch[INDEX], plan.batches[i])
        np.testing.assert_array_equal(batch["x"][:, 2], plan.batches[i])  # chunk-wise rows
        np.testing.assert_array_equal(batch["y"], plan.batches[i] * 10)  # in-memory rows
    stats = reader.stats()
    assert stats.samples_delivered == n
    assert stats.peak_cached_chunks <= cache_chunks
    reader.close()


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 60),
    chunk_len=st.integers(1, 9),
    batch_size=st.integers(1, 12),
    buffer_chunks=st.integers(1, 4),
)
def test_in_order_with_two_groups_cached_reads_each_chunk_once(
    n, chunk_len, batch_size, buffer_chunks
):
    src = _source(n, chunk_len)
    chunk_len = src.chunk_len  # dask's chunks of a short array may be shorter
    plan = plan_epoch(n, chunk_len, batch_size=batch_size, buffer_chunks=buffer_chunks)
    per_group = max(buffer_chunks, -(-batch_size // chunk_len))
    reader = BatchReader(src, cache_chunks=2 * per_group)
    for i in range(len(plan.batches)):
        reader.read(plan, i)
    assert reader.stats().chunks_loaded == -(-n // chunk_len)
    assert reader.stats().amplification == 1.0


def test_epoch_batches_copy_reopens_the_store_and_reads_the_same(tmp_path, indexed_set):
    path = di.to_zarr(indexed_set, tmp_path / "s.zarr.zip", chunks=8, shard_chunks=2)
    batches = EpochBatches(path, ["images", INDEX], batch_size=10, seed=3)
    copy = pickle.loads(pickle.dumps(batches))
    assert copy.reader is not batches.reader and copy.num_batches == batches.num_batches == 11
    for b in (0, 7, 10):
        mine, theirs = batches.read(2, b), copy.read(2, b)
        np.testing.assert_array_equal(mine["images"], theirs["images"])
        np.testing.assert_array_equal(mine[INDEX], batches.plan(2).batches[b])


def test_fingerprint_tells_stores_apart(tmp_path, indexed_set):
    a = di.to_zarr(indexed_set, tmp_path / "a.zarr.zip", chunks=8)
    b = di.to_zarr(indexed_set, tmp_path / "b.zarr.zip", chunks=8, seed=1)
    c = di.to_zarr(indexed_set, tmp_path / "c.zarr", chunks=8)
    fa, fb, fc = (source_fingerprint(FeedSource(p, ["images"])) for p in (a, b, c))
    assert fa != fb  # another order
    assert fa == fc  # the same store, zip or folder
    assert source_fingerprint(FeedSource(di.open_zarr(a), ["images"])) == fa


def test_bad_arguments():
    src = _source(10, 4)
    with pytest.raises(ValueError, match="cache_chunks"):
        BatchReader(src, cache_chunks=0)
    with pytest.raises(KeyError, match="nope"):
        BatchReader(src, cache_chunks=2, names=["x", "nope"])
