"""Tests of daskimg.decode against an independent oracle: Pillow's own decode.

The oracle is ``Image.open`` -> ``ImageOps.exif_transpose`` -> ``convert`` -> the
same resize call (``Image.resize``, ``ImageOps.fit`` or ``ImageOps.pad`` with
BILINEAR), compared pixel for pixel; only the JPEG DCT draft is allowed the
tolerance documented in the module.
"""

from __future__ import annotations

import dataclasses
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import simplejpeg
import tifffile
from PIL import Image, ImageOps, JpegImagePlugin

import daskimg as di
from daskimg.errors import DecodeError
from daskimg.read import fastjpeg
from daskimg.read.decode import (
    DecodeSpec,
    decode_file,
    decode_image,
    decode_into,
    decode_volume,
)
from daskimg.read.pillowpath import transposed_origin
from daskimg.testing import make_image, make_photo_folder, make_volume

BILINEAR = Image.Resampling.BILINEAR
MODES = {1: "L", 3: "RGB", 4: "RGBA"}
DRAFT_MEAN_TOLERANCE = 2.5  # levels of 255, see the decode module docstring
DRAFT_IMAGE_TOLERANCE = 5.0


# --- oracle -----------------------------------------------------------------


def _resized(im: Image.Image, spec: DecodeSpec) -> Image.Image:
    th, tw = spec.size
    if spec.resize == "crop":
        return ImageOps.fit(im, (tw, th), BILINEAR)
    if spec.resize == "pad":
        return ImageOps.pad(im, (tw, th), BILINEAR)
    return im.resize((tw, th), BILINEAR)


def oracle(path: Path, spec: DecodeSpec) -> np.ndarray:
    """Pillow's full decode of ``path`` as ``spec`` asks, in ``spec.dtype``."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            wide = np.asarray(_resized(im.convert("I"), spec)).astype(np.int64)
            scaled = {
                "uint8": (wide >> 8).astype(np.uint8),
                "uint16": wide.astype(np.uint16),
                "float32": wide.astype(np.float32) / 65535,
            }[spec.dtype]
            full = {"uint8": 255, "uint16": 65535, "float32": 1.0}[spec.dtype]
            planes = [scaled] * min(spec.channels, 3)
            if spec.channels == 4:
                planes.append(np.full_like(scaled, full))
            return np.stack(planes, axis=-1)
        with warnings.catch_warnings():
            # Pillow nags about P images with byte-string transparency; the pixels are fine
            warnings.filterwarnings("ignore", "Palette images with Transparency", UserWarning)
            im = im.convert(MODES[spec.channels])
        arr = np.asarray(_resized(im, spec))
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if spec.dtype == "uint16":
        return arr.astype(np.uint16) * 257
    if spec.dtype == "float32":
        return arr.astype(np.float32) / 255
    return arr


def save(im: Image.Image, path: Path, fmt: str | None = None, **options: object) -> Path:
    im.save(path, format=fmt, **options)
    return path


def with_orientation(im: Image.Image, path: Path, orientation: int, fmt: str) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return save(im, path, fmt, exif=exif.tobytes(), **({"quality": 92} if fmt == "JPEG" else {}))


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("photos")
    return make_photo_folder(root, n_per_class=2, classes=("astronaut", "coffee", "rocket", "ihc"))


# --- DecodeSpec -------------------------------------------------------------


def test_spec_defaults_repr_and_shapes() -> None:
    spec = DecodeSpec((224, 224))
    assert repr(spec) == (
        "DecodeSpec(size=(224, 224), channels=3, dtype='uint8', resize='stretch', draft=True)"
    )
    assert eval(repr(spec)) == spec
    assert spec.sample_shape == (224, 224, 3)
    assert not spec.is_volume
    vol = DecodeSpec([8, np.int64(10), 12], dtype=np.float32)
    assert vol.size == (8, 10, 12)
    assert type(vol.size[1]) is int
    assert vol.dtype == "float32"
    assert vol.is_volume
    assert vol.channels == 1
    assert vol.sample_shape == (8, 10, 12, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.channels = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": 224}, "size must be"),
        ({"size": (224,)}, "size must be"),
        ({"size": (1, 2, 3, 4)}, "size must be"),
        ({"size": (0, 10)}, "positive integers"),
        ({"size": (10.0, 10)}, "positive integers"),
        ({"size": (True, 10)}, "positive integers"),
        ({"size": (10, 10), "channels": 2}, "channels must be 1 .*, 3 .* or 4"),
        ({"size": (10, 10), "channels": True}, "channels must be"),
        (
            {"size": (10, 10), "dtype": "int8"},
            "dtype of images must be 'uint8', 'uint16' or 'float32'.*for volumes",
        ),
        ({"size": (4, 10, 10), "dtype": "complex64"}, "dtype of volumes must be one of"),
        ({"size": (10, 10), "dtype": "nonsense"}, "dtype of images must be"),
        ({"size": (10, 10), "resize": "fit"}, "resize must be 'stretch', 'crop' or 'pad'"),
        ({"size": (10, 10), "draft": "yes"}, "draft must be True or False"),
    ],
)
def test_spec_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DecodeSpec(**kwargs)  # type: ignore[arg-type]


def test_spec_options_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        DecodeSpec((10, 10), 3)  # type: ignore[misc]


# --- encodings against the oracle --------------------------------------------

ENCODINGS = {
    "jpeg": ("RGB", "JPEG", {"quality": 90}),
    "jpeg-progressive": ("RGB", "JPEG", {"quality": 90, "progressive": True}),
    "jpeg-gray": ("L", "JPEG", {"quality": 90}),
    "jpeg-cmyk": ("CMYK", "JPEG", {"quality": 90}),
    "png-rgb": ("RGB", "PNG", {}),
    "png-rgba": ("RGBA", "PNG", {}),
    "png-l": ("L", "PNG", {}),
    "png-la": ("LA", "PNG", {}),
    "png-p": ("P", "PNG", {}),
    "png-p-transparent-index": ("P", "PNG", {"transparency": 5}),
    "png-p-transparent-bytes": ("P", "PNG", {"transparency": bytes(range(0, 256, 4))}),
    "png-1bit": ("1", "PNG", {}),
    "tiff-rgb": ("RGB", "TIFF", {}),
    "tiff-rgba": ("RGBA", "TIFF", {}),
    "tiff-cmyk": ("CMYK", "TIFF", {}),
    "bmp": ("RGB", "BMP", {}),
    "webp": ("RGB", "WEBP", {"quality": 90}),
    "webp-rgba": ("RGBA", "WEBP", {"lossless": True}),
    "gif": ("P", "GIF", {}),
}


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_encodings_match_pillow(tmp_path: Path, encoding: str, channels: int) -> None:
    mode, fmt, options = ENCODINGS[encoding]
    path = save(make_image((32, 40), seed=7, mode=mode), tmp_path / "img", fmt, **options)
    with Image.open(path) as im:
        assert im.mode == mode  # the file really has the encoding under test
    for size in [(24, 30), (32, 40), (45, 37)]:
        spec = DecodeSpec(size, channels=channels)
        got = decode_file(path, spec)
        assert got.shape == spec.sample_shape
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, oracle(path, spec))


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_8bit_scaling_to_wider_dtypes(tmp_path: Path, dtype: str, channels: int) -> None:
    path = save(make_image((32, 40), seed=3, mode="RGBA"), tmp_path / "a.png")
    spec = DecodeSpec((20, 28), channels=channels, dtype=dtype)
    got = decode_file(path, spec)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, oracle(path, spec))
    as8 = decode_file(path, DecodeSpec((20, 28), channels=channels))
    if dtype == "uint16":
        np.testing.assert_array_equal(got, as8.astype(np.uint16) * 257)
    else:
        assert got.min() >= 0.0
        assert got.max() <= 1.0
        np.testing.assert_allclose(got, as8 / 255, rtol=1e-6)


def test_alpha_is_dropped_or_kept_without_resize(tmp_path: Path) -> None:
    rgba = make_image((32, 40), seed=5, mode="RGBA")
    pixels = np.asarray(rgba)
    assert pixels[..., 3].min() == 0  # has transparent pixels to lose
    path = save(rgba, tmp_path / "a.png")
    np.testing.assert_array_equal(decode_file(path, DecodeSpec((32, 40))), pixels[..., :3])
    np.testing.assert_array_equal(decode_file(path, DecodeSpec((32, 40), channels=4)), pixels)
    rgb_path = save(rgba.convert("RGB"), tmp_path / "b.png")
    got = decode_file(rgb_path, DecodeSpec((32, 40), channels=4))
    np.testing.assert_array_equal(got[..., :3], pixels[..., :3])
    assert (got[..., 3] == 255).all()


# --- 16-bit -----------------------------------------------------------------


def _sixteen_bit_files(tmp_path: Path, values: np.ndarray) -> list[Path]:
    png = save(Image.fromarray(values), tmp_path / "g16.png")
    little = tmp_path / "g16le.tif"
    tifffile.imwrite(little, values)
    big = tmp_path / "g16be.tif"
    tifffile.imwrite(big, values, byteorder=">")
    modes = []
    for p in (png, little, big):
        with Image.open(p) as im:
            modes.append(im.mode)
    assert modes == ["I;16", "I;16", "I;16B"]
    return [png, little, big]


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_16bit_scaling_without_resize(tmp_path: Path, dtype: str, channels: int) -> None:
    values = np.array([[0, 255, 256, 257], [4095, 32768, 65280, 65535]], dtype=np.uint16)
    expected = {
        "uint8": np.array([[0, 0, 1, 1], [15, 128, 255, 255]], dtype=np.uint8),  # >> 8, no clipping
        "uint16": values,
        "float32": values.astype(np.float32) / 65535,
    }[dtype]
    opaque = {"uint8": 255, "uint16": 65535, "float32": 1.0}[dtype]
    for path in _sixteen_bit_files(tmp_path, values):
        got = decode_file(path, DecodeSpec((2, 4), channels=channels, dtype=dtype))
        assert got.dtype == dtype
        for c in range(min(channels, 3)):
            np.testing.assert_array_equal(got[..., c], expected, err_msg=path.name)
        if channels == 4:
            assert (got[..., 3] == opaque).all()


@pytest.mark.parametrize("resize", ["stretch", "crop", "pad"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_16bit_resize_matches_pillow(tmp_path: Path, dtype: str, resize: str) -> None:
    values = np.asarray(make_image((33, 47), seed=2, mode="I;16"))
    for path in _sixteen_bit_files(tmp_path, values):
        for channels in (1, 3):
            spec = DecodeSpec((20, 26), channels=channels, dtype=dtype, resize=resize)
            np.testing.assert_array_equal(
                decode_file(path, spec), oracle(path, spec), err_msg=path.name
            )


def test_mode_i_within_16_bits_is_read(tmp_path: Path) -> None:
    path = save(make_image((16, 20), seed=1, mode="I"), tmp_path / "i.tif", "TIFF")
    with Image.open(path) as im:
        assert im.mode == "I"
        values = np.asarray(im)
    got = decode_file(path, DecodeSpec((16, 20), channels=1, dtype="uint16"))
    np.testing.assert_array_equal(got[..., 0], values)


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_mode_i_is_not_scaled_by_a_guessed_range(tmp_path: Path, dtype: str) -> None:
    # an 8-bit picture saved as 32-bit integers: scaled as 16-bit, every pixel became 0
    values = (np.arange(30 * 40) % 256).astype(np.uint32).reshape(30, 40)
    path = tmp_path / "u32.tif"
    tifffile.imwrite(path, values)
    with Image.open(path) as im:
        assert im.mode == "I"
    _bad(path, DecodeSpec((30, 40), channels=1, dtype=dtype), r"32-bit .*dtype='uint16'")
    got = decode_file(path, DecodeSpec((30, 40), channels=1, dtype="uint16"))
    np.testing.assert_array_equal(got[..., 0], values)
    # a 16-bit PGM also opens as mode I: it is 16-bit, scaled as such (>> 8)
    wide = (np.arange(30 * 40) * 40 % 65536).astype(np.uint16).reshape(30, 40)
    pgm = tmp_path / "g16.pgm"
    Image.fromarray(wide).save(pgm)
    with Image.open(pgm) as im:
        assert im.mode == "I"
    got = decode_file(pgm, DecodeSpec((30, 40), channels=1, dtype=dtype))
    expected = (wide >> 8).astype(np.uint8) if dtype == "uint8" else wide / np.float32(65535)
    np.testing.assert_allclose(got[..., 0], expected, rtol=1e-6)


# --- resize modes -------------------------------------------------------------

TARGETS = [(24, 24), (20, 50), (50, 20), (64, 80), (32, 40), (7, 9)]


@pytest.mark.parametrize("resize", ["stretch", "crop", "pad"])
@pytest.mark.parametrize("size", TARGETS)
def test_resize_modes_match_pillow(tmp_path: Path, resize: str, size: tuple[int, int]) -> None:
    for mode, channels in [("RGB", 3), ("RGBA", 4), ("L", 1), ("L", 3)]:
        path = save(make_image((32, 40), seed=11, mode=mode), tmp_path / f"{mode}.png")
        spec = DecodeSpec(size, channels=channels, resize=resize)
        got = decode_file(path, spec)
        assert got.shape == (*size, channels)
        np.testing.assert_array_equal(got, oracle(path, spec), err_msg=f"{mode} -> {channels}")


def test_same_size_is_not_resampled(tmp_path: Path) -> None:
    im = make_image((32, 40), seed=4)
    path = save(im, tmp_path / "a.png")
    for resize in ("stretch", "crop", "pad"):
        got = decode_file(path, DecodeSpec((32, 40), resize=resize))
        np.testing.assert_array_equal(got, np.asarray(im))


def test_pad_centers_on_zeros_and_crop_cuts_the_center(tmp_path: Path) -> None:
    im = make_image((20, 40), seed=8)  # twice as wide as tall
    path = save(im, tmp_path / "wide.png")
    padded = decode_file(path, DecodeSpec((40, 40), resize="pad"))
    assert (padded[:10] == 0).all()
    assert (padded[30:] == 0).all()
    np.testing.assert_array_equal(padded[10:30], np.asarray(im.resize((40, 20), BILINEAR)))
    cropped = decode_file(path, DecodeSpec((20, 20), resize="crop"))
    np.testing.assert_array_equal(cropped, np.asarray(im)[:, 10:30])


# --- EXIF orientation -------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path: Path, orientation: int) -> None:
    im = make_image((30, 44), seed=9)
    for fmt in ("JPEG", "PNG"):
        path = with_orientation(im, tmp_path / f"o{orientation}.{fmt.lower()}", orientation, fmt)
        for size, resize in [((30, 44), "stretch"), ((44, 30), "stretch"), ((20, 20), "crop")]:
            spec = DecodeSpec(size, resize=resize)
            np.testing.assert_array_equal(decode_file(path, spec), oracle(path, spec))


@pytest.mark.parametrize(("orientation", "rotate"), [(3, 2), (6, -1), (8, 1)])
def test_exif_orientation_rotates(tmp_path: Path, orientation: int, rotate: int) -> None:
    # lossless and without resizing: the result must be the stored pixels turned
    im = make_image((30, 44), seed=10)
    path = with_orientation(im, tmp_path / "o.png", orientation, "PNG")
    expected = np.rot90(np.asarray(im), k=rotate)
    got = decode_file(path, DecodeSpec(expected.shape[:2]))
    np.testing.assert_array_equal(got, expected)


# --- file names -------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["jpeg named.png", "UPPER.JPG", "with spaces and ünïcödé 猫.jpg", "no_extension"]
)
def test_format_comes_from_content_not_name(tmp_path: Path, name: str) -> None:
    path = save(make_image((32, 40), seed=12), tmp_path / name, "JPEG", quality=90)
    spec = DecodeSpec((16, 20), draft=False)
    np.testing.assert_array_equal(decode_file(path, spec), oracle(path, spec))
    np.testing.assert_array_equal(decode_file(str(path), spec), oracle(path, spec))


# --- DCT draft --------------------------------------------------------------


def _draft_errors(paths: list[Path], spec: DecodeSpec) -> list[float]:
    errors = []
    for path in paths:
        got = decode_file(path, spec).astype(np.float64)
        full = decode_file(path, dataclasses.replace(spec, draft=False))
        np.testing.assert_array_equal(full, oracle(path, spec))
        errors.append(float(np.abs(got - full).mean()))
    return errors


@pytest.mark.parametrize("resize", ["stretch", "crop", "pad"])
@pytest.mark.parametrize(("size", "channels"), [((128, 128), 3), ((64, 96), 3), ((48, 48), 1)])
def test_draft_within_tolerance(
    photos: list[Path], size: tuple[int, int], channels: int, resize: str
) -> None:
    spec = DecodeSpec(size, channels=channels, resize=resize)
    errors = _draft_errors(photos, spec)
    assert np.mean(errors) < DRAFT_MEAN_TOLERANCE
    assert max(errors) < DRAFT_IMAGE_TOLERANCE
    assert max(errors) > 0  # the draft really changed the decode


def _spy_draft(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Record (requested size, decoded size) of every JPEG draft, Pillow's or the fast path's."""
    calls: list[tuple[tuple[int, int], tuple[int, int]]] = []
    original = JpegImagePlugin.JpegImageFile.draft
    fast = fastjpeg.decode

    def fast_spy(
        data: bytes, header: fastjpeg.JpegHeader, *, mode: str, scale: int = 1
    ) -> np.ndarray | None:
        pixels = fast(data, header, mode=mode, scale=scale)
        if scale > 1 and pixels is not None:
            wanted = (header.width // scale, header.height // scale)
            calls.append((wanted, (pixels.shape[1], pixels.shape[0])))
        return pixels

    monkeypatch.setattr(fastjpeg, "decode", fast_spy)

    def spy(
        self: JpegImagePlugin.JpegImageFile, mode: str | None, size: tuple[int, int] | None
    ) -> object:
        result = original(self, mode, size)
        assert size is not None
        calls.append((size, self.size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    return calls


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_draft_size_follows_orientation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, orientation: int
) -> None:
    # stored 800 wide x 200 tall; orientations 6 and 8 show it 200 wide x 800 tall, so
    # only then does it cover a tall 50 x 200 target 4 times over (and a wide one just once)
    path = with_orientation(
        make_image((200, 800), seed=13), tmp_path / "o.jpg", orientation, "JPEG"
    )
    calls = _spy_draft(monkeypatch)
    turned = orientation in (6, 8)
    for spec, drafts in [(DecodeSpec((200, 50)), turned), (DecodeSpec((50, 200)), not turned)]:
        calls.clear()
        got = decode_file(path, spec).astype(np.float64)
        # asked in file orientation, 800 // 4 x 200 // 4, and libjpeg gave that
        assert calls == ([((200, 50), (200, 50))] if drafts else [])
        assert np.abs(got - oracle(path, spec)).mean() < DRAFT_MEAN_TOLERANCE


@pytest.mark.parametrize("orientation", range(1, 9))
def test_draft_with_orientation_and_odd_sizes(tmp_path: Path, orientation: int) -> None:
    # 517 x 389 is not a multiple of the 1/4 scale: the partial edge must stay at its edge
    source = make_photo_folder(
        tmp_path / "src", n_per_class=1, size=(389, 517), classes=("coffee",)
    )
    with Image.open(source[0]) as im:
        path = with_orientation(im.convert("RGB"), tmp_path / "o.jpg", orientation, "JPEG")
    for size, resize in [((64, 64), "crop"), ((90, 60), "stretch"), ((64, 96), "pad")]:
        spec = DecodeSpec(size, resize=resize)
        assert _draft_errors([path], spec)[0] < DRAFT_MEAN_TOLERANCE


@pytest.mark.parametrize(("side", "target"), [(5, 1), (9, 1), (12, 3), (200, 1)])
def test_tiny_jpegs_are_not_drafted_below_a_few_pixels(
    tmp_path: Path, side: int, target: int
) -> None:
    # a smooth gradient a few pixels across, to one to three: drafted at 1/4 or 1/8, the
    # scaled blocks were most of the resize (5x5 to 1x1 came out 38 levels off Pillow's
    # full decode); a picture that would keep under 8 pixels a side is decoded whole
    ramp = np.mgrid[0:side, 0:side][1] * 255 / (side - 1)
    path = tmp_path / "ramp.jpg"
    Image.fromarray(ramp.astype(np.uint8)).save(path, quality=100, subsampling=0)
    spec = DecodeSpec((target, target), channels=1)
    assert spec.draft
    np.testing.assert_array_equal(decode_file(path, spec), oracle(path, spec))


def test_transposed_origin_moves_the_slack() -> None:
    # a drafted image of 7 x 5 whose picture covers 6.0 x 4.0 from the top-left corner
    size, extent = (7, 5), (6.0, 4.0)
    mask = np.zeros((5, 7), dtype=np.uint8)
    mask[:4, :6] = 1
    methods = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }
    for orientation, method in methods.items():
        turned = np.asarray(Image.fromarray(mask).transpose(method))
        rows, cols = np.nonzero(turned)
        assert transposed_origin(size, extent, orientation) == (cols.min(), rows.min())


# --- bad files ----------------------------------------------------------------


def _bad(path: Path, spec: DecodeSpec, match: str) -> DecodeError:
    with pytest.raises(DecodeError, match=match) as info:
        decode_file(path, spec)
    assert str(path) in str(info.value)
    assert info.value.path == str(path)
    assert isinstance(info.value, ValueError)
    return info.value


IMAGE = DecodeSpec((16, 16))
VOLUME = DecodeSpec((4, 4, 4))


@pytest.mark.parametrize("spec", [IMAGE, VOLUME], ids=["image", "volume"])
def test_missing_empty_and_directory(tmp_path: Path, spec: DecodeSpec) -> None:
    _bad(tmp_path / "nope.png", spec, "no such file")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    _bad(empty, spec, r"empty \(0 bytes\)")
    _bad(tmp_path, spec, "is a directory")


@pytest.mark.parametrize("spec", [IMAGE, VOLUME], ids=["image", "volume"])
def test_a_pipe_or_device_named_as_an_image_is_refused_not_read(tmp_path: Path, spec) -> None:
    # a named pipe 'x.jpg' made the read wait forever (ingest hung); a link to /dev/zero
    # read until memory ran out
    import os

    pipe = tmp_path / "pipe.jpg"
    os.mkfifo(pipe)
    _bad(pipe, spec, "not a regular file but a named pipe")
    zero = tmp_path / "zero.png"
    zero.symlink_to("/dev/zero")
    _bad(zero, spec, "not a regular file")


def test_not_an_image(tmp_path: Path) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("hello, I am not a picture\n")
    _bad(text, IMAGE, "not an image Pillow can identify .*b'hello, I am not '")
    npy = tmp_path / "vol.png"
    with npy.open("wb") as f:
        np.save(f, np.zeros((2, 2, 2)))
    _bad(npy, IMAGE, "looks like a volume: give a 3-D size")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_truncated_image(tmp_path: Path, fmt: str) -> None:
    path = save(make_image((64, 64), seed=1), tmp_path / "t", fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    if fmt != "WEBP":  # libwebp refuses a cut file at once; the others keep their header
        with Image.open(path) as im:
            assert im.size == (64, 64)
    _bad(path, IMAGE, "truncated|corrupt")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image_fails_even_with_pillows_load_truncated_images(
    tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # training scripts often set this process-wide; Pillow then fills the missing half
    from PIL import ImageFile

    path = save(make_image((64, 64), seed=1), tmp_path / "t", fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with Image.open(path) as im:  # the oracle: Pillow itself loads it, half made up
        im.load()
    _bad(path, IMAGE, "truncated|corrupt")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the user's setting is back


def test_truncated_jpeg_says_truncated(tmp_path: Path) -> None:
    path = save(make_image((64, 64), seed=1), tmp_path / "t.jpg", "JPEG")
    path.write_bytes(path.read_bytes()[:-300])
    _bad(path, IMAGE, "truncated image .*copy or export it again")


def test_corrupt_png(tmp_path: Path) -> None:
    path = save(make_image((32, 32), seed=1), tmp_path / "c.png")
    data = bytearray(path.read_bytes())
    idat = data.index(b"IDAT")
    data[idat + 8 : idat + 40] = bytes(32)  # damage the compressed pixels
    path.write_bytes(bytes(data))
    _bad(path, IMAGE, "corrupt|truncated")


@pytest.mark.parametrize("mode", ["F", "I"])
def test_unsupported_mode(tmp_path: Path, mode: str) -> None:
    im = make_image((8, 8), seed=1, mode="F")
    if mode == "I":
        im = Image.fromarray(np.full((8, 8), -5, dtype=np.int32))
    path = save(im, tmp_path / "x.tif", "TIFF")
    # negative values are named as signed pixels ("save it as 16-bit" misled: it was)
    _bad(path, IMAGE, "unsupported mode 'F'" if mode == "F" else r"signed pixels \(mode 'I'")


@pytest.mark.parametrize("channels", [1, 3])
def test_signed_8bit_tiff_with_negative_values_is_refused(tmp_path: Path, channels: int) -> None:
    # Pillow reads a signed 8-bit TIFF's bytes as unsigned: -1 was stored as 255, the
    # brightest value, without a word. The oracle: tifffile reads the negative values
    shape = (4, 7) if channels == 1 else (4, 7, 3)
    values = np.resize(np.array([-128, -64, -1, 0, 1, 64, 127], np.int8), shape)
    path = tmp_path / "int8.tif"
    tifffile.imwrite(path, values, photometric="minisblack" if channels == 1 else "rgb")
    assert tifffile.imread(path).min() == -128
    spec = DecodeSpec((4, 7), channels=channels)
    # (a signed RGB TIFF Pillow cannot open at all: refused as no image it reads)
    _bad(path, spec, "signed 8-bit pixels" if channels == 1 else "signed values")
    if channels == 3:
        return
    # signed, but every value at least 0: the bytes are the values, read as they are
    tifffile.imwrite(path, np.abs(values.astype(np.int16)).clip(0, 127).astype(np.int8))
    np.testing.assert_array_equal(
        decode_file(path, DecodeSpec((4, 7), channels=1))[..., 0],
        tifffile.imread(path).astype(np.uint8),
    )


def test_unsigned_32bit_tiff_is_not_called_signed(tmp_path: Path) -> None:
    # Pillow reads uint32 values above 2**31 - 1 as negative: the message said "signed
    # pixels" of a file that holds none
    path = tmp_path / "u32.tif"
    tifffile.imwrite(path, np.full((8, 8), 3_000_000_000, np.uint32))
    assert tifffile.imread(path).min() == 3_000_000_000
    error = _bad(path, DecodeSpec((8, 8), dtype="uint16"), "unsigned 32-bit pixels")
    assert "signed pixels" not in str(error)


def test_a_cut_off_tiff_is_called_truncated(tmp_path: Path) -> None:
    # Pillow writes a TIFF's directory after its pixels: a cut-off copy was unidentified,
    # and the message said "it looks like a volume: give a 3-D size"
    path = tmp_path / "cut.tif"
    make_image((48, 64), seed=3).save(path, "TIFF", compression="tiff_lzw")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 9 // 10])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (Pillow warns of its metadata on the way)
        with pytest.raises((OSError, Image.UnidentifiedImageError)):
            Image.open(path).load()  # the oracle: Pillow fails too
    error = _bad(path, IMAGE, "a truncated TIFF")
    assert "volume" not in str(error)


def test_pillow_metadata_warnings_are_logged_naming_the_file_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # a JPEG whose EXIF block is cut short (its pixels whole): under warnings-as-errors
    # (pytest's -W error), Pillow's "Corrupt EXIF data" escaped as a bare UserWarning with
    # no file named, and failed the whole to_zarr even with on_error="skip"
    import io
    import logging
    import struct

    buf = io.BytesIO()
    make_image((30, 40), seed=4).save(buf, "JPEG", quality=90)
    jpg = buf.getvalue()
    app1 = b"Exif\0\0II*\x00" + struct.pack("<IH", 8, 2) + struct.pack("<HHIHH", 0x112, 3, 1, 1, 0)
    path = tmp_path / "bad_exif.jpg"
    path.write_bytes(jpg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpg[2:])
    with warnings.catch_warnings(record=True) as said:  # the oracle: Pillow warns
        warnings.simplefilter("always")
        with Image.open(path) as im:
            im.getexif()
            want = np.asarray(im.convert("RGB").resize((20, 15), Image.BILINEAR))
    assert any("EXIF" in str(w.message) for w in said)
    spec = DecodeSpec((15, 20), draft=False)
    with caplog.at_level(logging.WARNING, logger="daskimg"), warnings.catch_warnings():
        warnings.simplefilter("error")
        got = decode_file(path, spec)
        x = di.imread([str(path)], size=(15, 20), draft=False, on_error="skip").compute()
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(x[0], want)
    assert "bad_exif.jpg" in caplog.text and "EXIF" in caplog.text


def test_decompression_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    warned = save(make_image((32, 40), seed=1), tmp_path / "warned.png")  # 1280: only a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = decode_file(warned, IMAGE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_array_equal(got, oracle(warned, IMAGE))
    bomb = save(make_image((32, 80), seed=1), tmp_path / "bomb.png")  # 2560 > 2 * 1000
    _bad(bomb, IMAGE, r"decompression-bomb limit of 2000 pixels.*raise PIL.Image.MAX_IMAGE_PIXELS")


def test_warning_filters_are_restored(tmp_path: Path) -> None:
    path = save(make_image(seed=1), tmp_path / "a.png")
    before = list(warnings.filters)
    decode_file(path, IMAGE)
    assert warnings.filters == before


def test_threads_decode_the_same(tmp_path: Path) -> None:
    paths = [save(make_image((40, 50), seed=s), tmp_path / f"{s}.jpg", "JPEG") for s in range(8)]
    spec = DecodeSpec((20, 20))
    expected = [decode_file(p, spec) for p in paths]
    results: dict[int, np.ndarray] = {}

    def work(k: int) -> None:
        for _ in range(5):
            results[k] = decode_file(paths[k], spec)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, arr in enumerate(expected):
        np.testing.assert_array_equal(results[k], arr)


# --- volumes ----------------------------------------------------------------


def test_volume_npy_and_tiff_same_size(tmp_path: Path) -> None:
    vol = make_volume((5, 6, 7), seed=1, dtype="uint16")
    np.save(tmp_path / "v.npy", vol)
    np.save(tmp_path / "v4.npy", vol[..., None])
    tifffile.imwrite(tmp_path / "v.tif", vol, photometric="minisblack")
    for name in ("v.npy", "v4.npy", "v.tif"):
        got = decode_file(tmp_path / name, DecodeSpec((5, 6, 7), dtype="uint16"))
        assert got.shape == (5, 6, 7, 1)
        np.testing.assert_array_equal(got[..., 0], vol, err_msg=name)


def test_volume_format_is_sniffed(tmp_path: Path) -> None:
    vol = make_volume((3, 4, 5), seed=2)
    npy_as_tif = tmp_path / "really_npy.tif"
    with npy_as_tif.open("wb") as f:
        np.save(f, vol)
    tif_as_npy = tmp_path / "really_tif.npy"
    tifffile.imwrite(tif_as_npy, vol, photometric="minisblack")
    for path in (npy_as_tif, tif_as_npy):
        np.testing.assert_array_equal(decode_volume(path, DecodeSpec((3, 4, 5)))[..., 0], vol)


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ((8, 10, 12), (4, 5, 6)),
        ((7, 11, 13), (5, 9, 17)),
        ((3, 3, 3), (10, 1, 7)),
        ((9, 9, 9), (9, 4, 9)),
    ],
)
def test_volume_zoom_exact_shape_matches_skimage(
    tmp_path: Path, source: tuple[int, int, int], target: tuple[int, int, int]
) -> None:
    from skimage.transform import resize

    vol = make_volume(source, seed=3, dtype="float32")
    np.save(tmp_path / "v.npy", vol)
    got = decode_file(tmp_path / "v.npy", DecodeSpec(target, dtype="float32"))
    assert got.shape == (*target, 1)
    expected = resize(
        vol.astype(np.float64),
        target,
        order=1,
        mode="edge",
        anti_aliasing=True,
        preserve_range=True,
    )
    np.testing.assert_allclose(got[..., 0], expected, atol=1e-5)


def test_volume_integer_zoom_rounds(tmp_path: Path) -> None:
    from skimage.transform import resize

    vol = make_volume((8, 10, 12), seed=4, dtype="uint8")
    np.save(tmp_path / "v.npy", vol)
    got = decode_file(tmp_path / "v.npy", DecodeSpec((5, 7, 9)))
    assert got.dtype == np.uint8
    expected = resize(vol, (5, 7, 9), order=1, mode="edge", anti_aliasing=True, preserve_range=True)
    assert np.abs(got[..., 0].astype(np.float64) - expected).max() <= 0.5 + 1e-3


def test_volume_dtype_rules(tmp_path: Path) -> None:
    def volume(name: str, arr: np.ndarray) -> Path:
        np.save(tmp_path / name, arr)
        return tmp_path / name

    fits = volume("fits.npy", np.arange(60, dtype=np.int64).reshape(3, 4, 5))
    np.testing.assert_array_equal(
        decode_file(fits, DecodeSpec((3, 4, 5)))[..., 0], np.arange(60).reshape(3, 4, 5)
    )
    wide = volume("wide.npy", np.full((3, 4, 5), 300, dtype=np.uint16))
    _bad(
        wide,
        DecodeSpec((3, 4, 5)),
        r"values span 300..300, outside the uint8 range 0..255; pass dtype='uint16'",
    )
    np.testing.assert_array_equal(
        decode_file(wide, DecodeSpec((3, 4, 5), dtype="uint16"))[..., 0], 300
    )
    negative = volume("ct.npy", np.full((3, 4, 5), -1000, dtype=np.int16))
    _bad(negative, DecodeSpec((3, 4, 5), dtype="uint16"), r"-1000..-1000.*pass dtype='int16'")
    floats = volume("f.npy", np.full((3, 4, 5), 0.5))
    _bad(floats, DecodeSpec((3, 4, 5)), r"fractional values \(e.g. 0.5\).*pass dtype='float64'")
    _bad(floats, DecodeSpec((2, 2, 2), dtype="uint16"), "or 'float32'")
    # float32 casts anything, keeping the values (no rescaling)
    np.testing.assert_array_equal(
        decode_file(negative, DecodeSpec((3, 4, 5), dtype="float32")), -1000.0
    )
    np.testing.assert_array_equal(decode_file(floats, DecodeSpec((3, 4, 5), dtype="float32")), 0.5)
    raw = volume("u8.npy", np.full((3, 4, 5), 200, dtype=np.uint8))
    np.testing.assert_array_equal(decode_file(raw, DecodeSpec((3, 4, 5), dtype="float32")), 200.0)
    mask = volume("mask.npy", np.ones((3, 4, 5), dtype=bool))
    np.testing.assert_array_equal(decode_file(mask, DecodeSpec((3, 4, 5))), 1)


@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 4, 3), (2, 3, 4, 5, 1), (1, 2, 3, 4, 5)])
def test_volume_wrong_dimensionality(tmp_path: Path, shape: tuple[int, ...]) -> None:
    np.save(tmp_path / "v.npy", np.zeros(shape, dtype=np.uint8))
    error = _bad(tmp_path / "v.npy", VOLUME, "expected a 3-D volume")
    assert str(shape) in str(error)


def test_volume_2d_tiff_and_rgb_tiff(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "flat.tif", np.zeros((5, 6), dtype=np.uint8))
    _bad(tmp_path / "flat.tif", VOLUME, r"found shape \(5, 6\)")
    tifffile.imwrite(
        tmp_path / "rgb.tif", np.zeros((2, 5, 6, 3), dtype=np.uint8), photometric="rgb"
    )
    _bad(tmp_path / "rgb.tif", VOLUME, r"a stack of color pages \(shape \(2, 5, 6, 3\)")


def test_a_stack_of_color_pages_is_said_to_be_unreadable_either_way(tmp_path: Path) -> None:
    # each size's message sent the user to the other: "give a 3-D size" as an image, "give
    # a 2-D size" as a volume
    pages = [Image.new("RGB", (6, 5), (40 * k, 0, 0)) for k in range(3)]
    pages[0].save(tmp_path / "rgb.tif", save_all=True, append_images=pages[1:])
    with Image.open(tmp_path / "rgb.tif") as im:
        assert im.n_frames == 3  # the oracle: Pillow sees three pages
    for spec in (DecodeSpec((5, 6)), VOLUME):
        error = _bad(tmp_path / "rgb.tif", spec, "cannot be read either way")
        assert "save each page as its own file" in str(error).lower()
        assert "give a" not in str(error)


def test_bad_volume_files(tmp_path: Path) -> None:
    text = tmp_path / "v.npy"
    text.write_text("not a volume")
    _bad(text, VOLUME, r"not a volume: expected a NumPy .npy file.*b'not a vo'")
    jpeg = save(make_image(seed=1), tmp_path / "x.npy", "JPEG")
    _bad(jpeg, VOLUME, "Give a 2-D size")
    np.save(tmp_path / "cut.npy", np.zeros((20, 20, 20)))
    cut = tmp_path / "cut.npy"
    cut.write_bytes(cut.read_bytes()[:1000])
    _bad(cut, VOLUME, "corrupt or truncated volume")
    stack = tmp_path / "z.tif"
    tifffile.imwrite(stack, make_volume((6, 20, 20)), photometric="minisblack", compression="zlib")
    data = stack.read_bytes()
    stack.write_bytes(data[: len(data) * 9 // 10])  # the last page's pixels are cut
    _bad(stack, VOLUME, "corrupt or truncated")
    stack.write_bytes(data[: len(data) * 3 // 10])  # tifffile finds just the first page
    _bad(stack, VOLUME, r"corrupt or truncated TIFF.*(invalid page offset|past the end)")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}] * 8).reshape(2, 2, 2), allow_pickle=True)
    _bad(tmp_path / "objects.npy", VOLUME, "holds Python objects")


# --- dispatch and decode_into ---------------------------------------------------


def test_decode_into_equals_decode_file(tmp_path: Path) -> None:
    images = [save(make_image((30, 50), seed=s), tmp_path / f"{s}.jpg", "JPEG") for s in range(3)]
    for resize in ("stretch", "crop", "pad"):
        for dtype in ("uint8", "float32"):
            spec = DecodeSpec((24, 24), resize=resize, dtype=dtype)
            block = np.full((len(images), *spec.sample_shape), 7, dtype=spec.dtype)  # dirty
            for i, p in enumerate(images):
                decode_into(p, spec, block[i])
            np.testing.assert_array_equal(block, np.stack([decode_file(p, spec) for p in images]))
    vol_spec = DecodeSpec((3, 4, 5), dtype="float32")
    np.save(tmp_path / "v.npy", make_volume((6, 7, 8), seed=1))
    block = np.zeros((2, *vol_spec.sample_shape), dtype=np.float32)
    decode_into(tmp_path / "v.npy", vol_spec, block[1])
    np.testing.assert_array_equal(block[1], decode_file(tmp_path / "v.npy", vol_spec))
    assert (block[0] == 0).all()


def test_decode_into_strided_view(tmp_path: Path) -> None:
    path = save(make_image((30, 50), seed=2), tmp_path / "a.png")
    spec = DecodeSpec((10, 12), channels=1)
    big = np.zeros((20, 12, 2), dtype=np.uint8)
    view = big[::2, :, 1:]  # not contiguous
    decode_into(path, spec, view)
    np.testing.assert_array_equal(view, decode_file(path, spec))
    assert (big[1::2] == 0).all()
    assert (big[..., 0] == 0).all()


def test_decode_into_checks_out(tmp_path: Path) -> None:
    path = save(make_image(seed=2), tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"out must have shape \(8, 8, 3\) and dtype uint8"):
        decode_into(path, DecodeSpec((8, 8)), np.empty((8, 8, 1), np.uint8))
    with pytest.raises(ValueError, match="dtype uint8"):
        decode_into(path, DecodeSpec((8, 8)), np.empty((8, 8, 3), np.float32))


def test_dispatch(tmp_path: Path) -> None:
    image = save(make_image(seed=3), tmp_path / "a.png")
    np.save(tmp_path / "v.npy", make_volume((4, 4, 4), seed=3))
    assert decode_file(image, IMAGE).shape == (16, 16, 3)
    assert decode_file(tmp_path / "v.npy", VOLUME).shape == (4, 4, 4, 1)
    np.testing.assert_array_equal(decode_image(image, IMAGE), decode_file(image, IMAGE))
    np.testing.assert_array_equal(
        decode_volume(tmp_path / "v.npy", VOLUME), decode_file(tmp_path / "v.npy", VOLUME)
    )
    with pytest.raises(ValueError, match="decode_image needs a 2-D spec"):
        decode_image(image, VOLUME)
    with pytest.raises(ValueError, match="decode_volume needs a 3-D spec"):
        decode_volume(tmp_path / "v.npy", IMAGE)


def test_16bit_color_tiff_decodes_at_8_bits_as_documented(tmp_path: Path) -> None:
    # Pillow keeps the top 8 bits of 16-bit RGB samples; the module notes say so
    values = (np.arange(4 * 5 * 3, dtype=np.uint16).reshape(4, 5, 3) * 1000 + 7).astype(np.uint16)
    path = tmp_path / "rgb16.tif"
    tifffile.imwrite(path, values, photometric="rgb")
    got = decode_file(path, DecodeSpec((4, 5), dtype="uint16"))
    np.testing.assert_array_equal(got, (values >> 8).astype(np.uint16) * 257)


@pytest.mark.parametrize("reduced", [False, True])
def test_a_tiff_whose_first_page_is_a_thumbnail_reads_the_full_page(tmp_path, reduced):
    # a thumbnail first (DNG, some scanners; marked reduced-resolution or not) was read as the
    # picture and upscaled: PSNR 14 dB against the full page
    yy, xx = np.mgrid[0:24, 0:30]
    full = ((xx * 7 + yy * 3) % 256).astype(np.uint8)
    thumb = np.asarray(Image.fromarray(full).resize((10, 8), Image.Resampling.BILINEAR))
    path = tmp_path / "thumb_first.tif"
    tifffile.imwrite(path, thumb, **({"subfiletype": 1} if reduced else {}))
    tifffile.imwrite(path, full, append=True)
    with Image.open(path) as im:  # the oracle: Pillow's own decode of the full page
        im.seek(1)
        want = np.asarray(im.convert("L"))
    got = decode_file(path, DecodeSpec((24, 30), channels=1))
    np.testing.assert_array_equal(got[..., 0], want)
    # previews alike beside the picture (not marked reduced) are no stack: the picture reads
    both = tmp_path / "two_previews.tif"
    tifffile.imwrite(both, full)
    tifffile.imwrite(both, thumb, append=True)
    tifffile.imwrite(both, thumb, append=True)
    np.testing.assert_array_equal(decode_file(both, DecodeSpec((24, 30), channels=1))[..., 0], full)


def test_a_16bit_min_is_white_tiff_is_inverted_as_an_8bit_one_is(tmp_path):
    # photometric MinIsWhite: 0 is white. Pillow inverts 8-bit files; 16-bit ones came back
    # as a negative (stored 0 read as 0)
    values = (np.arange(4 * 5, dtype=np.uint16).reshape(4, 5) * 3001).astype(np.uint16)
    path = tmp_path / "white16.tif"
    tifffile.imwrite(path, values, photometric="miniswhite")
    got = decode_file(path, DecodeSpec((4, 5), channels=1, dtype="uint16"))
    np.testing.assert_array_equal(got[..., 0], 65535 - values)  # the oracle: the TIFF spec
    eight = tmp_path / "white8.tif"
    tifffile.imwrite(eight, (values >> 8).astype(np.uint8), photometric="miniswhite")
    np.testing.assert_array_equal(
        decode_file(eight, DecodeSpec((4, 5), channels=1))[..., 0], 255 - (values >> 8)
    )


def test_a_gray_png_with_a_transparent_value_keeps_it_when_resized(tmp_path):
    # mode L with tRNS, read with channels=4 and resized: alpha came back all 255 (the gray
    # was resized first, its transparency lost in the conversion after)
    gray = ((np.arange(24 * 32).reshape(24, 32) * 7) % 200).astype(np.uint8)
    gray[4:12, 6:18] = 60
    path = tmp_path / "trns.png"
    Image.fromarray(gray).save(path, transparency=60)
    spec = DecodeSpec((12, 16), channels=4)
    with Image.open(path) as im:  # the oracle: Pillow's RGBA, resized as daskimg resizes
        want = np.asarray(im.convert("RGBA").resize((16, 12), Image.Resampling.BILINEAR))
    got = decode_file(path, spec)
    assert (want[..., 3] < 255).any()
    np.testing.assert_array_equal(got, want)
    wide = tmp_path / "trns16.png"
    Image.fromarray(gray.astype(np.uint16) * 257).save(wide, transparency=60 * 257)
    if "transparency" in Image.open(wide).info:
        _bad(wide, spec, "transparent gray value")


def test_volume_of_python_objects_is_not_called_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "objects.npy"
    np.save(path, np.arange(24).reshape(2, 3, 4).astype(object), allow_pickle=True)
    with pytest.raises(DecodeError, match=r"objects\.npy.*Python objects.*numeric") as info:
        decode_file(path, VOLUME)
    assert "corrupt" not in str(info.value)


def test_a_multi_page_tiff_read_as_a_2d_image_is_an_error_not_its_first_page(tmp_path):
    # a stack of 3 slices came back as its first slice, without a word
    pages = [Image.fromarray(np.full((6, 5), 40 * (k + 1), np.uint8)) for k in range(3)]
    path = tmp_path / "stack.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    assert Image.open(path).n_frames == 3
    with pytest.raises(di.errors.DecodeError, match=r"stack\.tif.*has 3 pages.*3-D size"):
        di.imread([str(path)], size=(6, 5)).compute()
    vol = di.imread([str(path)], size=(3, 6, 5)).compute()  # the volume it is
    np.testing.assert_array_equal(vol[0, :, 0, 0, 0], [40, 80, 120])
    # a TIFF whose second page is a smaller preview (a scanner's, a GeoTIFF overview) is
    # its first page, as before
    small = Image.fromarray(np.full((2, 2), 7, np.uint8))
    pages[2].save(tmp_path / "preview.tif", save_all=True, append_images=[small])
    got = di.imread([str(tmp_path / "preview.tif")], size=(6, 5), channels=1).compute()
    assert got.shape == (1, 6, 5, 1) and (got == 120).all()
    # a single-page TIFF still reads
    pages[1].save(tmp_path / "one.tif")
    assert di.imread([str(tmp_path / "one.tif")], size=(6, 5), channels=1).compute().max() == 80


@pytest.mark.parametrize(
    "second",
    [((24, 30), "L"), ((22, 30), "RGB"), ((26, 30), "RGB")],
    ids=["same-size-other-mode", "a-little-smaller", "a-little-larger"],
)
def test_a_tiff_of_full_pages_that_differ_is_an_error_not_one_page(tmp_path, second):
    # pages of another mode, or a few rows apart (a scanned document), read as one page
    # without a word: the others were dropped (and a larger second page replaced the first)
    size, mode = second
    rng = np.random.default_rng(0)
    first = Image.fromarray(rng.integers(0, 255, (24, 30, 3), np.uint8))
    other = Image.fromarray(rng.integers(0, 255, (size[0], size[1], 3), np.uint8)).convert(mode)
    path = tmp_path / "document.tif"
    first.save(path, save_all=True, append_images=[other])
    with Image.open(path) as im:  # the oracle: Pillow sees two unmarked full pages
        assert im.n_frames == 2
        im.seek(1)
        assert not int(im.tag_v2.get(254, 0)) & 1
    with pytest.raises(DecodeError, match=r"document\.tif.*has 2 full pages of other sizes"):
        decode_file(path, DecodeSpec((24, 30)))
    # a half-size page beside it is a preview: the picture reads, as before
    half = tmp_path / "with_preview.tif"
    first.save(half, save_all=True, append_images=[first.resize((15, 12))])
    np.testing.assert_array_equal(decode_file(half, DecodeSpec((24, 30))), np.asarray(first))


def test_an_unmarked_pyramid_with_odd_sides_reads_its_picture(tmp_path):
    # (review) levels rounded up (101 -> 51 -> 26) are more than half: the TIFF was refused
    rng = np.random.default_rng(1)
    first = Image.fromarray(rng.integers(0, 255, (101, 101, 3), np.uint8))
    path = tmp_path / "pyramid.tif"
    first.save(path, save_all=True, append_images=[first.resize((51, 51)), first.resize((26, 26))])
    np.testing.assert_array_equal(decode_file(path, DecodeSpec((101, 101))), np.asarray(first))


def test_a_progressive_jpeg_with_a_repeated_scan_is_named_in_a_warning(tmp_path, caplog):
    # libjpeg says "Inconsistent progression sequence" (simplejpeg's strict mode raises it),
    # Pillow decodes wrong pixels without a word, and the word was not taken for damage
    import io
    import logging

    yy, xx = np.mgrid[0:90, 0:120]
    rgb = np.stack([xx * 2, yy * 2, (xx * 7 + yy * 13) % 256], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=90, progressive=True)
    good = buf.getvalue()
    sos = [i for i in range(len(good) - 1) if good[i] == 0xFF and good[i + 1] == 0xDA]
    bad = good[: sos[3]] + good[sos[2] : sos[3]] + good[sos[3] :]  # scan 2 written twice
    with pytest.raises(ValueError, match="Inconsistent progression"):  # libjpeg's word
        simplejpeg.decode_jpeg(bad, strict=True)
    with Image.open(io.BytesIO(bad)) as im:  # the oracle: Pillow's pixels are not the file's
        assert not np.array_equal(
            np.asarray(im.convert("RGB")), np.asarray(Image.open(io.BytesIO(good)))
        )
    (tmp_path / "rescan.jpg").write_bytes(bad)
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        decode_file(tmp_path / "rescan.jpg", DecodeSpec((45, 60), draft=False))
    assert "rescan.jpg" in caplog.text and "Inconsistent progression" in caplog.text


@pytest.mark.parametrize("kind", ["baseline", "progressive", "rotated", "cmyk", "adobe-rgb"])
def test_a_jpeg_libjpeg_calls_damaged_is_named_in_a_warning(tmp_path, caplog, kind):
    # 8 bytes overwritten mid-file: libjpeg (through the fast path) reported it, handed it
    # to Pillow, which decoded half the picture as garbage without a word. A progressive
    # file went to Pillow straight, and was stored damaged without a word; so were the
    # JPEGs only Pillow decodes (CMYK, Adobe RGB) and, before they took the fast path,
    # EXIF-rotated ones (every portrait photo of a phone)
    import io
    import logging

    from PIL import ImageOps

    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    good = io.BytesIO()
    if kind == "cmyk":
        picture.convert("CMYK").save(good, "JPEG")
    elif kind == "adobe-rgb":  # three components stored as R, G, B (Adobe transform 0)
        picture.save(good, "JPEG", keep_rgb=True)
    elif kind == "rotated":
        exif = Image.Exif()
        exif[0x0112] = 6
        picture.save(good, "JPEG", exif=exif.tobytes())
    else:
        picture.save(good, "JPEG", progressive=kind == "progressive")
    data = bytearray(good.getvalue())
    # where libjpeg notices it (zeros are valid Huffman codes in some places)
    at = len(data) // 3 if kind in ("progressive", "cmyk") else len(data) // 2
    data[at : at + 8] = bytes(8)
    space = "CMYK" if kind == "cmyk" else "RGB"
    with pytest.raises(ValueError, match="Corrupt JPEG data"):  # libjpeg's word (strict)
        simplejpeg.decode_jpeg(bytes(data), colorspace=space, strict=True)
    (tmp_path / "bad.jpg").write_bytes(bytes(data))
    (tmp_path / "good.jpg").write_bytes(good.getvalue())
    spec = DecodeSpec(size=(32, 32), draft=False)  # (Pillow's plain decode as the oracle)
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        got = decode_file(tmp_path / "bad.jpg", spec)
    assert "bad.jpg" in caplog.text and "libjpeg reports damage" in caplog.text
    with Image.open(tmp_path / "bad.jpg") as im:  # what Pillow decodes: kept as the oracle
        im = ImageOps.exif_transpose(im)
        oracle = np.asarray(im.convert("RGB").resize((32, 32), Image.BILINEAR))
    np.testing.assert_array_equal(got, oracle)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        decode_file(tmp_path / "good.jpg", spec)
    assert "damage" not in caplog.text
