"""Read: where a source picture lands in a stored sample, for every resize mode.

One place computes the geometry that :mod:`daskimg.read.decode` applies to the pixels, so
boxes (:mod:`daskimg.read.boxes`) and masks (:mod:`daskimg.read.masks`) follow the pixels
exactly. Coordinates are continuous pixel coordinates: pixel ``(i, j)`` of an image covers
``[j, j + 1) x [i, i + 1)`` in ``(x, y)``, so a ``w`` x ``h`` image spans ``[0, w] x [0, h]``.

The mapping from the source (after EXIF orientation) to the stored sample is, per axis,
``stored = (source - crop_start) * scale + offset``. DCT draft scaling does not change it:
libjpeg's scaled pixel ``i`` covers source pixels ``[i * s, (i + 1) * s)``, and
:mod:`daskimg.read.decode` resizes the drafted picture from the same box divided by ``s``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Placement", "contain_size", "fit_box", "placement"]


def fit_box(w: int, h: int, tw: int, th: int) -> tuple[float, float, float, float]:
    """Centred box of a ``w`` x ``h`` image with the aspect of ``tw`` x ``th``, as ImageOps.fit.

    Examples
    --------
    >>> fit_box(400, 300, 224, 224)
    (50.0, 0.0, 350.0, 300.0)
    """
    src_ratio = w / h
    out_ratio = tw / th
    if src_ratio == out_ratio:
        cw, ch = float(w), float(h)
    elif src_ratio >= out_ratio:
        cw, ch = out_ratio * h, float(h)
    else:
        cw, ch = float(w), w / out_ratio
    left = (w - cw) * 0.5
    top = (h - ch) * 0.5
    return (left, top, left + cw, top + ch)


def contain_size(w: int, h: int, tw: int, th: int) -> tuple[int, int]:
    """Largest ``(width, height)`` of the image's aspect inside ``tw`` x ``th``, as ImageOps.contain.

    A side that would round to zero pixels keeps one.

    Examples
    --------
    >>> contain_size(400, 300, 224, 224)
    (224, 168)
    """
    src_ratio = w / h
    out_ratio = tw / th
    if src_ratio > out_ratio:
        return tw, max(1, round(h / w * tw))
    if src_ratio < out_ratio:
        return max(1, round(w / h * th)), th
    return tw, th


@dataclass(frozen=True)
class Placement:
    """How one source picture maps into a stored sample (all in ``(x, y)`` order).

    ``box`` is the part of the source that is resampled (the whole source, or the centre
    cut by ``"crop"``), ``size`` the ``(width, height)`` it is resampled to and ``offset``
    where that lands in the sample (nonzero for ``"pad"``). ``picture`` is the region of
    the sample that holds source pixels.

    Examples
    --------
    >>> p = placement((300, 400), (224, 224), "pad")
    >>> p.size, p.offset, round(p.to_stored_x(400.0), 9), p.to_stored_y(0.0)
    ((224, 168), (0, 28), 224.0, 28.0)
    """

    box: tuple[float, float, float, float]
    size: tuple[int, int]
    offset: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        """Stored pixels per source pixel along x and y."""
        x0, y0, x1, y1 = self.box
        return self.size[0] / (x1 - x0), self.size[1] / (y1 - y0)

    @property
    def picture(self) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` of the sample region that holds source pixels."""
        ox, oy = self.offset
        return (ox, oy, ox + self.size[0], oy + self.size[1])

    def to_stored_x(self, x: float) -> float:
        """A source x coordinate in the stored sample's frame."""
        return (x - self.box[0]) * self.scale[0] + self.offset[0]

    def to_stored_y(self, y: float) -> float:
        """A source y coordinate in the stored sample's frame."""
        return (y - self.box[1]) * self.scale[1] + self.offset[1]


def placement(source_hw: tuple[int, int], size: tuple[int, int], resize: str) -> Placement:
    """Where a source of ``source_hw = (H, W)`` goes in a sample of ``size = (h, w)``.

    ``resize`` is ``"stretch"``, ``"crop"`` or ``"pad"``, as for
    :class:`daskimg.read.decode.DecodeSpec`.

    Examples
    --------
    >>> placement((300, 400), (224, 224), "crop").box
    (50.0, 0.0, 350.0, 300.0)
    """
    h, w = (int(v) for v in source_hw)
    th, tw = (int(v) for v in size)
    if resize == "crop":
        return Placement(fit_box(w, h, tw, th), (tw, th), (0, 0))
    full = (0.0, 0.0, float(w), float(h))
    if resize == "pad":
        fw, fh = contain_size(w, h, tw, th)
        return Placement(full, (fw, fh), (round((tw - fw) * 0.5), round((th - fh) * 0.5)))
    if resize == "stretch":
        return Placement(full, (tw, th), (0, 0))
    raise ValueError(f"resize must be 'stretch', 'crop' or 'pad'; got {resize!r}")
