"""What the test-data helpers share: argument checks and the image formats they write."""

from __future__ import annotations

from typing import Final

import numpy as np

__all__ = ["FORMATS", "check_seed", "check_shape"]

#: file ending -> Pillow format
FORMATS: Final = {
    "png": "PNG",
    "jpg": "JPEG",
    "jpeg": "JPEG",
    "bmp": "BMP",
    "tif": "TIFF",
    "tiff": "TIFF",
    "webp": "WEBP",
    "gif": "GIF",
}


def check_shape(shape: object, ndim: int, name: str) -> tuple[int, ...]:
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


def check_seed(seed: object) -> int:
    """Validate a non-negative int seed."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    return int(seed)
