"""Stores of on-disk format version 1, written once and committed, must keep opening."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

import daskimg as di
from daskimg.storeinfo import verify

V1 = Path(__file__).parent / "golden" / "v1"
# written before images moved to one inner chunk per sample, and after; all format version 1
STORES = [
    "lz4.zarr.zip",
    "zstd.zarr.zip",
    "none.zarr.zip",
    "lz4.zarr",
    "lz4-samples.zarr.zip",
    "zstd-samples.zarr.zip",
    "none-samples.zarr.zip",
    "lz4-samples.zarr",
]
LOSSY = ["jpeg-samples.zarr.zip"]


@pytest.fixture(scope="module")
def expected():
    with np.load(V1 / "expected.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.mark.parametrize("name", STORES)
def test_golden_v1_opens_with_daskimg(name, expected):
    ds = di.open_zarr(V1 / name)
    np.testing.assert_array_equal(ds.images.compute(), expected["images"])
    np.testing.assert_array_equal(ds.labels, expected["labels"])
    np.testing.assert_array_equal(ds.paths.astype(str), expected["paths"])
    np.testing.assert_array_equal(ds.columns["bbox"], expected["bbox"])
    assert ds.classes == ("a", "b", "c")
    assert ds.attrs["format_version"] == 1
    assert verify(V1 / name) == []
    it = di.BatchIterator(V1 / name, batch_size=4, arrays=("images", "labels"), shuffle=False)
    images, labels = (np.concatenate(a) for a in zip(*it, strict=True))
    np.testing.assert_array_equal(images, expected["images"])
    np.testing.assert_array_equal(labels, expected["labels"])


@pytest.mark.parametrize("name", STORES)
def test_golden_v1_opens_with_plain_zarr(name, expected):
    path = str(V1 / name)
    store = (
        zarr.storage.ZipStore(path, mode="r")
        if path.endswith(".zip")
        else zarr.storage.LocalStore(path, read_only=True)
    )
    g = zarr.open_group(store, mode="r")
    np.testing.assert_array_equal(g["images"][...], expected["images"])
    np.testing.assert_array_equal(g["bbox"][...], expected["bbox"])


@pytest.mark.parametrize("name", STORES)
def test_golden_v1_opens_with_tensorstore(name, expected):
    # a second, independent Zarr v3 implementation (C++): the format is not daskimg-only
    ts = pytest.importorskip("tensorstore")
    path = str(V1 / name)
    if path.endswith(".zip"):
        kv = {"driver": "zip", "base": {"driver": "file", "path": path}, "path": "images/"}
    else:
        kv = {"driver": "file", "path": path + "/images/"}
    arr = ts.open({"driver": "zarr3", "kvstore": kv}).result()
    np.testing.assert_array_equal(arr.read().result(), expected["images"])


@pytest.mark.parametrize("name", LOSSY)
def test_golden_v1_jpeg_opens(name, expected):
    ds = di.open_zarr(V1 / name)
    got = ds.images.compute()
    assert got.shape == expected["images"].shape
    # lossy; the oracle is Pillow's own JPEG q90 round trip of the same pixels
    import io

    from PIL import Image

    def pillow_q90(a):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=90)
        return np.asarray(Image.open(buf))

    oracle = np.stack([pillow_q90(a) for a in expected["images"]]).astype(int)
    err = np.abs(got.astype(int) - expected["images"]).mean()
    assert err <= 1.2 * np.abs(oracle - expected["images"]).mean() + 1
    np.testing.assert_array_equal(ds.labels, expected["labels"])
    assert verify(V1 / name) == []
    plain = zarr.open_group(zarr.storage.ZipStore(str(V1 / name), mode="r"), mode="r")
    np.testing.assert_array_equal(plain["images"][...], got)


def test_a_corrupt_blosc_sample_of_a_per_sample_store_is_a_checksum_error(tmp_path):
    """Stores of one inner chunk per sample decode each sample on its own: a Blosc sample
    whose header is sound but whose lz4 stream is garbage (its crc32c valid) was a bare
    RuntimeError naming neither the store nor the sample."""
    import struct

    import store_damage as sd

    members = sd.read_local(V1 / "lz4-samples.zarr.zip")
    row = sd.array_info(members, "images").sample_bytes
    garbage = struct.pack("<I", 40) + b"\xfe" * 40  # one block: its size, then garbage
    header = struct.pack("<BBBBIII", 2, 1, (1 << 5) | 0x10, 1, row, row, 20 + len(garbage))
    chunk = sd.with_crc(header + struct.pack("<i", 20) + garbage)
    target = sd.write_local(sd.set_chunk(members, "images", 0, chunk), tmp_path / "b.zarr.zip")
    with pytest.raises(di.errors.ChecksumError, match=r"'images', sample 0 .*cannot decompress"):
        di.open_zarr(target).images.compute()
    problems = verify(target)
    assert [p.chunk for p in problems] == [0] and "sample 0" in problems[0].message
