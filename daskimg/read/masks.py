"""Read: segmentation masks, resized with exactly their image's geometry.

A mask holds one class id per pixel of its image, in the image's upright frame (after
the image's EXIF orientation; a mask's own orientation tag, if any, is applied too). It
must have the image's size there. It is resized with the image's placement
(:mod:`daskimg.read.geometry`: the same crop box, scale and padding) by *nearest
neighbour*, so a stored mask holds only class ids found in its source (plus 0, the
background, in the border that ``resize="pad"`` adds). Stored pixel ``(i, j)`` takes
the source pixel under its centre, the same point the image's resampling is centred on.

Files: PNG, TIFF, BMP, GIF (any image Pillow reads, told apart by content) and ``.npy``.
``L`` and ``1`` give their values, ``P`` (palette, as in Pascal VOC) its indices, not the
colours (a palette of grays other than its indices and other than black and white, a gray
mask saved as GIF, is refused); 16-bit files give uint16 and ``I`` int32; an RGB(A) file
whose three colours are equal everywhere gives that one channel (a gray mask saved as
RGB). Colour-coded masks
(different colours per class) are refused: convert them to ids first. ``.npy`` masks hold
a 2-D integer (or boolean) array.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from typing import Any, Final

import numpy as np

from ..errors import DecodeError
from ..remote import RemoteFiles
from .fileio import (
    CORRUPT,
    NPY_LOCK,
    NPY_MAGIC,
    TRANSPOSE,
    first_readable,
    open_image,
    orientation,
    read_bytes,
    strict_pillow,
)
from .geometry import placement

__all__ = ["mask_dtype_of", "mask_into", "resolve_mask_dtype"]

_MODE_DTYPES: Final = {
    "1": "uint8",
    "L": "uint8",
    "P": "uint8",
    "LA": "uint8",
    "PA": "uint8",
    "RGB": "uint8",
    "RGBA": "uint8",
    "I;16": "uint16",
    "I;16L": "uint16",
    "I;16B": "uint16",
    "I;16N": "uint16",
    "I": "int32",
}


def mask_dtype_of(path: str, data: bytes | None = None) -> np.dtype:
    """The dtype a mask file holds, from its header (``1``, ``L``, ``P``: uint8; 16-bit: uint16).

    Examples
    --------
    >>> import tempfile, os
    >>> from PIL import Image
    >>> p = os.path.join(tempfile.mkdtemp(), "m.png")
    >>> Image.new("L", (4, 3)).save(p)
    >>> mask_dtype_of(p)
    dtype('uint8')
    """
    data = read_bytes(path) if data is None else data
    if data.startswith(NPY_MAGIC):
        return _read_ids(path, data).dtype.newbyteorder("=")  # refused as decoding refuses it
    im = open_image(path, data)
    try:
        _check_mask_file(im, data, path)
        return np.dtype(_mode_dtype(im.mode, path))
    finally:
        im.close()


def resolve_mask_dtype(
    mask_dtype: str | None,
    masks: Sequence[str] | None,
    remote: RemoteFiles | None,
    images: Sequence[str] = (),
    *,
    skip: bool = False,
) -> str:
    """The stored masks' dtype: ``mask_dtype`` if given (an integer dtype), else the first mask's.

    Reads the first mask file (fetched, for a URL) only when ``mask_dtype`` is None; an
    error names the image the mask belongs to (``images``, in the same order), as when the
    set is decoded. ``skip`` (``on_error="skip"``): a mask that cannot be read is passed
    over for the next (its sample is skipped and recorded when the set is decoded, as any
    bad file); the first error is raised if none can be read.
    """
    if mask_dtype is not None:
        try:
            dtype = np.dtype(mask_dtype)
        except TypeError:
            dtype = np.dtype(object)
        if dtype.kind not in "iu":
            raise ValueError(
                f"mask_dtype must be an integer dtype (masks hold class ids); got {mask_dtype!r}"
            )
        return dtype.name
    if not masks:
        return "uint8"

    def named(i: int, e: DecodeError) -> DecodeError:  # for its image, as decoding says it
        return (
            DecodeError(images[i], f"its mask {masks[i]!r}: {e.reason}") if i < len(images) else e
        )

    return first_readable(masks, remote, mask_dtype_of, skip=skip, named=named).name


def mask_into(
    path: str,
    out: np.ndarray,
    *,
    source_size: tuple[int, int],
    resize: str,
    image: str,
    data: bytes | None = None,
) -> None:
    """Read the mask at ``path`` (or its content ``data``) into ``out`` ``(h, w)``.

    ``source_size`` is the ``(H, W)`` of the image ``image`` after EXIF orientation; the
    mask is placed as that image is for ``resize``. Errors are raised for the image (a
    sample is its image and its mask) and name both files.
    """
    try:
        ids = _read_ids(path, data)
    except DecodeError as e:
        raise DecodeError(image, f"its mask {path!r}: {e.reason}") from None
    h, w = ids.shape
    if (h, w) != tuple(source_size):
        turned = (w, h) == tuple(source_size)
        hint = (
            "; that is the image's size turned by 90 degrees: the image has an EXIF "
            "orientation, and masks are read in the image's upright frame, so turn the mask "
            "the same way"
            if turned
            else "; a mask needs one class id per pixel of its image"
        )
        raise DecodeError(
            image,
            f"its mask {path!r} is {w}x{h} (width x height), the image {source_size[1]}x"
            f"{source_size[0]} after EXIF orientation{hint}",
        )
    info = np.iinfo(out.dtype)
    lo, hi = int(ids.min()), int(ids.max())
    if lo < info.min or hi > info.max:
        raise DecodeError(
            image,
            f"its mask {path!r} holds class ids {lo}..{hi}, outside {out.dtype.name} "
            f"{info.min}..{info.max} (the set's mask dtype); pass mask_dtype='int32' "
            "(or another dtype that holds them)",
        )
    where = placement((h, w), (out.shape[0], out.shape[1]), resize)
    x0, y0, x1, y1 = where.box
    fw, fh = where.size
    # nearest neighbour: the source pixel under each stored pixel's centre
    cols = np.floor(x0 + (np.arange(fw) + 0.5) * ((x1 - x0) / fw)).astype(np.intp)
    rows = np.floor(y0 + (np.arange(fh) + 0.5) * ((y1 - y0) / fh)).astype(np.intp)
    np.clip(cols, 0, w - 1, out=cols)
    np.clip(rows, 0, h - 1, out=rows)
    ox, oy = where.offset
    if (fw, fh) != (out.shape[1], out.shape[0]):
        out[...] = 0
    out[oy : oy + fh, ox : ox + fw] = ids[rows[:, None], cols[None, :]]


def _read_ids(path: str, data: bytes | None) -> np.ndarray:
    """The mask's class ids as a 2-D integer array, upright."""
    data = read_bytes(path) if data is None else data
    if data.startswith(NPY_MAGIC):
        arr = _load_npy(path, data)
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim != 2 or arr.dtype.kind not in "biu":
            raise DecodeError(
                path,
                "a .npy mask must be a 2-D array of integer class ids; found "
                f"shape {arr.shape} and dtype {arr.dtype}",
            )
        return np.asarray(arr, dtype=np.uint8 if arr.dtype.kind == "b" else arr.dtype)
    with strict_pillow():  # a truncated mask fails, whatever the process's Pillow setting
        im = open_image(path, data)
        try:
            _check_mask_file(im, data, path)
            _mode_dtype(im.mode, path)
            try:
                im.load()
            except CORRUPT as exc:
                raise DecodeError(path, f"corrupt or truncated mask ({exc})") from exc
            method = TRANSPOSE.get(orientation(im, path))
            if method is not None:
                im = im.transpose(method)
            palette = im.getpalette() if im.mode in ("P", "PA") else None
            if im.mode in ("LA", "PA"):
                im = im.getchannel(0)
            arr = np.asarray(im)
        finally:
            im.close()
    if palette is not None:
        _check_gray_palette(arr, palette, path)
    if arr.ndim == 3:  # RGB(A): one class id only if the colours are gray
        rgb = arr[..., :3]
        if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()):
            raise DecodeError(
                path,
                "a colour image whose pixels are not gray: masks hold one class id per "
                "pixel. Convert colour-coded masks to ids (e.g. a palette PNG, mode 'P', or "
                "'L' with values 0, 1, 2, ...)",
            )
        arr = rgb[..., 0]
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return arr.astype(arr.dtype.newbyteorder("="), copy=False)


def _check_mask_file(im: Any, data: bytes, path: str) -> None:
    """Refuse mask files whose class ids Pillow would change or leave out, each silently:
    several TIFF pages (every page but the first dropped), 16-bit colour or gray+alpha
    (Pillow reads those at 8 bits: ids 700 and 1200 became 2 and 4), and lossy content
    under a name that does not say so (a JPEG named ``.png``, a lossy WebP: new ids near
    every edge; a JPEG named ``.jpg`` is logged when listed, see :func:`warn_lossy_masks`)."""
    pages = int(getattr(im, "n_frames", 1))
    if im.format == "TIFF" and pages > 1:
        raise DecodeError(
            path,
            f"has {pages} pages; a mask is one page of class ids, and reading it would keep "
            "only the first. Combine the pages into one of ids, or save the page meant alone",
        )
    deep = False
    if im.format == "PNG" and len(data) > 25:  # IHDR: bit depth, colour type
        deep = data[24] == 16 and data[25] in (2, 4, 6)
    elif im.format == "TIFF" and im.mode in ("RGB", "RGBA", "LA"):
        bits = getattr(im, "tag_v2", {}).get(258) or (8,)
        deep = max(bits if isinstance(bits, tuple) else (bits,)) > 8
    if deep:
        raise DecodeError(
            path,
            "a 16-bit colour (or gray+alpha) mask, which Pillow reads at 8 bits: its class "
            "ids would come back changed. Save it as one 16-bit gray channel (a PNG of mode "
            "'I;16', e.g. Image.fromarray(ids.astype(np.uint16))) or as a .npy of ids",
        )
    lossy_named = os.path.splitext(path)[1].lower() in _LOSSY
    if (im.format in ("JPEG", "MPO") and not lossy_named) or (
        im.format == "WEBP" and _lossy_webp(data)
    ):
        raise DecodeError(
            path,
            f"holds a lossy {im.format} image: compression changes class ids near every "
            "edge (new ids appear). Save masks losslessly (PNG, lossless WebP)",
        )


def _check_gray_palette(ids: np.ndarray, palette: list[int], path: str) -> None:
    """Refuse a palette mask whose used colours are all gray but not its indices: a gray
    mask saved as GIF (or converted to a palette), whose writer numbered the grays per file
    (ids 0 and 200 became 0 and 1 in one file, 0, 1 and 200 became 0, 1 and 2 in another:
    id 1 meant two classes, without a word). A palette of colours (Pascal VOC) gives its
    indices, as do grays equal to them and black-and-white palettes (binary masks)."""
    used = np.unique(ids)
    rgb = np.asarray(palette, dtype=np.int64).reshape(-1, 3)
    used = used[used < len(rgb)]
    colours = rgb[used]
    gray = (colours[:, 0] == colours[:, 1]).all() and (colours[:, 0] == colours[:, 2]).all()
    # black and white alone: a binary mask's palette (Carvana's GIFs, 1-bit PNGs), whose
    # indices are its ids (0 and 1) in every file
    binary = set(colours[:, 0].tolist()) <= {0, 255}
    if gray and not binary and (colours[:, 0] != used).any():
        i = int(used[np.flatnonzero(colours[:, 0] != used)[0]])
        raise DecodeError(
            path,
            f"a palette mask whose colours are grays other than their indices (index {i} "
            f"is gray {int(rgb[i, 0])}): a gray mask saved as GIF or as a palette image, "
            "whose writer numbers the grays anew in each file, so an index may mean "
            "another class in another file. Save masks as PNG of mode 'L' (gray values are "
            "the ids) or as a palette PNG whose indices are the ids",
        )


def _lossy_webp(data: bytes) -> bool:
    """A WebP whose image is lossy (a ``VP8 `` chunk; ``VP8L`` is lossless)."""
    at = 12  # after 'RIFF', the size and 'WEBP'
    while at + 8 <= len(data):
        fourcc, size = data[at : at + 4], int.from_bytes(data[at + 4 : at + 8], "little")
        if fourcc in (b"VP8 ", b"VP8L"):
            return fourcc == b"VP8 "
        at += 8 + size + (size & 1)
    return False


def _mode_dtype(mode: str, path: str) -> str:
    dtype = _MODE_DTYPES.get(mode)
    if dtype is None:
        raise DecodeError(
            path,
            f"unsupported mask mode {mode!r}: masks hold integer class ids, one per pixel "
            "(modes 1, L, P, I;16, I, or gray RGB); save it as a PNG of mode 'L' or 'P'",
        )
    return dtype


def _load_npy(path: str, data: bytes) -> np.ndarray:
    try:
        with NPY_LOCK:  # (see its notes)
            return np.load(io.BytesIO(data), allow_pickle=False)
    except CORRUPT as exc:
        raise DecodeError(path, f"corrupt or truncated mask ({exc})") from exc


#: endings of lossy image formats: a mask saved so has its ids changed near every edge
_LOSSY = (".jpg", ".jpeg", ".jpe", ".jfif")


def warn_lossy_masks(paths: Sequence[str], where: str) -> None:
    """Log mask files saved as JPEG (lossy: class ids come back changed near every edge;
    nearest-neighbour resizing keeps what the file holds)."""
    lossy = [p for p in paths if os.path.splitext(str(p))[1].lower() in _LOSSY]
    if lossy:
        logging.getLogger("daskimg").warning(
            "%s: %d mask file(s) such as %r are JPEGs: JPEG is lossy, so class ids come back "
            "changed near every edge (an id 5 becomes 4, 6, ...); save masks as PNG",
            where,
            len(lossy),
            str(lossy[0]),
        )
