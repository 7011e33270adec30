"""Read: one volume file (``.npy`` or TIFF stack) into a fixed-shape array, values kept.

A volume must be 3-D, or 4-D with a trailing channel of 1. It is resized to exactly the
asked shape by linear interpolation (order 1) on pixel-area aligned grids, after a
Gaussian pre-filter of sigma ``(factor - 1) / 2`` along each axis that shrinks: the same
result as ``skimage.transform.resize(..., order=1, mode="edge", anti_aliasing=True)``.

Values are never rescaled. By default (``dtype=None`` in the readers) a set of volumes
keeps the dtype of its first file (:func:`volume_dtype`): an int16 CT scan stays int16
Hounsfield units, float stays float. A dtype that can hold every value of the source's
dtype is a plain cast. A narrower one is checked file by file: integer values must fit
its range, and floating-point values must be whole numbers within it; otherwise the
error names the file, its value range and a dtype that fits. Floating-point output takes
what it can hold: integers only while every value is a whole number it holds exactly
(float16: up to 2048 in magnitude, float32: 2**24), and floats rounded to it but never
beyond its largest finite value (which would become infinity) — when it was asked for:
taken from the first file, it refuses a later file of wider floats that it would round.
Interpolation never leaves the range of its inputs, so a resized volume fits wherever its
source did. Resizing computes in float32 (float64 for 32- and 64-bit integers and float64): a 64-bit integer
volume with values beyond 2**53 in magnitude, which float64 would round, is refused
unless it is stored at its own size.

TIFF stacks (:func:`_read_tiff`): one image series, or one page per series (a stack
written slice by slice). Several series of other shapes, a color image, a chain of pages
that runs past the end of the file or loops (a cut file), and what else tifffile reports as
damage (it reads a cut file as a shorter stack) are refused, naming the file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import struct
import threading
from collections.abc import Iterator
from typing import Any, Final

import numpy as np

from ..errors import DecodeError
from .fileio import CORRUPT, EMPTY, NPY_LOCK, NPY_MAGIC, TIFF_MAGICS, open_regular, unreadable

__all__ = ["VOLUME_DTYPES", "read_volume", "volume_dtype", "volume_into"]

#: the dtypes a volume may be stored as
VOLUME_DTYPES: Final = (
    "uint8",
    "int8",
    "uint16",
    "int16",
    "uint32",
    "int32",
    "uint64",
    "int64",
    "float16",
    "float32",
    "float64",
)


def volume_into(
    path: str, out: np.ndarray, data: bytes | None = None, *, taken: bool = False
) -> tuple[int, int, int]:
    """Decode the volume at ``path`` (or its content ``data``) into ``out`` ``(D, H, W, 1)``.

    Returns the source's ``(D, H, W)``. ``out``'s dtype is the stored dtype.
    """
    vol, is_tiff = read_volume(path, data)
    if vol.ndim == 4 and vol.shape[-1] == 1:
        vol = vol[..., 0]
    if vol.ndim != 3:
        hint = ""
        if vol.ndim == 2:
            hint = (
                " (a single picture"
                + (
                    ": a TIFF stack has one page per slice, unless it is truncated"
                    if is_tiff
                    else ""
                )
                + "; a 2-D size reads it only as an 8- or 16-bit image Pillow opens: for "
                "other values (float, signed) save it as a one-slice volume of shape "
                "(1, H, W) and read it with size=(1, H, W))"
            )
        raise DecodeError(
            path,
            "expected a 3-D volume (depth, height, width), or 4-D with a trailing channel "
            f"of 1; found shape {vol.shape}{hint}",
        )
    if 0 in vol.shape:
        raise DecodeError(path, f"the volume is empty (shape {vol.shape})")
    check_volume_dtype(vol, out.dtype, path, taken=taken)
    dst = out[..., 0]
    if vol.shape == dst.shape:
        np.copyto(dst, vol, casting="unsafe")  # values were checked to fit
    elif dst.dtype.kind == "f" and dst.dtype.itemsize >= 4:
        _zoom(vol, dst)
    else:
        # float32 holds integers exactly only up to 2**24: wider integers zoom in float64
        wide = dst.dtype.kind in "iu" and dst.dtype.itemsize >= 4
        if wide:  # (float sources into int64 too: 2**63 - 1024 came out as -2**63)
            lo, hi = int(np.floor(vol.min())), int(np.ceil(vol.max()))
            if max(-lo, hi) > 2**53:  # float64 would round them (and 2**63 - 1 would wrap)
                raise DecodeError(
                    path,
                    f"volume values span {lo}..{hi}; resizing computes in float64, which "
                    f"holds whole numbers exactly only within -{2**53}..{2**53}: store it at "
                    f"its own size (size={tuple(int(n) for n in vol.shape)})",
                )
        tmp = np.empty(dst.shape, dtype=np.float64 if wide else np.float32)
        _zoom(vol, tmp)
        if dst.dtype.kind in "iu":
            np.rint(tmp, out=tmp)
            info = np.iinfo(dst.dtype)
            np.clip(tmp, info.min, info.max, out=tmp)
        np.copyto(dst, tmp, casting="unsafe")
    return (int(vol.shape[0]), int(vol.shape[1]), int(vol.shape[2]))


def volume_dtype(path: str, data: bytes | None = None) -> np.dtype:
    """The dtype a volume file holds, read from its header (``bool`` volumes give uint8).

    Examples
    --------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "ct.npy")
    >>> np.save(p, np.zeros((2, 3, 4), np.int16))
    >>> volume_dtype(p)
    dtype('int16')
    """
    head = (data if data is not None else read_head(path))[:8]
    if head[:4] in TIFF_MAGICS:
        import tifffile

        try:
            with tifffile.TiffFile(path if data is None else io.BytesIO(data)) as tif:
                dtype = np.dtype(tif.series[0].dtype)
        except MemoryError:
            raise
        except Exception as exc:
            raise _corrupt(path, exc) from exc
    else:
        dtype = read_volume(path, data)[0].dtype  # a .npy is memory-mapped: the header only
    if dtype.kind == "b":
        return np.dtype(np.uint8)
    if dtype.kind not in "iuf" or dtype.newbyteorder("=").name not in VOLUME_DTYPES:
        # (float128 was met as a dtype= argument the caller never gave, naming no file)
        raise DecodeError(
            path,
            f"unsupported volume dtype {dtype}; expected one of {', '.join(VOLUME_DTYPES)}. "
            "Convert it first (e.g. np.save(path, np.load(path).astype(np.float64)))",
        )
    return dtype.newbyteorder("=")


def read_volume(path: str, data: bytes | None = None) -> tuple[np.ndarray, bool]:
    """Open a .npy (memory-mapped) or TIFF stack, told apart by the first bytes.

    With ``data`` (the file's content), that is read instead of the file.
    Returns the array and whether it came from a TIFF.
    """
    head = read_head(path) if data is None else data[:8]
    if not head:
        raise DecodeError(path, EMPTY)
    source: str | io.BytesIO = path if data is None else io.BytesIO(data)
    if head.startswith(NPY_MAGIC):
        try:
            with NPY_LOCK:
                if data is not None:
                    return np.load(source, allow_pickle=False), False
                return np.load(path, mmap_mode="r", allow_pickle=False), False
        except CORRUPT as exc:
            if "Python objects" in str(exc) or "allow_pickle" in str(exc):
                raise DecodeError(
                    path,
                    "the .npy file holds Python objects (dtype object), not numbers; "
                    "save the volume as a numeric array, e.g. np.save(path, vol.astype('float32'))",
                ) from None
            raise _corrupt(path, exc) from exc
    if head[:4] in TIFF_MAGICS:
        return _read_tiff(path, source), True
    raise DecodeError(
        path,
        "not a volume: expected a NumPy .npy file (starting b'\\x93NUMPY') or a TIFF stack "
        f"(starting b'II*\\x00' or b'MM\\x00*'); it starts with {head!r}. "
        "Give a 2-D size (height, width) to read images",
    )


def _read_tiff(path: str, source: str | io.BytesIO) -> np.ndarray:
    """A TIFF stack's voxels: its one image series, or its pages when each page is a series
    of its own (a stack written slice by slice, ``tifffile.imwrite(..., append=True)``).

    Refused, naming the file: several series of other shapes (only the first would be
    read), a color image (samples per pixel > 1: an RGB photo is not a volume), and
    anything tifffile reports as an error while reading, such as a page offset past the
    end of a cut file (it would read as a shorter stack and be zoomed back to the depth).
    """
    import tifffile  # only volumes need it

    try:
        with _tiff_errors() as errors, tifffile.TiffFile(source) as tif:
            ifds = _check_page_chain(tif, path)  # a cut one logs nothing, at times
            series = tif.series
            # the bytes its series declare (checked against memory before they are read)
            declared = sum(int(s.size) for s in series) * (
                np.dtype(series[0].dtype).itemsize if series else 0
            )
            if errors:  # damage tifffile logged while finding the series: said as damage
                if series:  # (one declaring more than memory holds: said so, as below)
                    _check_fits(path, declared, tuple(series[0].shape), len(series))
                raise DecodeError(path, f"corrupt or truncated TIFF (tifffile: {errors[0]})")
            if not series:
                raise DecodeError(path, "the TIFF holds no image")
            kinds = {(tuple(s.shape), np.dtype(s.dtype).str) for s in series}
            # several 2-D series of one shape: a stack written slice by slice; but OME names
            # its images, so several there are separate images (fields, positions)
            pages = len(series) > 1 and all(len(s.shape) == 2 for s in series) and not tif.is_ome
            if len(series) > 1 and not (pages and len(kinds) == 1):
                shapes = ", ".join(f"{tuple(s.shape)} {np.dtype(s.dtype)}" for s in series[:4])
                raise DecodeError(
                    path,
                    f"the TIFF holds {len(series)} image series ({shapes}"
                    f"{', ...' if len(series) > 4 else ''}); a volume file holds one: "
                    "save each series to its own file",
                )
            first = series[0]
            axes = first.axes
            # samples last (contiguous RGB): a photo. Samples first ("SYX") is what tifffile
            # writes for a stack of 3 or 4 slices unless told otherwise: read as slices
            if axes.endswith("S") and first.shape[-1] > 1:
                samples = first.shape[axes.index("S")]
                stack = len(first.shape) > 3 and samples <= 4  # pages of color pictures
                raise DecodeError(
                    path,
                    ("a stack of color pages" if stack else "a color image")
                    + f" (shape {tuple(first.shape)}, axes {axes}: "
                    f"{samples} samples per pixel), not a volume of one channel; "
                    + (
                        "nor one image: it cannot be read either way. Save each page as its "
                        "own file (read them as images), or the slices as one channel (a "
                        ".npy of shape (D, H, W)) to read a volume"
                        if stack
                        else "give a 2-D size (height, width) to read images"
                        if samples <= 4
                        else "as an image it has more channels than the 1, 3 or 4 daskimg "
                        "reads, so it cannot be read either way: save its channels as "
                        "slices (a .npy of shape (C, H, W)) to read them as a volume"
                    ),
                )
            core = axes[:-1] if axes.endswith("S") else axes
            # rows and columns last, as daskimg reads them: the first axis is depth whatever
            # its letter (Z; Q or I unlabelled; S, tifffile's 3 or 4 slices; C, what
            # tifffile's imagej=True or ome=True writes a stack as unless told ZYX; T, a
            # time series): its slices lie as they would for Z. Another order (YXZ, XYZ)
            # would be read with rows or columns as depth: refused
            if not pages and len(core) == 3 and core[1:] != "YX":
                raise DecodeError(
                    path,
                    f"the TIFF's axes are {axes} (shape {tuple(first.shape)}, as tifffile "
                    "reads them): rows and columns (Y, X) are not its last two axes, and "
                    "daskimg reads a volume as (depth, Y, X). Save it in that order "
                    f"(np.moveaxis; tifffile.imwrite(..., metadata={{'axes': 'ZYX'}}))",
                )
            _check_fits(path, declared, tuple(first.shape), len(series) if pages else 1)
            if not pages:
                _check_pages_alike(tif, path, ifds)
            else:  # each page a series of its own: each read by its own header
                for i, page in enumerate(tif.pages):
                    if hasattr(page, "databytecounts"):
                        _check_strips(page, path, i)
            vol = tif.asarray(key=slice(None)) if pages else first.asarray()
        if errors:
            raise DecodeError(path, f"corrupt or truncated TIFF (tifffile: {errors[0]})")
        return np.asarray(vol)
    except (DecodeError, MemoryError):
        raise
    except Exception as exc:  # codecs raise their own types (imagecodecs.DeflateError, ...)
        if "imagecodecs" in str(exc):
            raise DecodeError(
                path,
                f"its compression needs the package imagecodecs ({exc}); install it "
                "(pip install imagecodecs) or save the stack uncompressed or with zlib",
            ) from exc
        raise _corrupt(path, exc) from exc


def _check_pages_alike(tif: Any, path: str, ifds: list[int]) -> None:
    """Refuse a stack whose pages differ in shape, type or samples per pixel: tifffile reads
    a series by its first page, so a page of another type (a float or 16-bit page in an
    8-bit stack) was read as its bytes taken for the first page's type, garbage unsaid."""
    series = tif.series[0]
    if series.dataoffset is not None:
        # one block, as tifffile writes a shaped stack, read as one by page 0's kind:
        # parsing every page to compare them made such stacks 50x slower to open, so
        # only the tags that say how a page's bytes read are compared (``ifds``: where
        # each page's header is)
        _check_strips(tif.pages[0], path, 0)
        _check_page_formats(tif, path, ifds)
        return
    mine = {page.index for page in series.pages if page is not None}  # not thumbnails
    first = tif.pages[0]
    want = (first.shape, first.dtype, first.samplesperpixel, first.bitspersample)
    for i, page in enumerate(tif.pages):
        if i not in mine or not hasattr(page, "samplesperpixel"):
            continue  # a TiffFrame (OME, ImageJ): tifffile holds it to its key page's kind
        _check_strips(page, path, i)
        got = (page.shape, page.dtype, page.samplesperpixel, page.bitspersample)
        if got != want:
            raise DecodeError(
                path,
                f"its page {i} is {page.shape} {page.dtype} ({page.samplesperpixel} samples of "
                f"{page.bitspersample} bits), page 0 {first.shape} {first.dtype} "
                f"({first.samplesperpixel} of {first.bitspersample}); a volume is a stack of "
                "slices of one shape and type: save the odd pages apart, or convert them first",
            )


def _check_strips(page: Any, path: str, index: int) -> None:
    """Refuse an uncompressed page (in strips) whose strips hold other than its voxels'
    bytes, or lie past the end of the file: a damaged strip byte count or offset (a TIFF
    has no checksum), which tifffile reads on, garbage or zeros in part of the page."""
    if getattr(page, "compression", None) != 1 or page.is_tiled or page.bitspersample % 8:
        return
    counts = [int(c) for c in page.databytecounts]
    size = page.parent.filehandle.size
    planes = page.samplesperpixel if page.planarconfig == 2 else 1
    row = page.imagewidth * (page.samplesperpixel // planes) * (page.bitspersample // 8)
    length, rows = int(page.imagelength), int(page.rowsperstrip or page.imagelength)
    per_plane = -(-length // rows) if rows else 0
    if page.imagedepth == 1 and len(counts) == planes * per_plane:
        # each strip holds its rows' bytes; the last of a plane may be padded to a whole
        # strip (as some writers do, read as Pillow reads it), no strip holds more or less
        for j, count in enumerate(counts):
            exact = min(rows, length - (j % per_plane) * rows) * row
            if not exact <= count <= rows * row:
                raise DecodeError(
                    path,
                    f"corrupt TIFF: page {index}'s strip {j} holds {count} bytes, its rows "
                    f"{exact}: a damaged page header (strip byte counts)",
                )
    if any(o + c > size for o, c in zip(page.dataoffsets, counts, strict=False)):
        raise DecodeError(
            path,
            f"corrupt or truncated TIFF: page {index}'s strips run past the end of the file "
            f"({size} bytes)",
        )


def _corrupt(path: str, exc: Exception) -> DecodeError:
    """A volume that could not be read: damaged, or (tifffile's "incompatible keyframe") a
    sound TIFF whose pages are of several shapes."""
    if "keyframe" in str(exc):
        return DecodeError(
            path,
            f"its pages are not all of one shape ({exc}); a volume is a stack of slices of one "
            "height and width: save the odd pages apart, or resize them first",
        )
    return DecodeError(path, f"corrupt or truncated volume ({exc})")


#: the tags saying how a page's bytes are read (width, length, bits per sample,
#: compression, samples per pixel, planar configuration, sample format) and TIFF's
#: default where a page leaves one out
_FORMAT_TAGS: dict[int, tuple[int, ...] | None] = {
    256: None, 257: None, 258: (1,), 259: (1,), 277: (1,), 284: (1,), 339: (1,),
}  # fmt: skip
#: the tags that say how pixels are read: the format ones, photometric, where the strips
#: or tiles are and how long, rows per strip, tile size, predictor
_PIXEL_TAGS = frozenset(_FORMAT_TAGS) | {262, 273, 278, 279, 317, 322, 323, 324, 325}
_TAG_NAMES = {
    256: "width", 257: "length", 258: "bits per sample", 259: "compression",
    277: "samples per pixel", 284: "planar configuration", 339: "sample format",
}  # fmt: skip
#: TIFF's integer types (BYTE, SHORT, LONG, LONG8) as struct codes
_TAG_TYPES = {1: "B", 3: "H", 4: "I", 16: "Q"}


def _check_page_formats(tif: Any, path: str, ifds: list[int]) -> None:
    """Refuse a stack stored as one block whose pages' format tags differ from its first
    page's: tifffile reads the block by page 0's kind, so a page edited to int8 in a uint8
    stack (of the same bytes) was read as uint8, unsaid. Reads only the page headers;
    reduced-resolution and mask pages (``NewSubfileType``) are not the stack's."""
    fmt = tif.tiff
    fh = tif.filehandle
    # an entry: code, type, count, value (or where it is); tifffile's tagheaderformat,
    # which older versions lack
    entry = fmt.byteorder + ("HHQ8s" if fmt.version == 43 else "HHI4s")
    first: dict[int, tuple[int, ...] | None] | None = None
    key = tif.pages[0]
    block = tif.series[0].dataoffset
    # the block is read from page 0's data on: page k's data must start k pages further
    # (a flipped bit in page 0's strip offset read every voxel shifted, unsaid)
    step = int(key.size) * np.dtype(key.dtype).itemsize if key.bitspersample % 8 == 0 else 0
    k = 0
    for page, at in enumerate(ifds):
        fh.seek(at)
        count = int(struct.unpack(fmt.tagnoformat, fh.read(fmt.tagnosize))[0])
        entries = fh.read(count * fmt.tagsize)
        tags: dict[int, tuple[int, ...] | None] = dict(_FORMAT_TAGS)
        kind = 0
        start: int | None = None  # where the page's first strip is
        for e in range(count):
            code, typ, n, value = struct.unpack_from(entry, entries, e * fmt.tagsize)
            if code != 254 and code != 273 and code not in _FORMAT_TAGS:
                continue
            form = _TAG_TYPES.get(typ)
            size = struct.calcsize(form) if form else 0
            if code == 273 and form is not None and n > 0:
                if size <= fmt.offsetsize and n * size <= fmt.offsetsize:
                    start = struct.unpack_from(f"{fmt.byteorder}{form}", value)[0]
                else:
                    fh.seek(int(struct.unpack(fmt.offsetformat, value)[0]))
                    got = fh.read(size)
                    start = (
                        struct.unpack(f"{fmt.byteorder}{form}", got)[0] if len(got) == size else -1
                    )
                continue
            if code == 273:
                continue
            if form is None or not 0 < n <= 16:
                if code != 254:  # no integer values a sound file has here: compared as written
                    tags[code] = (-1, typ, n, *value)
                continue
            if n * size <= fmt.offsetsize:
                raw = value[: n * size]
            else:
                fh.seek(int(struct.unpack(fmt.offsetformat, value)[0]))
                raw = fh.read(n * size)
            if len(raw) < n * size:
                raise DecodeError(path, f"corrupt or truncated TIFF: page {page}'s tag {code}")
            got = struct.unpack(f"{fmt.byteorder}{n}{form}", raw)
            if code == 254:
                kind = got[0]
            else:
                tags[code] = got
        if kind & 5:  # a reduced-resolution image or a transparency mask
            continue
        if step and block is not None and start is not None and start != block + k * step:
            raise DecodeError(
                path,
                f"corrupt TIFF: the stack is stored as one block from byte {block} (page 0's "
                f"data), which puts page {page}'s data at byte {block + k * step}, but its "
                f"header says {start}: a damaged page header (voxels would be read from other "
                "bytes)",
            )
        k += 1
        if first is None:
            first = tags
            continue
        for code, want in first.items():
            if tags[code] != want:
                raise DecodeError(
                    path,
                    f"its page {page} has {_TAG_NAMES[code]} {_said(tags[code])}, page 0 "
                    f"{_said(want)}, and the stack is stored as one block read as page 0's "
                    "kind; a volume is a stack of slices of one shape and type: save the odd "
                    "pages apart, or convert them first",
                )


def _said(values: tuple[int, ...] | None) -> str:
    if values is None:
        return "none"
    if values and values[0] < 0:
        return "of an unreadable form"
    return str(values[0]) if len(values) == 1 else str(list(values))


def _check_page_chain(tif: object, path: str) -> list[int]:
    """Refuse a TIFF whose chain of pages (IFDs) runs past the end of the file or into
    itself: a cut or damaged file, which tifffile reads as a shorter stack, having logged the
    damage (lost where an application quieted its logger) or, cut inside a page header, not
    always. Walked for every file (28 ms for a stack of 20,000 pages). Reads only the page
    headers: for each page its entry count and its link to the next. Returns where each
    page's header is (none for NDPI and LSM, whose offsets are their own)."""
    if getattr(tif, "is_ndpi", False) or getattr(tif, "is_lsm", False):
        return []  # offsets of their own (64-bit in a classic header; wrapped past 4 GB)
    fmt = tif.tiff  # type: ignore[attr-defined]  # tifffile.TiffFormat: sizes and byte order
    fh = tif.filehandle  # type: ignore[attr-defined]
    size = fh.size

    def number(at: int, form: str) -> int:
        fh.seek(at)
        return int(struct.unpack(form, fh.read(struct.calcsize(form)))[0])

    first = 16 if fmt.version == 43 else 8  # BigTIFF: 8-byte offsets, a 16-byte header
    offset = number(first - fmt.offsetsize, fmt.offsetformat)
    cut = "the file was cut short or damaged: copy or export it again"
    seen: dict[int, None] = {}  # in order
    while offset:
        page = len(seen)
        if offset in seen:
            raise DecodeError(path, f"corrupt TIFF: page {page} links back to an earlier page")
        seen[offset] = None
        if offset < first or offset + fmt.tagnosize > size:
            raise DecodeError(
                path,
                f"corrupt or truncated TIFF: page {page} starts at byte {offset}, past the end "
                f"of the file ({size} bytes); {cut}",
            )
        link = offset + fmt.tagnosize + number(offset, fmt.tagnoformat) * fmt.tagsize
        if link + fmt.offsetsize > size:
            raise DecodeError(
                path,
                f"corrupt or truncated TIFF: page {page}'s header runs to byte "
                f"{link + fmt.offsetsize}, past the end of the file ({size} bytes); {cut}",
            )
        offset = number(link, fmt.offsetformat)
    return list(seen)


#: what tifffile logs (as errors) when a file is cut or its page chain broken; other errors
#: it logs (unreadable OME or ImageJ metadata, an odd tag) leave the pixels readable
_DAMAGE = (
    "invalid page offset", "invalid offset to page", "circular reference", "failed to reshape",
    "truncat", "unexpected end", "corrupt", "incorrect stripbytecounts count",
    "incorrect stripoffsets count", "does not match page shape",
)  # fmt: skip  # (not "missing data ByteCounts tag": tifffile works them out, rightly)
#: tifffile's words for a tag it could not read ("<tifffile.TiffTag 339 @202> invalid data
#: type 259"): damage when the tag says how the pixels are read (its default then taken:
#: an int16 stack read as uint16)
_UNREAD_TAG = re.compile(r"TiffTag (\d+)\b.*(invalid|raised)", re.IGNORECASE)
#: (those tags: :data:`_PIXEL_TAGS`)


class _TiffErrors(logging.Filter):
    """Notes, for the thread that asked (:func:`_tiff_errors`), what tifffile logs about damage
    while it reads (it reports a broken page chain by logging and reading on). A filter on
    tifffile's logger, not a handler: every record goes on as before (a handler would stop
    Python's last-resort printing for applications without logging set up)."""

    def __init__(self) -> None:
        super().__init__()
        self.local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        kept = getattr(self.local, "kept", None)
        if kept is not None and record.levelno >= logging.ERROR:
            message = record.getMessage()
            tag = _UNREAD_TAG.search(message)
            lowered = message.lower()
            if (any(d in lowered for d in _DAMAGE) and "series metadata" not in message) or (
                tag is not None and int(tag.group(1)) in _PIXEL_TAGS
            ):
                # (not "invalid shaped series metadata or corrupted file": tifffile says so
                # as it falls back to reading the pages as they are, of a sound file too)
                kept.append(message)
        return True


_TIFF_ERRORS = _TiffErrors()


@contextlib.contextmanager
def _tiff_errors() -> Iterator[list[str]]:
    """The damage tifffile logs in this thread while the block runs."""
    log = logging.getLogger("tifffile")
    if _TIFF_ERRORS not in log.filters:
        log.addFilter(_TIFF_ERRORS)
    kept: list[str] = []
    _TIFF_ERRORS.local.kept = kept
    try:
        yield kept
    finally:
        _TIFF_ERRORS.local.kept = None


def _check_fits(path: str, declared: int, shape: tuple[int, ...], pages: int) -> None:
    """Refuse a TIFF whose header declares more voxels than this machine's memory holds: a
    damaged or crafted header (1.5 KB declaring 63 GiB) failed with a bare MemoryError
    naming no file, which ``on_error="skip"`` could not leave out."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not on this system: tifffile decides
        return
    if declared > memory:
        what = f"{pages} pages of {shape}" if pages > 1 else f"{shape}"
        raise DecodeError(
            path,
            f"its header declares a volume of {what} ({declared / 2**30:.1f} GiB), more than "
            f"this machine's memory ({memory / 2**30:.1f} GiB): a damaged header, or a volume "
            "to cut into smaller files before reading",
        )


def read_head(path: str) -> bytes:
    """The first 8 bytes of a file (fewer if it is shorter)."""
    try:
        with open_regular(path) as f:
            return f.read(8)
    except OSError as exc:
        raise unreadable(path, exc) from None


def check_volume_dtype(
    vol: np.ndarray, dtype: np.dtype, path: str | os.PathLike[str], *, taken: bool = False
) -> None:
    """Refuse casts that would change values: fractions to integers, values out of range;
    ``taken`` (``dtype`` is the set's first file's, not asked for): floats rounded too."""
    path = os.fspath(path)
    kind = vol.dtype.kind
    if kind not in "biuf":
        raise DecodeError(
            path, f"unsupported volume dtype {vol.dtype}; expected integers or floats"
        )
    if taken and kind == "f" and dtype.kind == "f" and vol.dtype.itemsize > dtype.itemsize:
        _check_float_output(vol, dtype, path)  # none beyond its largest value, said so
        _check_unrounded(vol, dtype, path)
    if dtype.kind == "f" and kind in "iu" and vol.dtype.itemsize >= dtype.itemsize:
        # numpy calls int64 -> float64 safe, but float64 holds whole numbers exactly only
        # up to 2**53 (an ID or a timestamp volume would be rounded)
        _check_float_output(vol, dtype, path)
        return
    if np.can_cast(vol.dtype, dtype):
        return
    if dtype.kind == "f":
        _check_float_output(vol, dtype, path)
        return
    lo, hi = vol.min(), vol.max()
    if kind == "f":
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise DecodeError(
                path,
                f"the volume holds non-finite values (NaN or infinity) that {dtype.name} "
                f"cannot hold; pass dtype='{vol.dtype.name}' (the source's own)",
            )
        fraction = _first_fraction(vol)
        if fraction is not None:
            raise DecodeError(
                path,
                f"the volume holds fractional values (e.g. {fraction}) that {dtype.name} "
                f"would round; pass dtype='{vol.dtype.name}' (the source's own)"
                + ("" if vol.dtype.name == "float32" else " or 'float32'"),
            )
    lo_i, hi_i = int(lo), int(hi)
    info = np.iinfo(dtype)
    if lo_i < info.min or hi_i > info.max:
        raise DecodeError(
            path,
            f"volume values span {lo_i}..{hi_i}, outside the {dtype.name} range "
            f"{info.min}..{info.max}; pass dtype='{_fitting(lo_i, hi_i)}'",
        )


def _check_float_output(vol: np.ndarray, dtype: np.dtype, path: str) -> None:
    """A float ``dtype`` narrower than the volume's: no value may become infinity, or 0 (other
    than 0: float32 holds nothing below 1.4e-45), and integer values must be whole numbers
    it holds exactly (float16 rounds 2049 to 2048)."""
    info = np.finfo(dtype)
    if vol.dtype.kind == "f":
        for plane in vol:  # a plane at a time: no second copy of a large volume
            beyond = np.isfinite(plane) & (np.abs(plane) > info.max)
            if beyond.any():
                raise DecodeError(
                    path,
                    f"the volume holds {float(plane[beyond].flat[0])!r}, beyond {dtype.name}'s "
                    f"largest value {float(info.max)!r}: it would become infinity; pass "
                    f"dtype='{vol.dtype.name}' (the source's own)",
                )
            vanished = (plane != 0) & (plane.astype(dtype) == 0)
            if vanished.any():
                raise DecodeError(
                    path,
                    f"the volume holds {float(plane[vanished].flat[0])!r}, below "
                    f"{dtype.name}'s smallest value {float(info.smallest_subnormal)!r}: it "
                    f"would become 0; pass dtype='{vol.dtype.name}' (the source's own)",
                )
        return
    lo, hi = int(vol.min()), int(vol.max())
    exact = 2 ** (info.nmant + 1)
    if lo < -exact or hi > exact:
        raise DecodeError(
            path,
            f"volume values span {lo}..{hi}; {dtype.name} holds whole numbers exactly only "
            f"within -{exact}..{exact} (beyond, they would be rounded"
            + (" or become infinity" if max(-lo, hi) > float(info.max) else "")
            + f"); pass dtype='{vol.dtype.name}' (the source's own)"
            + (f" or '{wider}'" if (wider := _wider_float(dtype)) else ""),
        )


def _check_unrounded(vol: np.ndarray, dtype: np.dtype, path: str) -> None:
    """A set whose dtype was taken from its first file (narrower floats than this one's):
    refuse values that dtype would round — the set's dtype was never asked for."""
    for plane in vol:  # a plane at a time: no second copy of a large volume
        back = plane.astype(dtype).astype(vol.dtype)
        changed = (back != plane) & ~(np.isnan(plane) & np.isnan(back))
        if changed.any():
            value = plane[changed].flat[0]
            raise DecodeError(
                path,
                f"the set's dtype, {dtype.name}, was taken from its first file, and this "
                f"file holds {vol.dtype.name} values it would round (e.g. {float(value)!r} "
                f"to {float(np.asarray(value).astype(dtype))!r}); pass dtype="
                f"'{vol.dtype.name}' to keep every file's values (or dtype='{dtype.name}' "
                "to round them)",
            )


def _wider_float(dtype: np.dtype) -> str | None:
    """The next wider float than ``dtype``, if any (float16 -> float32 -> float64)."""
    order = ["float16", "float32", "float64"]
    name = np.dtype(dtype).name
    return order[order.index(name) + 1] if name in order[:-1] else None


def _first_fraction(vol: np.ndarray) -> float | None:
    """A value of a floating-point volume that is not a whole number, or None."""
    for plane in vol:  # a plane at a time: no second copy of a large volume
        bad = plane != np.round(plane)
        if bad.any():
            return float(plane[bad].flat[0])
    return None


def _fitting(lo: int, hi: int) -> str:
    """The narrowest integer dtype that holds ``lo..hi`` (float32 did not: it holds whole
    numbers exactly only up to 2**24, and was itself refused for the values it was named for)."""
    for name in ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64"):
        info = np.iinfo(name)
        if info.min <= lo and hi <= info.max:
            return name
    return "float64"


def _zoom(vol: np.ndarray, dst: np.ndarray) -> None:
    """Resize a 3-D array linearly to exactly ``dst.shape`` (float), anti-aliased when shrinking."""
    from scipy import ndimage  # only volumes need it

    factors = [n / t for n, t in zip(vol.shape, dst.shape, strict=True)]
    src = np.asarray(vol, dtype=dst.dtype)
    sigma = [max(0.0, (f - 1) / 2) for f in factors]
    if any(sigma):
        src = ndimage.gaussian_filter(src, sigma, mode="nearest")
    # output voxel o samples input coordinate (o + 0.5) * f - 0.5: pixel-area aligned
    # grids (zoom's grid_mode=True), with the output shape fixed by ``dst``
    ndimage.affine_transform(
        src,
        factors,
        offset=[(f - 1) / 2 for f in factors],
        output_shape=dst.shape,
        output=dst,
        order=1,
        mode="nearest",
    )
