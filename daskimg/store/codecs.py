"""Store: the codec chains daskimg writes, and their fast decoding.

Every chain ends with Zarr v3's ``crc32c`` codec, so a damaged chunk is an error, never
a black image. Blosc is used with *no* bit-shuffle for 1-byte samples: zarr-python's
default bit-shuffle decompressed about 4x slower on photo pixels and gained nothing.

=========  ==========================================  ===================================
name       chain (inside each chunk)                   when
=========  ==========================================  ===================================
``lz4``    bytes -> blosc(lz4, clevel 5) -> crc32c     default: fastest to read, ~1.07x
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

from typing import Any, cast

import crc32c
import numpy as np
from numcodecs import blosc
from zarr.codecs import BloscCodec, Crc32cCodec

from ..errors import ChecksumError

__all__ = [
    "CODECS",
    "DEFAULT_CODEC",
    "check_crc",
    "check_crc_of",
    "compressors",
    "decode_chunk",
    "decompress_into",
    "fast_chain",
    "parse_codec",
    "serializer",
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


def fast_chain(codecs_meta: list[dict[str, Any]]) -> str | None:
    """``"blosc"`` or ``"raw"`` if a chunk's codec chain is one this module decodes directly.

    ``codecs_meta`` is the ``codecs`` list of the inner chunk (from ``zarr.json``).
    Anything else (another writer's store) returns None and is read through zarr.
    """
    names = [c.get("name") for c in codecs_meta]
    if names == ["daskimg.jpeg", "crc32c"]:
        return "jpeg"
    if not names or names[0] != "bytes" or names[-1] != "crc32c":
        return None
    endian = (codecs_meta[0].get("configuration") or {}).get("endian", "little")
    middle = names[1:-1]
    if middle == ["blosc"]:
        kind = "blosc"
    elif middle == []:
        kind = "raw"
    else:
        return None
    return kind if endian == "little" or np.little_endian is False else None


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
            "and re-create it from the source"
        )


def decompress_into(body: memoryview, out: np.ndarray, where: str) -> None:
    """Blosc-decompress a checked chunk body into ``out`` (C-contiguous, exact size)."""
    dest = out.reshape(-1).view(np.uint8)
    nbytes = int.from_bytes(body[4:8], "little") if len(body) >= 16 else -1  # blosc header
    if nbytes != dest.nbytes:
        raise ChecksumError(
            f"{where}: chunk decompresses to {nbytes} bytes, expected {dest.nbytes}"
        )
    try:
        blosc.decompress(body, dest)
    except RuntimeError as e:  # blosc's error for corrupt input
        raise ChecksumError(f"{where}: cannot decompress ({e})") from e


def decode_chunk(data: Any, kind: str, out: np.ndarray, where: str) -> None:
    """Check the crc32c of an encoded chunk and decode it into ``out`` (exact size)."""
    body = check_crc(data, where)
    if kind == "jpeg":
        from .jpeg import decode_chunk_into

        decode_chunk_into(body, out, where)
        return
    if kind == "raw":
        dest = out.reshape(-1).view(np.uint8)
        if len(body) != dest.nbytes:
            raise ChecksumError(f"{where}: chunk holds {len(body)} bytes, expected {dest.nbytes}")
        dest[:] = np.frombuffer(body, dtype=np.uint8)
    else:
        decompress_into(body, out, where)
