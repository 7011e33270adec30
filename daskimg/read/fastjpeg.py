"""Read: the fast path for the common JPEG — decoded by simplejpeg exactly as Pillow decodes it.

Most files of a photo library are baseline (or progressive) JPEGs, 8 bits, YCbCr or
gray. For those, :func:`read_header` (a walk over the markers before the image data, no decoding)
says yes and :func:`decode` decodes them with simplejpeg: libjpeg-turbo through its
TurboJPEG interface, the library Pillow's decoder uses, with the same settings (the
accurate integer IDCT, smooth chroma upsampling), so the pixels are the ones Pillow
gives, bit for bit — also when libjpeg scales the DCT down (Pillow's ``draft``). It is
faster because it skips Pillow's machinery around the decoder (its incremental feeding,
the 4-byte-per-pixel image it unpacks into, the copy out) and it never holds the GIL.

Progressive JPEGs take it too: libjpeg-turbo decodes them for Pillow as for simplejpeg,
and only simplejpeg's strict mode hears libjpeg's warnings, so a progressive file damaged
mid-scan (which Pillow decodes to partly garbage without a word) is named like a damaged
baseline one (:func:`damage`), instead of being stored silently.

An EXIF orientation (2..8: every portrait photo of a phone) is read by :func:`read_header`
and applied by the caller after decoding, as Pillow's ``exif_transpose`` does (a flip or
rotation of the decoded pixels, then the resize).

Anything else answers None, and the caller decodes with Pillow: lossless
and arithmetic-coded JPEGs, 12-bit samples, CMYK/YCCK and Adobe RGB, an XMP orientation,
an EXIF orientation that is not one SHORT of 1..8, more than one EXIF block, damaged
markers, and any file that simplejpeg refuses or warns about (``strict``: a truncated or corrupt file goes to
Pillow, which raises the error daskimg reports, or decodes it as Pillow would — then
what libjpeg said of the damage is kept for the caller, :func:`damage`, which names the
file in a warning). A JPEG that never came here (CMYK, arithmetic-coded, ...) is checked
for the same damage by :func:`check` once Pillow has decoded it: Pillow decodes damaged
scan data without a word.
"""

from __future__ import annotations

import math
import struct
import threading
from dataclasses import dataclass
from typing import Final

import numpy as np
import simplejpeg

from .resample import rgb_to_l
from .scratch import scratch

__all__ = ["JpegHeader", "check", "damage", "decode", "read_header", "tried"]

_SOI: Final = b"\xff\xd8\xff"
#: baseline, extended sequential and progressive Huffman: the frames the fast path takes
_HUFFMAN: Final = frozenset({0xC0, 0xC1, 0xC2})
#: every start-of-frame marker (C4 is DHT, C8 a reserved JPG marker, CC DAC)
_SOF: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_SOS: Final = 0xDA
_ADOBE: Final = 0xEE  # APP14: its transform flag says YCbCr or RGB/CMYK
_ORIENTATION: Final = 0x0112
_SHORT: Final = 3


@dataclass(frozen=True)
class JpegHeader:
    """What the fast path needs to know of a JPEG before decoding it."""

    width: int
    height: int
    components: int  # 1 (gray) or 3 (YCbCr)
    orientation: int = 1  # EXIF orientation, 1..8: applied after decoding


def read_header(data: bytes) -> JpegHeader | None:
    """The size (and EXIF orientation) of a JPEG that the fast path decodes exactly as
    Pillow; None for any other file.

    Examples
    --------
    >>> import io
    >>> from PIL import Image
    >>> buf = io.BytesIO()
    >>> Image.new("RGB", (40, 30)).save(buf, "JPEG")
    >>> read_header(buf.getvalue())
    JpegHeader(width=40, height=30, components=3, orientation=1)
    >>> buf = io.BytesIO()
    >>> Image.new("CMYK", (40, 30)).save(buf, "JPEG")
    >>> read_header(buf.getvalue()) is None
    True
    """
    if not data.startswith(_SOI):
        return None
    try:
        return _walk(data)
    except (IndexError, struct.error):  # a segment runs past the end: leave it to Pillow
        return None


def _walk(data: bytes) -> JpegHeader | None:
    """The markers up to the scan: one Huffman-coded 8-bit frame, one clear orientation,
    not Adobe RGB. (Run for every file: a segment is only sliced out when its content is
    read, an EXIF block; the rest is read in place.)"""
    n = len(data)
    pos = 2
    frame: tuple[int, int, int] | None = None
    exif = 0
    orientation = 1
    while pos < n:
        if data[pos] != 0xFF:
            return None  # garbage between segments: Pillow's parser decides what it means
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length
            pos += 2
            continue
        length = data[pos + 2] << 8 | data[pos + 3]
        body, end = pos + 4, pos + 2 + length  # the segment's content: data[body:end]
        if length < 2 or end > n:
            return None
        if marker == _SOS:
            return None if frame is None else JpegHeader(*frame, orientation=orientation)
        if marker in _SOF:
            if marker not in _HUFFMAN or frame is not None or length < 8:
                return None
            precision, height, width, components = struct.unpack_from(">BHHB", data, body)
            if precision != 8 or components not in (1, 3) or not width or not height:
                return None
            frame = (width, height, components)
        elif marker == 0xE1:
            if data.startswith(b"Exif\0\0", body, end):
                exif += 1
                said = _orientation(data[body + 6 : end])
                if exif > 1 or said is None:
                    return None
                orientation = said
            elif data.find(b"Orientation", body, end) >= 0:  # XMP: Pillow reads tiff:Orientation
                return None
        elif marker == _ADOBE and data.startswith(b"Adobe", body, end):
            # transform 0 on three components means RGB, not YCbCr: leave it to Pillow
            if length < 14 or data[body + 11] != 1:
                return None
        elif marker == 0xD9:  # EOI before any scan
            return None
        pos = end
    return None


def _orientation(tiff: bytes) -> int | None:
    """The orientation of an EXIF block (a TIFF structure): 1 without the tag; None (left
    to Pillow) for anything but one SHORT of 1..8 in its first directory."""
    # a TIFF header Pillow reads the same way (a damaged magic: Pillow reads no EXIF at
    # all, or fails, and the fast path must not turn the picture where Pillow does not)
    if tiff[:4] == b"II*\x00":
        end = "<"
    elif tiff[:4] == b"MM\x00*":
        end = ">"
    else:
        return None
    (ifd,) = struct.unpack_from(end + "I", tiff, 4)
    (count,) = struct.unpack_from(end + "H", tiff, ifd)
    found: list[int] = []
    for i in range(count):
        tag, kind, num = struct.unpack_from(end + "HHI", tiff, ifd + 2 + 12 * i)
        if tag != _ORIENTATION:
            continue
        if kind != _SHORT or num != 1:
            return None
        found += struct.unpack_from(end + "H", tiff, ifd + 2 + 12 * i + 8)
    if not found:
        return 1
    return found[0] if len(found) == 1 and 1 <= found[0] <= 8 else None


def decode(data: bytes, header: JpegHeader, *, mode: str, scale: int = 1) -> np.ndarray | None:
    """The pixels Pillow gives for ``Image.open`` -> ``draft`` -> ``convert(mode)``.

    ``mode`` is ``"L"`` or ``"RGB"`` (``"RGB"`` of a gray JPEG gives its gray pixels,
    ``(H, W, 1)``: Pillow resizes them before it copies them into three channels).
    ``scale`` is libjpeg's DCT scaling, 1, 2, 4 or 8, as Pillow's ``draft`` picks it.
    Returns ``(H, W, 1)`` or ``(H, W, 3)`` uint8, or None when the file should go to
    Pillow (simplejpeg refuses it, or warns about it). The pixels are in this thread's
    scratch buffer (:mod:`daskimg.read.scratch`): valid until its next decode.
    """
    w, h = header.width, header.height
    want = (-(-h // scale), -(-w // scale))
    if scale > 1 and not _scale_is_unique(w, h, scale):
        return None
    if header.components == 1:
        space = "GRAY"
    elif mode == "L" and scale > 1:
        space = "GRAY"  # Pillow's draft("L") has libjpeg return the luma plane
    else:
        space = "RGB"
    _said.tried = True
    try:
        pixels = simplejpeg.decode_jpeg(
            data,
            colorspace=space,
            min_height=want[0] if scale > 1 else 0,
            min_width=want[1] if scale > 1 else 0,
            strict=True,
            # simplejpeg decodes into the start of the buffer, as large as the full picture
            buffer=scratch("jpeg", (h * w * (1 if space == "GRAY" else 3),)),
        )
    except (ValueError, RuntimeError) as e:
        if str(e).startswith(_DAMAGE):
            _said.damage = str(e)  # for the caller, once Pillow has decoded it
        return None
    if pixels.shape[:2] != want:
        return None
    if space == "RGB" and mode == "L":  # Pillow converts the RGB it decoded
        gray = np.empty((*want, 1), np.uint8)
        rgb_to_l(pixels, gray)
        return gray
    return pixels


#: libjpeg's words for damage in the data (it decodes on, resynchronising: Pillow takes
#: the result), as opposed to what simplejpeg does not support
_DAMAGE: Final = (
    "Corrupt JPEG data",
    "Premature end",
    "Invalid JPEG",
    "Bogus",
    "Inconsistent progression",  # a progressive scan repeated or out of order: wrong pixels
)
_said = threading.local()


def damage() -> str | None:
    """What libjpeg said of damage in the file this thread's last :func:`decode` refused
    (then cleared, with :func:`tried`), or None."""
    said: str | None = getattr(_said, "damage", None)
    _said.damage = None
    _said.tried = False
    return said


def tried() -> bool:
    """Whether :func:`decode` ran simplejpeg on this thread since :func:`damage` was asked."""
    return bool(getattr(_said, "tried", False))


def check(data: bytes) -> str | None:
    """What libjpeg says of damage in a JPEG's data (decoded at its smallest DCT scale,
    which reads every bit of the scans but spends little on the pixels); None if it says
    nothing, or cannot decode the file at all (12-bit, lossless: Pillow decoded it)."""
    try:
        space = simplejpeg.decode_jpeg_header(data)[2]
        simplejpeg.decode_jpeg(
            data,
            colorspace="CMYK" if space in ("CMYK", "YCCK") else "GRAY",
            min_height=1,  # libjpeg's 1/8 scale
            min_width=1,
            strict=True,
        )
    except (ValueError, RuntimeError) as e:
        if str(e).startswith(_DAMAGE):
            return str(e)
    return None


def _scale_is_unique(w: int, h: int, scale: int) -> bool:
    """Whether simplejpeg, asked for at least ceil(size / scale), picks exactly 1/scale.

    It picks the smallest M/8 that reaches both sizes; for a tiny image a smaller M/8
    can round up to the same size (and gives other pixels).
    """
    m = 8 // scale - 1  # the next smaller scaling factor, M/8
    return not (math.ceil(w * m / 8) >= -(-w // scale) and math.ceil(h * m / 8) >= -(-h // scale))
