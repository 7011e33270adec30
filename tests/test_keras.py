from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
import daskimg as di  # noqa: E402
from daskimg.keras import KerasDataset  # noqa: E402


def test_model_fit_two_epochs(tmp_path, indexed_set):
    store = di.to_zarr(indexed_set, tmp_path / "train.zarr.zip", chunks=8)
    data = KerasDataset(store, batch_size=16)
    assert len(data) == 7
    x, _y = data[0]
    assert x.dtype == np.float32
    assert x.shape == (16, 6, 5, 3)
    assert float(x.max()) <= 1.0
    model = keras.Sequential(
        [
            keras.Input((6, 5, 3)),
            keras.layers.Flatten(),
            keras.layers.Dense(4, activation="softmax"),
        ]
    )
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    history = model.fit(data, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2


def test_every_sample_once_and_reshuffled(tmp_path, indexed_set):
    store = di.to_zarr(indexed_set, tmp_path / "train.zarr.zip", chunks=8)
    data = KerasDataset(store, batch_size=10, arrays=("images", "idx"), scale=None, workers=2)
    order = [2, 0, 1, *range(3, len(data))]  # asked out of order, as Keras workers do
    got = {i: data[i][1] for i in order}
    e0 = np.concatenate([got[i] for i in range(len(data))])
    assert sorted(e0.tolist()) == list(range(103))
    data.on_epoch_end()
    e1 = np.concatenate([data[i][1] for i in range(len(data))])
    assert sorted(e1.tolist()) == list(range(103))
    assert not np.array_equal(e0, e1)
