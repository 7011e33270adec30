"""Feed: vectorised batch augmentations, examples of the ``transform`` hook.

A transform takes the batch dict and a ``numpy.random.Generator`` and returns the
batch dict; it works on whole ``(N, H, W, C)`` batches, not sample by sample.

What travels with the pixels moves with them: name the batch's box arrays in
``boxes=`` (``(N, 4)`` ``x0, y0, x1, y1`` in the images' pixel frame, as a store holds
them; see :mod:`daskimg.read.boxes`) and its masks in ``masks=`` (``(N, H, W)``, or
``(N, H, W, C)``), and a
flip or crop moves them exactly as it moves the images. NaN boxes stay NaN; a crop clips
boxes to the crop, and a box cropped away entirely becomes NaN. Boxes come out as floats
(integer boxes as float32 up to 16 bits, else float64): a flip can move one left of 0.

Examples
--------
>>> import numpy as np
>>> t = compose(random_flip(p=1.0, boxes=("bbox",)), random_crop((4, 4), boxes=("bbox",)))
>>> batch = {"images": np.zeros((1, 4, 6, 3), np.uint8), "bbox": np.array([[0.0, 1, 2, 3]])}
>>> t(batch, np.random.default_rng(0))["bbox"].tolist()  # flipped to 4..6, then cropped
[[3.0, 1.0, 4.0, 3.0]]
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .feed.iterator import Transform
from .read.boxes import box_dtype, clip_boxes

__all__ = ["Compose", "RandomCrop", "RandomFlip", "compose", "random_crop", "random_flip"]


def random_flip(
    *,
    p: float = 0.5,
    key: str = "images",
    boxes: Sequence[str] = (),
    masks: Sequence[str] = (),
    fixed: Sequence[str] = (),
) -> Transform:
    """Flip each image left-right with probability ``p``, with its boxes and masks.

    Parameters
    ----------
    p
        Probability of flipping each sample.
    key
        The batch's images ``(N, H, W, C)``.
    boxes
        Names of ``(N, 4)`` box arrays in the batch: a flipped sample's box ``x0, x1``
        becomes ``W - x1, W - x0``.
    masks
        Names of ``(N, H, W)`` mask arrays in the batch, flipped with their images.
    fixed
        Names of arrays in the batch that stay as they are (per-sample values that do not
        move with the pixels, such as 4 class scores): the feed refuses a flip when the
        batches hold an array that looks like boxes (numbers ending in 4) or a map (2-D
        or more a sample), or one it takes for boxes or masks by its name, and is in none
        of ``boxes``, ``masks`` and ``fixed`` (``labels`` is never taken for geometry).

    Examples
    --------
    >>> import numpy as np
    >>> t = random_flip(p=1.0)
    >>> x = np.arange(6, dtype=np.uint8).reshape(1, 1, 6, 1)
    >>> t({"images": x}, np.random.default_rng(0))["images"].ravel().tolist()
    [5, 4, 3, 2, 1, 0]
    >>> t = random_flip(p=1.0, boxes=("bbox",))
    >>> t({"images": x, "bbox": np.array([[1.0, 0, 3, 1]])}, np.random.default_rng(0))["bbox"].tolist()
    [[3.0, 0.0, 5.0, 1.0]]
    """
    if not isinstance(p, numbers.Real) or isinstance(p, bool) or not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a number in [0, 1], got {p!r}")
    b, m = _names(boxes, "boxes"), _names(masks, "masks")
    return RandomFlip(float(p), key, b, m, _fixed(fixed, key, b, m))


@dataclass(frozen=True)
class RandomFlip:
    """The transform :func:`random_flip` returns (a plain object: it pickles into workers)."""

    #: it moves pixels: the feed refuses it when fed boxes or masks are not in ``boxes``/``masks``
    moves_pixels: ClassVar[bool] = True
    p: float
    key: str
    boxes: tuple[str, ...]
    masks: tuple[str, ...]
    #: arrays the caller says do not move with the pixels
    fixed: tuple[str, ...] = ()

    def __call__(
        self, batch: dict[str, np.ndarray], rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        key = self.key
        x = batch[key]
        which = rng.random(len(x)) < self.p
        out = dict(batch)
        if not which.any():
            return out
        # W: axis 2 of images (N, H, W[, C]), axis 3 of volumes (N, D, H, W, C)
        w_axis = 3 if x.ndim == 5 else 2
        width = x.shape[w_axis]
        x = x.copy()
        x[which] = np.flip(x[which], axis=w_axis)
        out[key] = x
        for name in self.masks:  # (N, [D,] H, W[, C]) with the pixels
            m = _array(batch, name, "masks", x.shape[: w_axis + 1], prefix=True).copy()
            m[which] = np.flip(m[which], axis=w_axis)
            out[name] = m
        for name in self.boxes:
            b = _array(batch, name, "boxes", (len(x), 4))
            b = b.astype(box_dtype(b.dtype))  # a copy; floats: an unsigned x would wrap
            b[which, 0], b[which, 2] = width - b[which, 2], width - b[which, 0]
            out[name] = b
        return out


def random_crop(
    size: Sequence[int],
    *,
    key: str = "images",
    boxes: Sequence[str] = (),
    masks: Sequence[str] = (),
    fixed: Sequence[str] = (),
) -> Transform:
    """Crop each image to ``size=(h, w)`` at a random position (one gather for the batch).

    Boxes named in ``boxes`` are shifted into the crop and clipped to it; a box with
    nothing left inside becomes NaN. Masks named in ``masks`` are cut with their images.
    ``fixed`` names arrays that stay as they are, as for :func:`random_flip`.

    Examples
    --------
    >>> import numpy as np
    >>> t = random_crop((4, 4))
    >>> t({"images": np.zeros((8, 6, 6, 3), np.uint8)}, np.random.default_rng(0))["images"].shape
    (8, 4, 4, 3)
    """
    parts = list(size)
    if len(parts) != 2 or not all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0 for s in parts
    ):
        # 3.7 was cropped as 3, True as 1, "3" as 3
        raise ValueError(
            f"random_crop takes size=(height, width), two positive whole numbers; got {size!r}"
        )
    h, w = (int(s) for s in parts)
    b, m = _names(boxes, "boxes"), _names(masks, "masks")
    return RandomCrop(h, w, key, b, m, _fixed(fixed, key, b, m))


@dataclass(frozen=True)
class RandomCrop:
    """The transform :func:`random_crop` returns (a plain object: it pickles into workers)."""

    moves_pixels: ClassVar[bool] = True
    h: int
    w: int
    key: str
    boxes: tuple[str, ...]
    masks: tuple[str, ...]
    #: arrays the caller says do not move with the pixels
    fixed: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.h < 1 or self.w < 1:
            raise ValueError(
                f"random_crop size must be positive (height, width); got {(self.h, self.w)}"
            )

    def check_sample(self, shape: tuple[int, ...]) -> None:
        """Refuse samples of ``shape`` (one image, no batch axis) this crop cannot cut."""
        if len(shape) != 3:
            raise ValueError(
                f"random_crop cuts images (H, W, C); the samples of {self.key!r} are "
                f"{len(shape)}-D {shape} (a volume is (D, H, W, C)): crop volumes in a "
                "transform of your own"
            )
        if self.h > shape[0] or self.w > shape[1]:
            raise ValueError(
                f"random_crop size {(self.h, self.w)} is larger than the images of "
                f"{self.key!r}, {shape[:2]}: crop to at most their (height, width)"
            )

    def __call__(
        self, batch: dict[str, np.ndarray], rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        h, w, key = self.h, self.w, self.key
        x = batch[key]
        self.check_sample(tuple(x.shape[1:]))
        n, H, W = x.shape[:3]
        top = rng.integers(0, H - h + 1, n)
        left = rng.integers(0, W - w + 1, n)
        rows = (top[:, None] + np.arange(h))[:, :, None]
        cols = (left[:, None] + np.arange(w))[:, None, :]
        at = np.arange(n)[:, None, None]
        out = {**batch, key: x[at, rows, cols]}
        for name in self.masks:
            out[name] = _array(batch, name, "masks", (n, H, W), prefix=True)[at, rows, cols]
        for name in self.boxes:
            b = np.asarray(_array(batch, name, "boxes", (n, 4)), dtype=np.float64)
            shift = np.stack([left, top, left, top], axis=1)
            # kept in the boxes' own float dtype (float64 was rounded through float32)
            out[name] = clip_boxes(b - shift, (0, 0, w, h), box_dtype(batch[name].dtype))
        return out


def compose(*transforms: Transform) -> Transform:
    """Apply transforms in order, each with the same generator."""
    return Compose(tuple(transforms))


@dataclass(frozen=True)
class Compose:
    """The transform :func:`compose` returns (a plain object: it pickles into workers)."""

    transforms: tuple[Transform, ...]

    def __call__(
        self, batch: dict[str, np.ndarray], rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        for t in self.transforms:
            batch = t(batch, rng)
        return batch


def _names(names: Sequence[str], what: str) -> tuple[str, ...]:
    if isinstance(names, str):
        raise TypeError(f"{what} takes a sequence of names, e.g. {what}=({names!r},)")
    return tuple(names)


def _fixed(
    fixed: Sequence[str], key: str, boxes: tuple[str, ...], masks: tuple[str, ...]
) -> tuple[str, ...]:
    """``fixed=`` as names, none of which the transform also moves."""
    names = _names(fixed, "fixed")
    both = [n for n in names if n in (key, *boxes, *masks)]
    if both:
        raise ValueError(
            f"fixed= names {both}, which the transform also moves (key, boxes= or masks=): "
            "an array either moves with the pixels or stays; name it in one place"
        )
    return names


def _array(
    batch: dict[str, np.ndarray],
    name: str,
    what: str,
    shape: tuple[int, ...],
    *,
    prefix: bool = False,
) -> np.ndarray:
    """``batch[name]``, checked to have ``shape`` (``prefix``: to start with it, as masks with
    a channel axis ``(N, H, W, C)`` do); a clear error when it is missing."""
    if name not in batch:
        raise KeyError(
            f"{what} names {name!r}, which is not in the batch (it has {sorted(batch)}); "
            "ask the iterator for it, e.g. BatchIterator(..., arrays=('images', 'labels', "
            f"{name!r}))"
        )
    arr = np.asarray(batch[name])
    if (arr.shape[: len(shape)] if prefix else arr.shape) != shape:
        raise ValueError(
            f"{what} array {name!r} must have shape {shape}{' (+ channels)' if prefix else ''}; "
            f"got {arr.shape}"
        )
    return arr
