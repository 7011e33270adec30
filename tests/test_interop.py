"""Stores opened without daskimg: plain zarr, xarray and tensorstore read what daskimg wrote.

The format's promise is that a store outlives daskimg; these readers are the oracles.
The tensorstore test uses a real-size store (multi-MB chunks), where its zip driver hangs
(tensorstore 0.1.86): the README tells users to read the folder form with it.
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr

import daskimg as di


def _boxes(r):
    """Valid boxes (left <= right, top <= bottom) from four random numbers per row."""
    return np.concatenate([np.minimum(r[:, :2], r[:, 2:]), np.maximum(r[:, :2], r[:, 2:])], 1)


@pytest.fixture(scope="module")
def real_size(tmp_path_factory):
    """240 photo-like 224x224 images: ~8 MiB chunks, several shards, both kinds of store."""
    rng = np.random.default_rng(0)
    n = 240
    images = rng.integers(0, 255, (n, 224, 224, 3), dtype=np.uint8)
    ds = di.ImageSet(
        images,
        np.arange(n) % 3,
        classes=["a", "b", "c"],
        paths=[f"img/{i:04d}.png" for i in range(n)],
        columns={"bbox": _boxes(rng.random((n, 4)) * 224).astype(np.float32)},
        boxes=("bbox",),
    )
    root = tmp_path_factory.mktemp("interop")
    out = {}
    for ext in (".zarr", ".zarr.zip"):
        out[ext] = str(root / f"train{ext}")
        di.to_zarr(ds, out[ext], order="source", shard_chunks=2)
    return ds, out


def _zarr_store(path):
    return zarr.storage.ZipStore(path, mode="r") if path.endswith(".zip") else path


@pytest.mark.parametrize("ext", [".zarr", ".zarr.zip"])
def test_xarray_opens_a_store(real_size, ext):
    xr = pytest.importorskip("xarray")
    ds, paths = real_size
    x = xr.open_zarr(_zarr_store(paths[ext]), consolidated=False)
    assert x["images"].dims == ("sample", "y", "x", "channel")
    assert x["labels"].dims == ("sample",)
    np.testing.assert_array_equal(x["images"].values, ds.images.compute())
    np.testing.assert_array_equal(x["labels"].values, ds.labels)
    np.testing.assert_array_equal(x["bbox"].values, ds.columns["bbox"])
    assert list(x["paths"].values) == list(ds.paths)


@pytest.mark.parametrize("ext", [".zarr", ".zarr.zip"])
def test_plain_zarr_reads_every_array(real_size, ext):
    ds, paths = real_size
    group = zarr.open_group(_zarr_store(paths[ext]), mode="r")
    np.testing.assert_array_equal(group["images"][...], ds.images.compute())
    np.testing.assert_array_equal(group["labels"][...], ds.labels)
    attrs = group.attrs["daskimg"]
    assert attrs["complete"] is True and attrs["boxes"] == ["bbox"]
    assert sorted(attrs["arrays"]) == ["bbox", "images", "labels", "paths"]


def test_tensorstore_reads_a_real_size_folder_store(real_size):
    ts = pytest.importorskip("tensorstore")
    ds, paths = real_size
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": paths[".zarr"] + "/images"}}
    arr = ts.open(spec).result()
    assert arr.domain.labels == ("sample", "y", "x", "channel")
    np.testing.assert_array_equal(arr[:].read().result(), ds.images.compute())
