from __future__ import annotations

import math

import dask
import numpy as np
import pytest

import daskimg as di
from daskimg.errors import DecodeError, NoImagesFoundError
from daskimg.read.decode import DecodeSpec, decode_file


def test_imread_is_lazy_and_opens_no_file(tmp_path):
    # paths that do not exist: building the array must not touch them
    paths = [str(tmp_path / f"missing_{i}.jpg") for i in range(1000)]
    x = di.imread(paths, size=(8, 8), chunks=64)
    assert x.shape == (1000, 8, 8, 3)
    assert x.dtype == np.uint8
    # one task per block of files, not per file
    assert len(dict(x.__dask_graph__())) == math.ceil(1000 / 64)
    with pytest.raises(DecodeError, match=r"missing_0\.jpg"):
        x[:1].compute()


def test_imread_matches_per_file_decode(image_folder):
    paths = sorted(str(p) for p in image_folder.rglob("*.png"))
    x = di.imread(str(image_folder / "**" / "*.png"), size=(16, 20), chunks=5)
    spec = DecodeSpec(size=(16, 20))
    expected = np.stack([decode_file(p, spec) for p in paths])
    dask.array.utils.assert_eq(expected, x)
    assert x.numblocks[0] == math.ceil(len(paths) / 5)


def test_imread_explicit_list_keeps_order(image_folder):
    paths = sorted(str(p) for p in image_folder.rglob("*.png"))[::-1][:7]
    x = di.imread(paths, size=(8, 8), channels=1).compute()
    spec = DecodeSpec(size=(8, 8), channels=1)
    assert x.shape == (7, 8, 8, 1)
    np.testing.assert_array_equal(x, np.stack([decode_file(p, spec) for p in paths]))


def test_imread_no_match_names_pattern(tmp_path):
    with pytest.raises(NoImagesFoundError, match=r"nothing_here/\*\.jpg"):
        di.imread(str(tmp_path / "nothing_here" / "*.jpg"), size=(8, 8))
    with pytest.raises(NoImagesFoundError):
        di.imread([], size=(8, 8))


def test_imread_validates_arguments(image_folder):
    pattern = str(image_folder / "**" / "*.png")
    with pytest.raises(ValueError, match="on_error"):
        di.imread(pattern, size=(8, 8), on_error="ignore")
    with pytest.raises(ValueError, match="chunks"):
        di.imread(pattern, size=(8, 8), chunks=0)


def test_imread_skip_leaves_bad_files_out(image_folder):
    bad = image_folder / "bee" / "broken.png"
    bad.write_bytes(b"this is not an image")
    paths = sorted(str(p) for p in image_folder.rglob("*.png"))
    x = di.imread(paths, size=(8, 8), on_error="skip", chunks=4)
    assert math.isnan(x.shape[0])
    got = x.compute()
    good = [p for p in paths if p != str(bad)]
    spec = DecodeSpec(size=(8, 8))
    np.testing.assert_array_equal(got, np.stack([decode_file(p, spec) for p in good]))
    with pytest.raises(DecodeError, match=r"broken\.png"):
        di.imread(paths, size=(8, 8)).compute()


def test_imread_volumes(tmp_path):
    files = di.testing.make_volume_folder(tmp_path, n=3, shape=(6, 7, 8), seed=0)
    v = di.imread([str(f) for f in files], size=(4, 4, 4), dtype="float32")
    assert v.shape == (3, 4, 4, 4, 1)
    assert v.compute().shape == (3, 4, 4, 4, 1)


def test_imread_on_distributed(image_folder, client):
    pattern = str(image_folder / "**" / "*.png")
    x = di.imread(pattern, size=(8, 8), chunks=6)
    local = x.compute(scheduler="threads")
    remote = client.compute(x).result()
    np.testing.assert_array_equal(local, remote)
