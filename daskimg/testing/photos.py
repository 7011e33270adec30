"""Test data: a realistic little photo library cut from the pictures bundled in scikit-image
(no download)."""

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

from ._common import check_seed, check_shape

__all__ = ["PHOTOS", "make_photo_folder"]

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
    seed = check_seed(seed)
    if isinstance(n_per_class, bool) or not isinstance(n_per_class, int) or n_per_class < 0:
        raise ValueError(f"n_per_class must be a non-negative integer; got {n_per_class!r}")
    names = tuple(_DEFAULT_PHOTO_CLASSES if classes is None else classes)
    unknown = [c for c in names if c not in PHOTOS]
    if unknown or not names:
        raise ValueError(f"classes must be names from {', '.join(PHOTOS)}; got {classes!r}")
    target = None if size is None else check_shape(size, 2, "size")
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
