"""Feed: the argument checks of the shuffle planning functions (ValueError naming the argument)."""

from __future__ import annotations

import numbers
import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = [
    "check_at_least",
    "check_consumer",
    "check_count",
    "check_flag",
    "check_int",
    "check_positive",
    "check_seed",
    "check_transform",
    "check_worker",
]


def check_int(name: str, value: object, *, low: int, high: int | None = None, allowed: str) -> int:
    """``value`` as a Python int in ``[low, high)``, or a ValueError naming ``name``."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
    if ok:
        v = int(value)  # type: ignore[call-overload]
        if v >= low and (high is None or v < high):
            return v
    raise ValueError(f"{name} must be {allowed}; got {value!r}")


def check_count(name: str, value: object) -> int:
    """``value`` as a non-negative int."""
    return check_int(name, value, low=0, allowed="a non-negative int")


def check_positive(name: str, value: object) -> int:
    """``value`` as a positive int."""
    return check_int(name, value, low=1, allowed="a positive int")


def check_flag(name: str, value: object) -> bool:
    """``value`` as a bool (numpy bools too); nothing else passes for one."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False; got {value!r}")
    return bool(value)


def check_consumer(consumer: object, num_consumers: object) -> tuple[int, int]:
    """``(consumer, num_consumers)``: ``0 <= consumer < num_consumers``."""
    n = check_positive("num_consumers", num_consumers)
    k = check_int("consumer", consumer, low=0, high=n, allowed=f"an int in [0, num_consumers={n})")
    return k, n


def check_worker(worker: object, num_workers: object) -> tuple[int, int]:
    """``(worker, num_workers)``: ``0 <= worker < num_workers``."""
    m = check_positive("num_workers", num_workers)
    w = check_int("worker", worker, low=0, high=m, allowed=f"an int in [0, num_workers={m})")
    return w, m


def check_seed(seed: object) -> int | None:
    """``seed`` as a non-negative int, or None (a nondeterministic order)."""
    if seed is None:
        return None
    return check_int(
        "seed", seed, low=0, allowed="a non-negative int, or None for a nondeterministic order"
    )


def check_at_least(name: str, value: object, low: int) -> None:
    """Refuse (ValueError) anything but an int (numpy ints too) ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


#: what to do with images fed channels-first (N, C, H, W) where they are taken channels-last
LAYOUT_FIX = (
    "daskimg's loaders take images channels-last: move the channel axis last, "
    "np.moveaxis(images, 1, -1) (da.moveaxis for a dask array). Images of 1-4 rows with more "
    "channels are right as they are: store them with to_zarr(..., check_layout=False) and "
    "feed the store"
)


def check_transform(transform: Any, src: Any) -> None:
    """Refuse a transform that moves the pixels but would leave fed boxes or masks behind,
    or that cannot apply to the fed samples.

    daskimg's own flips and crops say what they move (``moves_pixels``, ``boxes``,
    ``masks``; :func:`~daskimg.transforms.compose` their ``transforms``): one that moves
    ``key`` while the batches also hold a box or mask array it was not given would hand out
    boxes and masks in the frame the pixels left. Other callables are the caller's own.
    ``src`` (a :class:`~daskimg.feed.source.FeedSource`): the fed ``names``, ``boxes``,
    ``masks``, ``guessed_boxes`` (known by their names only: a dict's, said in the message)
    and each array's sample ``shape``, which a step's ``check_sample`` may refuse (a crop
    larger than the images) before the first batch, not in the loader's thread.
    """
    names, boxes, masks, guessed = src.names, src.boxes, src.masks, src.guessed_boxes
    added = False  # past a transform of the caller's own, which may add arrays
    for t in _parts(transform):
        if not hasattr(t, "moves_pixels"):
            added = True
        if not getattr(t, "moves_pixels", False):
            continue
        absent = [n for n in (t.key, *t.boxes, *t.masks) if n not in names]
        if absent and not added:  # a KeyError at the first batch, from the loader's thread
            raise ValueError(
                f"transform {type(t).__name__} moves {absent}, which the batches do not hold "
                f"(they hold {list(names)}): add {'it' if len(absent) == 1 else 'them'} to "
                "arrays=, or leave it out of the transform"
            )
        if t.key not in names:
            continue  # an array a step of the caller's adds
        if not added and (layout := src.channels_first(t.key)) is not None:
            raise ValueError(
                f"transform {type(t).__name__} moves {t.key!r} as (N, H, W, C), and these "
                f"({src.shape(t.key)} a sample) look channels-first {layout}: it would "
                "flip or cut them along the wrong axes. " + LAYOUT_FIX
            )
        if not added and hasattr(t, "check_sample"):  # samples as stored: no step changed them
            t.check_sample(src.shape(t.key))
        _refuse_unmovable(t, src, by_name=not added)
        fixed = getattr(t, "fixed", ())
        left_boxes = [b for b in boxes if b in names and b not in (*t.boxes, *fixed)]
        left_masks = [m for m in masks if m in names and m not in (*t.masks, *fixed)]
        if left_boxes or left_masks:
            fix = (
                f"boxes={tuple(dict.fromkeys([*t.boxes, *left_boxes]))!r}, "
                f"masks={tuple(dict.fromkeys([*t.masks, *left_masks]))!r}"
            )
            raise ValueError(
                f"transform {type(t).__name__} moves the pixels of {t.key!r} but not the "
                f"{'boxes' if left_boxes else 'masks'} {left_boxes or left_masks}, which the "
                f"batches hold: they would be handed out where the pixels were. Give them to it "
                f"({fix}), leave them out of arrays=, or, if they are to stay as they are, "
                f"say so: fixed={tuple(left_boxes or left_masks)!r}"
                + (
                    ". ((N, 4) arrays named with 'box' count as boxes where the source does "
                    "not say which are: a dict's, or a store's column written back with "
                    "ArrayWriter; rename one that holds something else)"
                    if set(left_boxes) & set(guessed)
                    else ""
                )
            )


def _refuse_unmovable(t: Any, src: Any, *, by_name: bool = True) -> None:
    """Refuse a flip or crop of ``t.key`` when the batches hold boxes or masks it cannot
    move: several boxes a sample ``(N, K, 4)`` (a detector's output written back), or masks
    at another resolution than the pixels (a stride-2 segmentation): they were handed out
    where the pixels had been, as a box array left out of ``boxes=`` was. ``by_name``:
    also those known by their names (not past a step of the caller's, which may change
    them); those that look like geometry (:func:`_refuse_unsaid`) are refused either way,
    as a step before the flip does not move them."""
    sample = src.shape(t.key)
    frame = sample[: 3 if len(sample) == 4 else 2]  # ([D,] H, W)
    fixed = getattr(t, "fixed", ())
    for name in src.names:
        if name in (t.key, *t.boxes, *t.masks, *fixed) or name in src.virtual:
            continue
        shape, low = src.shape(name), name.lower()
        many = "box" in low and len(shape) >= 2 and shape[-1] == 4
        mask = "mask" in low and len(shape) >= len(frame) and shape[: len(frame)] != frame
        if by_name and (many or mask):
            what = (
                f"{shape[0] if len(shape) == 2 else list(shape[:-1])} boxes a sample"
                if many
                else f"masks of {list(shape)} a sample"
            )
            raise ValueError(
                f"transform {type(t).__name__} moves the pixels of {t.key!r} "
                f"({list(frame)}), but not {name!r} ({what}), which it cannot move: it "
                "would be handed out where the pixels were. Leave it out of arrays=, or move "
                "it in a transform of your own"
            )
        if name not in (*src.boxes, *src.masks):  # (those are checked by their own)
            _refuse_unsaid(t, src, name, shape, frame)


def _refuse_unsaid(
    t: Any, src: Any, name: str, shape: tuple[int, ...], frame: tuple[int, ...]
) -> None:
    """Refuse a fed array that looks like geometry, boxes (numbers ending in 4: a
    detector's output written back as ``detections``) or a map (2-D or more a sample: a
    stride-2 segmentation ``seg_lowres``), which the flip or crop ``t`` was not told about:
    whatever its name, it would be handed out where the pixels were. ``fixed=`` says it
    stays (4 class scores)."""
    dtype = np.dtype(src.dtype(name))
    if dtype.kind not in "biuf" or name == "labels":  # (labels, one-hot too, are no geometry)
        return
    boxes = dtype.kind in "iuf" and len(shape) >= 1 and shape[-1] == 4
    if not boxes and len(shape) < 2:
        return
    kind = type(t).__name__
    what = "boxes" if boxes else "a map"
    fix = (
        f"boxes=({name!r},)"
        if boxes and len(shape) == 1
        else f"masks=({name!r},)"
        if tuple(shape[: len(frame)]) == tuple(frame)
        else None
    )
    raise ValueError(
        f"transform {kind} moves the pixels of {t.key!r} ({list(frame)}), and the batches "
        f"hold {name!r} ({list(shape)} {dtype} a sample), which looks like {what} but is in "
        "none of its boxes=, masks= or fixed=: if it is geometry it would be handed out "
        "where the pixels were. "
        + (
            f"Say which: {fix} if it holds "
            + ("boxes (x0, y0, x1, y1 in pixels)" if boxes else "a mask of the pixels")
            + "; "
            if fix
            else "If it is geometry, move it in a transform of your own or leave it out of "
            "arrays=; "
        )
        + f"fixed=({name!r},) if it stays as it is (scores, features)"
    )


def _parts(transform: Any) -> Iterator[Any]:
    inner = getattr(transform, "transforms", None)
    if isinstance(inner, (tuple, list)):
        for t in inner:
            yield from _parts(t)
    elif transform is not None:
        yield transform


def called_from(methods: tuple[str, ...], *packages: str, stop: tuple[str, ...] = ()) -> bool:
    """Whether a function named one of ``methods`` of one of ``packages`` (a folder on its
    file's path: ``keras``; ``lightning``, ``pytorch_lightning``) is on the calling stack.
    How a dataset learns what a framework reads it for: neither Keras nor Lightning tells a
    dataset it is read to predict. ``stop``: names of the packages' functions above which
    ``methods`` cannot be (the walk ends there: a per-batch check stays short)."""
    frame = sys._getframe(1)
    parts = tuple(f"{os.sep}{p}{os.sep}" for p in packages)
    while frame is not None:
        code = frame.f_code
        named = code.co_name in methods or code.co_name in stop
        if named and any(p in code.co_filename for p in parts):
            return code.co_name in methods
        frame = frame.f_back  # type: ignore[assignment]
    return False
