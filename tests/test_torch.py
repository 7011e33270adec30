from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import daskimg as di  # noqa: E402
from daskimg.torch import TorchDataset  # noqa: E402


@pytest.fixture
def store(tmp_path, indexed_set):
    return di.to_zarr(indexed_set, tmp_path / "train.zarr.zip", chunks=8, seed=0)


def _ids(loader):
    out = []
    for images, idx in loader:
        assert isinstance(images, torch.Tensor)
        decoded = images[:, 0, 0, 0].long() + 256 * images[:, 0, 0, 1].long()
        assert torch.equal(decoded, idx)  # pixels and index column travel together
        out.append(idx.numpy())
    return np.concatenate(out)


def test_dataloader_two_workers_each_sample_once(store):
    ds = TorchDataset(store, batch_size=10, arrays=("images", "idx"), num_workers=2)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    ids = _ids(loader)
    assert sorted(ids.tolist()) == list(range(103))
    assert len(ds) == sum(1 for _ in loader)


def test_two_ranks_two_workers_each_sample_once(store):
    seen = []
    lengths = []
    for rank in range(2):
        ds = TorchDataset(
            store, batch_size=10, arrays=("images", "idx"), rank=rank, world_size=2, num_workers=2
        )
        ds.set_epoch(3)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
        seen.append(_ids(loader))
        lengths.append(len(ds))
    allids = np.concatenate(seen)
    assert sorted(allids.tolist()) == list(range(103))


def test_even_mode_gives_equal_batch_counts(store):
    counts, seen = [], []
    for rank in range(3):
        ds = TorchDataset(
            store,
            batch_size=10,
            arrays=("images", "idx"),
            rank=rank,
            world_size=3,
            even=True,
            num_workers=2,
        )
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
        batches = list(loader)
        counts.append(len(batches))
        assert len(batches) == len(ds)
        seen.append(np.concatenate([b[1].numpy() for b in batches]))
    assert len(set(counts)) == 1
    assert set(np.concatenate(seen).tolist()) == set(range(103))


def test_channels_first_and_float(store):
    ds = TorchDataset(store, batch_size=4, channels_first=True, dtype=torch.float32)
    images, labels = next(iter(ds))
    assert images.shape == (4, 3, 6, 5)
    assert images.dtype == torch.float32
    assert float(images.max()) <= 1.0
    assert labels.dtype == torch.int64
