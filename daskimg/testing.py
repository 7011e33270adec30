"""Tiny, seeded test data: images, image folders, volumes and a small photo library.

Everything here is deterministic given ``seed`` and needs no network: the photo
library is cut from the pictures bundled inside the scikit-image wheel. The test
suite, the docs and the demo all build their data with these helpers.

Sizes are given as ``(height, width)`` like everywhere else in daskimg (Pillow
itself uses ``(width, height)``).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import Final

import numpy as np
from PIL import Image

__all__ = [
    "IMAGE_MODES",
    "PHOTOS",
    "make_image",
    "make_image_folder",
    "make_object_image",
    "make_object_mask",
    "make_photo_folder",
    "make_volume",
    "make_volume_folder",
    "save_oriented",
]

IMAGE_MODES: Final = ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F")
"""Pillow modes :func:`make_image` can produce."""

PHOTOS: Final = {
    "astronaut": "astronaut.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "rocket": "rocket.jpg",
    "motorcycle": "motorcycle_left.png",
    "hubble": "hubble_deep_field.jpg",
    "ihc": "ihc.png",
    "retina": "retina.jpg",
    "camera": "camera.png",
    "coins": "coins.png",
}
"""Class name -> photo shipped in ``skimage/data`` (the last two are grayscale)."""

_DEFAULT_PHOTO_CLASSES: Final = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle", "hubble")

_FORMATS: Final = {
    "png": "PNG",
    "jpg": "JPEG",
    "jpeg": "JPEG",
    "bmp": "BMP",
    "tif": "TIFF",
    "tiff": "TIFF",
    "webp": "WEBP",
    "gif": "GIF",
}
_SAVE_OPTIONS: Final[dict[str, dict[str, int]]] = {"JPEG": {"quality": 90}, "WEBP": {"quality": 90}}
_VOLUME_DTYPES: Final = ("uint8", "uint16", "int16", "float32", "float64")
#: the transpose that turns an upright picture into the file's frame for EXIF orientation 1..8
#: (the inverse of what ImageOps.exif_transpose applies)
_UNTRANSPOSE: Final = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def _check_shape(shape: object, ndim: int, name: str) -> tuple[int, ...]:
    """Validate a tuple of ``ndim`` positive ints."""
    if (
        not isinstance(shape, (tuple, list))
        or len(shape) != ndim
        or not all(
            isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n > 0 for n in shape
        )
    ):
        raise ValueError(f"{name} must be {ndim} positive integers; got {shape!r}")
    return tuple(int(n) for n in shape)


def _check_seed(seed: object) -> int:
    """Validate a non-negative int seed."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    return int(seed)


def make_image(
    size: tuple[int, int] = (32, 40),
    *,
    seed: int | np.random.Generator = 0,
    mode: str = "RGB",
) -> Image.Image:
    """Make a small, smooth, non-constant image: seeded waves plus a few shapes.

    Each color channel is a slanted sine wave of random frequency and phase;
    two to four rectangles and ellipses of random color sit on top, so resizing
    and JPEG compression have edges and gradients to work on. Alpha (``RGBA``,
    ``LA``) is another wave clipped so that it holds fully transparent, partly
    transparent and opaque pixels. 16-bit and float images span their full
    range (0..65535, 0..1).

    Parameters
    ----------
    size : tuple of int
        ``(height, width)``.
    seed : int or numpy.random.Generator
        Decides every pixel; different seeds give different images.
    mode : str
        A Pillow mode from :data:`IMAGE_MODES`: ``"1"``, ``"L"``, ``"LA"``,
        ``"P"`` (64 colors), ``"RGB"``, ``"RGBA"``, ``"CMYK"``, ``"I;16"``,
        ``"I"`` or ``"F"``.

    Returns
    -------
    PIL.Image.Image
        A loaded image of ``mode``, ``size[1]`` pixels wide.

    Examples
    --------
    >>> im = make_image((32, 40), seed=3)
    >>> im.mode, im.size
    ('RGB', (40, 32))
    >>> make_image(seed=3).tobytes() == im.tobytes(), make_image(seed=4).tobytes() == im.tobytes()
    (True, False)
    >>> make_image((8, 8), mode="I;16").getextrema()
    (0, 65535)
    """
    h, w = _check_shape(size, 2, "size")
    if mode not in IMAGE_MODES:
        raise ValueError(f"mode must be one of {', '.join(IMAGE_MODES)}; got {mode!r}")
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, h)[:, None]
    x = np.linspace(0.0, 1.0, w)[None, :]

    def wave() -> np.ndarray:
        fx, fy = rng.uniform(0.4, 1.8, 2) * rng.choice([-1.0, 1.0], 2)
        return 0.5 + 0.42 * np.sin(2 * np.pi * (fx * x + fy * y) + rng.uniform(0, 2 * np.pi))

    rgb = np.stack([wave() for _ in range(3)], axis=-1)
    for _ in range(int(rng.integers(2, 5))):
        color = rng.uniform(0.0, 1.0, 3)
        cy, cx = rng.uniform(0.15, 0.85, 2)
        ry, rx = rng.uniform(0.08, 0.3, 2)
        if rng.random() < 0.5:
            inside = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0
        else:
            inside = (np.abs(y - cy) <= ry) & (np.abs(x - cx) <= rx)
        rgb[inside] = 0.7 * color + 0.3 * rgb[inside]
    alpha = np.clip(1.6 * wave() - 0.3, 0.0, 1.0)

    rgb8 = np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)
    image = Image.fromarray(rgb8)
    if mode in ("I;16", "I", "F"):
        gray = rgb @ np.array([0.299, 0.587, 0.114])
        span = gray.max() - gray.min()
        gray = (gray - gray.min()) / span if span > 0 else np.zeros_like(gray)
        if mode == "F":
            return Image.fromarray(gray.astype(np.float32))
        gray16 = np.round(gray * 65535).astype(np.uint16)
        return Image.fromarray(gray16 if mode == "I;16" else gray16.astype(np.int32))
    alpha8 = Image.fromarray(np.round(alpha * 255).astype(np.uint8))
    if mode == "RGBA":
        image.putalpha(alpha8)
        return image
    if mode == "LA":
        return Image.merge("LA", (image.convert("L"), alpha8))
    if mode == "P":
        return image.quantize(colors=64)
    if mode == "1":
        return image.convert("L").convert("1")
    return image.convert(mode)


def make_image_folder(
    root: str | os.PathLike[str],
    *,
    n: int = 12,
    size: tuple[int, int] = (32, 40),
    classes: Sequence[str] = ("cat", "dog"),
    seed: int = 0,
    fmt: str = "png",
    split_dirs: Sequence[str] | None = None,
    mode: str = "RGB",
) -> list[Path]:
    """Write a class-per-folder image library of :func:`make_image` pictures.

    Image ``i`` (0 to ``n - 1``) goes to class ``classes[i % len(classes)]`` as
    ``root/<class>/<class>_<i:04d>.<fmt>``. With ``split_dirs`` every split gets
    its own ``n`` images under ``root/<split>/<class>/``. Every image has its
    own pixels, decided by ``seed``, the split and ``i``.

    Parameters
    ----------
    root : str or os.PathLike
        Folder to write into; created if missing.
    n : int
        Images per split (or in total without splits), spread round-robin over
        the classes.
    size : tuple of int
        ``(height, width)`` of every image.
    classes : sequence of str
        Class folder names.
    seed : int
        Non-negative seed.
    fmt : str
        File type and extension: ``"png"``, ``"jpg"``, ``"jpeg"``, ``"bmp"``,
        ``"tif"``, ``"tiff"``, ``"webp"`` or ``"gif"``. JPEG and WebP use
        quality 90.
    split_dirs : sequence of str, optional
        Split folder names, e.g. ``("train", "valid", "test")``.
    mode : str
        Pillow mode of the images (see :func:`make_image`); it must be one the
        format can store.

    Returns
    -------
    list of pathlib.Path
        The written files, sorted.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> paths = make_image_folder(root, n=4, classes=("cat", "dog"))
    >>> [p.relative_to(root).as_posix() for p in paths]
    ['cat/cat_0000.png', 'cat/cat_0002.png', 'dog/dog_0001.png', 'dog/dog_0003.png']
    >>> len(make_image_folder(root / "splits", n=4, fmt="jpg", split_dirs=("train", "test")))
    8
    """
    root = Path(root)
    seed = _check_seed(seed)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer; got {n!r}")
    if (
        isinstance(classes, str)
        or not classes
        or not all(isinstance(c, str) and c for c in classes)
    ):
        raise ValueError(f"classes must be a non-empty sequence of folder names; got {classes!r}")
    ext = fmt.lower().lstrip(".")
    if ext not in _FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(_FORMATS)}; got {fmt!r}")
    pil_format = _FORMATS[ext]
    splits: list[str | None] = [None] if split_dirs is None else list(split_dirs)
    paths = []
    for split_index, split in enumerate(splits):
        base = root if split is None else root / split
        for i in range(n):
            cls = classes[i % len(classes)]
            folder = base / cls
            folder.mkdir(parents=True, exist_ok=True)
            image = make_image(size, seed=np.random.default_rng([seed, split_index, i]), mode=mode)
            path = folder / f"{cls}_{i:04d}.{ext}"
            try:
                image.save(path, format=pil_format, **_SAVE_OPTIONS.get(pil_format, {}))
            except (OSError, ValueError, KeyError) as exc:
                raise ValueError(f"cannot save mode {mode!r} images as {fmt!r}: {exc}") from exc
            paths.append(path)
    return sorted(paths)


def make_volume(
    shape: tuple[int, ...] = (8, 10, 12),
    *,
    seed: int | np.random.Generator = 0,
    dtype: str = "uint8",
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Make a small smooth volume: a gradient plus a few Gaussian blobs.

    Parameters
    ----------
    shape : tuple of int
        ``(depth, height, width)``.
    seed : int or numpy.random.Generator
        Decides every voxel.
    dtype : {"uint8", "uint16", "int16", "float32", "float64"}
        Unsigned volumes span their full range (0..255, 0..65535), the others 0..1,
        unless ``value_range`` is given.
    value_range : tuple of float, optional
        ``(lo, hi)`` for the values to span, e.g. ``(-1000, 2000)`` for a CT scan in
        Hounsfield units (air to bone).

    Returns
    -------
    numpy.ndarray
        An array of ``shape`` and ``dtype``.

    Examples
    --------
    >>> vol = make_volume((4, 5, 6), seed=1)
    >>> vol.shape, vol.dtype.name, int(vol.min()), int(vol.max())
    ((4, 5, 6), 'uint8', 0, 255)
    >>> ct = make_volume((4, 5, 6), dtype="int16", value_range=(-1000, 2000))
    >>> ct.dtype.name, int(ct.min()), int(ct.max())
    ('int16', -1000, 2000)
    """
    dims = _check_shape(shape, 3, "shape")
    dtype = np.dtype(dtype).name
    if dtype not in _VOLUME_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_VOLUME_DTYPES)}; got {dtype!r}")
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*(np.linspace(0.0, 1.0, n) for n in dims), indexing="ij", sparse=True)
    vol = sum(g * c for g, c in zip(grids, rng.uniform(-0.5, 0.5, 3), strict=True))
    for _ in range(3):
        center = rng.uniform(0.2, 0.8, 3)
        width = rng.uniform(0.1, 0.3)
        dist2 = sum((g - c) ** 2 for g, c in zip(grids, center, strict=True))
        vol = vol + rng.uniform(0.5, 1.0) * np.exp(-dist2 / (2 * width**2))
    vol = np.broadcast_to(vol, dims).astype(np.float64)
    span = vol.max() - vol.min()
    vol = (vol - vol.min()) / span if span > 0 else np.zeros(dims)
    if value_range is None and dtype in ("uint8", "uint16"):
        value_range = (0, np.iinfo(dtype).max)
    if value_range is not None:
        lo, hi = (float(v) for v in value_range)
        vol = lo + vol * (hi - lo)
    if np.dtype(dtype).kind == "f":
        return vol.astype(dtype)
    return np.round(vol).astype(dtype)


def make_volume_folder(
    root: str | os.PathLike[str],
    *,
    n: int = 4,
    shape: tuple[int, int, int] = (8, 10, 12),
    seed: int = 0,
    fmt: str = "npy",
    shapes: Sequence[tuple[int, int, int]] | None = None,
    dtype: str = "uint8",
    classes: Sequence[str] | None = None,
    value_range: tuple[float, float] | None = None,
) -> list[Path]:
    """Write ``n`` :func:`make_volume` volumes as ``.npy`` files or TIFF stacks.

    Files are ``root/vol_<i:04d>.<fmt>``, or with ``classes``
    ``root/<class>/<class>_<i:04d>.<fmt>`` spread round-robin.

    Parameters
    ----------
    root : str or os.PathLike
        Folder to write into; created if missing.
    n : int
        Number of volumes.
    shape : tuple of int
        ``(depth, height, width)`` of every volume, unless ``shapes`` is given.
    seed : int
        Non-negative seed.
    fmt : {"npy", "tif"}
        ``"npy"`` for ``numpy.save`` files, ``"tif"`` (or ``"tiff"``) for
        multi-page grayscale TIFFs.
    shapes : sequence of tuple of int, optional
        Shapes to cycle through, so volume ``i`` has ``shapes[i % len(shapes)]``.
    dtype : {"uint8", "uint16", "int16", "float32", "float64"}
        Voxel type (see :func:`make_volume`).
    classes : sequence of str, optional
        Class folder names.
    value_range : tuple of float, optional
        The values to span (see :func:`make_volume`).

    Returns
    -------
    list of pathlib.Path
        The written files, sorted.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> paths = make_volume_folder(tempfile.mkdtemp(), n=3, shapes=[(4, 5, 6), (2, 3, 4)])
    >>> [np.load(p).shape for p in paths]
    [(4, 5, 6), (2, 3, 4), (4, 5, 6)]
    """
    root = Path(root)
    seed = _check_seed(seed)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer; got {n!r}")
    ext = fmt.lower().lstrip(".")
    if ext not in ("npy", "tif", "tiff"):
        raise ValueError(f"fmt must be 'npy', 'tif' or 'tiff'; got {fmt!r}")
    cycle = (
        [_check_shape(s, 3, "shapes[i]") for s in shapes]
        if shapes
        else [_check_shape(shape, 3, "shape")]
    )
    if classes is not None and (isinstance(classes, str) or not classes):
        raise ValueError(f"classes must be a non-empty sequence of folder names; got {classes!r}")
    paths = []
    for i in range(n):
        vol = make_volume(
            cycle[i % len(cycle)],
            seed=np.random.default_rng([seed, i]),
            dtype=dtype,
            value_range=value_range,
        )
        if classes is None:
            folder, stem = root, f"vol_{i:04d}"
        else:
            cls = classes[i % len(classes)]
            folder, stem = root / cls, f"{cls}_{i:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{stem}.{ext}"
        if ext == "npy":
            np.save(path, vol)
        else:
            import tifffile

            tifffile.imwrite(path, vol, photometric="minisblack")
        paths.append(path)
    return sorted(paths)


def make_object_image(
    size: tuple[int, int],
    box: Sequence[int],
    *,
    background: int = 40,
    color: int = 220,
    mode: str = "RGB",
) -> Image.Image:
    """An upright picture with one object: a filled rectangle on a flat background.

    The oracle for boxes: the object's position found in a decoded image says where the
    box must be.

    Parameters
    ----------
    size : tuple of int
        ``(height, width)``.
    box : sequence of int
        ``x0, y0, x1, y1``: the object covers columns ``x0 .. x1 - 1`` and rows
        ``y0 .. y1 - 1`` (pixel edges, as daskimg's boxes); it may reach past the edges.
    background, color : int
        Gray levels of the background and the object.
    mode : str
        ``"RGB"`` or ``"L"``.

    Returns
    -------
    PIL.Image.Image

    Examples
    --------
    >>> im = make_object_image((4, 6), (1, 1, 3, 2), background=0, color=9, mode="L")
    >>> np.asarray(im).tolist()[:3]
    [[0, 0, 0, 0, 0, 0], [0, 9, 9, 0, 0, 0], [0, 0, 0, 0, 0, 0]]
    """
    h, w = _check_shape(size, 2, "size")
    arr = np.full((h, w), background, dtype=np.uint8)
    x0, y0, x1, y1 = (int(v) for v in box)
    arr[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = color
    image = Image.fromarray(arr)
    return image if mode == "L" else image.convert(mode)


def make_object_mask(
    size: tuple[int, int],
    boxes: Sequence[tuple[Sequence[int], int]],
    *,
    background: int = 0,
    palette: bool = False,
) -> Image.Image:
    """A segmentation mask: class ids painted in rectangles, in order, on ``background``.

    Parameters
    ----------
    size : tuple of int
        ``(height, width)``.
    boxes : sequence of (box, class id)
        ``((x0, y0, x1, y1), id)`` pairs, as :func:`make_object_image` draws them.
    background : int
        The class id everywhere else.
    palette : bool
        Save-ready as a palette image (``P``, as Pascal VOC masks) instead of ``L``.

    Examples
    --------
    >>> m = make_object_mask((3, 4), [((0, 0, 2, 2), 3)], background=5)
    >>> np.asarray(m).tolist()
    [[3, 3, 5, 5], [3, 3, 5, 5], [5, 5, 5, 5]]
    """
    h, w = _check_shape(size, 2, "size")
    arr = np.full((h, w), background, dtype=np.uint8)
    for box, class_id in boxes:
        x0, y0, x1, y1 = (int(v) for v in box)
        arr[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = class_id
    image = Image.fromarray(arr)
    if palette:
        image = image.convert("P")
        image.putpalette([v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, i)])
    return image


def save_oriented(
    upright: Image.Image,
    path: str | os.PathLike[str],
    *,
    orientation: int = 1,
    quality: int = 95,
) -> Path:
    """Save ``upright`` so that a viewer honouring EXIF ``orientation`` shows it upright.

    The pixels are stored turned the way a camera would store them, with the orientation
    tag (1..8) set, in the format the file ending names (JPEG, PNG, ...).

    Examples
    --------
    >>> import tempfile
    >>> from PIL import ImageOps
    >>> im = make_object_image((4, 6), (1, 1, 3, 2))
    >>> p = save_oriented(im, Path(tempfile.mkdtemp()) / "x.png", orientation=6)
    >>> with Image.open(p) as f:
    ...     f.size, ImageOps.exif_transpose(f).tobytes() == im.tobytes()
    ((4, 6), True)
    """
    path = Path(path)
    if orientation not in range(1, 9):
        raise ValueError(f"orientation must be 1..8; got {orientation!r}")
    stored = upright if orientation == 1 else upright.transpose(_UNTRANSPOSE[orientation])
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    ext = path.suffix.lower().lstrip(".")
    fmt = _FORMATS.get(ext)
    if fmt is None:
        raise ValueError(
            f"cannot tell the format of {path.name!r}; use one of {', '.join(_FORMATS)}"
        )
    options: dict[str, int] = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    stored.save(path, format=fmt, exif=exif, **options)
    return path


@functools.cache
def _photo(name: str) -> Image.Image:
    """Load one bundled scikit-image photo as RGB or L (cached; callers must not modify it)."""
    resource = files("skimage.data") / PHOTOS[name]
    if not resource.is_file():
        raise FileNotFoundError(
            f"this scikit-image does not ship {PHOTOS[name]!r}; pick classes from the others"
        )
    with resource.open("rb") as f, Image.open(f) as im:
        return im.convert("L" if im.mode in ("L", "I;16", "I") else "RGB")


def make_photo_folder(
    root: str | os.PathLike[str],
    *,
    n_per_class: int = 8,
    size: tuple[int, int] | None = None,
    seed: int = 0,
    classes: Sequence[str] | None = None,
    quality: int = 90,
) -> list[Path]:
    """Write a realistic little photo library as JPEGs, one class per bundled photo.

    The source pictures ship inside the scikit-image wheel (no download). Each
    file is a seeded random crop (45 to 100 % of the area, aspect 3:4 to 4:3),
    flipped left-right half of the time and scaled so its longer side is 300 to
    600 pixels, so files differ in content and size like a real collection.

    Parameters
    ----------
    root : str or os.PathLike
        Folder to write ``root/<class>/<class>_<i:04d>.jpg`` into.
    n_per_class : int
        Files per class.
    size : tuple of int, optional
        ``(height, width)`` to give every file (crops then take that aspect)
        instead of random sizes.
    seed : int
        Non-negative seed.
    classes : sequence of str, optional
        Names from :data:`PHOTOS`; defaults to the six color photos astronaut,
        chelsea, coffee, rocket, motorcycle and hubble.
    quality : int
        JPEG quality.

    Returns
    -------
    list of pathlib.Path
        The written files, sorted.

    Examples
    --------
    >>> import tempfile
    >>> paths = make_photo_folder(tempfile.mkdtemp(), n_per_class=2, classes=("chelsea", "coffee"))
    >>> [p.name for p in paths]
    ['chelsea_0000.jpg', 'chelsea_0001.jpg', 'coffee_0000.jpg', 'coffee_0001.jpg']
    >>> with Image.open(paths[0]) as im:
    ...     300 <= max(im.size) <= 600
    True
    """
    root = Path(root)
    seed = _check_seed(seed)
    if isinstance(n_per_class, bool) or not isinstance(n_per_class, int) or n_per_class < 0:
        raise ValueError(f"n_per_class must be a non-negative integer; got {n_per_class!r}")
    names = tuple(_DEFAULT_PHOTO_CLASSES if classes is None else classes)
    unknown = [c for c in names if c not in PHOTOS]
    if unknown or not names:
        raise ValueError(f"classes must be names from {', '.join(PHOTOS)}; got {classes!r}")
    target = None if size is None else _check_shape(size, 2, "size")
    paths = []
    for name in names:
        source = _photo(name)
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        key = list(PHOTOS).index(name)  # stable per photo, whichever classes are asked for
        for i in range(n_per_class):
            rng = np.random.default_rng([seed, key, i])
            image = _random_view(source, rng, target)
            path = folder / f"{name}_{i:04d}.jpg"
            image.save(path, format="JPEG", quality=quality)
            paths.append(path)
    return sorted(paths)


def _random_view(
    source: Image.Image, rng: np.random.Generator, target: tuple[int, ...] | None
) -> Image.Image:
    """A seeded random crop, flip and rescale of ``source``."""
    w, h = source.size
    area = rng.uniform(0.45, 1.0) * w * h
    if target is None:
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    else:
        aspect = target[1] / target[0]
    cw = math.sqrt(area * aspect)
    ch = cw / aspect
    shrink = min(1.0, w / cw, h / ch)  # keep the aspect when the photo is too narrow
    cw, ch = max(1, round(cw * shrink)), max(1, round(ch * shrink))
    left = int(rng.integers(0, w - cw + 1))
    top = int(rng.integers(0, h - ch + 1))
    view = source.crop((left, top, left + cw, top + ch))
    if rng.random() < 0.5:
        view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if target is None:
        scale = int(rng.integers(300, 601)) / max(cw, ch)
        out_size = (max(1, round(cw * scale)), max(1, round(ch * scale)))
    else:
        out_size = (target[1], target[0])
    return view.resize(out_size, Image.Resampling.LANCZOS)
