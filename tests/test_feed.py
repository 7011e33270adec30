from __future__ import annotations

import shutil
import struct

import dask.array
import numpy as np
import pytest
from conftest import flip_byte_in_chunk, plain_group

import daskimg as di
from daskimg.errors import ChecksumError
from daskimg.transforms import compose, random_crop, random_flip


@pytest.fixture
def store(tmp_path, indexed_set):
    return di.to_zarr(indexed_set, tmp_path / "train.zarr.zip", chunks=8, shard_chunks=2, seed=0)


def _epoch(it):
    return [tuple(a.copy() for a in b) for b in it]


def _check_images_match_idx(images, idx):
    # the fixture's pixels encode the sample index: an oracle independent of the loader
    decoded = images[:, 0, 0, 0].astype(np.int64) + 256 * images[:, 0, 0, 1].astype(np.int64)
    np.testing.assert_array_equal(decoded, idx)


@pytest.mark.parametrize("batch_size", [1, 7, 16, 200])
@pytest.mark.parametrize("drop_last", [False, True])
def test_every_sample_once_per_epoch(store, batch_size, drop_last):
    kw = {"arrays": ("images", "idx"), "drop_last": drop_last, "buffer_chunks": 3}
    if drop_last and batch_size > 103:  # every epoch empty: refused (was fed, unsaid)
        with pytest.raises(ValueError, match=r"leaves no batch of the 103 samples"):
            di.BatchIterator(store, batch_size=batch_size, **kw)
        return
    it = di.BatchIterator(store, batch_size=batch_size, **kw)
    batches = _epoch(it)
    assert len(batches) == len(it)
    idx = np.concatenate([b[1] for b in batches]) if batches else np.empty(0, int)
    assert len(np.unique(idx)) == len(idx)
    if drop_last:
        assert len(idx) == (103 // batch_size) * batch_size
        assert all(len(b[1]) == batch_size for b in batches)
    else:
        assert sorted(idx.tolist()) == list(range(103))
    for images, ids in batches:
        _check_images_match_idx(images, ids)


@pytest.mark.parametrize("shuffle", [False, True])
def test_a_last_block_longer_than_the_others_is_fed_whole(tmp_path, indexed_set, shuffle):
    """Blocks (15, ..., 15, 16), as take() or split() of a store can leave: the feed crashed
    with dask's bare IndexError. Every sample once, its pixels its own (the oracle)."""
    n = 166
    x = np.zeros((n, 2, 2, 3), np.uint8)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
    lazy = dask.array.from_array(x, chunks=((15,) * 10 + (16,), 2, 2, 3))
    it = di.BatchIterator(
        {"images": lazy, "idx": np.arange(n)}, batch_size=17, arrays=("images", "idx"),
        shuffle=shuffle,
    )  # fmt: skip
    batches = _epoch(it)
    idx = np.concatenate([b[1] for b in batches])
    assert sorted(idx.tolist()) == list(range(n))
    for images, ids in batches:
        _check_images_match_idx(images, ids)
    # a subset of a store: "index" is each sample's row in the store
    store = di.to_zarr(indexed_set, tmp_path / "s.zarr.zip", chunks=8, order="source")
    opened = di.open_zarr(store)
    rows = np.sort(np.random.default_rng(1).choice(len(opened), 61, replace=False))
    part = opened.take(rows)
    part.images = part.images.rechunk(((6,) * 9 + (7,), *part.images.shape[1:]))
    got = _epoch(di.BatchIterator(part, batch_size=5, arrays=("images", "index"), shuffle=shuffle))
    assert sorted(np.concatenate([b[1] for b in got]).tolist()) == rows.tolist()
    for images, index in got:
        _check_images_match_idx(images, index)


def test_default_arrays_are_images_and_labels(store, indexed_set):
    images, labels = next(iter(di.BatchIterator(store, batch_size=10)))
    assert images.shape == (10, 6, 5, 3)
    assert images.dtype == np.uint8
    assert labels.dtype == np.int64
    ids = images[:, 0, 0, 0].astype(int) + 256 * images[:, 0, 0, 1].astype(int)
    np.testing.assert_array_equal(labels, indexed_set.labels[ids])


def _ids(batches, stored_idx):
    """Store indices of an epoch's batches of ("images", "index"), after checking each image is
    the stored sample at its index (pixels encode the original id, the store's ``idx`` column)."""
    out = []
    for images, index in batches:
        assert index.dtype == np.int64
        _check_images_match_idx(images, stored_idx[index])
        out.append(index)
    return np.concatenate(out) if out else np.empty(0, np.int64)


@pytest.fixture
def stored_idx(store):
    return plain_group(store)["idx"][:]


def test_deterministic_and_reshuffled_per_epoch(store, stored_idx):
    kw = {"batch_size": 16, "arrays": ("images", "index"), "seed": 3, "buffer_chunks": 2}
    a, b = di.BatchIterator(store, **kw), di.BatchIterator(store, **kw)
    assert len(a.plan().groups) > 2  # several groups of chunks read from the store
    e0 = _ids(_epoch(a), stored_idx)
    np.testing.assert_array_equal(e0, _ids(_epoch(b), stored_idx))
    e1 = _ids(_epoch(a), stored_idx)  # the next epoch
    assert a.epoch == 2  # each finished epoch selects the next
    assert not np.array_equal(e0, e1)
    assert sorted(e0.tolist()) == sorted(e1.tolist()) == list(range(103))
    b.set_epoch(1)
    np.testing.assert_array_equal(e1, _ids(_epoch(b), stored_idx))
    c = di.BatchIterator(store, **{**kw, "seed": 4})
    assert not np.array_equal(e0, _ids(_epoch(c), stored_idx))


def test_the_order_does_not_depend_on_the_arrays_asked_for(store):
    kw = {"batch_size": 16, "seed": 3, "buffer_chunks": 2}
    with_images = [b[1] for b in di.BatchIterator(store, arrays=("images", "index"), **kw)]
    index_only = [b[0] for b in di.BatchIterator(store, arrays=("index",), **kw)]
    for x, y in zip(with_images, index_only, strict=True):
        np.testing.assert_array_equal(x, y)


def test_shuffle_false_is_store_order(store, stored_idx):
    it = di.BatchIterator(store, batch_size=10, arrays=("images", "index", "idx"), shuffle=False)
    batches = _epoch(it)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), np.arange(103))
    np.testing.assert_array_equal(np.concatenate([b[2] for b in batches]), stored_idx)
    _ids([b[:2] for b in batches], stored_idx)


def test_index_is_a_reserved_name(tmp_path, indexed_set, monkeypatch):
    import daskimg.read.imageset as imageset_module

    with pytest.raises(ValueError, match=r"\['index'\] are reserved"):
        di.ImageSet(indexed_set.images, indexed_set.labels, columns={"index": np.arange(103)})
    # a store written before the name was reserved when the set is made
    ds = di.ImageSet(
        indexed_set.images,
        indexed_set.labels,
        columns={"index": np.arange(103)},
        check_names=False,
    )
    with monkeypatch.context() as m:  # as an earlier version wrote it
        m.setattr(imageset_module, "RESERVED", ("images", "labels", "paths"))
        path = di.to_zarr(ds, tmp_path / "i.zarr.zip", chunks=8)
    with pytest.raises(ValueError, match=r"\['index'\] are reserved"):  # now refused
        di.to_zarr(ds, tmp_path / "again.zarr.zip", chunks=8)
    with pytest.raises(ValueError, match="has an array named 'index'"):
        di.BatchIterator(path, batch_size=4, arrays=("images", "index"))
    with pytest.raises(KeyError, match="'index', each sample's store index"):
        di.BatchIterator(path, batch_size=4, arrays=("nope",))


@pytest.mark.parametrize("cut", [1, 3, 5, 11])  # within the first group, at and past group borders
def test_resume_mid_epoch_reads_only_what_is_left(store, stored_idx, cut):
    kw = {"batch_size": 9, "arrays": ("images", "index"), "seed": 1, "buffer_chunks": 2}
    it = di.BatchIterator(store, **kw)
    it.set_epoch(2)
    full = _ids(_epoch(it), stored_idx)
    it.set_epoch(2)
    gen = iter(it)
    head = [next(gen) for _ in range(cut)]
    state = it.state_dict()
    gen.close()
    assert state["epoch"] == 2 and state["batch"] == cut
    fresh = di.BatchIterator(store, **kw)
    fresh.load_state_dict(state)
    loaded = []
    load = fresh.source.load
    fresh.source.load = lambda c, scratch: loaded.append(c) or load(c, scratch)
    tail = _epoch(fresh)
    np.testing.assert_array_equal(_ids(head + tail, stored_idx), full)
    # only the chunks of the batches still to come are read again
    it.set_epoch(2)
    left = np.unique(np.concatenate(it.plan().batches[cut:]) // it.chunk_len)
    assert sorted(loaded) == left.tolist()


@pytest.mark.parametrize("cut", [3, "end"])
def test_a_training_loop_calling_set_epoch_resumes_where_the_state_left(store, stored_idx, cut):
    """The README loop calls set_epoch(epoch) at the top of each epoch; after
    load_state_dict it replayed the resumed epoch from its start (its first batches
    trained twice). A state saved after the last batch (a per-step checkpoint) leaves
    nothing of its epoch, and the next epoch comes whole."""
    kw = {"batch_size": 9, "arrays": ("images", "index"), "seed": 1}
    ref = di.BatchIterator(store, **kw)
    epochs = {}
    for e in (2, 3):
        ref.set_epoch(e)
        epochs[e] = _ids(_epoch(ref), stored_idx)
    it = di.BatchIterator(store, **kw)
    it.set_epoch(2)
    n = len(it) if cut == "end" else cut
    gen = iter(it)
    head = [next(gen) for _ in range(n)]
    state = it.state_dict()  # inside the loop, after batch n
    gen.close()
    resumed = di.BatchIterator(store, **kw)
    resumed.load_state_dict(state)
    seen = {}
    for e in (2, 3):  # the loop, restarted at the state's epoch
        resumed.set_epoch(e)
        seen[e] = _epoch(resumed)
    np.testing.assert_array_equal(_ids(head + seen[2], stored_idx), epochs[2])
    np.testing.assert_array_equal(_ids(seen[3], stored_idx), epochs[3])
    # set_epoch of another epoch after loading: that epoch from its start
    other = di.BatchIterator(store, **kw)
    other.load_state_dict(state)
    other.set_epoch(3)
    np.testing.assert_array_equal(_ids(_epoch(other), stored_idx), epochs[3])
    # and without set_epoch: the rest of the state's epoch, then the next (as before)
    plain = di.BatchIterator(store, **kw)
    plain.load_state_dict(state)
    rest = _epoch(plain)
    if cut == "end":
        np.testing.assert_array_equal(_ids(rest, stored_idx), epochs[3])
    else:
        np.testing.assert_array_equal(_ids(head + rest, stored_idx), epochs[2])


@pytest.mark.parametrize(
    ("change", "name"),
    [
        ({"batch_size": 18}, "batch_size"),
        ({"shuffle": False}, "shuffle"),
        ({"buffer_chunks": 3}, "buffer_chunks"),
        ({"drop_last": True}, "drop_last"),
        ({"seed": 2}, "seed"),
        ({"even": True}, "even"),
        ({"consumer": 1, "num_consumers": 2}, "consumer"),
        ({"num_consumers": 2}, "num_consumers"),
        ({"worker": 1, "num_workers": 2}, "worker"),
        ({"num_workers": 2}, "num_workers"),
    ],
)
def test_a_state_refuses_other_settings_naming_them(store, change, name):
    kw = {"batch_size": 9, "arrays": ("images", "index"), "seed": 1, "buffer_chunks": 2}
    it = di.BatchIterator(store, **kw)
    gen = iter(it)
    next(gen)
    state = it.state_dict()
    gen.close()
    other = di.BatchIterator(store, **{**kw, **change})
    with pytest.raises(ValueError, match=rf"saved with {name}=.* this has {name}="):
        other.load_state_dict(state)
    di.BatchIterator(store, **kw).load_state_dict(state)  # the same settings: accepted


def test_a_state_refuses_another_store(tmp_path, indexed_set, store):
    it = di.BatchIterator(store, batch_size=9)
    state = it.state_dict()
    assert state["source"]["path"] == str(store) and state["source"]["token"]
    other = di.to_zarr(indexed_set, tmp_path / "other.zarr.zip", chunks=8, seed=5)
    with pytest.raises(ValueError, match="is another store"):
        di.BatchIterator(other, batch_size=9).load_state_dict(state)
    fewer = di.to_zarr(indexed_set.take(np.arange(90)), tmp_path / "f.zarr.zip", chunks=8)
    with pytest.raises(ValueError, match="num_samples=103, and this has num_samples=90"):
        di.BatchIterator(fewer, batch_size=9).load_state_dict({**state, "source": None})
    moved = shutil.copy(store, tmp_path / "moved.zarr.zip")
    di.BatchIterator(moved, batch_size=9).load_state_dict(state)  # the same store, moved


def test_a_state_saved_on_a_split_resumes_only_on_that_split(tmp_path, indexed_set):
    # a split or take() of a store kept no word of the store: a state saved on one split
    # loaded into another of the same length (or the re-written store's) and repeated some
    # samples while missing others
    path = di.to_zarr(indexed_set, tmp_path / "s.zarr.zip", chunks=8)
    kw = {"batch_size": 5, "arrays": ("index",), "seed": 3}
    train = di.open_zarr(path).split({"train": 0.5, "valid": 0.5}, seed=0)["train"]
    it = di.BatchIterator(train, **kw)
    gen = iter(it)
    head = [next(gen)[0] for _ in range(3)]
    state = it.state_dict()
    gen.close()
    same = di.open_zarr(path).split({"train": 0.5, "valid": 0.5}, seed=0)["train"]
    resumed = di.BatchIterator(same, **kw)
    resumed.load_state_dict(state)
    got = np.concatenate(head + [b[0] for b in resumed])
    # the oracle: plain numpy, every store row of the split exactly once
    np.testing.assert_array_equal(np.sort(got), np.sort(train.store_rows))
    other = di.open_zarr(path).split({"train": 0.5, "valid": 0.5}, seed=1)["train"]
    assert len(other) == len(train)
    for wrong in (other, di.open_zarr(path).take(np.arange(len(train)))):
        with pytest.raises(ValueError, match="saved on another part of the store"):
            di.BatchIterator(wrong, **kw).load_state_dict(state)
    di.to_zarr(indexed_set, path, chunks=8, seed=7, overwrite=True)
    rewritten = di.open_zarr(path).split({"train": 0.5, "valid": 0.5}, seed=0)["train"]
    with pytest.raises(ValueError, match="is another store"):
        di.BatchIterator(rewritten, **kw).load_state_dict(state)


def test_seed_none_is_recorded_and_resumed(store, stored_idx):
    kw = {"batch_size": 9, "arrays": ("images", "index"), "seed": None, "buffer_chunks": 2}
    it = di.BatchIterator(store, **kw)
    assert isinstance(it.seed, int)
    gen = iter(it)
    head = [next(gen) for _ in range(4)]
    state = it.state_dict()
    gen.close()
    assert state["seed"] == it.seed
    fresh = di.BatchIterator(store, **kw)
    fresh.load_state_dict(state)
    assert fresh.seed == it.seed
    got = _ids(head + _epoch(fresh), stored_idx)
    assert sorted(got.tolist()) == list(range(103))
    with pytest.raises(ValueError, match="seed=None draws a different order"):
        di.BatchIterator(store, batch_size=9, seed=None, num_workers=2)


def test_workers_of_a_consumer_share_its_batches(store, stored_idx):
    kw = {"batch_size": 7, "arrays": ("images", "index"), "seed": 4, "buffer_chunks": 2}
    total = len(di.BatchIterator(store, **kw))
    for m in (1, 2, 3, 5):
        its = [di.BatchIterator(store, worker=w, num_workers=m, **kw) for w in range(m)]
        assert sum(len(it) for it in its) == total
        got = np.concatenate([_ids(_epoch(it), stored_idx) for it in its])
        assert sorted(got.tolist()) == list(range(103))


def test_close_mid_epoch_says_so_and_iterating_again_continues(store, stored_idx):
    it = di.BatchIterator(store, batch_size=9, arrays=("images", "index"), seed=3, buffer_chunks=2)
    full = _ids(_epoch(it), stored_idx)  # epoch 0
    it.set_epoch(0)
    gen = iter(it)
    head = [tuple(a.copy() for a in next(gen)) for _ in range(3)]
    it.close()
    with pytest.raises(RuntimeError, match=r"close\(\) was called.*batch 3"):
        next(gen)
    tail = _epoch(it)  # the same epoch, from where it stopped
    np.testing.assert_array_equal(_ids(head + tail, stored_idx), full)


def test_mixing_on_class_sorted_source(tmp_path):
    # 8 classes, written class-sorted in the source; the store's shuffled order plus the chunk shuffle
    n = 4096
    labels = np.repeat(np.arange(8), n // 8)
    ds = di.ImageSet(np.zeros((n, 2, 2, 1), np.uint8), labels, classes=[str(i) for i in range(8)])
    path = di.to_zarr(ds, tmp_path / "m.zarr.zip", chunks=64)
    it = di.BatchIterator(path, batch_size=64)
    distinct = np.mean([len(np.unique(lab)) for _, lab in it])
    # a global shuffle gives 8 * (1 - (7/8)**64) ~ 8.0
    assert distinct > 7.9


def test_sources_imageset_and_dask_arrays(image_folder, client):
    ds = di.from_folder(image_folder, size=(8, 8), chunks=5)
    expected = ds.images.compute()
    it = di.BatchIterator(ds, batch_size=4, arrays=("images", "labels"), seed=0)
    got_images, got_labels = zip(*list(it), strict=True)
    got_images, got_labels = np.concatenate(got_images), np.concatenate(got_labels)
    # match each yielded image to the source (pixels identify it)
    order = [int(np.flatnonzero((expected == img).all(axis=(1, 2, 3)))[0]) for img in got_images]
    assert sorted(order) == list(range(len(ds)))
    np.testing.assert_array_equal(got_labels, ds.labels[order])
    # bare dask arrays as a tuple, computed on the distributed client (the active scheduler)
    it2 = di.BatchIterator((ds.images, ds.labels), batch_size=6, seed=1)
    n = sum(len(b[0]) for b in it2)
    assert n == len(ds)


def test_transforms_are_reproducible(store):
    t = compose(random_flip(p=0.5), random_crop((4, 4)))
    a = [b[0] for b in di.BatchIterator(store, batch_size=8, transform=t, seed=2)]
    b = [b[0] for b in di.BatchIterator(store, batch_size=8, transform=t, seed=2)]
    assert a[0].shape == (8, 4, 4, 3)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_random_flip_and_crop_against_numpy():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (16, 6, 7, 3), dtype=np.uint8)
    out = random_flip(p=0.5)({"images": x}, np.random.default_rng(1))["images"]
    which = np.random.default_rng(1).random(16) < 0.5
    np.testing.assert_array_equal(out[which], x[which][:, :, ::-1])
    np.testing.assert_array_equal(out[~which], x[~which])
    crop = random_crop((3, 4))({"images": x}, np.random.default_rng(5))["images"]
    g = np.random.default_rng(5)
    top, left = g.integers(0, 4, 16), g.integers(0, 4, 16)
    for i in range(16):
        np.testing.assert_array_equal(crop[i], x[i, top[i] : top[i] + 3, left[i] : left[i] + 4])


def test_bad_arguments(store):
    with pytest.raises(ValueError, match="batch_size"):
        di.BatchIterator(store, batch_size=0)
    with pytest.raises(KeyError, match="nope"):
        di.BatchIterator(store, batch_size=4, arrays=("images", "nope"))
    with pytest.raises(TypeError, match="source must be"):
        di.BatchIterator(42, batch_size=4)


@pytest.fixture
def big_rows():
    """Samples of 5,760 bytes (rows are copied one by one, straight into the batch)."""
    n = 90
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (n, 40, 48, 3), dtype=np.uint8)
    return di.ImageSet(
        images, np.arange(n) % 3, classes=["a", "b", "c"], columns={"idx": np.arange(n)}
    )


@pytest.mark.parametrize("codec", ["lz4", "zstd", "none", "jpeg"])
@pytest.mark.parametrize("ext", [".zarr.zip", ".zarr"])
def test_every_codec_feeds_the_stored_pixels(tmp_path, big_rows, codec, ext):
    path = di.to_zarr(big_rows, tmp_path / f"s{ext}", chunks=8, shard_chunks=2, codec=codec)
    oracle = plain_group(path)  # plain zarr: what the store holds, decoded without daskimg's reader
    stored_images, stored_idx = oracle["images"][:], oracle["idx"][:]
    row_of = np.argsort(stored_idx)
    it = di.BatchIterator(path, batch_size=12, arrays=("images", "idx"), buffer_chunks=3, seed=2)
    for _ in range(2):  # the second epoch reuses the batch buffers
        seen = []
        for images, idx in it:
            np.testing.assert_array_equal(images, stored_images[row_of[idx]])
            seen.append(idx)
        assert sorted(np.concatenate(seen).tolist()) == list(range(90))


@pytest.mark.parametrize("codec", ["lz4", "none", "jpeg"])
def test_damaged_chunk_stops_the_feed_naming_it(tmp_path, big_rows, codec):
    path = di.to_zarr(big_rows, tmp_path / "d.zarr.zip", chunks=8, shard_chunks=2, codec=codec)
    flip_byte_in_chunk(path, "images", 5)
    it = di.BatchIterator(path, batch_size=12, arrays=("images", "idx"), buffer_chunks=3)
    with pytest.raises(ChecksumError, match="chunk 5"):
        for _ in it:
            pass


def test_kept_batches_are_never_overwritten(tmp_path, big_rows):
    # the contract: batch buffers are reused only when nothing refers to them any more
    path = di.to_zarr(big_rows, tmp_path / "k.zarr.zip", chunks=8, codec="none")
    it = di.BatchIterator(path, batch_size=12, arrays=("images", "idx"), buffer_chunks=3)
    kept = list(it)  # epoch 0, not copied
    views = [images[:3] for images, _ in it]  # epoch 1: only views of the images are kept
    snapshot = [(images.copy(), idx.copy()) for images, idx in kept]
    view_copies = [v.copy() for v in views]
    for _ in range(2):  # later epochs run while all of the above is alive
        for _ in it:
            pass
    for (images, idx), (images0, idx0) in zip(kept, snapshot, strict=True):
        np.testing.assert_array_equal(images, images0)
        np.testing.assert_array_equal(idx, idx0)
    for v, v0 in zip(views, view_copies, strict=True):
        np.testing.assert_array_equal(v, v0)


def test_drop_last_may_leave_out_a_whole_chunk(tmp_path):
    # 1001 samples in chunks of 100, batches of 64: the 25 dropped samples can fill a chunk
    n = 1001
    ds = di.ImageSet(
        np.zeros((n, 2, 2, 1), np.uint8), np.arange(n) % 2, columns={"idx": np.arange(n)}
    )
    path = di.to_zarr(ds, tmp_path / "d.zarr.zip", chunks=100)
    for seed in range(20):
        it = di.BatchIterator(
            path, batch_size=64, drop_last=True, seed=seed, arrays=("images", "idx")
        )
        idx = np.concatenate([b[1] for b in it])
        assert len(idx) == (n // 64) * 64 and len(np.unique(idx)) == len(idx)


def test_ranks_whose_shares_fill_no_batch_are_refused_with_drop_last(tmp_path):
    # 70 samples in chunks of 16 on 2 ranks (shares of 38 and 32), batch 40, drop_last:
    # every rank's epoch was empty, unsaid, where one process yields a batch of 40
    n = 70
    ds = di.ImageSet(
        np.zeros((n, 2, 2, 1), np.uint8), np.arange(n) % 2, columns={"idx": np.arange(n)}
    )
    path = di.to_zarr(ds, tmp_path / "d.zarr.zip", chunks=16)
    one = [
        b[1]
        for b in di.BatchIterator(path, batch_size=40, drop_last=True, arrays=("images", "idx"))
    ]
    assert [len(b) for b in one] == [40]
    for rank in (0, 1):
        with pytest.raises(
            ValueError, match=r"batch_size=40 .*2 ranks an empty epoch.*share.*is 38.*at most 38"
        ):
            di.BatchIterator(
                path, batch_size=40, drop_last=True, consumer=rank, num_consumers=2, even=True
            )
        got = di.BatchIterator(
            path,
            batch_size=38,
            drop_last=True,
            consumer=rank,
            num_consumers=2,
            even=True,
            arrays=("idx",),
        )
        assert [len(b[0]) for b in got] == [38]
        # more than the samples: refused, as in one process (every epoch would be empty)
        with pytest.raises(ValueError, match=r"batch_size=71 with drop_last=True leaves no batch"):
            di.BatchIterator(
                path, batch_size=71, drop_last=True, consumer=rank, num_consumers=2, even=True
            )
    with pytest.raises(ValueError, match=r"batch_size=71 with drop_last=True leaves no batch"):
        di.BatchIterator(path, batch_size=71, drop_last=True)


def test_one_sample_chunks_of_jpeg(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    ds = di.ImageSet(images, np.arange(6) % 2, classes=["a", "b"], columns={"idx": np.arange(6)})
    path = di.to_zarr(ds, tmp_path / "j.zarr.zip", chunks=1, codec="jpeg")
    stored = plain_group(path)["images"][:]
    row_of = np.argsort(plain_group(path)["idx"][:])  # the store is in shuffled order
    np.testing.assert_array_equal(di.open_zarr(path).images.compute(), stored)
    for images_b, idx in di.BatchIterator(path, batch_size=4, arrays=("images", "idx")):
        np.testing.assert_array_equal(images_b, stored[row_of[idx]])


def test_a_failing_transform_leaves_no_buffer_marked_busy(store):
    calls = {"n": 0}

    def flaky(batch, rng):
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            raise RuntimeError("augmentation failed")
        return batch

    it = di.BatchIterator(store, batch_size=16, arrays=("images", "idx"), transform=flaky)
    errors = 0
    for _ in range(20):
        try:
            for _ in it:
                pass
        except RuntimeError:
            errors += 1
    assert errors > 0
    # white-box: buffers of a batch whose transform raised go back to the pool
    assert not it._busy and len(it._pools["images"]) <= it._pool_cap()


def test_an_empty_epoch_counts_once(store):
    # batch_size beyond the 103 samples with drop_last: every epoch was empty, unsaid (a
    # training loop ran on nothing); KerasDataset refused it, BatchIterator and TorchDataset
    # did not (test_torch)
    with pytest.raises(ValueError, match=r"batch_size=500 with drop_last=True leaves no batch"):
        di.BatchIterator(store, batch_size=500, drop_last=True)
    # a worker's share without a batch (the one batch is worker 0's) is an empty epoch
    it = di.BatchIterator(store, batch_size=500, worker=1, num_workers=2)
    assert len(it) == 0
    for _ in range(3):
        assert list(it) == []
    assert it.epoch == 3


def test_close_from_another_thread_while_waiting_for_a_batch_does_not_hang(store):
    import threading
    import time

    it = di.BatchIterator(store, batch_size=9, arrays=("idx", "images"), seed=3, threads=1)
    full = [x[0] for x in it]  # the oracle: the epoch read without interruption
    it.set_epoch(0)
    load = it.source.load
    started = threading.Event()

    def slow_load(*args, **kwargs):  # chunks still queued when close() comes
        started.set()
        time.sleep(0.3)
        return load(*args, **kwargs)

    it.source.load = slow_load
    result: list[object] = []

    def consume():
        try:
            result.append(next(iter(it)))
        except BaseException as e:
            result.append(e)

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    assert started.wait(10)
    it.close()
    t.join(10)
    assert not t.is_alive(), "next() waited forever for chunks close() cancelled"
    assert isinstance(result[0], RuntimeError) and "close()" in str(result[0])
    it.source.load = load
    tail = [x[0] for x in it]  # iterating again reads the whole epoch
    assert len(tail) == len(full)
    for x, y in zip(tail, full, strict=True):
        np.testing.assert_array_equal(x, y)


_CTRL_C_LOOPS = """
import gc, os, random, signal, sys, threading, time

import daskimg as di

armed = [False]

def ctrl_c(signum, frame):
    if armed[0]:
        armed[0] = False
        raise KeyboardInterrupt

signal.signal(signal.SIGINT, ctrl_c)
random.seed(int(sys.argv[2]))
for _ in range(int(sys.argv[3])):  # a notebook cell's loop, stopped by Ctrl-C, run again
    it = di.BatchIterator(sys.argv[1], batch_size=4, seed=0)
    timer = threading.Timer(random.uniform(0, 0.01), os.kill, (os.getpid(), signal.SIGINT))
    armed[0] = True
    try:
        timer.start()
        for _ in it:
            time.sleep(0.0005)
    except KeyboardInterrupt:
        pass
    armed[0] = False
    timer.cancel()
    timer.join()
    it.close()
    del it
    gc.collect()
deadline = time.monotonic() + 5
while any(t.name.startswith("daskimg-batch") for t in threading.enumerate()):
    if time.monotonic() > deadline:
        print("assembly threads wait forever", flush=True)
        break
    time.sleep(0.05)
print("done", flush=True)
"""


def test_ctrl_c_in_a_feeding_loop_leaves_no_thread_waiting_forever(tmp_path):
    # a Ctrl-C landing in the iteration's cleanup, or between a batch's submit and its
    # record, left assembly threads waiting forever for loads that were cancelled: they
    # piled up over interrupted notebook cells (3 after 6-16 of these loops), holding their
    # batches, and the interpreter hung at exit joining them (hence a subprocess)
    import subprocess
    import sys

    images = np.arange(120 * 32 * 32 * 3, dtype=np.uint32).astype(np.uint8).reshape(120, 32, 32, 3)
    store = di.to_zarr(di.ImageSet(images, np.arange(120) % 3), tmp_path / "s.zarr.zip", chunks=8)
    script = tmp_path / "loops.py"
    script.write_text(_CTRL_C_LOOPS)
    try:
        run = subprocess.run(
            [sys.executable, str(script), store, "0", "80"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("the interpreter hung at exit, joining threads that wait forever")
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout == "done\n", run.stdout


def test_close_from_another_thread_while_the_first_reads_are_queued(store):
    """close() between the pools' start and the first submits: the consumer gets the
    close() error (not the executor's 'cannot schedule new futures after shutdown'), and
    iterating again reads the whole epoch."""
    import threading

    it = di.BatchIterator(store, batch_size=9, arrays=("idx", "images"), seed=3, threads=1)
    full = [x[0] for x in it]
    it.set_epoch(0)
    runner = it._runner
    read_ahead = runner._read_ahead
    inside, closed = threading.Event(), threading.Event()

    def held(chunks):  # runs just before the first loads are submitted
        inside.set()
        assert closed.wait(10)
        return read_ahead(chunks)

    runner._readahead = True
    runner._read_ahead = held
    result: list[object] = []

    def consume():
        try:
            result.append(next(iter(it)))
        except BaseException as e:
            result.append(e)

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    assert inside.wait(10)
    it.close()
    closed.set()
    t.join(10)
    assert not t.is_alive()
    assert isinstance(result[0], RuntimeError) and "close() was called" in str(result[0])
    runner._read_ahead = read_ahead
    tail = [x[0] for x in it]
    assert len(tail) == len(full)
    for x, y in zip(tail, full, strict=True):
        np.testing.assert_array_equal(x, y)


def test_a_load_that_times_out_raises_its_error(tmp_path, indexed_set):
    # a TimeoutError from a read (e.g. object storage) is the load's error, not a wait to retry
    path = di.to_zarr(indexed_set, tmp_path / "t.zarr.zip", chunks=8)
    it = di.BatchIterator(path, batch_size=10, arrays=("images", "idx"))
    assert "images" in it.source.lazy  # read chunk by chunk, so through load()
    original = it.source.load

    def load(c, scratch):
        if c == 2:
            raise TimeoutError(f"chunk {c}: read timed out")
        return original(c, scratch)

    it.source.load = load
    with pytest.raises(TimeoutError, match="chunk 2: read timed out"):
        list(it)


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_fork_closes_its_copy_of_an_unfinished_iteration(store, monkeypatch):
    # e.g. a DataLoader worker forked while the main process peeked at a batch: the copy's loads
    # ran in the parent's threads, so closing it must not wait for them
    import multiprocessing
    import os
    import time

    from daskimg.feed.source import FeedSource

    load, main = FeedSource.load, os.getpid()

    def slow_in_main(self, c, scratch):
        if os.getpid() == main and c != 0:
            time.sleep(1)  # still loading when the fork happens
        return load(self, c, scratch)

    monkeypatch.setattr(FeedSource, "load", slow_in_main)
    it = di.BatchIterator(store, batch_size=16, arrays=("images", "index"), buffer_chunks=1)
    gen = iter(it)
    next(gen)
    child = multiprocessing.get_context("fork").Process(target=gen.close)
    child.start()
    child.join(60)  # a guard against a hang, not a timing
    hung = child.is_alive()
    if hung:
        child.kill()
    assert not hung and child.exitcode == 0
    gen.close()


@pytest.mark.parametrize("codec", ["none", "lz4"])
@pytest.mark.parametrize(
    "split",
    [
        {"drop_last": True},
        {"shuffle": False, "consumer": 0, "num_consumers": 2},
        {"shuffle": False, "consumer": 1, "num_consumers": 2},
        {"worker": 1, "num_workers": 3},
        {"consumer": 1, "num_consumers": 2, "even": True},
    ],
    ids=["drop_last", "rank0", "rank1", "worker1of3", "rank1-even"],
)
def test_rows_another_reader_takes_do_not_break_the_checksum(tmp_path, big_rows, codec, split):
    """An uncompressed chunk is read straight into batch rows; rows that go to no batch of
    this reader (another rank's or worker's, or cut by drop_last) were all read into ONE
    spare row, so with two or more of them the checksum never matched: a ChecksumError
    calling an undamaged store damaged, on every epoch (DDP, DataLoader workers)."""
    path = di.to_zarr(big_rows, tmp_path / "s.zarr.zip", chunks=8, shard_chunks=2, codec=codec)
    oracle = plain_group(path)
    stored_images, row_of = oracle["images"][:], np.argsort(oracle["idx"][:])
    for epoch in range(2):
        it = di.BatchIterator(path, batch_size=5, arrays=("images", "idx"), seed=1, **split)
        it.set_epoch(epoch)
        seen = []
        for images, idx in it:
            np.testing.assert_array_equal(images, stored_images[row_of[idx]])
            seen.append(idx)
        got = np.concatenate(seen)
        assert len(got) == sum(len(b) for b in seen) and len(got) > 0
        assert len(np.unique(got)) == len(got) or split.get("even")


def test_a_dask_source_whose_first_blocks_are_empty_is_fed():
    """x[mask].compute_chunk_sizes() with nothing kept from the first block gives chunks
    (0, 10, ...): the feed took 0 as its chunk length (ZeroDivisionError in rechunk)."""
    import dask.array as da

    n = 43
    images = np.zeros((n + 7, 2, 2, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(n + 7)
    keep = np.arange(n + 7) >= 7
    x = da.from_array(images, chunks=7)[da.from_array(keep, chunks=7)].compute_chunk_sizes()
    assert x.chunks[0][0] == 0
    it = di.BatchIterator((x, np.arange(7, n + 7)), batch_size=5, shuffle=True, seed=0)
    got = [(imgs[:, 0, 0, 0].astype(int), lab) for imgs, lab in it]
    assert sorted(np.concatenate([lab for _, lab in got]).tolist()) == list(range(7, n + 7))
    for px, lab in got:
        np.testing.assert_array_equal(px, lab)


@pytest.mark.parametrize(
    ("got", "labels_chunks"),
    [
        (lambda k: 7, 8),  # short: other samples' rows in a batch (or an IndexError)
        (lambda k: 9 if k == 1 else 8, 8),  # longer, read as it is
        (lambda k: 7, 12),  # short, in chunks of other lengths
        (lambda k: 9 if k == 1 else 8, 12),  # longer, in chunks of other lengths (a
        # rechunk's slices cut off the extra row, unseen)
    ],
)
def test_a_dask_source_whose_blocks_hold_other_rows_than_declared_is_refused(got, labels_chunks):
    import dask
    import dask.array as da

    n = 24
    images = np.repeat(np.arange(n + 8, dtype=np.uint8), 12).reshape(n + 8, 2, 2, 3)

    def block(k):
        return images[k * 8 : k * 8 + got(k)]

    lying = da.concatenate([
        da.from_delayed(dask.delayed(block)(k), (8, 2, 2, 3), np.uint8) for k in range(n // 8)
    ])  # fmt: skip
    labels = da.from_array(np.arange(n), chunks=labels_chunks)
    it = di.BatchIterator((lying, labels), batch_size=4, shuffle=False)
    with pytest.raises(ValueError, match=r"array 'images': rows \d+\.\.\d+ of its dask array"):
        list(it)


def test_a_dask_source_whose_blocks_hold_values_their_dtype_cannot_is_refused():
    import dask.array as da

    n = 16
    images = da.zeros((n, 2, 2, 3), np.uint8, chunks=8)
    held = np.arange(n) * 30  # int64 up to 450
    lying = da.from_array(held, chunks=8).map_blocks(lambda b: b, dtype=np.uint8)
    it = di.BatchIterator(
        {"images": images, "v": lying}, batch_size=4, shuffle=False, arrays=("images", "v")
    )
    with pytest.raises(ValueError, match=r"'v' is uint8 but .* such as 270"):
        list(it)  # was 270 -> 14 in the batch, without a word
    fits = da.from_array(held % 256, chunks=8).map_blocks(lambda b: b, dtype=np.uint8)
    it = di.BatchIterator(
        {"images": images, "v": fits}, batch_size=4, shuffle=False, arrays=("images", "v")
    )
    got = np.concatenate([b[1] for b in it])
    np.testing.assert_array_equal(got, (held % 256).astype(np.uint8))  # oracle: numpy's cast


def test_a_dask_source_whose_float64_blocks_float32_would_make_0_is_refused():
    # declared float32, computed float64: 1e-300 was fed as 0.0 (1e39, inf, was refused)
    import dask.array as da

    held = np.random.default_rng(0).random((8, 4, 4, 1))
    held[5, 0, 0, 0] = 1e-300
    lying = da.from_array(held, chunks=4).map_blocks(lambda b: b, dtype=np.float32)
    it = di.BatchIterator({"images": lying}, batch_size=8, shuffle=False, arrays=("images",))
    with pytest.raises(ValueError, match=r"'images' is float32 but .* such as 1e-300"):
        list(it)
    held[5, 0, 0, 0] = 1e-40  # float32 holds it (subnormal): fed as numpy casts it
    fits = da.from_array(held, chunks=4).map_blocks(lambda b: b, dtype=np.float32)
    it = di.BatchIterator({"images": fits}, batch_size=8, shuffle=False, arrays=("images",))
    np.testing.assert_array_equal(next(iter(it))[0], held.astype(np.float32))


def test_labels_below_minus_one_are_refused_without_classes():
    """-2 was stored as a label when no classes were given (with classes it was refused)."""
    with pytest.raises(ValueError, match=r"labels must be class indices .*found -2"):
        di.ImageSet(np.zeros((3, 2, 2, 3), np.uint8), [0, -2, 1])


def test_a_set_read_with_skip_is_fed_from_its_store(tmp_path):
    from PIL import Image

    root = tmp_path / "src"
    for i in range(6):
        (root / "cat").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / "cat" / f"{i}.png")
    (root / "cat" / "bad.png").write_bytes(b"")
    ds = di.from_folder(root, size=(8, 8), on_error="skip")
    with pytest.raises(ValueError, match=r"on_error='skip'.*to_zarr"):
        di.BatchIterator(ds, batch_size=2)
    store = di.to_zarr(ds, tmp_path / "s.zarr.zip")
    seen = sorted(int(x[0, 0, 0]) for b, _ in di.BatchIterator(store, batch_size=2) for x in b)
    assert seen == [i * 40 for i in range(6)]  # oracle: the colours painted; bad.png left out


def test_an_array_put_in_place_of_a_stored_one_is_fed_as_it_is(tmp_path):
    # ds.images = flipped on an opened store: the loaders read the stored chunks anyway
    # (unflipped pixels, the old column), without a word; an added lazy column was
    # refused as "the store is damaged"
    import dask.array as da

    from daskimg.feed.source import FeedSource

    torch = pytest.importorskip("torch")
    from daskimg.torch import TorchDataset

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (40, 6, 5, 3), dtype=np.uint8)
    f = rng.random(40).astype(np.float32)
    path = di.to_zarr(
        di.ImageSet(images, columns={"f": f}), tmp_path / "s.zarr.zip", chunks=8, order="source"
    )
    ds = di.open_zarr(path)
    assert FeedSource(ds, ("images", "f")).fast == {"images", "f"}  # its own: read direct
    ds.images = ds.images[:, :, ::-1]
    ds.columns["f"] = ds.arrays["f"] * 2
    ds.columns["w"] = da.arange(40, chunks=16).astype(np.float32)
    want = {"images": images[:, :, ::-1], "f": f * 2, "w": np.arange(40, dtype=np.float32)}
    names = ("images", "f", "w", "index")
    for batch in di.BatchIterator(ds, batch_size=8, arrays=names):  # oracle: numpy
        idx = batch[-1]
        for name, got in zip(names[:-1], batch[:-1], strict=True):
            np.testing.assert_array_equal(got, want[name][idx])
    loader = torch.utils.data.DataLoader(
        TorchDataset(ds, batch_size=8, arrays=names), batch_size=None
    )
    for batch in loader:
        idx = batch[-1].numpy()
        np.testing.assert_array_equal(batch[0].numpy(), want["images"][idx])


@pytest.mark.parametrize("fmt", [".zarr.zip", ".zarr"])
@pytest.mark.parametrize("dtype", ["int64", "uint8", "bool", "float32"])
def test_one_number_per_sample_stored_uncompressed_is_fed_as_stored(tmp_path, fmt, dtype):
    # an (N,) array written with codec='none' was fed as zeros or stale memory: each row was
    # read into a copy of the batch's row (a numpy scalar) and checksummed there
    n = 23
    rng = np.random.default_rng(0)
    values = (rng.integers(0, 2, n) if dtype == "bool" else rng.integers(1, 250, n)).astype(dtype)
    path = tmp_path / f"w{fmt}"
    with di.ArrayWriter(path, name="x", shape=(), dtype=dtype, codec="none", chunks=4) as w:
        w.append(values[:10])
        w.append(values[10:])
    want = plain_group(path)["x"][...]  # plain zarr
    np.testing.assert_array_equal(want, values)
    for shuffle in (False, True):
        fed = {}
        for x, index in di.BatchIterator(
            path, batch_size=5, shuffle=shuffle, seed=1, arrays=("x", "index")
        ):
            fed.update(zip(index.tolist(), x.tolist(), strict=True))
        assert sorted(fed) == list(range(n))
        np.testing.assert_array_equal([fed[i] for i in range(n)], want)


@pytest.mark.parametrize("codec", ["blosc", "zstd", "none"])
def test_one_number_per_sample_in_chunks_of_one_is_read_as_stored(tmp_path, indexed_set, codec):
    # a 1-D array stored one sample per inner chunk (plain zarr's chunks=(1,) in shards),
    # declared in the store: each Blosc sample was decompressed into a copy of its row (a
    # numpy scalar), so open_zarr and the feed gave stale memory, checksums passing
    import json

    import crc32c
    import zarr
    from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

    from daskimg.store.format import attrs_crc32c

    path = tmp_path / "s.zarr"
    di.to_zarr(indexed_set, path, chunks=4, order="source")
    n = len(indexed_set)
    values = np.arange(n, dtype=np.int64) * 7 + 3
    first = {"blosc": [BloscCodec()], "zstd": [ZstdCodec()], "none": []}[codec]
    group = zarr.open_group(path, mode="a")  # plain zarr adds the array
    x = group.create_array(
        "x", shape=(n,), dtype="int64", chunks=(1,), shards=(4,),
        compressors=[*first, Crc32cCodec()], dimension_names=["sample"],
    )  # fmt: skip
    x[:] = values
    root = json.loads((path / "zarr.json").read_text())  # declared, as daskimg declares arrays
    attrs = root["attributes"]["daskimg"]
    attrs["arrays"]["x"] = {"zarr_json_crc32c": crc32c.crc32c((path / "x/zarr.json").read_bytes())}
    attrs["attrs_crc32c"] = attrs_crc32c(attrs)
    (path / "zarr.json").write_text(json.dumps(root))
    np.testing.assert_array_equal(plain_group(path)["x"][...], values)  # the oracle
    np.testing.assert_array_equal(di.open_zarr(path).arrays["x"].compute(), values)
    fed = np.concatenate(
        [b for (b,) in di.BatchIterator(path, batch_size=3, shuffle=False, arrays=("x",))]
    )
    np.testing.assert_array_equal(fed, values)


def test_what_a_transform_returns_is_checked_naming_it(store):
    # a transform that forgot `return batch` failed with a bare AttributeError in the
    # buffer pool; one that cut an array short was handed out as it was
    def in_place(batch, rng):
        batch["images"] = batch["images"] // 2

    def shorter(batch, rng):
        return {**batch, "labels": batch["labels"][1:]}

    def dropped(batch, rng):
        return {"images": batch["images"]}

    def popped(batch, rng):  # the dict changed itself: still caught
        batch.pop("labels")
        return batch

    def mixup(batch, rng):  # what a transform adds is its own (a scalar, a note)
        return {**batch, "lam": 0.3, "note": "mixup"}

    got = next(iter(di.BatchIterator(store, batch_size=8, transform=mixup).iter_dicts()))
    assert got["lam"] == 0.3 and len(got["labels"]) == 8
    for transform, err, says in (
        (popped, KeyError, r"returned a batch without \['labels'\]"),
        (in_place, TypeError, "returned NoneType, not the batch dict"),
        (shorter, ValueError, "returned 'labels' with 7 rows for a batch of 8 samples"),
        (dropped, KeyError, r"returned a batch without \['labels'\]"),
    ):
        with pytest.raises(err, match=says):
            next(iter(di.BatchIterator(store, batch_size=8, transform=transform)))


def test_arguments_a_user_may_pass_are_taken_or_refused_clearly(store):
    it = di.BatchIterator(store, batch_size=np.int64(8), seed=np.int64(3),
                          consumer=np.int64(1), num_consumers=np.int64(2))  # fmt: skip
    state = it.state_dict()
    assert state["batch_size"] == 8 and state["seed"] == 3
    import json

    json.dumps(state)  # a numpy seed made the state unwritable as JSON
    with pytest.raises(TypeError, match="a dict of model input/output names is KerasDataset"):
        di.BatchIterator(store, batch_size=8, arrays={"labels": "labels", "images": "images"})
    with pytest.raises(ValueError, match="state\\['batch'\\] is 999, but an epoch has"):
        di.BatchIterator(store, batch_size=8, consumer=1, num_consumers=2).load_state_dict(
            {**state, "batch": 999, "seed": 0}
        )


def test_a_second_iteration_while_one_runs_makes_the_first_raise_not_skip(store, stored_idx):
    # two live iterations of one BatchIterator shared its position: it went backwards, and
    # once both ended the epoch had advanced twice (an epoch's order never served)
    kw = {"batch_size": 10, "arrays": ("index",), "seed": 4}
    it = di.BatchIterator(store, **kw)
    first = iter(it)
    head = [next(first)[0] for _ in range(3)]
    second = iter(it)
    rest = [b[0] for b in second]  # the epoch continues in the latest iteration
    with pytest.raises(RuntimeError, match="was cut short: the same BatchIterator was iterated"):
        next(first)
    got = np.concatenate(head + rest)
    np.testing.assert_array_equal(np.sort(got), np.arange(len(got)))  # the oracle: each once
    assert len(got) == len(stored_idx) and it.epoch == 1
    again = [b[0] for b in it]  # then epoch 1, whole
    assert np.array_equal(np.sort(np.concatenate(again)), np.arange(len(got)))
    # a peek (the iteration dropped at once) then a loop: continues, as after a break
    peek = di.BatchIterator(store, **kw)
    seen = next(iter(peek))[0]
    assert len(np.concatenate([seen] + [b[0] for b in peek])) == len(stored_idx)


def test_a_source_of_no_samples_is_refused_not_fed_as_empty_epochs(store):
    # take([]) fed 0 batches every epoch without a word (torch's RandomSampler refuses it)
    empty = di.open_zarr(store).take(np.arange(0))
    with pytest.raises(ValueError, match="the source holds no samples"):
        di.BatchIterator(empty, batch_size=4)


def _noisy_photos(n):
    """224x224 crops of scikit-image's bundled photos with a camera's noise: lz4 saves
    almost nothing on them, so their chunks are stored raw in their Blosc frames."""
    from skimage import data as photos

    rng = np.random.default_rng(0)
    pic = photos.astronaut()
    out = np.empty((n, 224, 224, 3), np.uint8)
    for i in range(n):
        y, x = (i * 37) % (pic.shape[0] - 224), (i * 53) % (pic.shape[1] - 224)
        out[i] = np.clip(
            np.round(pic[y : y + 224, x : x + 224] + rng.normal(0, 3, (224, 224, 3))), 0, 255
        )
    return out


def test_lz4_chunks_stored_raw_are_fed_straight_into_batches_and_checked(tmp_path):
    # 5 chunks of noisy photos (stored raw in their Blosc frames, read like codec "none":
    # straight into the batch rows) and 3 of flat images (compressed): every batch is what
    # plain zarr reads; a flipped byte anywhere in a raw chunk (its Blosc header, its
    # pixels, its checksum) is an error naming the store and the chunk
    from daskimg.store.reader import RawChunk, StoreReader

    images = np.concatenate([_noisy_photos(40), np.full((24, 224, 224, 3), 90, np.uint8)])
    images[40:, 100:120] = 200
    path = tmp_path / "s.zarr.zip"
    di.to_zarr(di.ImageSet(images, np.arange(64) % 3), path, chunks=8, order="source")
    reader = StoreReader(path)
    views = [reader.view_chunk("images", c) for c in range(8)]
    assert [isinstance(v, RawChunk) and len(v.head) == 16 for v in views] == [True] * 5 + [
        False
    ] * 3
    want = plain_group(path)["images"][...]
    np.testing.assert_array_equal(want, images)
    seen = []
    for batch, index in di.BatchIterator(path, batch_size=7, arrays=("images", "index"), seed=1):
        np.testing.assert_array_equal(batch, want[index])
        seen += index.tolist()
    assert sorted(seen) == list(range(64))
    _, offset, nbytes = reader.chunk_location("images", 2)
    for at in (2, 5, 12, 16, 16 + nbytes // 2, nbytes - 1):  # flags, sizes, pixels, crc32c
        bad = tmp_path / f"bad{at}.zarr.zip"
        shutil.copy(path, bad)
        with open(bad, "r+b") as fh:
            fh.seek(offset + at)
            b = fh.read(1)
            fh.seek(offset + at)
            fh.write(bytes([b[0] ^ 0x02]))
        with pytest.raises(ChecksumError, match=rf"{bad.name}.*chunk 2\b"):
            for _ in di.BatchIterator(bad, batch_size=8, arrays=("images",), shuffle=False):
                pass


def _lie(head: bytearray, at: int, value: int) -> None:
    if at == 2:
        head[2] |= value
    elif at == 3:
        head[3] = value
    else:
        struct.pack_into("<I", head, at, value(struct.unpack_from("<I", head, 4)[0]))


@pytest.mark.parametrize(
    ("at", "value"),
    [
        (2, 0x08),  # flag 0x08, which Blosc 1 refuses
        (8, lambda n: n + 1),  # a block size past the data (the feed took it: probe)
        (8, lambda n: 0),
        (8, lambda n: 2**32 - 1),
        (3, 0),  # type size 0
    ],
    ids=["flag-0x08", "block-past-data", "block-0", "block-huge", "typesize-0"],
)
def test_a_blosc_header_blosc_refuses_is_refused_by_every_reader(tmp_path, monkeypatch, at, value):
    # a raw frame whose header Blosc refuses, crc32c and chunk table consistent (written
    # so): the feed must not take the rows as they are while read_chunk, plain zarr and
    # verify call the chunk damaged
    from daskimg.store import encode
    from daskimg.storeinfo import verify

    real = encode.raw_header

    def crafted(*args):
        head = bytearray(real(*args))
        _lie(head, at, value)
        return bytes(head)

    monkeypatch.setattr(encode, "raw_header", crafted)
    path = tmp_path / "c.zarr.zip"
    with dask.config.set(scheduler="sync"):
        di.to_zarr(
            di.ImageSet(_noisy_photos(16), np.arange(16) % 2), path, chunks=8, order="source"
        )
    monkeypatch.undo()
    with pytest.raises(ChecksumError, match=r"c\.zarr\.zip.*chunk 0\b"):
        for _ in di.BatchIterator(path, batch_size=8, arrays=("images",), shuffle=False):
            pass
    assert verify(path)  # damaged, as the feed says
    with pytest.raises(RuntimeError):  # plain zarr's Blosc refuses the frame too
        plain_group(path)["images"][:8]


@pytest.mark.parametrize("ext", [".zarr.zip", ".zarr"])
def test_a_loader_whose_store_is_written_again_says_so_each_epoch(tmp_path, caplog, ext):
    # to_zarr(overwrite=True) in a later notebook cell: a loader made before went on
    # serving the old store's samples, every epoch, without a word
    import logging

    images = np.arange(20 * 12, dtype=np.uint8).reshape(20, 2, 2, 3)
    path = di.to_zarr(di.ImageSet(images, np.arange(20) % 2), tmp_path / f"s{ext}", chunks=4)
    it = di.BatchIterator(path, batch_size=5, arrays=("images", "index"))
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        assert len(list(it)) == 4
        assert "written again" not in caplog.text
        old = di.open_zarr(path).images.compute()
        di.to_zarr(di.ImageSet(images[::-1], np.arange(20) % 2), path, chunks=4, overwrite=True)
        served = {int(i): x.copy() for b, idx in it for x, i in zip(b, idx, strict=True)}
    assert "was written again (or removed) after this loader opened it" in caplog.text
    for i, x in served.items():  # what it goes on reading: the store it opened, whole
        np.testing.assert_array_equal(x, old[i])


def test_repr_says_what_is_fed(store):
    # a notebook shows the loader: the store, its size and the share of this iterator
    it = di.BatchIterator(store, batch_size=10, seed=3, num_workers=2, worker=1)
    it.set_epoch(2)
    text = repr(it)
    n = plain_group(store)["labels"].shape[0]
    assert text.startswith(f"BatchIterator({str(store)!r}, samples={n}, batch_size=10, ")
    assert f"batches={len(it)}," in text and "seed=3, epoch=2, worker=1 of 2)" in text
    assert "arrays=['images', 'labels']" in text
    arrays = {"images": np.zeros((7, 2, 2, 1), np.uint8)}
    assert repr(di.BatchIterator(arrays, batch_size=3)).startswith(
        "BatchIterator(dict of ['images'], samples=7, batch_size=3, batches=3,"
    )


def test_a_crop_the_samples_cannot_take_is_refused_when_the_loader_is_made(store):
    # it failed at the first batch, in the loader's thread; the stored images are 6x5
    shape = plain_group(store)["images"].shape[1:3]
    too_tall = random_crop((shape[0] + 1, 2))
    with pytest.raises(ValueError, match=r"larger than the images of 'images', \(6, 5\)"):
        di.BatchIterator(store, batch_size=4, transform=compose(random_flip(), too_tall))
    keras = pytest.importorskip("daskimg.keras")
    with pytest.raises(ValueError, match="larger than the images"):
        keras.KerasDataset(store, batch_size=4, transform=too_tall)

    def grow(batch, rng):  # a step of the caller's own may change the samples' shape
        return {**batch, "images": np.repeat(np.repeat(batch["images"], 2, 1), 2, 2)}

    it = di.BatchIterator(store, batch_size=4, transform=compose(grow, too_tall))
    images, _ = next(iter(it))
    assert images.shape[1:3] == (shape[0] + 1, 2)
    it.close()
    fits = di.BatchIterator(store, batch_size=4, transform=random_crop(shape))
    assert next(iter(fits))[0].shape[1:3] == shape
    fits.close()


def test_an_array_added_by_plain_zarr_is_named_as_such_not_denied(tmp_path):
    # an array written into a daskimg store with plain zarr is no array of the store (no
    # checksums): the error said it was not there, though zarr (the oracle) lists it
    import zarr

    p = tmp_path / "s.zarr"
    di.to_zarr(di.ImageSet(np.zeros((10, 4, 4, 3), "u1"), np.arange(10) % 2), p, chunks=5)
    zarr.open_group(str(p), mode="a").create_array("weights", shape=(10,), dtype="f4", chunks=(5,))[
        ...
    ] = 1.0
    assert "weights" in zarr.open_group(str(p), mode="r").array_keys()
    with pytest.raises(KeyError, match=r"\['weights'\] are in the store's folder but not among"):
        di.BatchIterator(p, batch_size=2, arrays=("images", "weights"))


def _masked_inputs(n: int) -> tuple[np.ma.MaskedArray, np.ma.MaskedArray, dask.array.Array]:
    """Labels with sample 4 unknown, a score missing for samples 2 and 5 (numpy masks), and
    the score as a dask masked array."""
    labels = np.ma.masked_array(np.arange(n) % 2, mask=np.arange(n) == 4)
    score = np.ma.masked_array(np.arange(n, dtype=np.float32), mask=np.isin(np.arange(n), [2, 5]))
    lazy = dask.array.ma.masked_array(
        dask.array.from_array(score.data, chunks=4),
        mask=dask.array.from_array(score.mask, chunks=4),
    )
    return labels, score, lazy


def test_masked_values_are_refused_wherever_they_would_be_fed_or_stored(tmp_path):
    # the values under a mask came out of the feed, and went into stores, as real ones: a
    # sample whose label was unknown trained as class 0, a missing score as its placeholder
    # (ArrayWriter alone refused them)
    n = 8
    images = np.zeros((n, 8, 8, 3), np.uint8)
    labels, score, lazy = _masked_inputs(n)
    says = r"array '{}'{} is a masked array with {} masked value\(s\).*filled"
    with pytest.raises(ValueError, match=says.format("labels", "", 1)):
        di.ImageSet(images, labels, classes=["a", "b"])
    with pytest.raises(ValueError, match=says.format("score", "", 2)):
        di.ImageSet(images, columns={"score": score})
    with pytest.raises(ValueError, match=says.format("labels", "", 1)):
        di.BatchIterator({"images": images, "labels": labels}, batch_size=4)
    ds = di.ImageSet(images, np.arange(n) % 2, classes=["a", "b"], columns={"lazy": lazy})
    with pytest.raises(ValueError, match=says.format("lazy", r" \(rows 0\.\.4\)", 1)):
        list(di.BatchIterator(ds, batch_size=n, shuffle=False, arrays=("lazy",)))
    with pytest.raises(ValueError, match=says.format("lazy", r" \(rows \d\.\.\d\)", 1)):
        di.to_zarr(ds, tmp_path / "m.zarr.zip", order="source")
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match=says.format("labels", "", 1)):
        ds.labels = labels  # put in after the set was made
    ds.columns["score"] = score
    with pytest.raises(ValueError, match=says.format("score", "", 2)):
        di.to_zarr(ds, tmp_path / "m.zarr.zip", order="source")
    # a list of masked rows (numpy's asarray drops their masks), images put in after
    rows = np.ma.masked_array(np.ones((n, 2)), mask=np.arange(2 * n).reshape(n, 2) == 3)
    with pytest.raises(ValueError, match=says.format("f", "", 1)):
        di.ImageSet(images, columns={"f": list(rows)})
    with pytest.raises(ValueError, match=says.format("f", "", 1)):  # a list deeper down
        di.BatchIterator({"images": images, "f": [[r] for r in rows]}, batch_size=4)
    with (
        pytest.raises(ValueError, match=r"f: the batch is a masked array with 1 masked"),
        di.ArrayWriter(tmp_path / "w" / "w.zarr.zip", name="f", shape=(1, 2), dtype="f8") as w,
    ):
        w.append([[r] for r in rows])
    assert not (tmp_path / "w" / "w.zarr.zip").exists()
    plain = di.ImageSet(images, np.arange(n) % 2, classes=["a", "b"])
    plain.images = np.ma.masked_array(images, mask=images == 0)
    with pytest.raises(ValueError, match=says.format("images", "", images.size)):
        di.to_zarr(plain, tmp_path / "m.zarr.zip", order="source")
    assert not list(tmp_path.glob("m.*"))
    # nothing masked: the data, as any array's
    clear = np.ma.masked_array(np.arange(n) % 2, mask=np.zeros(n, bool))
    ok = di.ImageSet(images, clear, classes=["a", "b"], columns={"s": score.filled(np.nan)})
    batch = next(iter(di.BatchIterator(ok, batch_size=n, shuffle=False, arrays=("labels", "s"))))
    np.testing.assert_array_equal(batch[0], np.arange(n) % 2)
    np.testing.assert_array_equal(batch[1], score.filled(np.nan))


def test_an_array_of_unknown_length_in_a_dict_is_named():
    x = dask.array.from_array(np.arange(10.0), chunks=5)
    images = np.zeros((10, 8, 8, 3), np.uint8)
    with pytest.raises(
        ValueError, match=r"array 'score' has an unknown length.*compute_chunk_sizes"
    ):
        di.BatchIterator({"images": images, "score": x[x >= 0]}, batch_size=4)
    with pytest.raises(ValueError, match=r"array 'score' is a single value"):
        di.BatchIterator({"images": images, "score": 3.0}, batch_size=4)
    # lists beside numpy images (a tuple of images and labels): an AttributeError on .shape
    for src in ({"images": images, "labels": [0, 1] * 5}, (images, [0, 1] * 5)):
        batch = next(iter(di.BatchIterator(src, batch_size=10, shuffle=False)))
        np.testing.assert_array_equal(batch[1], [0, 1] * 5)
    batch = next(iter(di.BatchIterator({"images": list(images)}, batch_size=10, shuffle=False)))
    np.testing.assert_array_equal(batch[0], images)
    # what numpy cannot make one array of, and iterators: named (numpy's error named none)
    with pytest.raises(ValueError, match=r"array 'kp' cannot be made one numpy array.*same shape"):
        di.BatchIterator({"images": images, "kp": [[1, 2], [3]] * 5}, batch_size=4)
    with pytest.raises(ValueError, match=r"array 'labels' is an iterator \(generator\)"):
        di.BatchIterator({"images": images, "labels": (i % 2 for i in range(10))}, batch_size=4)
    # None or pandas' <NA> as a label: int() failed on it, naming nothing
    with pytest.raises(ValueError, match=r"labels, row 2: None is no class index.*-1"):
        di.ImageSet(images, [0, 1, None] + [0] * 7)


def test_a_flip_or_crop_of_images_given_channels_first_is_refused(tmp_path):
    # (N, C, H, W) arrays (PyTorch's layout) fed in memory: random_crop((2, 8)) cut the
    # three channels to two and H to 8, a flip turned the rows; to_zarr refused such images,
    # the loaders took them. Fed as they are (no transform), they come out as given
    x = np.random.default_rng(0).integers(0, 256, (10, 3, 16, 20), dtype=np.uint8)
    labels = np.arange(10) % 2
    for source in (di.ImageSet(x, labels), {"images": x}, (x, labels), dask.array.from_array(x)):
        for transform in (random_crop((2, 8)), random_flip(), compose(random_flip())):
            with pytest.raises(ValueError, match=r"look channels-first \(N, C, H, W\)"):
                di.BatchIterator(source, batch_size=4, transform=transform)
        batch = next(iter(di.BatchIterator(source, batch_size=4, shuffle=False)))
        got = batch[0] if isinstance(batch, tuple) else batch
        np.testing.assert_array_equal(got, x[:4])  # oracle: the array given
    # channels-last images 1-4 rows high with more channels: stored told the layout is
    # right (check_layout=False), the store is fed and flipped
    few = x.transpose(0, 1, 3, 2).copy()  # (10, 3, 20, 16): 3 rows, 16 channels
    store = di.to_zarr(di.ImageSet(few, labels), tmp_path / "few.zarr.zip", check_layout=False)
    flipped = next(iter(di.BatchIterator(store, batch_size=10, shuffle=False,
                                         transform=random_flip(p=1.0), arrays=("images", "index"))))  # fmt: skip
    np.testing.assert_array_equal(
        flipped[0], plain_group(store)["images"][:][flipped[1]][:, :, ::-1]
    )
    # and so is a part of it (take, split: the store's rows, no reader of their own)
    part = di.open_zarr(store).take(np.arange(6))
    got = next(iter(di.BatchIterator(part, batch_size=6, shuffle=False,
                                     transform=random_flip(p=1.0))))  # fmt: skip
    np.testing.assert_array_equal(got[0], plain_group(store)["images"][:6][:, :, ::-1])
    # the array a flip or crop moves, whatever its name
    with pytest.raises(ValueError, match=r"moves 'image' as \(N, H, W, C\).*look channels-first"):
        di.BatchIterator({"image": x, "labels": labels}, batch_size=4, arrays=("image", "labels"),
                         transform=random_crop((2, 8), key="image"))  # fmt: skip


def test_channels_first_arrays_put_in_a_set_from_a_store_are_checked(tmp_path):
    # (regression probe) the store's exemption covered every array of a set opened from
    # it: a column added, or images put in the place of its own, were flipped along H
    hwc = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    store = di.to_zarr(di.ImageSet(hwc, np.arange(8) % 2), tmp_path / "s.zarr")
    chw = np.ascontiguousarray(np.moveaxis(hwc, -1, 1))
    opened = di.open_zarr(store)
    opened.columns["aux"] = chw
    with pytest.raises(ValueError, match=r"moves 'aux' as \(N, H, W, C\).*look channels-first"):
        di.BatchIterator(opened, batch_size=4, arrays=("aux", "index"),
                         transform=random_flip(key="aux"))  # fmt: skip
    replaced = di.open_zarr(store).take(np.arange(8))
    replaced.images = dask.array.from_array(chw)
    with pytest.raises(ValueError, match=r"moves 'images' as \(N, H, W, C\)"):
        di.BatchIterator(replaced, batch_size=4, transform=random_flip())
    # the store's own images, whole or a part, are fed and flipped as stored
    got = next(iter(di.BatchIterator(di.open_zarr(store).take(np.arange(4)), batch_size=4,
                                     shuffle=False, transform=random_flip(p=1.0))))  # fmt: skip
    np.testing.assert_array_equal(got[0], plain_group(store)["images"][:4][:, :, ::-1])


def test_an_array_made_channels_first_from_a_stores_images_is_refused(tmp_path):
    # (regression probe) an array built from a store's images in another shape kept the
    # store's read in its graph and was spared: da.moveaxis to (N, C, H, W), then cropped
    hwc = np.random.default_rng(0).integers(0, 256, (24, 8, 8, 3), dtype=np.uint8)
    store = di.to_zarr(di.ImageSet(hwc, np.arange(24) % 2), tmp_path / "rgb.zarr.zip")
    cf = dask.array.moveaxis(di.open_zarr(store).arrays["images"], -1, 1)
    with pytest.raises(ValueError, match=r"moves 'images' as \(N, H, W, C\)"):
        di.BatchIterator({"images": cf}, batch_size=4, transform=random_crop((2, 8)))
    rows = di.open_zarr(store).arrays["images"][::2]  # rows of the store's: fed
    got = next(iter(di.BatchIterator({"images": rows}, batch_size=12, shuffle=False,
                                     transform=random_flip(p=1.0))))  # fmt: skip
    np.testing.assert_array_equal(got[0], plain_group(store)["images"][::2][:, :, ::-1])
