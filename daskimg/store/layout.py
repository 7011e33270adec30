"""Store: one array's layout, parsed strictly from its ``zarr.json``.

daskimg reads every array itself (never through zarr's fill values), so it only accepts
the layouts it knows how to read and check: chunks along axis 0 only, optionally
grouped in shards (index at the end, checksummed), and a codec chain of one serializer
(``bytes``, ``vlen-utf8`` for strings, ``daskimg.jpeg``), at most one compressor
(``blosc``, ``zstd``) and a final ``crc32c``. Anything malformed is a
:class:`~daskimg.errors.MetadataError` naming the store, the array and the field; a sound
layout of another tool's (another codec, no checksum, big-endian) an
:class:`~daskimg.errors.UnsupportedStoreError`, which is not damage.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import MetadataError, UnsupportedStoreError

__all__ = ["ArrayLayout", "parse_layout"]

_SERIALIZERS = {"bytes", "vlen-utf8", "daskimg.jpeg"}
_COMPRESSORS = {"blosc", "zstd"}


@dataclass(frozen=True)
class ArrayLayout:
    """Where and how one array's chunks are stored (from its ``zarr.json``)."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    chunk_len: int  # samples the loader reads at once along axis 0 (its "chunk")
    shard_len: int  # samples per shard (== inner_len when not sharded)
    serializer: str  # "bytes" | "vlen-utf8" | "daskimg.jpeg"
    compressor: str | None  # "blosc" | "zstd" | None
    inner_len: int  # zarr inner chunk along axis 0
    sharded: bool
    key_prefix: str  # "c/" (default encoding) or "" (v2 encoding)
    key_sep: str  # "/" or "."

    @property
    def kind(self) -> str:
        """``"raw"``, ``"blosc"``, ``"zstd"``, ``"jpeg"``, ``"vlen"`` (strings, zstd) or
        ``"vlen-raw"`` (strings, uncompressed)."""
        if self.serializer == "daskimg.jpeg":
            return "jpeg"
        if self.serializer == "vlen-utf8":
            return {"zstd": "vlen", None: "vlen-raw"}.get(self.compressor, "vlen-other")
        return self.compressor or "raw"

    @property
    def per_sample(self) -> bool:
        """Each sample is its own zarr inner chunk: decodable straight into a batch row."""
        return self.inner_len == 1 and self.chunk_len > 1

    @property
    def index_len(self) -> int:
        """Entries in a shard's index."""
        return self.shard_len // self.inner_len

    @property
    def num_chunks(self) -> int:
        return -(-self.shape[0] // self.chunk_len) if self.shape[0] else 0

    @property
    def num_shards(self) -> int:
        return -(-self.shape[0] // self.shard_len) if self.shape[0] else 0

    @property
    def chunks_per_shard(self) -> int:
        return self.shard_len // self.chunk_len

    @property
    def row_bytes(self) -> int:
        # Python integers: a crafted sample shape of 2**32 x 2**32 wraps int64 around to 0
        return math.prod(self.shape[1:]) * self.dtype.itemsize

    def chunk_rows(self, c: int) -> tuple[int, int]:
        start = c * self.chunk_len
        return start, min(start + self.chunk_len, self.shape[0])

    def key(self, i: int) -> str:
        """The store key of chunk (or shard) ``i`` along axis 0."""
        idx = [str(i)] + ["0"] * (len(self.shape) - 1)
        return f"{self.name}/{self.key_prefix}{self.key_sep.join(idx)}"


def parse_layout(where: str, name: str, meta: Any, read_len: int | None = None) -> ArrayLayout:
    """The layout of array ``name`` from its parsed ``zarr.json`` ``meta``.

    ``read_len`` is the store's ``chunk_len`` attribute (how many samples the loader reads
    at once when every sample is its own inner chunk). Raises :class:`MetadataError`.
    """
    here = f"{where}: array {name!r} ({name}/zarr.json)"

    def bad(what: str) -> MetadataError:
        return MetadataError(
            f"{here}: {what}; the store's metadata is damaged or not written by daskimg — "
            "re-create the store"
        )

    def unsupported(what: str, names: Any = None) -> MetadataError:
        # sound Zarr v3, another tool's choice: not damage, if every codec it names is one
        # zarr knows (a flipped bit in a store written before its zarr.json had a checksum
        # makes a name no codec has: that is damage)
        if names is not None and not _known_codecs(names):
            return bad(what)
        return UnsupportedStoreError(
            f"{here}: {what}; a layout daskimg does not read (another tool's, which plain "
            "zarr may read) — to read it with daskimg, store its arrays anew with "
            "daskimg.to_zarr"
        )

    if not isinstance(meta, dict):
        raise bad("not a JSON object")
    if meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
        raise bad("not a Zarr v3 array (zarr_format 3, node_type 'array')")
    for key, value in meta.items():
        # Zarr v3: a field readers do not know may be ignored only if it says so
        # (must_understand: false); read as if it were not there, an extension that
        # changes what the bytes mean gave other values (plain zarr refuses it)
        if key not in _FIELDS and not (
            isinstance(value, dict) and value.get("must_understand") is False
        ):
            raise bad(
                f"it has the field {key!r}, which Zarr v3 readers must understand and "
                "daskimg does not (a newer Zarr extension?)"
            )
    shape = _ints(meta.get("shape"), low=0)
    if shape is None or not shape:
        raise bad(f"shape must be a list of non-negative integers, got {meta.get('shape')!r}")
    if name == "images":
        _check_channels_last(meta.get("dimension_names"), bad)
    dtype = _dtype(meta.get("data_type"))
    if dtype is None:
        raise bad(f"unknown data_type {meta.get('data_type')!r}")
    grid = meta.get("chunk_grid")
    chunks = (
        _ints((grid.get("configuration") or {}).get("chunk_shape"), low=1)
        if isinstance(grid, dict) and grid.get("name") == "regular"
        else None
    )
    if chunks is None or len(chunks) != len(shape):
        raise bad(f"chunk_grid must be regular with {len(shape)} positive chunk sizes")
    prefix, sep = _key_encoding(meta.get("chunk_key_encoding"))
    if prefix is None:
        raise bad(f"unknown chunk_key_encoding {meta.get('chunk_key_encoding')!r}")
    if meta.get("storage_transformers"):
        raise unsupported("storage_transformers are not supported")
    codecs = meta.get("codecs")
    if not isinstance(codecs, list) or not codecs or not all(isinstance(c, dict) for c in codecs):
        raise bad("codecs must be a non-empty list")
    sharded = codecs[0].get("name") == "sharding_indexed"
    if sharded:
        if len(codecs) != 1:
            raise unsupported(
                "codecs after sharding_indexed are not supported", [c.get("name") for c in codecs]
            )
        cfg = codecs[0].get("configuration") or {}
        inner = _ints(cfg.get("chunk_shape"), low=1)
        if inner is None or len(inner) != len(shape):
            raise bad("sharding_indexed chunk_shape must hold one positive size per axis")
        index_codecs = cfg.get("index_codecs")
        if not isinstance(index_codecs, list) or not all(isinstance(c, dict) for c in index_codecs):
            index_codecs = [{}]
        index_names = [c.get("name") for c in index_codecs]
        location = cfg.get("index_location", "end")
        endian = (index_codecs[0].get("configuration") or {}).get("endian", "little")
        if location != "end" or index_names != ["bytes", "crc32c"] or endian != "little":
            what = "the shard index must be little-endian bytes + crc32c at the end"
            if location in ("start", "end") and endian in ("little", "big"):
                raise unsupported(what, index_names)
            raise bad(what)  # no word another tool writes: damage
        chain = cfg.get("codecs")
        if chunks[0] % inner[0]:
            raise bad(f"shard length {chunks[0]} is not a multiple of its chunk length {inner[0]}")
        if list(chunks[1:]) != list(shape[1:]):
            raise bad(f"shards must span every axis but the first; chunk shape {list(chunks)}")
    else:
        inner, chain = chunks, codecs
    if list(inner[1:]) != list(shape[1:]):
        raise bad(
            f"chunks must span every axis but the first (shape {list(shape)}, chunks {list(inner)})"
        )
    if not isinstance(chain, list) or not all(isinstance(c, dict) for c in chain):
        raise bad("the chunk codecs must be a list")
    names = [c.get("name") for c in chain]
    if len(names) < 2 or names[-1] != "crc32c" or names[0] not in _SERIALIZERS:
        raise unsupported(
            f"codec chain {names} is not one daskimg reads (a serializer, an optional blosc or "
            "zstd, then crc32c: every chunk must carry a checksum)",
            names,
        )
    middle = names[1:-1]
    if len(middle) > 1 or (middle and middle[0] not in _COMPRESSORS):
        raise unsupported(f"codec chain {names} is not one daskimg reads", names)
    serializer = str(names[0])
    if serializer == "bytes":
        endian = (chain[0].get("configuration") or {}).get("endian", "little")
        if dtype.itemsize > 1 and endian == "big":
            raise unsupported("big-endian arrays are not supported", names)
        if dtype.itemsize > 1 and endian != "little":
            raise bad(f"endian {endian!r} is neither 'little' nor 'big'")
        if dtype.kind == "O":
            raise bad("strings need the vlen-utf8 codec")
    elif serializer == "vlen-utf8" and dtype.kind != "O":
        raise bad(f"vlen-utf8 on a {dtype} array")

    elif serializer == "daskimg.jpeg" and (
        dtype != np.uint8
        or len(shape) != 4
        or not (1 <= shape[1] <= 65500 and 1 <= shape[2] <= 65500)
        or shape[3] not in (1, 3)
    ):
        raise bad(
            "daskimg.jpeg holds uint8 images (N, H, W, 1 or 3) of 1 to 65500 pixels a side, "
            f"not {dtype} {list(shape)}"
        )
    inner_len, shard_len = inner[0], chunks[0]
    chunk_len = inner_len
    if inner_len == 1 and sharded and read_len and shard_len % read_len == 0:
        chunk_len = read_len  # one inner chunk per sample: the loader reads runs of them
    return ArrayLayout(
        name=name,
        shape=tuple(shape),
        dtype=dtype,
        chunk_len=chunk_len,
        shard_len=shard_len,
        serializer=serializer,
        compressor=str(middle[0]) if middle else None,
        inner_len=inner_len,
        sharded=sharded,
        key_prefix=prefix,
        key_sep=sep,
    )


def _known_codecs(names: Any) -> bool:
    """Whether every one of ``names`` is a codec zarr has (its registry's public lookup)."""
    from zarr.registry import get_codec_class

    try:
        for name in names:
            if not isinstance(name, str):
                return False
            get_codec_class(name)
    except KeyError:
        return False
    return True


#: the fields of a Zarr v3 array's zarr.json
_FIELDS = frozenset(
    {
        "zarr_format", "node_type", "shape", "data_type", "chunk_grid", "chunk_key_encoding",
        "fill_value", "codecs", "attributes", "dimension_names", "storage_transformers",
    }
)  # fmt: skip
#: names a channel axis goes by
_CHANNEL_NAMES = frozenset({"channel", "channels", "c", "band", "bands", "rgb"})


def _check_channels_last(names: Any, bad: Callable[[str], MetadataError]) -> None:
    """Refuse images whose ``dimension_names`` put the channel axis before the last: read
    as (N, H, W, C), a channels-first (N, C, H, W) array of another tool's store fed every
    batch transposed, without a word (daskimg's writer refuses such arrays)."""
    if not isinstance(names, list):
        return  # none recorded (stores before they were written): nothing says otherwise
    for i, n in enumerate(names[:-1]):
        if isinstance(n, str) and n.lower() in _CHANNEL_NAMES:
            raise bad(
                f"its dimension_names {names} put the channel axis at position {i}, not last; "
                "daskimg reads images as (sample, y, x, channel). Store them channels-last "
                "(numpy.moveaxis(images, 1, -1))"
            )


def _ints(value: Any, *, low: int) -> list[int] | None:
    if not isinstance(value, list):
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= low for v in value):
        return None
    return list(value)


def _dtype(data_type: Any) -> np.dtype[Any] | None:
    if data_type == "string":
        return np.dtype(object)
    if not isinstance(data_type, str):
        return None
    known = {
        "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
        "float16", "float32", "float64",
    }  # fmt: skip
    return np.dtype(data_type) if data_type in known else None


def _key_encoding(enc: Any) -> tuple[str | None, str]:
    if not isinstance(enc, dict):
        return None, ""
    sep = (enc.get("configuration") or {}).get("separator")
    if enc.get("name") == "default":
        sep = "/" if sep is None else sep
        return ("c" + sep, sep) if sep in ("/", ".") else (None, "")
    if enc.get("name") == "v2":
        sep = "." if sep is None else sep
        return ("", sep) if sep in ("/", ".") else (None, "")
    return None, ""
