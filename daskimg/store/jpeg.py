"""Store: a lossy JPEG codec for image arrays, for when disk matters more than exact pixels.

Photo pixels compress only about 1.1-1.4x losslessly; JPEG at quality 90 makes them
about 10x smaller, at roughly 37 dB PSNR. :class:`JpegCodec` is a Zarr v3 array-to-bytes
codec (name ``"daskimg.jpeg"``) that encodes every sample of a chunk, one image per
index along axis 0, as its own baseline JPEG (4:2:0 chroma subsampling, like Pillow,
OpenCV and FFCV). daskimg follows it with Zarr's ``crc32c`` codec, so damage is an
error, never a grey image. Only ``uint8`` arrays of shape ``(N, H, W, 1)`` or
``(N, H, W, 3)`` are accepted.

Decoding uses libjpeg-turbo through ``simplejpeg`` with the accurate integer DCT (the
same pixels as Pillow's decode of the same bitstream), releases the GIL and writes each
image straight into the caller's array: :func:`decode_chunk_into` is the loader's path.

Encoded chunk layout (all integers little-endian; this is part of the on-disk format)::

    offset       size  field
    0            4     magic b"DIJP"
    4            2     format version, uint16 (1)
    6            2     reserved, uint16, written as 0
    8            4     n, uint32: samples in the chunk (the chunk's length along axis 0)
    12           4*n   byte length of each sample's JPEG bitstream, uint32
    12 + 4*n     ...   the n JPEG bitstreams (JFIF, SOI to EOI), back to back, in order

The chunk is exactly ``12 + 4*n + sum(lengths)`` bytes. Zarr encodes the last chunk of
an array at full length, padded with the fill value, so its header counts the padding
samples too. Writes that cover only part of an existing chunk make Zarr decode and
re-encode it, which costs the old samples a second generation of JPEG loss: write
whole chunks.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import simplejpeg
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.chunk_grids import RegularChunkGrid
from zarr.core.common import parse_named_configuration

from ..errors import ChecksumError, FormatVersionError

if TYPE_CHECKING:
    from typing import Self

    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer, NDBuffer
    from zarr.core.chunk_grids import ChunkGrid
    from zarr.core.common import JSON
    from zarr.core.dtype.wrapper import TBaseDType, TBaseScalar, ZDType

__all__ = ["CODEC_NAME", "JpegCodec", "decode_chunk_into", "encode_chunk", "register"]

#: the codec's name in ``zarr.json``
CODEC_NAME = "daskimg.jpeg"
MAGIC = b"DIJP"
VERSION = 1
_HEADER = struct.Struct("<4sHHI")  # magic, version, reserved, n
_MAX_SIDE = 65500  # the largest width or height a JPEG can hold
_COLORSPACE = {1: "GRAY", 3: "RGB"}


def _check_quality(quality: object) -> int:
    """``quality`` as an int in 1..100, or a ValueError saying so."""
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)):
        raise ValueError(f"JPEG quality must be an integer from 1 to 100; got {quality!r}")
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be from 1 to 100; got {quality}")
    return int(quality)


def check_image_shape(shape: tuple[int, ...], dtype: np.dtype[Any], what: str) -> None:
    """Refuse anything but uint8 ``(N, H, W, 1|3)`` with a JPEG-sized ``H`` and ``W``."""
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] not in _COLORSPACE:
        raise ValueError(
            f"the JPEG codec stores uint8 images of shape (N, H, W, 1) or (N, H, W, 3); "
            f"{what} is {dtype} with shape {tuple(shape)}. Use codec 'lz4' (lossless) for "
            "other data."
        )
    if not (1 <= shape[1] <= _MAX_SIDE and 1 <= shape[2] <= _MAX_SIDE):
        raise ValueError(
            f"a JPEG image is 1 to {_MAX_SIDE} pixels high and wide; {what} has samples of "
            f"{shape[1]}x{shape[2]}. Use codec 'lz4' (lossless) for these."
        )


def encode_chunk(arr: np.ndarray, quality: int) -> bytes:
    """Encode a chunk of images, one JPEG per sample along axis 0, in the layout above.

    Parameters
    ----------
    arr : numpy.ndarray
        ``uint8`` images of shape ``(n, H, W, 1)`` or ``(n, H, W, 3)``.
    quality : int
        JPEG quality, 1 to 100.

    Returns
    -------
    bytes
        The encoded chunk (header and bitstreams; no checksum).

    Examples
    --------
    >>> images = np.zeros((2, 16, 16, 3), np.uint8)
    >>> data = encode_chunk(images, 90)
    >>> data[:4]
    b'DIJP'
    >>> out = np.empty_like(images)
    >>> decode_chunk_into(memoryview(data), out, "example")
    >>> int(out.max())
    0
    """
    quality = _check_quality(quality)
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"expected a numpy array; got {type(arr).__name__}")
    check_image_shape(arr.shape, arr.dtype, "the chunk")
    arr = np.ascontiguousarray(arr)
    colorspace = _COLORSPACE[arr.shape[-1]]
    streams = [
        simplejpeg.encode_jpeg(
            image, quality=quality, colorspace=colorspace, colorsubsampling="420"
        )
        for image in arr
    ]
    lengths = np.array([len(s) for s in streams], dtype="<u4")
    header = _HEADER.pack(MAGIC, VERSION, 0, len(streams))
    return b"".join([header, lengths.tobytes(), *streams])


def decode_chunk_into(body: memoryview, out: np.ndarray, where: str) -> None:
    """Decode an encoded chunk (checksum already checked and removed) into ``out``.

    Each JPEG is decoded straight into ``out[i]``, without the GIL and without copies.
    ``out`` may be shorter than the chunk (the array's last, padded chunk): only its
    first ``len(out)`` samples are decoded.

    Parameters
    ----------
    body : memoryview
        The chunk's bytes as :func:`encode_chunk` wrote them.
    out : numpy.ndarray
        A C-contiguous ``uint8`` array of shape ``(m, H, W, 1|3)``, ``m`` at most the
        chunk's sample count.
    where : str
        Names the chunk in error messages (store path, array, chunk number).

    Raises
    ------
    daskimg.errors.ChecksumError
        If the chunk is truncated, corrupt or holds images of another size.
    daskimg.errors.FormatVersionError
        If a newer daskimg wrote the chunk.
    ValueError
        If ``out`` is not a C-contiguous uint8 image array.

    Examples
    --------
    >>> data = encode_chunk(np.full((3, 8, 8, 1), 200, np.uint8), 90)
    >>> out = np.empty((2, 8, 8, 1), np.uint8)  # the first 2 of 3 samples
    >>> decode_chunk_into(memoryview(data), out, "example")
    >>> int(out[1, 4, 4, 0])
    200
    """
    check_image_shape(out.shape, out.dtype, "out")
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous")
    chunk = parse_chunk(body, where)
    m = out.shape[0]
    if m > len(chunk):
        raise ChecksumError(
            f"{where}: JPEG chunk holds {len(chunk)} samples, expected at least {m}"
        )
    chunk.decode_into(range(m), out, range(m))


@dataclass(frozen=True)
class JpegChunk:
    """An encoded chunk, parsed: each sample's JPEG bitstream, to decode into any array row.

    The loader decodes each sample straight into its row of a batch (no copy).
    """

    view: memoryview
    offsets: list[int]  # sample i is view[offsets[i] : offsets[i + 1]]
    where: str

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def decode_into(self, rows: Any, dest: np.ndarray, at: Any) -> None:
        """Decode samples ``rows`` into ``dest[at]`` (uint8 ``(m, H, W, 1|3)``, rows C-contiguous)."""
        colorspace = _COLORSPACE[dest.shape[-1]]
        offsets, view, where = self.offsets, self.view, self.where
        for i, k in zip(np.asarray(rows).tolist(), np.asarray(at).tolist(), strict=True):
            try:
                got = simplejpeg.decode_jpeg(
                    view[offsets[i] : offsets[i + 1]], colorspace=colorspace, buffer=dest[k]
                )
            except ValueError as e:  # simplejpeg's error for a corrupt or truncated JPEG
                raise ChecksumError(
                    f"{where}: JPEG sample {i} cannot be decoded ({e}); the chunk is damaged — "
                    "re-create the store"
                ) from e
            if got.shape != dest.shape[1:]:
                raise ChecksumError(
                    f"{where}: JPEG sample {i} is {got.shape[0]}x{got.shape[1]}, expected "
                    f"{dest.shape[1]}x{dest.shape[2]}; the chunk is damaged — re-create the store"
                )


def parse_chunk(body: Any, where: str) -> JpegChunk:
    """Check an encoded chunk's header and lengths (checksum already checked); nothing is decoded."""
    view = memoryview(body).cast("B")
    if len(view) < _HEADER.size:
        raise ChecksumError(
            f"{where}: JPEG chunk is {len(view)} bytes, too short for its header; "
            "the chunk is damaged — re-create the store"
        )
    magic, version, _, n = _HEADER.unpack_from(view)
    if magic != MAGIC:
        raise ChecksumError(
            f"{where}: not a {CODEC_NAME} chunk (starts with {bytes(magic)!r}, "
            f"expected {MAGIC!r}); the chunk is damaged — re-create the store"
        )
    if version > VERSION:
        raise FormatVersionError(
            f"{where}: {CODEC_NAME} chunk format version {version}; this daskimg reads "
            f"up to {VERSION}. Upgrade daskimg."
        )
    start = _HEADER.size + 4 * n
    if len(view) < start:
        raise ChecksumError(
            f"{where}: JPEG chunk header lists {n} samples but the chunk is {len(view)} bytes; "
            "the chunk is damaged — re-create the store"
        )
    ends = np.cumsum(np.frombuffer(view, dtype="<u4", count=n, offset=_HEADER.size), dtype=np.int64)
    total = start + (int(ends[-1]) if n else 0)
    if total != len(view):
        raise ChecksumError(
            f"{where}: JPEG chunk is {len(view)} bytes, its header says {total}; "
            "the chunk is damaged — re-create the store"
        )
    return JpegChunk(view, [start, *(ends + start).tolist()], where)


@dataclass(frozen=True)
class JpegCodec(ArrayBytesCodec):
    """Zarr v3 codec storing each image of a chunk as a JPEG (lossy).

    Use it as the ``serializer`` of a ``uint8`` array of shape ``(N, H, W, 1|3)``,
    followed by ``crc32c``. Readers need it registered (:func:`register`, or daskimg's
    ``zarr.codecs`` entry point).

    Parameters
    ----------
    quality : int
        JPEG quality, 1 to 100 (default 90).

    Examples
    --------
    >>> import zarr
    >>> register()
    >>> z = zarr.create_array(
    ...     zarr.storage.MemoryStore(), shape=(4, 32, 32, 3), chunks=(2, 32, 32, 3),
    ...     dtype="uint8", serializer=JpegCodec(quality=90),
    ...     compressors=[zarr.codecs.Crc32cCodec()])
    >>> z[:] = 128
    >>> int(z[3, 5, 5, 0])
    128
    >>> JpegCodec(quality=75)
    JpegCodec(quality=75)
    """

    is_fixed_size = False

    quality: int

    def __init__(self, *, quality: int = 90) -> None:
        object.__setattr__(self, "quality", _check_quality(quality))

    @classmethod
    def from_dict(cls, data: dict[str, JSON]) -> Self:
        _, config = parse_named_configuration(data, CODEC_NAME, require_configuration=False)
        config = dict(config or {})
        unknown = set(config) - {"quality"}
        if unknown:
            raise ValueError(
                f"{CODEC_NAME} takes the configuration key 'quality'; got {sorted(unknown)}"
            )
        return cls(quality=config.get("quality", 90))  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, JSON]:
        return {"name": CODEC_NAME, "configuration": {"quality": self.quality}}

    def evolve_from_array_spec(self, array_spec: ArraySpec) -> Self:
        # called with the array's spec, or the inner chunk's spec inside a shard
        check_image_shape(
            array_spec.shape, array_spec.dtype.to_native_dtype(), "the array (or its chunk)"
        )
        return self

    def validate(
        self,
        *,
        shape: tuple[int, ...],
        dtype: ZDType[TBaseDType, TBaseScalar],
        chunk_grid: ChunkGrid,
    ) -> None:
        check_image_shape(shape, dtype.to_native_dtype(), "the array")
        if isinstance(chunk_grid, RegularChunkGrid):
            chunk = chunk_grid.chunk_shape
            if chunk[-1] != shape[-1]:
                raise ValueError(
                    f"the JPEG codec needs all {shape[-1]} channels in each chunk; "
                    f"got chunks {chunk}. Chunk along axis 0 only."
                )
            check_image_shape(chunk, dtype.to_native_dtype(), "a chunk")

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        out = np.empty(chunk_spec.shape, dtype=np.uint8)
        body = memoryview(cast(Any, chunk_bytes.as_numpy_array()))
        decode_chunk_into(body, out, f"a {CODEC_NAME} chunk")
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(cast(Any, out))

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        data = encode_chunk(chunk_array.as_numpy_array(), self.quality)
        return chunk_spec.prototype.buffer.from_bytes(data)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        return await asyncio.to_thread(self._encode_sync, chunk_array, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: ArraySpec) -> int:
        raise NotImplementedError  # variable size, like any compressor


def register() -> None:
    """Make :class:`JpegCodec` known to zarr as ``"daskimg.jpeg"`` (safe to call again).

    Installed daskimg also registers it through the ``zarr.codecs`` entry point, so
    plain ``zarr.open_group`` reads daskimg's JPEG stores without this call.

    Examples
    --------
    >>> register()
    >>> import zarr
    >>> zarr.registry.get_codec_class("daskimg.jpeg").__name__
    'JpegCodec'
    """
    from zarr.registry import register_codec

    # the default qualname is the one zarr gives the entry point's class, so the two
    # registrations are a single entry and zarr never has to pick between them
    register_codec(CODEC_NAME, JpegCodec)
