"""Store: which chunk is where — every chunk's crc32c, recorded when a store is finished.

A chunk's crc32c says its bytes are intact, not that they are the right chunk: two chunks
of one array exchanged (zip members renamed, shard files swapped, a shard index rewritten
with a valid checksum) or a shard copied in from another store of the same layout read as
valid *other* rows. So when a store is finished, its writer records the crc32c that ends
each inner chunk of each array — read back from what was written (4 bytes per chunk,
nothing decoded), or noted as a zip member is written — in the root attribute
``arrays[name]["chunk_crc32c"]`` (base64 of little-endian uint32, one per inner chunk
along axis 0), which the root checksum (``attrs_crc32c``) covers. The checked reader
compares each chunk's own crc32c with its entry before the chunk is handed out.

Stores written before the table existed have none and are read as before; plain zarr
ignores it.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..errors import ChecksumError, MetadataError
from .bytesource import ByteSource
from .layout import ArrayLayout, parse_layout
from .locate import ChunkLocator

__all__ = [
    "TABLE",
    "MemberTrailers",
    "check_place",
    "decode_table",
    "encode_table",
    "num_inner",
    "read_tables",
]

#: the entry of ``arrays[name]`` in the root attributes that holds the table
TABLE = "chunk_crc32c"


def num_inner(lay: ArrayLayout) -> int:
    """Inner chunks of ``lay`` along axis 0 (the table's length)."""
    return -(-lay.shape[0] // lay.inner_len) if lay.shape[0] else 0


def encode_table(crcs: Sequence[int] | np.ndarray) -> str:
    """The table as stored: base64 of the crc32c values, little-endian uint32."""
    return base64.b64encode(np.asarray(crcs, dtype="<u4").tobytes()).decode("ascii")


def decode_table(where: str, lay: ArrayLayout, value: Any) -> np.ndarray:
    """The stored table of ``lay``'s array, checked: one uint32 per inner chunk."""
    try:
        raw = base64.b64decode(value, validate=True) if isinstance(value, str) else None
    except ValueError:
        raw = None
    if raw is None or len(raw) != 4 * num_inner(lay):
        raise MetadataError(
            f"{where}: array {lay.name!r}: the root attribute recording its chunks' checksums "
            f"is not {num_inner(lay)} crc32c values; the store's metadata is damaged — "
            "re-create the store"
        )
    return np.frombuffer(raw, dtype="<u4")


def check_place(table: np.ndarray | None, i: int, stored: Any, where: str) -> None:
    """Inner chunk ``i``, whose encoded bytes end with the crc32c ``stored`` (4 bytes), is
    the chunk the store recorded at ``i``; else :class:`ChecksumError`. Checked before
    the chunk's bytes are (the cheaper test, and nothing foreign is decoded)."""
    if table is None or len(stored) != 4:
        return  # no table (an older store); too short: the checksum test reports it
    crc = int.from_bytes(bytes(stored), "little")
    if crc == int(table[i]):
        return
    same = np.flatnonzero(table == crc)
    found = (
        f"the bytes of chunk {int(same[0])} of this array, not its own (chunks were moved "
        "or exchanged)"
        if len(same)
        else "bytes this array was not written with (replaced, or copied from another store)"
    )
    raise ChecksumError(
        f"{where}: holds {found}; the store recorded another checksum for it when it was "
        "written. The store is damaged — run `daskimg verify` on it and re-create it"
    )


def read_tables(source: ByteSource, metas: Mapping[str, bytes]) -> dict[str, str]:
    """The tables of the arrays ``metas`` (name -> ``zarr.json`` bytes) of a store just
    written to ``source``, read back from the last 4 bytes of every inner chunk; the
    source is closed after."""
    out = {}
    where = source.where
    locate = ChunkLocator(source, where)
    try:
        for name, raw in metas.items():
            out[name] = _read_table(source, locate, parse_layout(where, name, json.loads(raw)))
    finally:
        source.close()
    return out


def _read_table(source: ByteSource, locate: ChunkLocator, lay: ArrayLayout) -> str:
    """One array's table, from the crc32c that ends each of its inner chunks."""
    crcs = np.empty(num_inner(lay), dtype="<u4")

    def one(i: int) -> None:
        key, off, nbytes = locate.inner(lay, i)
        crcs[i] = int.from_bytes(source.read(key, off + nbytes - 4, 4), "little")

    if source.remote and len(crcs) > 1:  # a request each: keep several in flight
        with ThreadPoolExecutor(16, thread_name_prefix="daskimg-table") as pool:
            list(pool.map(one, range(len(crcs))))
    else:
        for i in range(len(crcs)):
            one(i)
    return encode_table(crcs)


class _Pieces(ByteSource):
    """One stored value held as the buffers it is written from (never joined)."""

    def __init__(self, key: str, pieces: Sequence[Any]) -> None:
        self.where = key
        self._views = [memoryview(p).cast("B") for p in pieces]
        self._starts = np.cumsum([0] + [v.nbytes for v in self._views])
        self.keys = {key: int(self._starts[-1])}

    def _read(self, key: str, start: int, n: int) -> bytes:
        out, end = bytearray(), start + n
        first = int(np.searchsorted(self._starts, start, side="right")) - 1
        for j in range(max(first, 0), len(self._views)):
            lo = int(self._starts[j])
            if lo >= end:
                break
            v = self._views[j]
            out += v[max(start - lo, 0) : min(end - lo, v.nbytes)]
        return bytes(out)


class MemberTrailers:
    """The tables of a store written member by member (a zip being built): each chunk's
    crc32c is noted as its member is written, from the bytes in hand."""

    def __init__(self) -> None:
        self._crcs: dict[str, dict[int, int]] = {}
        self._layouts: dict[str, tuple[bytes, ArrayLayout]] = {}
        self._lock = threading.Lock()

    def _layout(self, name: str, raw: bytes) -> ArrayLayout:
        known = self._layouts.get(name)
        if known is not None and known[0] == raw:
            return known[1]
        lay = parse_layout(name, name, json.loads(raw))
        self._layouts[name] = (raw, lay)
        return lay

    def note(self, key: str, pieces: Sequence[Any], metas: Mapping[str, bytes]) -> None:
        """Note the chunks of the member ``key`` (made of ``pieces``), if it holds chunks of
        an array whose ``zarr.json`` is in ``metas``."""
        name, _, rest = key.partition("/")
        raw = metas.get(f"{name}/zarr.json")
        if raw is None or not rest or rest == "zarr.json":
            return
        lay = self._layout(name, raw)
        first = rest[len(lay.key_prefix) :].split(lay.key_sep)[0]
        if not first.isdigit() or lay.key(int(first)) != key:
            return
        k = int(first)
        inner = (
            range(k * lay.index_len, min((k + 1) * lay.index_len, num_inner(lay)))
            if lay.sharded
            else range(k, k + 1)
        )
        source = _Pieces(key, pieces)
        locate = ChunkLocator(source, key)
        found = {}
        for i in inner:
            mkey, off, nbytes = locate.inner(lay, i)
            found[i] = int.from_bytes(source.read(mkey, off + nbytes - 4, 4), "little")
        with self._lock:
            self._crcs.setdefault(name, {}).update(found)

    def tables(
        self, where: str, metas: Mapping[str, bytes], names: Iterable[str]
    ) -> dict[str, str]:
        """The tables of the arrays ``names``; a chunk never written is an error."""
        out = {}
        for name in names:
            lay = parse_layout(where, name, json.loads(metas[f"{name}/zarr.json"]))
            have = self._crcs.get(name, {})
            missing = [i for i in range(num_inner(lay)) if i not in have]
            if missing:
                raise ChecksumError(
                    f"{where}: array {name!r}: chunk {missing[0]} was never written "
                    f"({len(missing)} missing); nothing was published"
                )
            out[name] = encode_table([have[i] for i in range(num_inner(lay))])
        return out
