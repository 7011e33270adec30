"""Test data: seeded synthetic images (:func:`make_image`) and class-per-folder libraries of them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import numpy as np
from PIL import Image

from ._common import FORMATS, check_seed, check_shape

__all__ = ["IMAGE_MODES", "make_image", "make_image_folder"]

IMAGE_MODES: Final = ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F")
"""Pillow modes :func:`make_image` can produce."""

_SAVE_OPTIONS: Final[dict[str, dict[str, int]]] = {"JPEG": {"quality": 90}, "WEBP": {"quality": 90}}


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
    h, w = check_shape(size, 2, "size")
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
    seed = check_seed(seed)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer; got {n!r}")
    if (
        isinstance(classes, str)
        or not classes
        or not all(isinstance(c, str) and c for c in classes)
    ):
        raise ValueError(f"classes must be a non-empty sequence of folder names; got {classes!r}")
    ext = fmt.lower().lstrip(".")
    if ext not in FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(FORMATS)}; got {fmt!r}")
    pil_format = FORMATS[ext]
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
