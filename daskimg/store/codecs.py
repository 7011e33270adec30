"""Store: the codec chains daskimg writes, and their fast decoding.

Every chain ends with Zarr v3's ``crc32c`` codec, so a damaged chunk is an error, never
a black image. A Blosc-lz4 chunk that compressing would shrink by less than an eighth is
stored uncompressed inside its Blosc frame (:func:`daskimg.store.encode.blosc_encode`). Blosc is used with *no* bit-shuffle for 1-byte samples: zarr-python's
default bit-shuffle decompressed about 4x slower on photo pixels and gained nothing.

=========  ==========================================  ===================================
name       chain (inside each chunk)                   when
=========  ==========================================  ===================================
``lz4``    bytes -> blosc(lz4, clevel 5) -> crc32c     default: fastest to read; photos
                                                       ~1.04x (chunks that lz4 would shrink
                                                       by less than 1/8 are kept raw in
                                                       their Blosc frame)
``zstd``   bytes -> blosc(zstd, clevel 3) -> crc32c    smaller (~1.3x on photos), slower
``none``   bytes -> crc32c                             warm data in the page cache: no
                                                       decompression at all
``jpeg``   daskimg.jpeg (q90, per image) -> crc32c     lossy, ~10x smaller on photos; uint8
                                                       images with 1 or 3 channels only
=========  ==========================================  ===================================

``"jpeg:Q"`` picks the JPEG quality (1-100; ``"jpeg"`` is ``"jpeg:90"``): lower is smaller
and decodes faster (on 224x224 photos q75 is ~1.6x smaller than q90, 3 dB lower PSNR).
"""

from __future__ import annotations

import functools
import struct
from typing import Any, cast

import crc32c
import numcodecs
import numpy as np
from numcodecs import VLenUTF8, Zstd, blosc
from zarr.codecs import BloscCodec, Crc32cCodec

from ..errors import ChecksumError, UnsupportedStoreError

__all__ = [
    "CODECS",
    "DEFAULT_CODEC",
    "blosc_header",
    "canonical_codec",
    "check_crc",
    "check_crc_of",
    "check_text_length",
    "compressors",
    "decode_chunk",
    "decompress_into",
    "flat_bytes",
    "parse_codec",
    "raw_frame",
    "serializer",
    "vlen_decode",
    "zstd_decode",
]

CODECS = ("lz4", "zstd", "none", "jpeg")
DEFAULT_CODEC = "lz4"
JPEG_QUALITY = 90  # ``"jpeg"`` without ``:Q``


def parse_codec(codec: str | None) -> tuple[str, int | None]:
    """``(name, JPEG quality or None)`` of a codec spec: a name of ``CODECS`` or ``"jpeg:Q"``.

    Examples
    --------
    >>> parse_codec("jpeg:80")
    ('jpeg', 80)
    >>> parse_codec(None)
    ('lz4', None)
    """
    codec = DEFAULT_CODEC if codec is None else codec
    if not isinstance(codec, str):
        raise ValueError(f"codec must be a string such as 'lz4' or 'jpeg:85'; got {codec!r}")
    name, sep, q = codec.partition(":")
    if name not in CODECS or (sep and name != "jpeg"):
        raise ValueError(
            f"codec must be one of {', '.join(CODECS)}, or 'jpeg:Q' with Q the JPEG quality "
            f"1-100; got {codec!r}"
        )
    if name != "jpeg":
        return name, None
    if not sep:
        return name, JPEG_QUALITY
    if not (q.isascii() and q.isdigit()) or not 1 <= int(q) <= 100:
        raise ValueError(f"codec {codec!r}: the JPEG quality after ':' must be an integer 1-100")
    return name, int(q)


def canonical_codec(codec: str | None) -> str | None:
    """``codec`` as a store records it: a name of ``CODECS``, ``"jpeg:Q"`` with its quality
    (``"jpeg"`` is ``"jpeg:90"``, ``"jpeg:05"`` is ``"jpeg:5"``); None stays None (the
    default). Anything else, ``""`` included, is a ValueError.

    Examples
    --------
    >>> canonical_codec("jpeg"), canonical_codec("lz4"), canonical_codec(None)
    ('jpeg:90', 'lz4', None)
    """
    if codec is None:
        return None
    name, quality = parse_codec(codec)
    return name if quality is None else f"{name}:{quality}"


def compressors(codec: str | None, dtype: np.dtype[Any]) -> list[Any]:
    """Zarr v3 bytes-to-bytes codecs for ``codec`` (always ending with ``crc32c``)."""
    codec, _ = parse_codec(codec)
    crc = Crc32cCodec()
    if codec in ("none", "jpeg"):  # jpeg is the array->bytes step (see serializer), then crc32c
        return [crc]
    # byte-shuffle helps multi-byte numbers (features, labels); for uint8 it is a no-op
    shuffle = "noshuffle" if np.dtype(dtype).itemsize == 1 else "shuffle"
    level = 5 if codec == "lz4" else 3
    return [
        BloscCodec(
            cname=cast(Any, codec),
            clevel=level,
            shuffle=cast(Any, shuffle),
            typesize=np.dtype(dtype).itemsize,
        ),
        crc,
    ]


def serializer(codec: str | None) -> Any:
    """Zarr v3 array-to-bytes codec for ``codec``: per-image JPEG for ``"jpeg[:Q]"``, else zarr's default."""
    _, quality = parse_codec(codec)
    if quality is not None:  # only JPEG has a quality
        from .jpeg import JpegCodec, register

        register()
        return JpegCodec(quality=quality)
    return "auto"


def check_crc(data: Any, where: str) -> memoryview:
    """Check a chunk's trailing crc32c (little-endian, Zarr v3's codec); return the body.

    ``data`` is any buffer (bytes, bytearray, numpy array); nothing is copied.
    """
    view = memoryview(data).cast("B")
    if len(view) < 4:
        raise ChecksumError(f"{where}: chunk is {len(view)} bytes, too short to hold its checksum")
    body = view[:-4]
    check_crc_of(body, view[-4:], where)
    return body


def check_crc_of(body: Any, stored: Any, where: str) -> None:
    """Check that ``body`` (any buffer) has the little-endian crc32c ``stored`` (4 bytes)."""
    if crc32c.crc32c(body) != int.from_bytes(bytes(stored), "little"):
        raise ChecksumError(
            f"{where}: checksum mismatch (the chunk is damaged); run `daskimg verify` on the store "
            "and re-create it from the source (to_zarr(..., overwrite=True); daskimg ingest "
            "--overwrite, since a re-run keeps a store written from the same files)"
        )


def blosc_header(body: Any, expected: int, where: str) -> None:
    """Check a Blosc chunk's framing against its real length before anything is decompressed.

    Blosc trusts the sizes in its 16-byte header; a chunk whose header lies (with a valid
    checksum, e.g. crafted) would make it read past the chunk. So: the compressed size
    must be the chunk's length, the decompressed size what the array needs, a chunk
    stored uncompressed ("memcpyed") exactly header + data, and the block offsets
    inside the chunk.
    """
    view = memoryview(body).cast("B")
    if len(view) < 16:
        raise ChecksumError(f"{where}: Blosc chunk is {len(view)} bytes, shorter than its header")
    version, flags = view[0], view[2]
    nbytes, blocksize, cbytes = struct.unpack_from("<III", view, 4)
    problem = None
    if version not in (1, 2):
        problem = f"unknown Blosc format version {version}"
    elif cbytes != len(view):
        problem = f"its header says {cbytes} compressed bytes, the chunk holds {len(view)}"
    elif nbytes != expected:
        problem = f"it decompresses to {nbytes} bytes, the array needs {expected}"
    elif flags & 0x02:  # stored uncompressed
        if cbytes != nbytes + 16:
            problem = f"stored uncompressed, but holds {cbytes - 16} bytes for {nbytes}"
        elif nbytes and not (view[3] and 0 < blocksize <= nbytes):
            problem = f"type size {view[3]}, block size {blocksize} for {nbytes} bytes"
    elif nbytes:
        if blocksize <= 0 or blocksize > nbytes:
            problem = f"block size {blocksize} for {nbytes} bytes"
        else:
            nblocks = -(-nbytes // blocksize)
            if 16 + 4 * nblocks > cbytes:
                problem = f"{nblocks} blocks do not fit in {cbytes} bytes"
            else:
                starts = np.frombuffer(view, dtype="<i4", count=nblocks, offset=16)
                if (starts < 16 + 4 * nblocks).any() or (starts >= cbytes).any():
                    problem = "a block starts outside the chunk"
    if problem is not None:
        raise ChecksumError(f"{where}: damaged Blosc chunk ({problem}); re-create the store")


def raw_frame(head: Any, expected: int) -> bool:
    """Whether ``head`` (a Blosc chunk's first 16 bytes) is the header of ``expected`` bytes
    stored uncompressed in the frame ("memcpyed"): the rows then follow it as they are."""
    view = memoryview(head).cast("B")
    # Blosc 1's format version 2, as numcodecs writes; flag 0x08 (unused by Blosc 1, which
    # refuses a frame with it) set: not such a frame, left to read_chunk to name
    if len(view) != 16 or view[0] != 2 or not view[2] & 0x02 or view[2] & 0x08:
        return False
    nbytes, blocksize, cbytes = struct.unpack_from("<III", view, 4)
    # and what Blosc itself checks before it copies such a frame out (a type size, a
    # block size within the data): a header it refuses is refused here too
    return bool(
        nbytes == expected and cbytes == expected + 16 and view[3] and 0 < blocksize <= nbytes
    )


def flat_bytes(a: np.ndarray) -> np.ndarray:
    """``a``'s bytes as a flat view to write into; never a copy, which would be filled
    instead of ``a`` (``reshape`` copies an array that is not contiguous, and ``a[i]`` of a
    1-D array is a numpy scalar: slice ``a[i:i + 1]``)."""
    if not a.flags.c_contiguous:
        raise ValueError(
            f"a {a.shape} array to read into must be C-contiguous (a slice along axis 0 of "
            "a C-ordered array); pass np.ascontiguousarray(out) or a fresh np.empty"
        )
    return a.reshape(-1).view(np.uint8)


def decompress_into(body: memoryview, out: np.ndarray, where: str) -> None:
    """Blosc-decompress a checked chunk body into ``out`` (C-contiguous, exact size)."""
    dest = flat_bytes(out)
    blosc_header(body, dest.nbytes, where)
    try:
        blosc.decompress(body, dest)
    except RuntimeError as e:  # blosc's error for corrupt input
        raise ChecksumError(f"{where}: cannot decompress ({e})") from e


#: the longest string a chunk of strings may hold (bytes): bounds what a Zstandard frame of
#: strings may claim, so a crafted header cannot make daskimg allocate terabytes
MAX_STRING_BYTES = 65536


def check_text_length(name: str, row: int, text: str) -> None:
    """Refuse a text value longer than a reader accepts (:data:`MAX_STRING_BYTES` of UTF-8):
    written, it would read back as a damaged chunk. Shared by ``to_zarr`` and
    :class:`~daskimg.ArrayWriter`."""
    if len(text) * 4 <= MAX_STRING_BYTES:
        return  # at most 4 bytes a character: short enough without encoding it
    n = len(text.encode("utf-8", "replace"))
    if n > MAX_STRING_BYTES:
        raise ValueError(
            f"array {name!r}, row {row}: a text value of {n:,} bytes; a store keeps at most "
            f"{MAX_STRING_BYTES:,} bytes per value (longer text belongs in files, with their "
            "paths stored)"
        )


def zstd_content_size(body: Any, where: str, limit: int) -> int:
    """The decompressed size a Zstandard frame declares (declared, and at most ``limit``)."""
    view = memoryview(body).cast("B")
    if len(view) < 6 or bytes(view[:4]) != b"\x28\xb5\x2f\xfd":
        raise ChecksumError(f"{where}: not a Zstandard frame; the chunk is damaged")
    fhd = view[4]
    fcs_flag, single, dict_flag = fhd >> 6, (fhd >> 5) & 1, fhd & 3
    pos = 5 + (0 if single else 1) + (0, 1, 2, 4)[dict_flag]
    width = (1 if single else 0, 2, 4, 8)[fcs_flag]
    if width == 0 or len(view) < pos + width:
        raise ChecksumError(f"{where}: Zstandard frame without its content size; damaged")
    size = int.from_bytes(view[pos : pos + width], "little") + (256 if width == 2 else 0)
    if size > limit:
        raise ChecksumError(
            f"{where}: Zstandard frame claims {size} bytes, more than the chunk can hold "
            f"({limit}); the chunk is damaged"
        )
    return size


def zstd_decode(body: Any, where: str, limit: int, expected: int | None = None) -> bytes:
    """Decompress a chunk of zarr's ``zstd`` codec, its sizes checked first.

    A frame that declares its size: one frame of that size, which must be ``expected``
    (the size the array needs, for fixed-size values) and at most ``limit``. A frame
    without its content size (a streaming encoder's), for fixed-size values: decompressed
    into a buffer of the size the array needs, as plain zarr reads it, numcodecs checking
    the size it gives (a streaming decompression; for a frame that declares its size it
    hands back the whole buffer given, however few bytes it wrote)."""
    if expected is not None and not _zstd_size_declared(body):
        # numcodecs decodes such a frame (and frames after it) checking the total size it
        # gives; a frame that declares its size is checked against it, below, as before
        # (numcodecs hands back the whole buffer given, even when fewer bytes were written)
        out = np.empty(expected, dtype=np.uint8)
        try:
            data = memoryview(Zstd().decode(bytes(body), out=out)).cast("B")
        except (RuntimeError, ValueError) as e:
            if _reads_unsized_frames():
                raise ChecksumError(
                    f"{where}: cannot decompress ({e}); the chunk is damaged"
                ) from e
            raise UnsupportedStoreError(
                f"{where}: a Zstandard frame without its content size (a streaming "
                f"encoder's), which numcodecs {numcodecs.__version__} cannot decompress "
                f"({e}); a newer numcodecs can (pip install -U numcodecs)"
            ) from e
        if len(data) != expected:
            raise ChecksumError(
                f"{where}: chunk decompresses to {len(data)} bytes, the array needs "
                f"{expected}; damaged"
            )
        return bytes(data)
    size = zstd_content_size(body, where, limit)
    if expected is not None and size != expected:
        raise ChecksumError(
            f"{where}: chunk decompresses to {size} bytes, the array needs {expected}; damaged"
        )
    # into a buffer of the size the frame declares: more frames after it (a crafted chunk of
    # a few hundred KB unpacked to 8 GiB) overflow it and fail, nothing more is allocated
    out = np.empty(size, dtype=np.uint8)
    try:
        data = memoryview(Zstd().decode(bytes(body), out=out)).cast("B")
    except (RuntimeError, ValueError) as e:
        raise ChecksumError(f"{where}: cannot decompress ({e}); the chunk is damaged") from e
    if len(data) != size:
        raise ChecksumError(f"{where}: decompressed {len(data)} bytes, expected {size}; damaged")
    return bytes(data)


@functools.cache
def _reads_unsized_frames() -> bool:
    """Whether this numcodecs decompresses a Zstandard frame without its content size (into
    a buffer of known size; numcodecs 0.16.0 did not, later ones do): a frame of 16 zero
    bytes, its header a streaming encoder's (no content size, a window of 1 KiB)."""
    # magic, frame header (no content size, no checksum), window descriptor (1 KiB), then
    # one last block, run-length: 16 times the byte 0
    frame = bytes.fromhex("28b52ffd000083000000")
    try:
        out = np.empty(16, dtype=np.uint8)
        got = memoryview(Zstd().decode(frame, out=out)).cast("B")
    except (RuntimeError, ValueError):
        return False
    return bytes(got) == bytes(16)


def _zstd_size_declared(body: Any) -> bool:
    """Whether ``body`` starts with a Zstandard frame whose header declares its content size."""
    view = memoryview(body).cast("B")
    if len(view) < 5 or bytes(view[:4]) != b"\x28\xb5\x2f\xfd":
        return True  # not a frame at all: damage, said as such
    fhd = view[4]
    return bool(fhd >> 6) or bool((fhd >> 5) & 1)


_DAMAGED_CHUNK = (
    "the chunk is damaged — re-create the store (daskimg verify lists every damaged chunk)"
)


def vlen_decode(data: Any, count: int, where: str) -> np.ndarray:
    """Strings of a ``vlen-utf8`` chunk (zarr's string codec), exactly ``count`` of them."""
    view = memoryview(data).cast("B")
    if len(view) < 4 or int.from_bytes(view[:4], "little") != count:
        got = int.from_bytes(view[:4], "little") if len(view) >= 4 else "no"
        raise ChecksumError(
            f"{where}: string chunk holds {got} items, expected {count}; {_DAMAGED_CHUNK}"
        )
    try:
        out = VLenUTF8().decode(bytes(view))
    except (ValueError, RuntimeError, UnicodeDecodeError) as e:
        raise ChecksumError(
            f"{where}: string chunk cannot be decoded ({e}); {_DAMAGED_CHUNK}"
        ) from e
    if len(out) != count:
        raise ChecksumError(
            f"{where}: string chunk holds {len(out)} items, expected {count}; {_DAMAGED_CHUNK}"
        )
    return np.asarray(out, dtype=object)


def decode_chunk(data: Any, kind: str, out: np.ndarray, where: str) -> None:
    """Check the crc32c of an encoded inner chunk and decode it into ``out`` (its exact shape).

    ``kind`` is an :class:`~daskimg.store.layout.ArrayLayout`'s: ``raw``, ``blosc``,
    ``zstd``, ``jpeg``, ``vlen`` (zstd-compressed strings) or ``vlen-raw``.
    """
    body = check_crc(data, where)
    if kind == "jpeg":
        from .jpeg import decode_chunk_into

        decode_chunk_into(body, out, where)
        return
    if kind == "vlen":
        # and a quarter of this machine's memory: a chunk of a million rows may claim 65 GB
        # (decoding copies it; a claim past memory was a bare MemoryError, or the OOM killer)
        from .format import memory_bytes  # (format imports this module)

        limit = min(4 + out.size * (4 + MAX_STRING_BYTES), (memory_bytes() or 2**62) // 4)
        out[...] = vlen_decode(zstd_decode(body, where, limit), out.size, where).reshape(out.shape)
        return
    if kind == "vlen-raw":  # a store plain zarr wrote: strings without a compressor
        out[...] = vlen_decode(body, out.size, where).reshape(out.shape)
        return
    if kind == "vlen-other":  # plain zarr's blosc strings: not damage, not read here
        raise UnsupportedStoreError(
            f"{where}: strings compressed with blosc; daskimg reads text arrays uncompressed "
            "or compressed with zstd (as it writes them). Plain zarr reads this array; to "
            "read it with daskimg, write it again with zstd or no compressor"
        )
    dest = flat_bytes(out)
    if kind == "raw":
        if len(body) != dest.nbytes:
            raise ChecksumError(f"{where}: chunk holds {len(body)} bytes, expected {dest.nbytes}")
        dest[:] = np.frombuffer(body, dtype=np.uint8)
    elif kind == "zstd":
        data = zstd_decode(body, where, dest.nbytes, expected=dest.nbytes)
        dest[:] = np.frombuffer(data, dtype=np.uint8)
    elif kind == "blosc":
        decompress_into(body, out, where)
    else:
        raise ValueError(f"unknown chunk kind {kind!r}")
