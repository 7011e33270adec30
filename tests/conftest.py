from __future__ import annotations

import os

import numpy as np
import pytest
import zarr

import daskimg as di
from daskimg.store.reader import StoreReader

os.environ.setdefault("KERAS_BACKEND", "torch")


@pytest.fixture
def image_folder(tmp_path):
    """24 PNG images (32x40) in 3 class folders."""
    root = tmp_path / "src"
    di.testing.make_image_folder(root, n=24, size=(32, 40), classes=("ant", "bee", "cat"), seed=1)
    return root


@pytest.fixture
def indexed_set():
    """An in-memory ImageSet whose pixels encode the sample index (an oracle for order checks)."""
    n = 103
    images = np.zeros((n, 6, 5, 3), np.uint8)
    images[:, :, :, 0] = (np.arange(n) % 256)[:, None, None]
    images[:, :, :, 1] = (np.arange(n) // 256)[:, None, None]
    labels = np.arange(n) % 4
    return di.ImageSet(
        images,
        labels,
        classes=["a", "b", "c", "d"],
        paths=[f"f{i:04d}.png" for i in range(n)],
        columns={"idx": np.arange(n, dtype=np.int64)},
    )


@pytest.fixture(scope="module")
def client():
    """A distributed client (2 worker threads in-process) for tests that must also run on a cluster."""
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


def plain_group(path):
    """A store read by plain zarr, without daskimg (the independent oracle for the format)."""
    path = str(path)
    store = (
        zarr.storage.ZipStore(path, mode="r")
        if path.endswith(".zip")
        else zarr.storage.LocalStore(path, read_only=True)
    )
    return zarr.open_group(store, mode="r")


def flip_byte_in_chunk(path, name, c):
    """Damage one byte in the middle of a stored chunk (what a bad disk or copy does)."""
    reader = StoreReader(path)
    file, offset, nbytes = reader.chunk_location(name, c)
    with open(file, "r+b") as fh:
        fh.seek(offset + nbytes // 2)
        b = fh.read(1)
        fh.seek(offset + nbytes // 2)
        fh.write(bytes([b[0] ^ 0xFF]))


@pytest.fixture(scope="module")
def cluster():
    """A ``distributed.LocalCluster`` of 2 worker processes x 1 thread, one per test module
    that asks for it."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as c:
        yield c
