"""Read: the Pillow path of :mod:`daskimg.read.decode` — load, EXIF orientation, DCT draft,
mode conversion and resize with Pillow, for every file the fast JPEG path does not take
(and as its reference: the fast path gives the same pixels)."""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Final

import numpy as np
from PIL import Image, JpegImagePlugin

from ..errors import DecodeError
from .fileio import CORRUPT, TRANSPOSE, WARNINGS_LOCK, bomb_reason
from .fileio import orientation as exif_orientation
from .geometry import contain_size, fit_box, placement

if TYPE_CHECKING:
    from .decode import DecodeSpec

__all__ = ["CHANNEL_MODES", "RESAMPLE", "decode_pil", "draft_scale", "transposed_origin"]

RESAMPLE: Final = Image.Resampling.BILINEAR
"""The Pillow filter used for every image resize."""

#: Pillow's mode for each number of channels
CHANNEL_MODES: Final = {1: "L", 3: "RGB", 4: "RGBA"}
_SIXTEEN_BIT: Final = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_DRAFT_SCALES: Final = (8, 4, 2)


def _tiff_pages(im: Image.Image, pages: int) -> tuple[str, int]:
    """``(what else the TIFF holds, the page to read)`` of a multi-page TIFF.

    The picture is the largest full page (not marked reduced-resolution, tag 254 bit 0):
    the first, unless a thumbnail comes first (DNG, some scanners), whose upscaled pixels
    were read as the picture. The other pages must be previews or overviews: marked so, or
    at most half its size both ways (a scanner's or camera's thumbnail, a GeoTIFF's
    pyramid); then what else it holds is ``""``. A page of the picture's size and mode is
    a slice of one stack (``"stack"``); another page not much smaller (a multi-page
    document; a page of another mode or a few rows less) is ``"pages"``: reading one page
    would leave the others out without a word."""
    full: list[tuple[int, tuple[int, int], str]] = []
    try:
        for k in range(pages):
            if k:
                im.seek(k)
            if not int(getattr(im, "tag_v2", {}).get(254, 0) or 0) & 1:  # else a preview
                full.append((k, im.size, im.mode))
    finally:
        im.seek(0)
    if not full:
        return "", 0
    best = max(full, key=lambda p: (p[1][0] * p[1][1], -p[0]))  # the largest, first of equals
    (w, h) = best[1]
    # half, rounded up as pyramids round odd sides (101 -> 51)
    others = [
        p for p in full if p[0] != best[0] and not (2 * p[1][0] <= w + 1 and 2 * p[1][1] <= h + 1)
    ]
    if any(p[1:] == best[1:] for p in others):
        return "stack", best[0]
    return ("pages" if others else ""), best[0]


def decode_pil(
    im: Image.Image, spec: DecodeSpec, path: str
) -> tuple[Image.Image, tuple[int, int], tuple[int, int]]:
    """Load, orient, convert and resize.

    Returns the image, its (x, y) place in the sample and the source's (w, h) after EXIF
    orientation.
    """
    target = CHANNEL_MODES[spec.channels]
    pages = int(getattr(im, "n_frames", 1))
    if im.format == "TIFF" and pages > 1:
        held, page = _tiff_pages(im, pages)
        if held == "stack":
            # pages of a TIFF are slices or channels of one picture far more often than
            # alternatives (an animated GIF/WebP is read by its first frame, as Pillow shows it)
            gray = im.mode in ("1", "L", "P", "I", "F") or im.mode.startswith("I;")
            raise DecodeError(
                path,
                f"has {pages} pages; reading it as one 2-D image would keep only the "
                "first. "
                + (
                    "A stack of slices is a volume: give a 3-D size (size=(D, H, W)), or "
                    "save the page meant as its own file"
                    if gray
                    else f"Its pages are {im.mode} pictures, and a volume has one channel, "
                    "so it cannot be read either way: save each page as its own file (read "
                    "them as images), or the slices as one channel (a .npy of shape "
                    "(D, H, W)) to read a volume"
                ),
            )
        if held == "pages":
            raise DecodeError(
                path,
                f"has {pages} full pages of other sizes or modes (a multi-page document, or "
                "a picture with a page of another kind), not one picture with previews "
                "(those are marked reduced-resolution or at most half its size); reading it "
                "as one image would keep one page. Save each page meant as its own file",
            )
        if page:
            im.seek(page)
    full = im.size  # file orientation, before any draft
    scale = 1
    try:
        is_jpeg = isinstance(im, JpegImagePlugin.JpegImageFile)
        if is_jpeg:
            # read before the draft, which works in file orientation
            orientation = exif_orientation(im, path)
            if spec.draft:
                scale = _apply_draft(im, spec, orientation, target)
        if full[0] * full[1] > (Image.MAX_IMAGE_PIXELS or math.inf):
            # a few plugins (GIF, tiled TIFF) repeat the bomb check while loading
            with WARNINGS_LOCK, warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im.load()
        else:
            im.load()
        if not is_jpeg:
            orientation = exif_orientation(im, path)
    except Image.DecompressionBombError as exc:
        raise DecodeError(path, bomb_reason(exc)) from None
    except CORRUPT as exc:
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason:
            raise DecodeError(
                path, f"truncated image ({reason}); the file is incomplete, copy or export it again"
            ) from exc
        raise DecodeError(path, f"corrupt image data ({reason})") from exc

    origin = (0.0, 0.0)
    method = TRANSPOSE.get(orientation)
    if method is not None:
        if scale > 1:
            origin = transposed_origin(im.size, (full[0] / scale, full[1] / scale), orientation)
        im = im.transpose(method)
        if orientation >= 5:
            full = (full[1], full[0])
    _refuse_signed_bytes(im, path)
    im = _min_is_white(im)
    im, late = _convert(im, target, path, spec.dtype)
    im, place = _resize(im, spec, full, scale, origin)
    if late is not None:
        im = im.convert(late)
    return im, place, full


def _apply_draft(im: Image.Image, spec: DecodeSpec, orientation: int, target: str) -> int:
    """Ask libjpeg for the smallest 1/2, 1/4 or 1/8 scale that still covers the output."""
    w, h = im.size
    s = draft_scale((h, w) if orientation >= 5 else (w, h), spec)
    if s == 1:
        return 1
    # (w // s, h // s) makes Pillow pick exactly s: w // (w // s) is in [s, 2s)
    res = im.draft("L" if target == "L" else None, (w // s, h // s))
    if res is None:
        return 1
    return round(w / res[1][2])


#: the fewest pixels a drafted picture keeps on its shorter side: below that, libjpeg's
#: scaled blocks (and the part of the last one the picture fills) are most of the resize,
#: and a 5x5 gradient to 1x1 came out 38 levels from the full decode's
DRAFT_MIN_SIDE: Final = 8


def draft_scale(size: tuple[int, int], spec: DecodeSpec) -> int:
    """The DCT scale (8, 4, 2 or 1) for an upright picture of ``size = (w, h)``: the
    largest that still covers the output and leaves the picture :data:`DRAFT_MIN_SIDE`
    pixels or more on each side."""
    ow, oh = size
    th, tw = spec.size
    if spec.resize == "crop":
        left, top, right, bottom = fit_box(ow, oh, tw, th)
        limit = min((right - left) / tw, (bottom - top) / th)
    elif spec.resize == "pad":
        fw, fh = contain_size(ow, oh, tw, th)
        limit = min(ow / fw, oh / fh)
    else:
        limit = min(ow / tw, oh / th)
    for s in _DRAFT_SCALES:
        if limit >= s and min(ow, oh) >= DRAFT_MIN_SIDE * s:
            return s
    return 1


def transposed_origin(
    size: tuple[int, int], extent: tuple[float, float], orientation: int
) -> tuple[float, float]:
    """Where the picture's extent starts once a drafted image is transposed.

    libjpeg rounds a scaled size up, so a drafted image of ``size`` holds the
    picture in ``(0, 0) .. extent`` plus a partial last column and row; flips and
    rotations move that slack to the left or top.
    """
    rx = size[0] - extent[0]
    ry = size[1] - extent[1]
    return {
        2: (rx, 0.0),
        3: (rx, ry),
        4: (0.0, ry),
        5: (0.0, 0.0),
        6: (ry, 0.0),
        7: (ry, rx),
        8: (0.0, rx),
    }[orientation]


def _min_is_white(im: Image.Image) -> Image.Image:
    """A 16-bit TIFF whose 0 is white (photometric MinIsWhite, tag 262 = 0) inverted, as
    Pillow inverts 8-bit ones itself: its raw 16-bit modes left it a negative."""
    tags = getattr(im, "tag_v2", None)
    if tags is None or tags.get(262) != 0 or im.mode not in _SIXTEEN_BIT:
        return im
    top = 2 ** (_bits(im) or 16) - 1
    return im.convert("I").point(lambda v: top - v)


def _refuse_signed_bytes(im: Image.Image, path: str) -> None:
    """Refuse a TIFF of signed 8-bit samples (SampleFormat 2) holding negative values:
    Pillow reads its bytes as unsigned (mode L or RGB), so -1 became 255, the brightest
    value, without a word. (Signed 16-bit ones Pillow reads as signed: refused in
    :func:`_convert` when a value is negative.)"""
    if im.mode not in ("L", "RGB", "RGBA", "LA", "CMYK") or _sample_format(im) != 2:
        return
    if int(np.asarray(im).max(initial=0)) >= 128:
        raise DecodeError(
            path,
            "signed 8-bit pixels (TIFF SampleFormat 2) with negative values, which Pillow "
            "reads as 128..255: daskimg reads unsigned images, with no range to scale negative "
            "values from; save it unsigned, or as a .npy volume to keep the values (read with "
            "a 3-D size)",
        )


def _convert(im: Image.Image, target: str, path: str, dtype: str) -> tuple[Image.Image, str | None]:
    """Convert to the mode to resize in; also return a mode to convert to after resizing."""
    mode = im.mode
    if mode == target:
        return im, None
    clear = "transparency" in im.info and target == "RGBA"  # a gray value meaning transparent
    if clear and mode in (*_SIXTEEN_BIT, "I"):
        raise DecodeError(
            path,
            f"a 16-bit gray image with a transparent gray value (mode {mode!r} with "
            "transparency) cannot keep its transparency in 4 channels here; read it with "
            "channels=1 or 3, or save it with an alpha channel (LA or RGBA)",
        )
    if mode in _SIXTEEN_BIT:
        # Pillow resizes little-endian I;16 natively but garbles I;16B, so widen the others
        return (im if mode == "I;16" else im.convert("I")), None
    if mode == "I":
        lo, hi = im.getextrema()
        if lo < 0 and _bits(im) == 32 and _sample_format(im) != 2:  # type: ignore[operator]
            raise DecodeError(
                path,
                "unsigned 32-bit pixels with values above 2**31 - 1, which Pillow reads as "
                f"negative (values {lo}..{hi} as read): daskimg reads 8- and 16-bit images; "
                "save it as 16-bit, or as a .npy volume to keep the values",
            )
        if lo < 0:  # type: ignore[operator]
            raise DecodeError(
                path,
                f"signed pixels (mode 'I', values {lo}..{hi}): daskimg reads unsigned 8- and "
                "16-bit images, with no range to scale negative values from; save it "
                "unsigned, or as a .npy volume to keep the values (read with a 3-D size)",
            )
        if hi > 65535:  # type: ignore[operator]
            raise DecodeError(
                path,
                f"unsupported mode 'I' with values {lo}..{hi}: daskimg reads 8- and 16-bit "
                "images; save it as 16-bit, or as a .npy volume to keep the values",
            )
        if dtype != "uint16" and _bits(im) == 32:
            # 32-bit pixels (a TIFF) say nothing of their range: scaled as 16-bit, values up
            # to 255 (an 8-bit picture saved as 32-bit) all became 0. (A 16-bit PGM/PPM also
            # opens as mode I: it is 16-bit, scaled as such.)
            raise DecodeError(
                path,
                f"32-bit integer pixels (mode 'I', values {lo}..{hi}) have no range to scale "
                f"to {dtype} from; read them with dtype='uint16' (values kept as they are), "
                "or save the image as 8- or 16-bit",
            )
        return im, None
    if mode == "F":
        raise DecodeError(
            path,
            "unsupported mode 'F' (32-bit floating-point pixels have no fixed range to scale "
            "from); save it as 8- or 16-bit, or as a .npy volume to keep the values",
        )
    if mode == "L" and not clear:
        return im, target  # channels are copies of L: resize one, then convert (same pixels)
    if mode == "P" and "transparency" in im.info:
        # the way Pillow asks for (P -> RGB warns when transparency is a byte string)
        im = im.convert("RGBA")
        if target == "RGBA":
            return im, None
    try:
        return im.convert(target), None
    except ValueError as exc:
        raise DecodeError(
            path, f"unsupported image mode {mode!r}: Pillow cannot convert it to {target} ({exc})"
        ) from exc


def _tiff_tag(im: Image.Image, tag: int) -> int | None:
    """A TIFF tag's first value (None: not a TIFF, or no such tag)."""
    tags = getattr(im, "tag_v2", None)
    value = tags.get(tag) if tags is not None else None
    return int(value[0] if isinstance(value, tuple) else value) if value is not None else None


def _sample_format(im: Image.Image) -> int:
    """A TIFF's SampleFormat (tag 339: 1 unsigned, the default; 2 signed; 3 float)."""
    return _tiff_tag(im, 339) or 1


def _bits(im: Image.Image) -> int | None:
    """A TIFF's bits per sample (its tag 258), or None for other formats."""
    return _tiff_tag(im, 258)


def _resize(
    im: Image.Image,
    spec: DecodeSpec,
    full: tuple[int, int],
    scale: int,
    origin: tuple[float, float],
) -> tuple[Image.Image, tuple[int, int]]:
    """Resize per ``spec.resize``; ``full`` is the undrafted (w, h), ``scale`` the draft factor."""
    w, h = full
    where = placement((h, w), (spec.size[0], spec.size[1]), spec.resize)
    box = where.box
    if scale == 1:
        if where.size == im.size and box == (0, 0, w, h):
            return im, where.offset
    else:
        ox, oy = origin
        box = (ox + box[0] / scale, oy + box[1] / scale, ox + box[2] / scale, oy + box[3] / scale)
    return im.resize(where.size, RESAMPLE, box=box), where.offset
