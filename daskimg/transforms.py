"""Feed: vectorised batch augmentations, examples of the ``transform`` hook.

A transform takes the batch dict and a ``numpy.random.Generator`` and returns the
batch dict; it works on whole ``(N, H, W, C)`` batches, not sample by sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .feed.iterator import Transform

__all__ = ["compose", "random_crop", "random_flip"]


def random_flip(*, p: float = 0.5, key: str = "images") -> Transform:
    """Flip each image left-right with probability ``p``.

    Examples
    --------
    >>> import numpy as np
    >>> t = random_flip(p=1.0)
    >>> x = np.arange(6, dtype=np.uint8).reshape(1, 1, 6, 1)
    >>> t({"images": x}, np.random.default_rng(0))["images"].ravel().tolist()
    [5, 4, 3, 2, 1, 0]
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must lie in [0, 1], got {p}")

    def flip(batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        x = batch[key]
        which = rng.random(len(x)) < p
        if which.any():
            x = x.copy()
            x[which] = x[which][:, :, ::-1]
        return {**batch, key: x}

    return flip


def random_crop(size: Sequence[int], *, key: str = "images") -> Transform:
    """Crop each image to ``size=(h, w)`` at a random position (one gather for the batch).

    Examples
    --------
    >>> import numpy as np
    >>> t = random_crop((4, 4))
    >>> t({"images": np.zeros((8, 6, 6, 3), np.uint8)}, np.random.default_rng(0))["images"].shape
    (8, 4, 4, 3)
    """
    h, w = (int(s) for s in size)

    def crop(batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        x = batch[key]
        n, H, W = x.shape[:3]
        if h > H or w > W:
            raise ValueError(f"crop size {(h, w)} is larger than the images {(H, W)}")
        top = rng.integers(0, H - h + 1, n)
        left = rng.integers(0, W - w + 1, n)
        rows = (top[:, None] + np.arange(h))[:, :, None]
        cols = (left[:, None] + np.arange(w))[:, None, :]
        return {**batch, key: x[np.arange(n)[:, None, None], rows, cols]}

    return crop


def compose(*transforms: Transform) -> Transform:
    """Apply transforms in order, each with the same generator."""

    def run(batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        for t in transforms:
            batch = t(batch, rng)
        return batch

    return run
