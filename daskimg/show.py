"""Pictures: a grid of samples with their class names — the first check after an ingest.

uint8 and uint16 images are drawn over their dtype's full range, as they are. Volumes
(their middle slice), floating-point and other integer images (int16, int64) have no fixed
range (a CT scan holds Hounsfield units, -1000 for air to 2000 and more for bone), so each
is drawn with a percentile window: its 1st to 99th percentile spans black to white, and the title says
which values that is. Boxes (the set's ``boxes`` columns) are drawn as rectangles and
``masks`` as a translucent overlay, in the stored frame.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

__all__ = ["WINDOW", "Grid", "grid_figure", "save_grid", "window"]

#: the percentiles that span black to white for volumes and floating-point images
WINDOW = (1.0, 99.0)


class ShowableSet(Protocol):
    """What a grid needs of a set (an :class:`~daskimg.ImageSet` has it)."""

    @property
    def labels(self) -> Any: ...

    @property
    def classes(self) -> tuple[str, ...]: ...

    @property
    def boxes(self) -> tuple[str, ...]: ...

    @property
    def columns(self) -> Mapping[str, Any]: ...

    def __len__(self) -> int: ...

    def require_images(self) -> Any: ...


class Grid:
    """A grid of samples (what :meth:`ImageSet.show` returns); a notebook shows it as a PNG.

    ``.figure`` is the matplotlib figure; ``.savefig(path)`` writes it.
    """

    def __init__(self, figure: Any) -> None:
        self.figure = figure

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.figure.savefig(buf, format="png", dpi=100)
        return buf.getvalue()

    def savefig(self, path: str | os.PathLike[str], **kwargs: Any) -> None:
        self.figure.savefig(os.fspath(path), **kwargs)


def _figure(**kwargs: Any) -> Any:
    # a bare Figure, not pyplot: no global state, no backend switch, and in a notebook it
    # displays once, as the returned value
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("pictures need matplotlib: pip install 'daskimg[plot]'") from e
    return Figure(**kwargs)


def _ordinal(p: float) -> str:
    """``1`` -> ``"1st"``, ``99`` -> ``"99th"``, ``2.5`` -> ``"2.5th"``."""
    text = f"{p:g}"
    if p != int(p) or int(p) % 100 in (11, 12, 13):
        return text + "th"
    return text + {1: "st", 2: "nd", 3: "rd"}.get(int(p) % 10, "th")


def window(image: np.ndarray, percentiles: tuple[float, float] = WINDOW) -> tuple[float, float]:
    """The values drawn black and white: ``image``'s percentiles (finite values only).

    A constant image gets a window of width 1 around its value.

    Examples
    --------
    >>> window(np.arange(101.0))
    (1.0, 99.0)
    """
    values = np.asarray(image, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not values.size:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values, percentiles))
    if hi <= lo:
        return lo - 0.5, lo + 0.5
    return lo, hi


def check_drawable(images: Any, where: str) -> None:
    """Refuse what a grid cannot draw, naming ``where``: no images, bool images, images of
    other than 1, 3 or 4 channels (matplotlib's own "Invalid shape (5, 7, 2) for image
    data" named neither the set nor the cause)."""
    channels = images.shape[-1] if images is not None else 0
    if images is None or (images.ndim == 4 and channels not in (1, 3, 4)) or images.dtype == bool:
        what = "no images" if images is None else f"images of {channels} channels ({images.dtype})"
        raise ValueError(
            f"{where} holds {what}: show draws images of 1, 3 or 4 channels (gray, RGB, "
            "RGBA) and volumes of one; draw others yourself from open_zarr(...).images"
        )


def grid_figure(ds: ShowableSet, *, n: int = 32, seed: int | None = 0, cols: int = 8) -> Any:
    """A matplotlib figure of ``n`` random samples (seeded), titled with their class names.

    Volumes show their middle slice; volumes and floating-point images are drawn with a
    1-99 percentile window, whose values are in the title. Only the chosen samples are read.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    check_drawable(ds.require_images(), "the set")
    total = len(ds)
    if not total:
        raise ValueError("the set holds no samples: nothing to show")
    n = min(n, total)
    idx = np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))
    images, extras = _read(ds, idx)
    volumes = images.ndim == 5
    if volumes:  # middle slice along depth
        images = images[:, images.shape[1] // 2]
    # only uint8 and uint16 have a range of their own: signed and wider integers (int16 CT
    # slices, int64 arrays of 0..255 made with np.array) are windowed, as floats are
    windowed = volumes or images.dtype not in (np.uint8, np.uint16)
    cols = min(cols, n)
    rows = -(-n // cols)
    fig = _figure(figsize=(1.6 * cols, (2.1 if windowed else 1.8) * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for k, (ax, i) in enumerate(zip(axes.ravel(), idx, strict=False)):
        title = _title(ds, int(i))
        img = images[k]
        if windowed:
            lo, hi = window(img)
            title += f"\n{lo:.4g}..{hi:.4g}"
            if img.shape[-1] == 1:
                ax.imshow(img[..., 0], cmap="gray", vmin=lo, vmax=hi)
            else:
                ax.imshow(np.clip((img.astype(np.float64) - lo) / (hi - lo), 0, 1))
        elif img.shape[-1] == 1:
            ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=np.iinfo(img.dtype).max)
        else:
            ax.imshow(img if img.dtype == np.uint8 else (img >> 8).astype(np.uint8))
        _draw_extras(ax, extras, k)
        ax.set_title(title, fontsize=8, parse_math=False)  # a class "$5-$10" is no formula
    if windowed:
        fig.suptitle(
            f"each image drawn from its {_ordinal(WINDOW[0])} (black) to {_ordinal(WINDOW[1])} (white) "
            "percentile; values in the titles",
            fontsize=8,
        )
    fig.tight_layout()
    return fig


def _title(ds: ShowableSet, i: int) -> str:
    if ds.labels is None:
        return f"#{i}"
    label = int(ds.labels[i])
    if label < 0:
        return f"#{i} (no label)"
    return ds.classes[label] if ds.classes else str(label)


def _read(ds: ShowableSet, idx: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The chosen samples' images, boxes and masks, computed together (one decode per file)."""
    import dask

    images = ds.require_images()
    names = [b for b in ds.boxes if b in ds.columns] if images.ndim == 4 else []
    if "masks" in ds.columns and images.ndim == 4:
        names.append("masks")
    got = dask.compute(images[idx], *(ds.columns[name][idx] for name in names))
    return np.asarray(got[0]), {k: np.asarray(v) for k, v in zip(names, got[1:], strict=True)}


def _draw_extras(ax: Any, extras: dict[str, np.ndarray], k: int) -> None:
    from matplotlib.patches import Rectangle

    mask = extras.get("masks")
    if mask is not None and mask[k].any():
        ax.imshow(np.ma.masked_equal(mask[k], 0), cmap="tab10", alpha=0.45, interpolation="nearest")
    for name, boxes in extras.items():
        if name == "masks" or not np.isfinite(boxes[k]).all():
            continue
        x0, y0, x1, y1 = (float(v) for v in boxes[k])
        # pixel (i, j) is drawn centred on (j, i): box edges sit half a pixel to the left/top
        ax.add_patch(
            Rectangle(
                (x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="yellow", linewidth=1
            )
        )


def save_grid(
    ds: ShowableSet, path: str | os.PathLike[str], *, n: int = 32, seed: int | None = 0
) -> None:
    """Write :func:`grid_figure` to a PNG file (what ``daskimg show`` does)."""
    grid_figure(ds, n=n, seed=seed).savefig(os.fspath(path), dpi=100)
