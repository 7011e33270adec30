"""Pictures: a grid of samples with their class names — the first check after an ingest."""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .read.imageset import ImageSet

__all__ = ["Grid", "grid_figure", "save_grid"]


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


def grid_figure(ds: ImageSet, *, n: int = 32, seed: int | None = 0, cols: int = 8) -> Any:
    """A matplotlib figure of ``n`` random samples (seeded), titled with their class names.

    Volumes show their middle slice. Only the chosen samples are read.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    total = len(ds)
    n = min(n, total)
    idx = np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))
    images = np.asarray(ds.require_images()[idx].compute())
    if images.ndim == 5:  # volumes: middle slice along depth
        images = images[:, images.shape[1] // 2]
    cols = min(cols, n)
    rows = -(-n // cols)
    fig = _figure(figsize=(1.6 * cols, 1.8 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for k, (ax, i) in enumerate(zip(axes.ravel(), idx, strict=False)):
        img = images[k]
        if img.shape[-1] == 1:
            ax.imshow(
                img[..., 0],
                cmap="gray",
                vmin=0,
                vmax=np.iinfo(img.dtype).max if img.dtype.kind == "u" else 1,
            )
        else:
            ax.imshow(img)
        title = f"#{i}"
        if ds.labels is not None:
            label = int(ds.labels[i])
            title = ds.classes[label] if ds.classes else str(label)
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig


def save_grid(
    ds: ImageSet, path: str | os.PathLike[str], *, n: int = 32, seed: int | None = 0
) -> None:
    """Write :func:`grid_figure` to a PNG file (what ``daskimg show`` does)."""
    grid_figure(ds, n=n, seed=seed).savefig(os.fspath(path), dpi=100)
