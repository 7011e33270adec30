"""Tests of the fast decode path (simplejpeg + the compiled resize) against Pillow.

The fast path promises the very pixels of the Pillow path (PSNR infinite, not merely
>= 40 dB): every check here is exact. The oracle is Pillow itself: ``Image.resize`` for
:mod:`daskimg.read.resample`, and daskimg's own Pillow path (what the fast path replaces)
for :func:`daskimg.read.decode.decode_file`.
"""

from __future__ import annotations

import io
import itertools
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from daskimg.errors import DecodeError
from daskimg.read import fastjpeg, resample
from daskimg.read.decode import DecodeSpec, decode_file
from daskimg.testing import make_image, make_photo_folder, save_oriented

BILINEAR = Image.Resampling.BILINEAR


def _pillow_resize(src: np.ndarray, box: tuple[float, ...], size: tuple[int, int]) -> np.ndarray:
    im = Image.fromarray(src[:, :, 0] if src.shape[2] == 1 else src)
    out = im.resize((size[1], size[0]), BILINEAR, box=box)  # type: ignore[arg-type]
    return np.asarray(out).reshape(size[0], size[1], src.shape[2])


def _random_case(
    rng: np.random.Generator,
) -> tuple[np.ndarray, tuple[float, float, float, float], tuple[int, int]]:
    big = rng.random() < 0.2
    h, w = (int(v) for v in rng.integers(1, 600 if big else 70, 2))
    oh, ow = (int(v) for v in rng.integers(1, 70, 2))
    c = int(rng.choice([1, 3]))
    src = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
    box: tuple[float, float, float, float] = (0.0, 0.0, float(w), float(h))
    if rng.random() < 0.5:
        x0, y0 = rng.uniform(0, w / 2), rng.uniform(0, h / 2)
        x1, y1 = rng.uniform(x0 + 0.3, w + 0.3), rng.uniform(y0 + 0.3, h + 0.3)
        box = (x0, y0, min(x1, w), min(y1, h))
        if rng.random() < 0.3:  # half pixels, as a centred crop gives
            box = (round(x0 * 2) / 2, round(y0 * 2) / 2, box[2], box[3])
    return src, box, (oh, ow)


# --- the resize ---------------------------------------------------------------------


def test_resize_is_compiled_where_numba_is() -> None:
    pytest.importorskip("numba")
    assert resample.compiled()


@pytest.mark.parametrize("seed", range(4))
def test_resize_equals_pillow(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(250):
        src, box, size = _random_case(rng)
        if np.float32(box[2]) <= np.float32(box[0]) or np.float32(box[3]) <= np.float32(box[1]):
            continue
        got = np.empty((*size, src.shape[2]), np.uint8)
        resample.resize_into(src, box, got)
        np.testing.assert_array_equal(got, _pillow_resize(src, box, size), err_msg=f"{box}")


def test_resize_into_a_strided_view() -> None:
    rng = np.random.default_rng(9)
    src = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    canvas = np.zeros((40, 40, 3), np.uint8)
    resample.resize_into(src, (0, 0, 70, 50), canvas[5:25, 3:31])
    np.testing.assert_array_equal(canvas[5:25, 3:31], _pillow_resize(src, (0, 0, 70, 50), (20, 28)))
    assert not canvas[:5].any() and not canvas[25:].any() and not canvas[:, :3].any()


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ((375, 500), (224, 224)),  # the benchmark: horizontal pass first
        ((1000, 300), (100, 290)),  # the height shrinks most: Pillow 13 runs vertical first
        ((1, 1), (7, 5)),
        ((1, 300), (1, 7)),
        ((300, 1), (9, 1)),
        ((2, 2), (1, 1)),
        ((448, 448), (224, 224)),
        ((17, 23), (17, 23)),
    ],
)
def test_resize_odd_shapes_equal_pillow(source: tuple[int, int], target: tuple[int, int]) -> None:
    rng = np.random.default_rng(3)
    for c in (1, 3):
        src = rng.integers(0, 256, (*source, c), dtype=np.uint8)
        box = (0.0, 0.0, float(source[1]), float(source[0]))
        got = np.empty((*target, c), np.uint8)
        resample.resize_into(src, box, got)
        np.testing.assert_array_equal(got, _pillow_resize(src, box, target))


def test_resize_without_the_compiled_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    # without numba (or a Pillow it does not reproduce) resize_into calls Pillow itself
    monkeypatch.setattr(resample, "_order", lambda: None)
    assert not resample.compiled()
    rng = np.random.default_rng(4)
    src = rng.integers(0, 256, (31, 45, 3), dtype=np.uint8)
    got = np.empty((12, 20, 3), np.uint8)
    resample.resize_into(src, (1.5, 0, 44, 31), got)
    np.testing.assert_array_equal(got, _pillow_resize(src, (1.5, 0, 44, 31), (12, 20)))


def test_resize_refuses_other_arrays() -> None:
    with pytest.raises(ValueError, match="uint8"):
        resample.resize_into(
            np.zeros((4, 4, 2), np.uint8), (0, 0, 4, 4), np.empty((2, 2, 2), np.uint8)
        )
    with pytest.raises(ValueError, match="same channels"):
        resample.resize_into(
            np.zeros((4, 4, 3), np.uint8), (0, 0, 4, 4), np.empty((2, 2, 1), np.uint8)
        )


def test_resize_releases_the_gil() -> None:
    # a second thread makes progress while the first is inside a long compiled resize
    pytest.importorskip("numba")
    src = np.random.default_rng(0).integers(0, 256, (3000, 3000, 3), dtype=np.uint8)
    out = np.empty((2999, 2999, 3), np.uint8)
    resample.resize_into(src[:10, :10], (0, 0, 10, 10), out[:9, :9])  # compiled already
    ticks: list[int] = []
    done = threading.Event()

    def count() -> None:
        while not done.is_set():
            ticks.append(1)

    t = threading.Thread(target=count)
    t.start()
    try:
        before = len(ticks)
        resample.resize_into(src, (0, 0, 3000, 3000), out)
        during = len(ticks) - before
    finally:
        done.set()
        t.join()
    # holding the GIL for the whole call, the counter would not move at all
    assert during > 100


# --- which JPEGs take the fast path ----------------------------------------------------


def _jpeg(im: Image.Image, **options: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90, **options)
    return buf.getvalue()


@pytest.mark.parametrize("progressive", [False, True])
def test_header_takes_baseline_and_progressive_rgb_and_gray(progressive: bool) -> None:
    rgb = fastjpeg.read_header(_jpeg(make_image((30, 44), seed=1), progressive=progressive))
    gray = fastjpeg.read_header(
        _jpeg(make_image((30, 44), seed=1, mode="L"), progressive=progressive)
    )
    assert rgb == fastjpeg.JpegHeader(44, 30, 3)
    assert gray == fastjpeg.JpegHeader(44, 30, 1)


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _with_app1(data: bytes, payload: bytes) -> bytes:
    """Insert an APP1 segment right after SOI."""
    return data[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + data[2:]


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("cmyk", lambda im: _jpeg(im.convert("CMYK"))),
        ("bad orientation", lambda im: _jpeg(im, exif=_exif(9))),
        ("orientation 0", lambda im: _jpeg(im, exif=_exif(0))),
        ("two exif blocks", lambda im: _with_app1(_jpeg(im, exif=_exif(1)), _exif(1))),
        (
            "xmp orientation",
            lambda im: _with_app1(
                _jpeg(im), b"http://ns.adobe.com/xap/1.0/\0<x tiff:Orientation='6'/>"
            ),
        ),
        ("png", lambda im: (lambda b: (im.save(b, "PNG"), b.getvalue())[1])(io.BytesIO())),
        ("truncated header", lambda im: _jpeg(im)[:40]),
        ("not a jpeg", lambda im: b"hello world"),
    ],
)
def test_header_leaves_the_rest_to_pillow(name: str, make: object) -> None:
    im = make_image((30, 44), seed=2)
    assert fastjpeg.read_header(make(im)) is None, name  # type: ignore[operator]


def test_header_takes_upright_exif() -> None:
    im = make_image((30, 44), seed=2)
    assert fastjpeg.read_header(_jpeg(im, exif=_exif(1))) is not None


@pytest.mark.parametrize("orientation", range(1, 9))
def test_header_reads_the_exif_orientation(orientation: int) -> None:
    # the oracle: Pillow's own reading of the tag (what exif_transpose applies)
    data = _jpeg(make_image((30, 44), seed=2), exif=_exif(orientation))
    with Image.open(io.BytesIO(data)) as im:
        assert im.getexif()[0x0112] == orientation
    assert fastjpeg.read_header(data) == fastjpeg.JpegHeader(44, 30, 3, orientation)


# --- decode_file: the fast path against daskimg's Pillow path ------------------------


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("photos")
    return make_photo_folder(
        root, n_per_class=2, classes=("astronaut", "coffee", "camera", "coins", "retina")
    )


def _pillow_path(path: Path, spec: DecodeSpec, monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    with monkeypatch.context() as m:
        m.setattr(fastjpeg, "read_header", lambda data: None)
        return decode_file(path, spec)


def _fast_taken(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    taken: list[int] = []
    original = fastjpeg.decode

    def spy(*args: object, **kwargs: object) -> object:
        pixels = original(*args, **kwargs)  # type: ignore[arg-type]
        taken.append(pixels is not None)
        return pixels

    monkeypatch.setattr(fastjpeg, "decode", spy)
    return taken


SPECS = [
    DecodeSpec(size, channels=c, resize=r, dtype=d, draft=draft)
    for size, c, r, d, draft in itertools.chain(
        itertools.product(
            [(224, 224), (64, 96), (100, 30), (600, 800), (7, 9)],
            [1, 3, 4],
            ["stretch", "crop", "pad"],
            ["uint8"],
            [True, False],
        ),
        itertools.product([(64, 64)], [3, 1], ["crop", "pad"], ["uint16", "float32"], [True]),
    )
]


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_fast_path_equals_pillow_path(
    photos: list[Path], spec: DecodeSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = _fast_taken(monkeypatch)
    for path in photos:
        want = _pillow_path(path, spec, monkeypatch)
        got = decode_file(path, spec)
        np.testing.assert_array_equal(got, want, err_msg=f"{path.name} {spec}")
    assert taken and all(taken)  # the fast path really decoded these


@pytest.mark.parametrize(
    "spec",
    [
        DecodeSpec(size, channels=c, resize=r, draft=draft)
        for size, c, r, draft in itertools.product(
            [(224, 224), (64, 96), (7, 9)], [1, 3], ["stretch", "crop"], [True, False]
        )
    ],
    ids=repr,
)
def test_progressive_jpegs_take_the_fast_path_and_equal_pillow(
    photos: list[Path], spec: DecodeSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the photos saved progressive (color and gray), DCT-scaled where draft allows: the
    # pixels Pillow's own decode and resize give, bit for bit
    taken = _fast_taken(monkeypatch)
    for path in photos:
        with Image.open(path) as im:
            im.load()
            prog = tmp_path / f"p-{path.name}"
            im.save(prog, "JPEG", quality=90, progressive=True)
        want = _pillow_path(prog, spec, monkeypatch)
        np.testing.assert_array_equal(decode_file(prog, spec), want, err_msg=f"{prog.name}")
    assert taken and all(taken)


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_dct_scaling_equals_pillow_draft(
    tmp_path: Path, scale: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # sources 2, 4 and 8 times the target (and odd sizes, whose last scaled pixel is partial)
    spec = DecodeSpec((30, 40), resize="crop")
    for h, w, c in [(30 * scale + 3, 40 * scale + 5, "RGB"), (30 * scale, 40 * scale + 7, "L")]:
        path = tmp_path / f"{h}x{w}{c}.jpg"
        make_image((h, w), seed=scale, mode=c).save(path, quality=90)
        taken = _fast_taken(monkeypatch)
        got = decode_file(path, spec)
        assert taken == [True]
        np.testing.assert_array_equal(got, _pillow_path(path, spec, monkeypatch))


def test_tiny_jpegs_equal_pillow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # where a smaller M/8 scale rounds up to the same size, the fast path must not take it
    for h, w in [(1, 1), (2, 3), (3, 3), (5, 2), (9, 17), (16, 16)]:
        path = tmp_path / f"{h}x{w}.jpg"
        make_image((h, w), seed=h * w).save(path, quality=90)
        for size in [(1, 1), (1, 2), (2, 1), (3, 3), (8, 8)]:
            for resize in ("stretch", "crop", "pad"):
                spec = DecodeSpec(size, resize=resize)
                np.testing.assert_array_equal(
                    decode_file(path, spec), _pillow_path(path, spec, monkeypatch)
                )


def test_upright_exif_takes_the_fast_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_oriented(make_image((60, 80), seed=5), tmp_path / "o.jpg", orientation=1)
    taken = _fast_taken(monkeypatch)
    spec = DecodeSpec((32, 32), resize="crop")
    got = decode_file(path, spec)
    assert taken == [True]
    np.testing.assert_array_equal(got, _pillow_path(path, spec, monkeypatch))


@pytest.mark.parametrize("magic", [b"II\x00\x00", b"II+\x00", b"MM*\x00", b"XX*\x00"])
def test_an_exif_block_whose_tiff_header_pillow_refuses_is_left_to_pillow(
    tmp_path: Path, magic: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a damaged TIFF magic in the EXIF block: Pillow reads no orientation (or fails), the
    # fast path read 6 and turned the picture (source_size swapped), silently
    import struct

    tiff = magic + struct.pack("<IH", 8, 1) + struct.pack("<HHIHH", 0x0112, 3, 1, 6, 0) + bytes(4)
    data = _with_app1(_jpeg(make_image((30, 50), seed=9)), b"Exif\0\0" + tiff)
    assert fastjpeg.read_header(data) is None
    path = tmp_path / "m.jpg"
    path.write_bytes(data)
    spec = DecodeSpec((30, 50), draft=False)
    import warnings

    with warnings.catch_warnings():  # the oracle: Pillow, where it reads the file at all
        warnings.simplefilter("ignore")  # (it warns of the EXIF)
        with Image.open(path) as im:
            try:
                want = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
            except SyntaxError:
                want = None
    if want is not None:
        np.testing.assert_array_equal(decode_file(path, spec), want)


@pytest.mark.parametrize("orientation", range(2, 9))
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_oriented_jpegs_take_the_fast_path_and_equal_pillow(
    tmp_path: Path, orientation: int, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a phone's portrait photo (orientation 6) and every other orientation: flipped or
    # rotated after decoding, DCT-scaled where draft allows (the slack of libjpeg's rounded-
    # up scaled size then lies on another side), in every resize mode: Pillow's pixels
    # (Image.open -> draft -> exif_transpose -> convert -> resize), bit for bit
    for h, w in [(300, 457), (61, 83), (17, 250)]:
        path = save_oriented(
            make_image((h, w), seed=orientation, mode=mode),
            tmp_path / f"{h}x{w}.jpg",
            orientation=orientation,
        )
        for size, c, r, draft in itertools.product(
            [(224, 224), (30, 45), (100, 30)], [1, 3], ["stretch", "crop", "pad"], [True, False]
        ):
            spec = DecodeSpec(size, channels=c, resize=r, draft=draft)
            taken = _fast_taken(monkeypatch)
            got = decode_file(path, spec)
            assert taken == [True], (path.name, spec)
            np.testing.assert_array_equal(
                got, _pillow_path(path, spec, monkeypatch), err_msg=f"{path.name} {spec}"
            )


def test_corrupt_but_decodable_jpeg_goes_to_pillow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a damaged byte in the image data: libjpeg warns; simplejpeg (strict) refuses the file,
    # Pillow decodes it anyway, and daskimg gives what Pillow gives
    data = _jpeg(make_image((40, 56), seed=6))
    start = data.index(b"\xff\xda") + 20
    path = tmp_path / "damaged.jpg"
    for i in range(start, len(data) - 2, 7):
        damaged = bytearray(data)
        damaged[i] ^= 0xFF
        path.write_bytes(bytes(damaged))
        with Image.open(path) as im:
            try:
                im.load()
            except OSError:
                continue  # Pillow refuses this one too
        taken = _fast_taken(monkeypatch)
        spec = DecodeSpec((20, 28))
        got = decode_file(path, spec)
        np.testing.assert_array_equal(got, _pillow_path(path, spec, monkeypatch))
        if taken == [False]:
            return  # found a file only Pillow takes, and the result is Pillow's
    pytest.fail("no damaged byte made simplejpeg refuse the file")


def test_truncated_jpeg_still_says_truncated(tmp_path: Path) -> None:
    data = _jpeg(make_image((64, 64), seed=7))
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DecodeError, match="truncated"):
        decode_file(path, DecodeSpec((32, 32)))


def test_bombs_go_to_pillow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.jpg"
    make_image((64, 64), seed=8).save(path, quality=90)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 // 4 - 1)
    with pytest.raises(DecodeError, match="decompression-bomb"):
        decode_file(path, DecodeSpec((16, 16)))


def test_gray_from_color_without_draft(photos: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    # Pillow converts RGB -> L before resizing (no draft: libjpeg's own luma is not used)
    spec = DecodeSpec((64, 64), channels=1, draft=False)
    for path in photos[:4]:
        np.testing.assert_array_equal(
            decode_file(path, spec), _pillow_path(path, spec, monkeypatch)
        )
