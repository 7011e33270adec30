"""KerasDataset with real Keras clients: fit (its default shuffle), validation, initial_epoch,
workers, spawned processes, predict, resume. The oracle: the fixture's pixels encode each
sample's id, and the store's ``idx`` column (read with plain zarr) maps store rows to ids."""

from __future__ import annotations

import os
import pickle
import threading
import time
import warnings

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")
psutil = pytest.importorskip("psutil")
from conftest import flip_byte_in_chunk, plain_group  # noqa: E402

import daskimg as di  # noqa: E402
from daskimg import transforms  # noqa: E402
from daskimg.errors import ChecksumError  # noqa: E402
from daskimg.keras import KerasDataset  # noqa: E402

N = 103  # samples of the ``indexed_set`` fixture

#: Keras's own predict() turns torch tensors into numpy with ``copy=False`` (keras 3.15, numpy 2)
keras_predict_warning = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # two shared cores: torch's own threads would fight the loader's (and make steps 8x slower)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def store(tmp_path, indexed_set):
    """103 samples in 13 chunks of 8, in 7 shards, in shuffled order."""
    return di.to_zarr(indexed_set, tmp_path / "train.zarr.zip", chunks=8, shard_chunks=2)


def ids_of(images):
    """The sample ids the pixels encode (images scaled to 0..1 by the default ``scale``)."""
    x = np.asarray(images, dtype=np.float64) * 255.0
    return (np.rint(x[:, 0, 0, 0]) + 256 * np.rint(x[:, 0, 0, 1])).astype(np.int64)


def to_numpy(t):
    return t.detach().cpu().numpy()  # the torch backend runs eagerly: real tensors


class Record(keras.layers.Layer):
    """Passes its input on; records the ids of what the model trains on and evaluates."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.train: list[list[np.ndarray]] = []  # per epoch, per batch
        self.test: list[list[np.ndarray]] = []  # per evaluation pass, per batch

    def call(self, x, training=None):
        seen = self.train if training else self.test
        if seen and not isinstance(x, keras.KerasTensor):  # in a pass, not building the model
            seen[-1].append(ids_of(to_numpy(x)))
        return x


class Passes(keras.callbacks.Callback):
    def __init__(self, rec):
        super().__init__()
        self.rec = rec

    def on_epoch_begin(self, epoch, logs=None):
        self.rec.train.append([])

    def on_test_begin(self, logs=None):
        self.rec.test.append([])

    def on_predict_begin(self, logs=None):
        self.rec.test.append([])


def recording_model(shape=(6, 5, 3)):
    keras.utils.set_random_seed(0)
    rec = Record()
    x = keras.Input(shape)
    h = keras.layers.GlobalAveragePooling2D()(rec(x))
    model = keras.Model(x, keras.layers.Dense(4, activation="softmax")(h))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return model, rec, Passes(rec)


def batch_sets(batches):
    """An epoch as a sorted list of batches, each the sorted ids in it (Keras's order aside)."""
    return sorted(tuple(sorted(b.tolist())) for b in batches)


def flat(batches):
    return np.concatenate(batches).tolist()


# -- fit --------------------------------------------------------------------------------
def test_fit_default_shuffle_trains_on_every_sample_once_per_epoch(store):
    data = KerasDataset(store, batch_size=10)
    model, rec, passes = recording_model()
    model.fit(data, epochs=3, verbose=0, callbacks=[passes])  # fit's own shuffle=True
    assert len(rec.train) == 3
    for epoch in rec.train:
        assert len(epoch) == 11
        assert sorted(flat(epoch)) == list(range(N))
    assert len({tuple(batch_sets(e)) for e in rec.train}) == 3  # reshuffled every epoch
    assert data.epoch == 3
    stats = data.read_stats()
    assert stats.peak_cached_chunks <= 13  # all 13 chunks fit in the cache (3 * 8)
    assert stats.chunks_loaded >= 13  # from the store, chunk by chunk


def test_fit_on_inputs_only_in_store_order_says_so_once(store):
    # an autoencoder (or a custom compute_loss) fit on a KerasDataset of inputs only got the
    # same batches every epoch without a word: inputs only default to store order, for predict
    class Reconstruct(keras.Model):
        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
            return keras.ops.mean(y_pred**2)

    inputs = keras.Input((6, 5, 3))
    model = Reconstruct(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs)))
    model.compile("sgd")
    data = KerasDataset(store, batch_size=10, arrays=("images",))
    with warnings.catch_warnings(record=True) as said:  # (Keras's own warnings recorded too)
        warnings.simplefilter("always")
        model.fit(data, epochs=2, verbose=0)
    told = [w for w in said if "fit on a KerasDataset of inputs only" in str(w.message)]
    assert len(told) == 1 and told[0].category is UserWarning  # once
    with warnings.catch_warnings(record=True) as quiet:
        warnings.simplefilter("always")
        kept = KerasDataset(store, batch_size=10, arrays=("images",), shuffle=False)
        model.fit(kept, epochs=1, verbose=0)  # the order chosen: no word
        mixed = KerasDataset(store, batch_size=10, arrays=("images",), shuffle=True)
        model.fit(mixed, epochs=1, verbose=0)
    assert not [w for w in quiet if "inputs only" in str(w.message)]


def test_fit_default_shuffle_keeps_memory_bounded(tmp_path):
    # 100 MB of pixels in 512 chunks; the cache holds 24 of them (4.7 MB). The previous
    # adapter built batches in order and kept those not yet asked for: most of an epoch
    # (+70 MB on half this store, +136 MB with workers=2).
    n, hw = 8192, 64
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, hw, hw, 3), dtype=np.uint8)  # lz4 cannot shrink noise
    images[:, 0, 0, 0], images[:, 0, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
    path = di.to_zarr(di.ImageSet(images, np.arange(n) % 4), tmp_path / "big.zarr.zip", chunks=16)
    store_bytes = images.nbytes
    del images
    data = KerasDataset(path, batch_size=32)
    model, rec, passes = recording_model((hw, hw, 3))
    # model, optimizer and allocator set up before measuring
    model.fit(np.zeros((64, hw, hw, 3), np.float32), np.zeros(64), epochs=1, verbose=0)
    rec.train.clear()

    proc = psutil.Process()

    def private():  # resident memory that is not the memory-mapped store (page cache)
        m = proc.memory_info()
        return m.rss - m.shared

    base = private()
    peak, done = [base], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], private())
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        model.fit(data, epochs=1, verbose=0, callbacks=[passes])
    finally:
        done.set()
        watcher.join()
    assert sorted(flat(rec.train[0])) == list(range(n))
    stats = data.read_stats()
    chunk_bytes = 16 * hw * hw * 3
    assert stats.peak_cached_chunks <= 24
    assert stats.peak_cached_bytes <= 24 * chunk_bytes
    growth = peak[0] - base
    # the cache, a few batches (uint8 and float32), what fit itself allocates (+11 MB with
    # a numpy PyDataset) and allocator slack (+15..20 MB in all); not the store
    assert growth < 0.3 * store_bytes, f"grew {growth / 1e6:.1f} MB"


def test_fit_initial_epoch_reads_that_epochs_order(store):
    full = KerasDataset(store, batch_size=10)
    model, rec, passes = recording_model()
    model.fit(full, epochs=3, verbose=0, callbacks=[passes])
    epoch2 = batch_sets(rec.train[2])
    assert epoch2 != batch_sets(rec.train[0])  # so a replay of epoch 0 would fail below

    resumed = KerasDataset(store, batch_size=10)
    resumed.set_epoch(2)
    model, rec, passes = recording_model()
    model.fit(resumed, initial_epoch=2, epochs=3, verbose=0, callbacks=[passes])
    assert batch_sets(rec.train[0]) == epoch2

    # the callback follows Keras's epoch number: no set_epoch needed
    followed = KerasDataset(store, batch_size=10)
    model, rec, passes = recording_model()
    cb = followed.epoch_callback()
    model.fit(followed, initial_epoch=2, epochs=3, verbose=0, callbacks=[cb, passes])
    assert batch_sets(rec.train[0]) == epoch2
    assert followed.epoch == 3


def test_epoch_callback_refuses_short_keras_epochs(store):
    # Keras walks one batch order on across short epochs; the callback's new epoch plan at
    # each of them repeated about a third of the samples of a pass and missed as many
    ds = KerasDataset(store, batch_size=10)
    model, rec, passes = recording_model()
    with pytest.raises(ValueError, match=r"len\(ds\)=\d+ batches per epoch; steps_per_epoch=3"):
        model.fit(ds, epochs=2, steps_per_epoch=3, verbose=0, callbacks=[ds.epoch_callback()])
    assert rec.train == [] or all(len(e) == 0 for e in rec.train)  # refused before training
    # steps_per_epoch equal to len(ds) is what the callback pairs with
    model, rec, passes = recording_model()
    model.fit(
        ds, epochs=1, steps_per_epoch=len(ds), verbose=0, callbacks=[ds.epoch_callback(), passes]
    )


def test_fit_with_validation_data_evaluates_each_sample_once_in_store_order(store):
    train = KerasDataset(store, batch_size=10)
    valid = KerasDataset(store, batch_size=16, shuffle=False)
    model, rec, passes = recording_model()
    model.fit(train, validation_data=valid, epochs=2, verbose=0, callbacks=[passes])
    store_order = plain_group(store)["idx"][:].tolist()  # sample id of each store row
    assert len(rec.test) == 2
    for validation in rec.test:
        assert flat(validation) == store_order
    for epoch in rec.train:
        assert sorted(flat(epoch)) == list(range(N))


@pytest.mark.parametrize("shuffle", [True, False])
def test_fit_with_two_workers_is_exact_per_epoch(store, shuffle):
    data = KerasDataset(store, batch_size=10, workers=2)
    # Keras's enqueuer, which carries batches across epochs, is unused: Keras sees 1
    assert data.workers == 1 and data.use_multiprocessing is False
    with pytest.raises(AttributeError, match="across epochs"):
        data.workers = 4
    model, rec, passes = recording_model()
    model.fit(data, epochs=3, shuffle=shuffle, verbose=0, callbacks=[passes])
    for epoch in rec.train:
        assert sorted(flat(epoch)) == list(range(N))
    assert len({tuple(batch_sets(e)) for e in rec.train}) == 3
    if not shuffle:  # asked in order: the workers read ahead, the batches are the plan's
        direct = KerasDataset(store, batch_size=10)
        direct.set_epoch(2)
        assert [b.tolist() for b in rec.train[2]] == [
            ids_of(direct[i][0]).tolist() for i in range(11)
        ]


@keras_predict_warning
def test_use_multiprocessing_spawns_workers_that_reopen_the_store(store):
    data = KerasDataset(store, batch_size=10, workers=2, use_multiprocessing=True)
    state = pickle.dumps(data)
    assert b"_thread" not in state and b"RLock" not in state
    try:
        model, rec, passes = recording_model()
        model.fit(data, epochs=2, verbose=0, callbacks=[passes])
        for epoch in rec.train:
            assert sorted(flat(epoch)) == list(range(N))
        assert batch_sets(rec.train[0]) != batch_sets(rec.train[1])
        # evaluate asks in order: the workers read ahead; rows follow epoch 2's plan
        model.evaluate(data, verbose=0, callbacks=[passes])
        here = KerasDataset(store, batch_size=10, arrays=("images", "index"))
        here.set_epoch(2)
        assert flat(rec.test[0]) == flat([ids_of(here[i][0]) for i in range(len(here))])
        assert data.epoch == 3
    finally:
        data.close()


def test_use_multiprocessing_refuses_a_transform_it_cannot_pickle(store):
    with pytest.raises(ValueError, match="picklable"):
        KerasDataset(store, batch_size=10, transform=lambda b, r: b, use_multiprocessing=True)
    # daskimg's own transforms are plain objects: they travel to the worker processes
    KerasDataset(store, batch_size=10, transform=transforms.random_flip(), use_multiprocessing=True)


# -- predict and named inputs -----------------------------------------------------------
@keras_predict_warning
def test_predict_returns_rows_in_store_order_by_default(store):
    inputs_only = KerasDataset(store, batch_size=16, arrays=("images",), workers=2)
    assert inputs_only.shuffle is False
    assert KerasDataset(store, batch_size=16).shuffle is True  # with targets: training
    model, _, _ = recording_model()
    pixel_ids = keras.layers.Lambda(lambda x: x[:, 0, 0, 0] * 255 + x[:, 0, 0, 1] * 255 * 256)
    reader = keras.Model(model.inputs, pixel_ids(model.inputs[0]))
    predicted = reader.predict(inputs_only, verbose=0)
    np.testing.assert_allclose(predicted, plain_group(store)["idx"][:], atol=1e-3)
    # with targets the default shuffles (training): predict from it is refused, since its
    # rows would come back in the shuffled order (they landed on other samples)
    for shuffled in (
        KerasDataset(store, batch_size=16),
        KerasDataset(store, batch_size=16, arrays=("images",), shuffle=True),
    ):
        with pytest.raises(ValueError, match=r"model.predict on a KerasDataset that shuffles"):
            reader.predict(shuffled, verbose=0)
    in_order = KerasDataset(store, batch_size=16, shuffle=False)  # targets, store order
    predicted = reader.predict(in_order, verbose=0)
    np.testing.assert_allclose(predicted, plain_group(store)["idx"][:], atol=1e-3)


def test_named_dict_inputs_and_outputs_feed_a_functional_model(store):
    data = KerasDataset(
        store,
        batch_size=10,
        arrays=({"pixels": "images", "ident": "idx"}, {"cls": "labels"}),
    )
    inputs, targets = data[4]
    assert set(inputs) == {"pixels", "ident"} and set(targets) == {"cls"}
    np.testing.assert_array_equal(ids_of(inputs["pixels"]), inputs["ident"])
    np.testing.assert_array_equal(targets["cls"], inputs["ident"] % 4)  # the fixture's labels

    keras.utils.set_random_seed(0)
    rec = Record()
    pixels = keras.Input((6, 5, 3), name="pixels")
    ident = keras.Input((), name="ident", dtype="int64")
    pairs = []

    class Pair(keras.layers.Layer):  # records (id from the pixels, id input) per sample
        def call(self, x, i, training=None):
            if training and not isinstance(x, keras.KerasTensor):
                pairs.append((ids_of(to_numpy(x)), to_numpy(i)))
            return x

    h = keras.layers.GlobalAveragePooling2D()(Pair()(rec(pixels), ident))
    out = keras.layers.Dense(4, activation="softmax", name="cls")(h)
    model = keras.Model({"pixels": pixels, "ident": ident}, {"cls": out})
    model.compile(optimizer="sgd", loss={"cls": "sparse_categorical_crossentropy"})
    model.fit(data, epochs=2, verbose=0, callbacks=[Passes(rec)])
    assert len(pairs) == 22
    for from_pixels, given in pairs:
        np.testing.assert_array_equal(from_pixels, given)  # each input went to its name
    for epoch in rec.train:
        assert sorted(flat(epoch)) == list(range(N))


def test_arrays_forms_that_are_refused(store):
    with pytest.raises(ValueError, match=r"\(inputs, targets\)"):
        KerasDataset(store, batch_size=4, arrays={"pixels": "images"})  # which part is it?
    with pytest.raises(ValueError, match="must map names to array names"):
        KerasDataset(store, batch_size=4, arrays=({"pixels": 3}, "labels"))
    with pytest.raises(ValueError, match="4 parts"):
        KerasDataset(store, batch_size=4, arrays=("images", "labels", "idx", "idx"))
    with pytest.raises(KeyError, match="nope"):
        KerasDataset(store, batch_size=4, arrays=({"pixels": "nope"}, "labels"))
    with pytest.raises(TypeError, match='"index"'):
        KerasDataset(store, batch_size=4, arrays=("images", "paths"))


def test_index_gives_each_samples_store_row(store):
    data = KerasDataset(store, batch_size=10, arrays=("images", "index"))
    idx = plain_group(store)["idx"][:]
    rows = []
    for i in np.random.default_rng(1).permutation(len(data)).tolist():
        images, index = data[i]
        assert index.dtype == np.int64
        np.testing.assert_array_equal(idx[index], ids_of(images))
        rows.append(index)
    assert sorted(flat(rows)) == list(range(N))


# -- reading by index ---------------------------------------------------------------------
def test_any_index_order_gives_the_plans_batches_exactly_once(store):
    flip = transforms.random_flip(p=0.5)
    data = KerasDataset(store, batch_size=10, arrays=("images", "index"), transform=flip)
    data.set_epoch(1)
    order = np.random.default_rng(0).permutation(len(data)).tolist()
    got = {i: data[i] for i in order}
    again = data[order[3]]  # the same batch, augmented the same way
    np.testing.assert_array_equal(again[0], got[order[3]][0])
    idx = plain_group(store)["idx"][:]  # sample id of each store row
    it = di.BatchIterator(store, batch_size=10, arrays=("images", "idx"), transform=flip, seed=0)
    it.set_epoch(1)
    for i, (images, ids) in enumerate(it):  # the iterator's batch i, flips included
        np.testing.assert_array_equal(idx[got[i][1]], ids)
        np.testing.assert_array_equal(got[i][0], images.astype(np.float32) / 255)
    assert sorted(flat([got[i][1] for i in order])) == list(range(N))


def test_reads_are_chunkwise_in_order_and_bounded_in_any_order(store):
    in_order = KerasDataset(store, batch_size=10, buffer_chunks=2)
    for i in range(len(in_order)):
        in_order[i]
    assert in_order.read_stats().amplification == 1.0  # each chunk read once
    shuffled = KerasDataset(store, batch_size=10, buffer_chunks=2, cache_chunks=4)
    for i in np.random.default_rng(0).permutation(len(shuffled)).tolist():
        shuffled[i]
    stats = shuffled.read_stats()
    assert stats.peak_cached_chunks <= 4
    assert stats.samples_delivered == N
    assert 1.0 <= stats.amplification <= 3.0  # a chunk feeds at most 3 batches here
    assert stats.chunks_loaded > 13  # a small cache: some chunks were read again


@pytest.mark.parametrize("codec", ["lz4", "none", "jpeg"])
def test_every_codec_by_index(tmp_path, codec):
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (60, 16, 24, 3), dtype=np.uint8)
    ds = di.ImageSet(images, np.arange(60) % 3, columns={"idx": np.arange(60)})
    path = di.to_zarr(ds, tmp_path / "c.zarr.zip", chunks=8, shard_chunks=2, codec=codec)
    stored = plain_group(path)["images"][:]
    data = KerasDataset(path, batch_size=7, arrays=("images", "index"), scale=None)
    for i in np.random.default_rng(2).permutation(len(data)).tolist():
        images_b, index = data[i]
        np.testing.assert_array_equal(images_b, stored[index])


def test_a_damaged_chunk_is_an_error_naming_it_every_time(store):
    flip_byte_in_chunk(store, "images", 5)
    data = KerasDataset(store, batch_size=10, shuffle=False, buffer_chunks=1)
    bad = next(i for i in range(len(data)) if 5 in (data.plan(0).batches[i] // 8).tolist())
    for _ in range(2):  # a failed load is not cached
        with pytest.raises(ChecksumError, match="chunk 5"):
            data[bad]


def test_a_dask_source_on_a_distributed_client(image_folder, client):
    source = di.from_folder(image_folder, size=(16, 16))  # lazy: decoded by dask per block
    data = KerasDataset(source, batch_size=5, arrays=("images", "index"), scale=None)
    expected = source.images.compute()
    for i in np.random.default_rng(0).permutation(len(data)).tolist():
        images, index = data[i]
        np.testing.assert_array_equal(images, expected[index])


# -- epochs, pickling, resume -------------------------------------------------------------
def test_epoch_moves_on_only_once_served_whole(store):
    data = KerasDataset(store, batch_size=10, arrays=("images", "index"))
    data.on_epoch_begin()
    data[3]  # a peek, like Keras building a model
    data.on_epoch_end()
    assert data.epoch == 0
    for i in range(len(data)):
        data[i]
    data.on_epoch_end()
    assert data.epoch == 1
    data.set_epoch(5)
    assert [b[1].tolist() for b in data] != []  # iterating serves the epoch, then moves on
    assert data.epoch == 6


def test_pickled_copy_reopens_the_store_and_serves_the_same_batches(store):
    data = KerasDataset(store, batch_size=10, arrays=("images", "index"), seed=None)
    data.set_epoch(2)
    first = data[1]
    copy = pickle.loads(pickle.dumps(data))
    assert copy.epoch == 2 and copy.seed == data.seed  # seed=None drew one, kept
    assert isinstance(data.seed, int)
    data.close()
    del data  # the copy opened the store itself
    np.testing.assert_array_equal(copy[1][1], first[1])
    np.testing.assert_array_equal(copy[1][0], first[0])


@pytest.mark.parametrize("stop_epoch", [0, 1])
def test_resume_in_the_middle_of_an_epoch_gives_exactly_the_rest(store, stop_epoch):
    full = KerasDataset(store, batch_size=10)
    model, rec, passes = recording_model()
    model.fit(full, epochs=2, verbose=0, callbacks=[passes])
    expected = batch_sets(rec.train[stop_epoch])

    saved = {}

    class StopMidEpoch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if len(rec.train) == stop_epoch + 1 and batch == 4:
                saved["state"] = first.state_dict()
                self.model.stop_training = True

    first = KerasDataset(store, batch_size=10)
    first[7]  # looked at by hand: not trained on
    model, rec, passes = recording_model()  # unbuilt: Keras reads a batch to build it
    callbacks = [first.epoch_callback(), passes, StopMidEpoch()]
    model.fit(first, epochs=2, verbose=0, callbacks=callbacks)
    before = rec.train[stop_epoch]
    assert len(before) == 5
    assert saved["state"]["epoch"] == stop_epoch and len(saved["state"]["consumed"]) == 5

    second = KerasDataset(store, batch_size=10)
    second.load_state_dict(saved["state"])
    assert len(second) == 6
    model, rec, passes = recording_model()
    callbacks = [second.epoch_callback(), passes]
    model.fit(
        second, initial_epoch=stop_epoch, epochs=stop_epoch + 1, verbose=0, callbacks=callbacks
    )
    assert batch_sets(before + rec.train[0]) == expected
    assert second.epoch == stop_epoch + 1 and len(second) == 11


@pytest.mark.parametrize("stop_after", [4, 10])  # mid-epoch, and with one batch left
def test_the_batch_keras_reads_to_build_a_model_is_not_served(store, stop_after):
    # without epoch_callback, the batch an unbuilt model's first fit reads counted as served:
    # a state saved in the first epoch left one batch of it out (10 samples never trained
    # on), and with one batch left the peek took it and moved the dataset to the next epoch
    full = KerasDataset(store, batch_size=10)
    model, rec, passes = recording_model()
    model.fit(full, epochs=2, verbose=0, callbacks=[passes])
    expected = [batch_sets(e) for e in rec.train]
    saved = {}

    class Stop(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == stop_after - 1:
                saved["state"] = first.state_dict()
                self.model.stop_training = True

    first = KerasDataset(store, batch_size=10)
    model, rec, passes = recording_model()  # unbuilt: Keras reads a batch to build it
    model.fit(first, epochs=2, verbose=0, callbacks=[passes, Stop()])
    before = rec.train[0]
    assert len(before) == stop_after and len(saved["state"]["consumed"]) == stop_after
    ds = KerasDataset(store, batch_size=10)
    ds.load_state_dict(saved["state"])
    assert (ds.epoch, len(ds)) == (0, 11 - stop_after)
    model, rec, passes = recording_model()  # unbuilt again: its peek is not served either
    model.fit(ds, initial_epoch=0, epochs=1, verbose=0, callbacks=[passes])
    model.fit(ds, initial_epoch=1, epochs=2, verbose=0, callbacks=[passes])
    assert batch_sets(before + rec.train[0]) == expected[0]
    assert batch_sets(rec.train[1]) == expected[1]


@pytest.mark.parametrize("served", [5, 11])  # mid-epoch, and after the epoch's last batch
def test_the_documented_resume_trains_on_the_uninterrupted_batches(store, served):
    # a state saved after the last batch: ds.epoch is the next one, and fit(initial_epoch=
    # state['epoch']) retrained the epoch (with the callback) or shifted every later epoch
    # (without); one fit call after a mid-epoch state cut the later epochs to the rest's count
    full = KerasDataset(store, batch_size=10)
    model, rec, passes = recording_model()
    model.fit(full, epochs=3, verbose=0, callbacks=[passes])
    expected = [batch_sets(e) for e in rec.train]
    assert len({tuple(map(tuple, e)) for e in expected}) == 3 and len(rec.train[0]) == 11

    first = KerasDataset(store, batch_size=10)
    head = [ids_of(first[i][0]) for i in range(served)]  # the batches a first run trained on
    first.on_epoch_end()  # Keras's end of the pass (an interrupted one ends no epoch)
    state = first.state_dict()

    ds = KerasDataset(store, batch_size=10)
    ds.load_state_dict(state)
    assert (ds.epoch, len(ds)) == ((0, 6) if served == 5 else (1, 11))
    model, rec, passes = recording_model()
    cb = ds.epoch_callback()
    if len(ds) < ds.full_epoch:  # the README's recipe
        with pytest.raises(ValueError, match=r"rest of epoch 0 \(6 of 11 batches.*own call"):
            model.fit(ds, initial_epoch=ds.epoch, epochs=3, verbose=0, callbacks=[cb])
        model.fit(
            ds, initial_epoch=ds.epoch, epochs=ds.epoch + 1, verbose=0, callbacks=[cb, passes]
        )
    model.fit(ds, initial_epoch=ds.epoch, epochs=3, verbose=0, callbacks=[cb, passes])
    got = rec.train if served == 5 else [[], *rec.train]
    assert batch_sets(head + got[0]) == expected[0]
    assert [batch_sets(e) for e in got[1:]] == expected[1:]


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("batch_size", 12),
        ("shuffle", False),
        ("buffer_chunks", 2),
        ("drop_last", True),
        ("seed", 1),
    ],
)
def test_a_state_refuses_other_settings_naming_them(store, setting, value):
    state = KerasDataset(store, batch_size=10).state_dict()
    other = KerasDataset(store, **{"batch_size": 10, setting: value})
    with pytest.raises(ValueError, match=rf"{setting}=.*this dataset"):
        other.load_state_dict(state)


def test_a_state_refuses_another_store(tmp_path, store, indexed_set):
    state = KerasDataset(store, batch_size=10).state_dict()
    other = di.to_zarr(indexed_set, tmp_path / "other.zarr.zip", chunks=8, seed=1)
    with pytest.raises(ValueError, match="source="):
        KerasDataset(other, batch_size=10).load_state_dict(state)
    moved = tmp_path / "moved.zarr.zip"
    os.rename(store, moved)  # the same store elsewhere resumes
    KerasDataset(moved, batch_size=10).load_state_dict(state)


@pytest.mark.parametrize(
    ("dtype", "peak", "want"),
    [("uint8", 255, 1.0), ("uint16", 65535, 1.0), ("float32", 1.0, 1.0), ("float32", 255.0, 255.0)],
)
def test_default_scale_follows_the_image_dtype(dtype, peak, want):
    """The default divided every store by 255: a float store already in 0..1 (a common HDF5
    export) came out at most 0.0039, uint16 at most 257 (TorchDataset scales by dtype)."""
    images = np.zeros((6, 4, 4, 3), dtype=dtype)
    images[0, 0, 0, 0] = peak
    data = KerasDataset((images, np.zeros(6, np.int64)), batch_size=6, shuffle=False)
    x, _ = data[0]
    assert x.dtype == np.float32 and float(x.max()) == want
    explicit = KerasDataset(
        (images, np.zeros(6, np.int64)), batch_size=6, shuffle=False, scale=None
    )
    assert float(explicit[0][0].max()) == float(peak)


def test_one_fit_after_a_mid_epoch_state_without_the_callback_is_stopped_not_cut(store):
    # without epoch_callback(), one fit(epochs=3) after a mid-epoch state trained epochs 1
    # and 2 on 6 of their 11 batches each (Keras keeps the first epoch's step count)
    first = KerasDataset(store, batch_size=10)
    head = [ids_of(first[i][0]) for i in range(5)]
    ds = KerasDataset(store, batch_size=10)
    ds.load_state_dict(first.state_dict())
    assert (ds.epoch, len(ds), ds.full_epoch) == (0, 6, 11)
    model, rec, passes = recording_model()
    with pytest.raises(ValueError, match=r"this fit runs 6 batches per epoch.*epoch 1 has 11"):
        model.fit(ds, epochs=3, verbose=0, callbacks=[passes])
    assert [len(e) for e in rec.train] == [6, 0]  # epoch 1 not trained on a cut plan
    # the oracle: the uninterrupted run's epoch 0
    full = KerasDataset(store, batch_size=10)
    assert batch_sets(head + rec.train[0]) == batch_sets([ids_of(full[i][0]) for i in range(11)])
    model.fit(ds, initial_epoch=ds.epoch, epochs=3, verbose=0, callbacks=[passes])
    assert [len(e) for e in rec.train[2:]] == [11, 11]
    for epoch in rec.train[2:]:
        assert sorted(flat(epoch)) == list(range(N))


def test_int32_volumes_float32_would_round_are_refused_by_auto_scale(tmp_path):
    # scale="auto" keeps volumes' values but cast them to float32: ID 16777217 came out
    # as 16777216
    ids = np.zeros((4, 2, 3, 3, 1), np.int32)
    ids[:, 0, 0, 0, 0] = [16777217, 16777219, 123456789, 5]
    store = di.to_zarr(di.ImageSet(ids, np.arange(4) % 2), tmp_path / "ids.zarr.zip")
    with pytest.raises(ValueError, match=r"images hold 123456789 \(int32\), which float32"):
        KerasDataset(store, batch_size=4, shuffle=False, arrays=("images",))[0]
    kept = KerasDataset(store, batch_size=4, shuffle=False, arrays=("images",), scale=None)[0]
    got = kept[0] if isinstance(kept, tuple) else kept
    np.testing.assert_array_equal(got, plain_group(store)["images"][...])  # the oracle


def test_float64_values_float32_cannot_hold_are_refused_not_made_inf(tmp_path):
    # 1e39 in a float64 volume came out of scale="auto" (and scale=2) as float32 inf, with
    # only numpy's overflow warning; TorchDataset refused the same cast
    vol = np.zeros((2, 2, 3, 3, 1), np.float64)
    vol[0, 0, 0, 0, 0], vol[1, 1, 1, 1, 0] = 1e39, -2.5
    store = di.to_zarr(di.ImageSet(vol, np.array([0, 1])), tmp_path / "f.zarr.zip")
    for scale in ("auto", 2.0):
        ds = KerasDataset(store, batch_size=2, shuffle=False, arrays=("images",), scale=scale)
        with pytest.raises(ValueError, match=r"images hold 1e\+39 \(float64\), which is infinity"):
            ds[0]
    # divided first, where it fits: 1e39 / 1e10 is 1e29 in float32, not inf / 1e10
    ds = KerasDataset(store, batch_size=2, shuffle=False, arrays=("images",), scale=1e10)
    got = ds[0][0] if isinstance(ds[0], tuple) else ds[0]
    oracle = (plain_group(store)["images"][...] / 1e10).astype(np.float32)
    np.testing.assert_array_equal(got, oracle)
    assert np.isfinite(got).all()


def test_float64_values_float32_would_make_0_are_refused(tmp_path):
    # 1e-300 in a float64 volume came out of scale="auto" as float32 0 without a word (a
    # log of it is -inf), while 1e39 (inf) was refused
    vol = np.full((2, 2, 3, 3, 1), 2e-300)
    vol[1, 0, 0, 0, 0] = -1e-300
    store = di.to_zarr(di.ImageSet(vol, np.array([0, 1])), tmp_path / "f.zarr.zip")
    for scale in ("auto", 2.0):
        ds = KerasDataset(store, batch_size=2, shuffle=False, arrays=("images",), scale=scale)
        with pytest.raises(ValueError, match=r"images hold -1e-300 \(float64\), which is 0 in"):
            ds[0]
    # divided first, where it fits: -1e-300 / 1e-290 is -1e-10 in float32
    ds = KerasDataset(store, batch_size=2, shuffle=False, arrays=("images",), scale=1e-290)
    got = ds[0][0] if isinstance(ds[0], tuple) else ds[0]
    oracle = (plain_group(store)["images"][...] / 1e-290).astype(np.float32)
    np.testing.assert_array_equal(got, oracle)
    assert (got != 0).all()


def test_keras_checks_what_a_transform_returns_and_refuses_an_empty_source(store):
    # (review) KerasDataset reads through its own batch reader: a transform that cut the
    # labels short handed out 4 images with 3 labels, and an empty source gave len 0
    def shorter(batch, rng):
        return {**batch, "labels": batch["labels"][1:]}

    with pytest.raises(ValueError, match="returned 'labels' with 3 rows for a batch of 4"):
        KerasDataset(store, batch_size=4, transform=shorter)[0]
    with pytest.raises(ValueError, match="the source holds no samples"):
        KerasDataset(di.open_zarr(store).take(np.arange(0)), batch_size=4)


def test_keras_refuses_settings_that_feed_nothing_or_wrong_values(store):
    # scale=0 or nan made every batch NaN (-255 flipped the sign); batch_size > N with
    # drop_last built a dataset of 0 batches that Keras then failed on far from the cause
    for scale in (0, float("nan"), -255, True, "auto "):
        with pytest.raises(ValueError, match="scale must be a positive number, 'auto' or None"):
            KerasDataset(store, batch_size=10, scale=scale)
    with pytest.raises(ValueError, match=r"batch_size=256 with drop_last=True leaves no batch"):
        KerasDataset(store, batch_size=256, drop_last=True)


@keras_predict_warning
def test_predict_over_part_of_an_epoch_is_refused(store):
    # after a state loaded mid-epoch, predict returned the rest (row 0 was sample 32), and
    # with drop_last the last samples were missing: row k was not sample k, without a word
    model = keras.Sequential(
        [keras.Input((6, 5, 3)), keras.layers.Flatten(), keras.layers.Dense(1)]
    )
    dropped = KerasDataset(store, batch_size=10, arrays=("images",), drop_last=True)
    with pytest.raises(ValueError, match=r"drop_last=True leaves out the last 3 of the 103"):
        model.predict(dropped, verbose=0)
    first = KerasDataset(store, batch_size=10, arrays=("images",))
    for i in (0, 4, 5, 7):
        first[i]
    resumed = KerasDataset(store, batch_size=10, arrays=("images",))
    resumed.load_state_dict(first.state_dict())
    with pytest.raises(ValueError, match=r"a state loaded mid-epoch leaves 7 of its 11 batches"):
        model.predict(resumed, verbose=0)
    whole = model.predict(KerasDataset(store, batch_size=10, arrays=("images",)), verbose=0)
    assert len(whole) == N


def test_worker_processes_refuse_a_store_replaced_since_the_dataset_was_made(tmp_path, indexed_set):
    # spawned workers opened the store again by its path: one written again since (a re-run
    # ingest cell with another seed) was read silently, 50 more samples never seen
    path = tmp_path / "train.zarr.zip"
    di.to_zarr(indexed_set, path, chunks=8)
    data = KerasDataset(str(path), batch_size=10, workers=2, use_multiprocessing=True)
    di.to_zarr(indexed_set, path, chunks=8, seed=5, overwrite=True)
    with pytest.raises(ChecksumError, match="the store was replaced since this dataset was made"):
        data[0]


def test_repr_says_what_is_fed(store):
    ds = KerasDataset(store, batch_size=10, seed=5)
    assert repr(ds) == (
        f"KerasDataset({str(store)!r}, batch_size=10, batches={-(-N // 10)}, "
        "arrays=['images', 'labels'], shuffle=True, seed=5, epoch=0)"
    )


def test_a_pass_over_the_training_set_inside_its_own_fit_epoch_is_refused(store):
    # evaluate(train) from a callback mid-epoch served the rest of the epoch, which moved
    # on: the fit's remaining steps read the next epoch's batches (54 of 200 samples trained
    # twice, 54 never); a dataset of its own over the same store is the way
    train = KerasDataset(store, batch_size=16, seed=1)
    other = KerasDataset(store, batch_size=16, shuffle=False)

    class Mid(keras.callbacks.Callback):
        def __init__(self, ds, how):
            super().__init__()
            self.ds, self.how = ds, how

        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:
                if self.how == "evaluate":
                    self.model.evaluate(self.ds, verbose=0)
                else:
                    sum(len(y) for _, y in self.ds)

    for how in ("evaluate", "iterate"):
        model, rec, passes = recording_model()
        with pytest.raises(ValueError, match=r"in the middle of its own fit's epoch \(3 of 7"):
            model.fit(train, epochs=1, verbose=0, callbacks=[passes, Mid(train, how)])
    model, rec, passes = recording_model()
    fresh = KerasDataset(store, batch_size=16, seed=1)
    model.fit(fresh, epochs=2, verbose=0, callbacks=[passes, Mid(other, "evaluate")])
    for epoch in rec.train:  # the oracle: the ids the pixels encode, each once an epoch
        assert sorted(flat(epoch)) == list(range(N))
    model.fit(fresh, epochs=1, verbose=0, validation_data=fresh)  # at the epoch's end: served


class _Brightness:
    """A user's transform: brightness in float maths on about half of the batches."""

    def __call__(self, batch, rng):
        if rng.random() < 0.5:
            batch = dict(batch)
            batch["images"] = np.clip(batch["images"] * rng.uniform(0.9, 1.1), 0, 255)
        return batch


def test_auto_scale_refuses_a_transform_that_returns_images_of_two_types(tmp_path):
    """scale="auto" chose the divisor from the type the transform returned: float maths on
    a uint8 store's pixels made those batches 0..255 (divided by 1) beside 0..1 ones
    (by 255), fed on two scales without a word. The oracle: every pixel stored is 200."""
    path = di.to_zarr(
        di.ImageSet(np.full((128, 8, 8, 3), 200, np.uint8), np.zeros(128, int), classes=["a"]),
        tmp_path / "s.zarr.zip", chunks=16,
    )  # fmt: skip
    ds = KerasDataset(path, batch_size=16, transform=_Brightness())
    with pytest.raises(ValueError, match=r"in an earlier one.*two scales"):  # noqa: PT012
        for i in range(len(ds)):  # (some batch of the 8 draws the float maths)
            ds[i]
    # the scale given: every batch on one scale, the transform's own values
    ds = KerasDataset(path, batch_size=16, transform=_Brightness(), scale=255.0)
    tops = [float(ds[i][0].max()) for i in range(len(ds))]
    assert all(0.7 < t <= 1.0 for t in tops), tops
    # a transform that keeps the type is scaled as before; one that always returns floats
    # it scaled itself is taken as it is (every batch on its scale)
    keep = lambda batch, rng: {**batch, "images": 255 - batch["images"]}  # noqa: E731
    ds = KerasDataset(path, batch_size=16, transform=keep)
    np.testing.assert_allclose(ds[0][0], np.full((16, 8, 8, 3), 55 / 255, np.float32))
    own = lambda batch, rng: {**batch, "images": batch["images"] / np.float32(255)}  # noqa: E731
    ds = KerasDataset(path, batch_size=16, transform=own)
    for i in range(len(ds)):
        np.testing.assert_allclose(ds[i][0], np.full((16, 8, 8, 3), 200 / 255, np.float32))


def test_a_flip_of_images_given_channels_first_is_refused():
    # (N, C, H, W) arrays: the flip turned the rows (it takes axis -2 for the width)
    from daskimg.transforms import random_flip

    x = np.zeros((10, 3, 16, 20), np.uint8)
    with pytest.raises(ValueError, match=r"look channels-first \(N, C, H, W\)"):
        KerasDataset(di.ImageSet(x, np.arange(10) % 2), batch_size=4, transform=random_flip())
