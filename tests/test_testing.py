"""Tests of the seeded test-data helpers in daskimg.testing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from daskimg.testing import (
    IMAGE_MODES,
    make_image,
    make_image_folder,
    make_photo_folder,
    make_volume,
    make_volume_folder,
)


@pytest.mark.parametrize("mode", IMAGE_MODES)
def test_make_image_modes_are_seeded_and_varied(mode: str) -> None:
    im = make_image((32, 40), seed=5, mode=mode)
    assert im.mode == mode
    assert im.size == (40, 32)
    again = make_image((32, 40), seed=5, mode=mode)
    other = make_image((32, 40), seed=6, mode=mode)
    assert im.tobytes() == again.tobytes()
    assert im.tobytes() != other.tobytes()
    lo, hi = np.asarray(im.convert("F") if mode != "F" else im).min(), np.asarray(im).max()
    assert lo < hi  # not constant


def test_make_image_ranges() -> None:
    assert make_image((16, 16), mode="I;16").getextrema() == (0, 65535)
    assert make_image((16, 16), mode="F").getextrema() == (0.0, 1.0)
    alpha = np.asarray(make_image((64, 64), seed=1, mode="RGBA"))[..., 3]
    assert alpha.min() == 0
    assert alpha.max() == 255
    assert ((alpha > 0) & (alpha < 255)).any()
    generator = np.random.default_rng(3)
    assert make_image(seed=generator).tobytes() != make_image(seed=generator).tobytes()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"size": (0, 3)}, "size must be"), ({"mode": "HSV"}, "mode must be one of")],
)
def test_make_image_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_image(**kwargs)  # type: ignore[arg-type]


def test_make_image_folder_layout(tmp_path: Path) -> None:
    paths = make_image_folder(tmp_path, n=5, classes=("cat", "dog"), seed=2)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "cat/cat_0000.png",
        "cat/cat_0002.png",
        "cat/cat_0004.png",
        "dog/dog_0001.png",
        "dog/dog_0003.png",
    ]
    pixels = [np.asarray(Image.open(p)) for p in paths]
    assert all(a.shape == (32, 40, 3) for a in pixels)
    assert len({a.tobytes() for a in pixels}) == len(pixels)
    again = make_image_folder(tmp_path / "again", n=5, classes=("cat", "dog"), seed=2)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]


def test_make_image_folder_splits_and_formats(tmp_path: Path) -> None:
    paths = make_image_folder(tmp_path, n=4, fmt="JPG", split_dirs=("train", "test"), size=(20, 30))
    assert len(paths) == 8
    assert {p.relative_to(tmp_path).parts[0] for p in paths} == {"train", "test"}
    train = np.asarray(Image.open(tmp_path / "train/cat/cat_0000.jpg"))
    test = np.asarray(Image.open(tmp_path / "test/cat/cat_0000.jpg"))
    assert train.shape == (20, 30, 3)
    assert not np.array_equal(train, test)
    for fmt, pil in [("bmp", "BMP"), ("tif", "TIFF"), ("webp", "WEBP"), ("gif", "GIF")]:
        (path,) = make_image_folder(tmp_path / fmt, n=1, fmt=fmt)
        with Image.open(path) as im:
            assert im.format == pil
    with pytest.raises(ValueError, match="fmt must be one of"):
        make_image_folder(tmp_path, fmt="heic")
    with pytest.raises(ValueError, match="cannot save mode 'RGBA' images as 'jpg'"):
        make_image_folder(tmp_path / "bad", n=1, fmt="jpg", mode="RGBA")


def test_make_volume_and_folder(tmp_path: Path) -> None:
    vol = make_volume((4, 5, 6), seed=1, dtype="uint16")
    assert vol.shape == (4, 5, 6)
    assert (vol.min(), vol.max()) == (0, 65535)
    np.testing.assert_array_equal(vol, make_volume((4, 5, 6), seed=1, dtype="uint16"))
    assert not np.array_equal(vol, make_volume((4, 5, 6), seed=2, dtype="uint16"))
    npys = make_volume_folder(tmp_path / "n", n=3, shapes=[(4, 5, 6), (2, 3, 4)], seed=1)
    assert [np.load(p).shape for p in npys] == [(4, 5, 6), (2, 3, 4), (4, 5, 6)]
    tifs = make_volume_folder(tmp_path / "t", n=2, shape=(3, 5, 3), fmt="tif", dtype="float32")
    for p in tifs:
        assert tifffile.imread(p).shape == (3, 5, 3)  # last axis 3 stays depth, not RGB
    labelled = make_volume_folder(tmp_path / "c", n=3, classes=("a", "b"))
    assert [p.relative_to(tmp_path / "c").as_posix() for p in labelled] == [
        "a/a_0000.npy",
        "a/a_0002.npy",
        "b/b_0001.npy",
    ]
    with pytest.raises(ValueError, match="fmt must be"):
        make_volume_folder(tmp_path, fmt="nii")


def test_make_photo_folder(tmp_path: Path) -> None:
    paths = make_photo_folder(tmp_path, n_per_class=3, classes=("chelsea", "camera"), seed=4)
    assert len(paths) == 6
    sizes = set()
    for p in paths:
        with Image.open(p) as im:
            assert im.format == "JPEG"
            assert 300 <= max(im.size) <= 600
            sizes.add(im.size)
            assert im.mode == ("L" if p.parent.name == "camera" else "RGB")
    assert len(sizes) > 1
    again = make_photo_folder(
        tmp_path / "again", n_per_class=3, classes=("chelsea", "camera"), seed=4
    )
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]
    fixed = make_photo_folder(
        tmp_path / "fixed", n_per_class=2, classes=("rocket",), size=(120, 160)
    )
    for p in fixed:
        with Image.open(p) as im:
            assert im.size == (160, 120)
    with pytest.raises(ValueError, match="classes must be names from"):
        make_photo_folder(tmp_path, classes=("unicorn",))
