"""Raw bytes of daskimg stores, and ways to damage them, without daskimg's internals.

A store is handled as a *snapshot*: an ordered ``{key: bytes}`` of its files (a folder)
or members (a zip), keys such as ``zarr.json``, ``images/zarr.json``, ``images/c/1/0/0/0``.
Everything here reads only the on-disk format (Zarr v3 ``zarr.json``, sharding with the
index at the end of each shard: ``n`` entries of ``(offset u64, nbytes u64)`` little-endian
and the crc32c of the index; every chunk is its encoded bytes followed by their crc32c,
4 bytes little-endian), so it keeps working whatever daskimg's modules are called.
"""

from __future__ import annotations

import base64
import io
import json
import os
import select
import signal
import struct
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import crc32c

Snapshot = dict[str, bytes]

#: a shard index entry of a chunk that is not stored
MISSING = 2**64 - 1


# -- snapshots of local stores --------------------------------------------------------


def zip_bytes(members: Snapshot) -> bytes:
    """A valid zip (members stored, uncompressed, in the snapshot's order)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, data in members.items():
            zf.writestr(zipfile.ZipInfo(key, date_time=(2020, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


def unzip_bytes(data: bytes) -> Snapshot:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist() if not i.is_dir()}


def read_local(path: str | os.PathLike[str]) -> Snapshot:
    """The snapshot of a local ``*.zarr.zip`` file or ``*.zarr`` folder."""
    path = os.fspath(path)
    if os.path.isfile(path):
        with open(path, "rb") as fh:
            return unzip_bytes(fh.read())
    out: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for f in sorted(filenames):
            full = os.path.join(dirpath, f)
            with open(full, "rb") as fh:
                out[os.path.relpath(full, path).replace(os.sep, "/")] = fh.read()
    return out


def write_local(members: Snapshot, path: str | os.PathLike[str]) -> str:
    """Write a snapshot as a new local store (a zip if ``path`` ends in ``.zip``)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if path.endswith(".zip"):
        with open(path, "wb") as fh:
            fh.write(zip_bytes(members))
        return path
    os.makedirs(path, exist_ok=True)
    for key, data in members.items():
        full = os.path.join(path, *key.split("/"))
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as fh:
            fh.write(data)
    return path


# -- the format ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ArrayInfo:
    """What the damage helpers need to know of one array, from its ``zarr.json``."""

    name: str
    shape: tuple[int, ...]
    grid_len: int  # rows per stored object (a shard, or an unsharded chunk)
    chunk_len: int  # rows per chunk (inner chunk of a shard)
    inner_codecs: tuple[str, ...]
    itemsize: int
    sharded: bool

    @property
    def per_shard(self) -> int:
        return self.grid_len // self.chunk_len

    @property
    def codec_kind(self) -> str:
        """``blosc``, ``raw``, ``zstd`` or ``jpeg``: how a chunk's body is encoded."""
        names = self.inner_codecs
        if "blosc" in names:
            return "blosc"
        if "zstd" in names:
            return "zstd"
        if any("jpeg" in n for n in names):
            return "jpeg"
        if list(names) == ["bytes", "crc32c"]:
            return "raw"
        raise ValueError(f"unknown codec chain {names}")

    @property
    def sample_bytes(self) -> int:
        n = self.itemsize
        for d in self.shape[1:]:
            n *= d
        return n

    def object_key(self, i: int) -> str:
        """Key of the shard (or unsharded chunk) ``i`` along axis 0."""
        return f"{self.name}/c/{i}" + "/0" * (len(self.shape) - 1)

    def locate(self, c: int) -> tuple[str, int | None]:
        """(object key, position in its shard or None when unsharded) of chunk ``c``."""
        if not self.sharded:
            return self.object_key(c), None
        s, j = divmod(c, self.per_shard)
        return self.object_key(s), j


_ITEMSIZE = {
    "bool": 1,
    "int8": 1,
    "uint8": 1,
    "int16": 2,
    "uint16": 2,
    "int32": 4,
    "uint32": 4,
    "float32": 4,
    "int64": 8,
    "uint64": 8,
    "float64": 8,
}


def array_info(members: Snapshot, name: str) -> ArrayInfo:
    meta = json.loads(members[f"{name}/zarr.json"])
    shape = tuple(meta["shape"])
    grid = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
    codecs = meta["codecs"]
    sharded = bool(codecs) and codecs[0]["name"] == "sharding_indexed"
    if sharded:
        cfg = codecs[0]["configuration"]
        chunk_len = cfg["chunk_shape"][0]
        inner = tuple(c["name"] for c in cfg["codecs"])
        assert cfg.get("index_location", "end") == "end"
    else:
        chunk_len, inner = grid, tuple(c["name"] for c in codecs)
    itemsize = _ITEMSIZE.get(meta["data_type"], 0)
    return ArrayInfo(name, shape, grid, chunk_len, inner, itemsize, sharded)


def with_crc(body: bytes) -> bytes:
    return body + crc32c.crc32c(body).to_bytes(4, "little")


def split_shard(data: bytes, n: int) -> list[bytes | None]:
    """The encoded chunks (crc included) of a shard with ``n`` index entries; None: not stored."""
    size = n * 16 + 4
    index = data[-size:]
    assert crc32c.crc32c(index[:-4]) == int.from_bytes(index[-4:], "little"), "bad shard index"
    out: list[bytes | None] = []
    for j in range(n):
        off, nbytes = struct.unpack_from("<QQ", index, j * 16)
        out.append(None if off == MISSING else data[off : off + nbytes])
    return out


def edited_index(
    members: Snapshot, key: str, edit: Callable[[list[tuple[int, int]]], None], n: int = 2
) -> Snapshot:
    """``members`` with the index of shard ``key`` (``n`` entries, at least) edited in
    place by ``edit`` (a list of ``(offset, nbytes)``) and its crc32c made again: damage
    only the index's meaning can tell."""
    data = members[key]
    n = len(split_shard(data, n))
    size = n * 16 + 4
    entries = [struct.unpack_from("<QQ", data, len(data) - size + 16 * j) for j in range(n)]
    edit(entries)
    index = b"".join(struct.pack("<QQ", *e) for e in entries)
    return {**members, key: data[:-size] + with_crc(index)}


def join_shard(chunks: list[bytes | None]) -> bytes:
    """A shard holding ``chunks`` back to back, with a fresh index and its crc32c."""
    body, entries = b"", []
    for c in chunks:
        if c is None:
            entries.append(struct.pack("<QQ", MISSING, MISSING))
        else:
            entries.append(struct.pack("<QQ", len(body), len(c)))
            body += c
    return body + with_crc(b"".join(entries))


def get_chunk(members: Snapshot, name: str, c: int) -> bytes:
    info = array_info(members, name)
    key, j = info.locate(c)
    if j is None:
        return members[key]
    chunk = split_shard(members[key], info.per_shard)[j]
    assert chunk is not None
    return chunk


def set_chunk(members: Snapshot, name: str, c: int, new: bytes) -> Snapshot:
    """A copy of ``members`` where chunk ``c`` of ``name`` is ``new`` (shard index fixed)."""
    info = array_info(members, name)
    key, j = info.locate(c)
    out = dict(members)
    if j is None:
        out[key] = new
    else:
        chunks = split_shard(members[key], info.per_shard)
        chunks[j] = new
        out[key] = join_shard(chunks)
    return out


# -- damage ------------------------------------------------------------------------------


def missing_object(members: Snapshot, name: str, c: int) -> Snapshot:
    """The shard (file, member, object) holding chunk ``c`` is gone."""
    key, _ = array_info(members, name).locate(c)
    return {k: v for k, v in members.items() if k != key}


def empty_object(members: Snapshot, name: str, c: int) -> Snapshot:
    key, _ = array_info(members, name).locate(c)
    return {**members, key: b""}


def truncated_object(members: Snapshot, name: str, c: int) -> Snapshot:
    key, _ = array_info(members, name).locate(c)
    return {**members, key: members[key][: len(members[key]) // 2]}


def flipped_byte(members: Snapshot, name: str, c: int) -> Snapshot:
    """One byte in the middle of chunk ``c``'s encoded body inverted (its crc32c kept)."""
    chunk = bytearray(get_chunk(members, name, c))
    body_len = len(chunk) - 4
    chunk[body_len // 2] ^= 0xFF
    return set_chunk(members, name, c, bytes(chunk))


def chunk_crcs(members: Snapshot, name: str) -> list[int]:
    """The crc32c that ends each chunk of ``name``, in order along axis 0."""
    info = array_info(members, name)
    n = -(-info.shape[0] // info.chunk_len)
    return [int.from_bytes(get_chunk(members, name, c)[-4:], "little") for c in range(n)]


def recorded_crcs(members: Snapshot, name: str) -> list[int] | None:
    """The crc32c per chunk the root attributes record for ``name`` (``arrays[name]
    ["chunk_crc32c"]``: base64 of little-endian uint32), or None."""
    attrs = json.loads(members["zarr.json"])["attributes"]["daskimg"]
    value = attrs["arrays"][name].get("chunk_crc32c")
    if value is None:
        return None
    raw = base64.b64decode(value)
    return [int.from_bytes(raw[i : i + 4], "little") for i in range(0, len(raw), 4)]


def resealed_byte(members: Snapshot, name: str, c: int) -> Snapshot:
    """One byte of chunk ``c`` inverted and its crc32c computed again (a chunk replaced by
    one that is valid on its own)."""
    chunk = bytearray(get_chunk(members, name, c)[:-4])
    chunk[len(chunk) // 2] ^= 0xFF
    return set_chunk(members, name, c, with_crc(bytes(chunk)))


def swapped_in_shard(members: Snapshot, name: str, c: int) -> Snapshot:
    """Chunk ``c`` and its neighbour in the same shard exchanged (each intact; the shard
    index rewritten with a valid crc32c)."""
    info = array_info(members, name)
    _, j = info.locate(c)
    assert j is not None and info.per_shard > 1, "needs shards of several chunks"
    other = c - 1 if j > 0 else c + 1
    a, b = get_chunk(members, name, c), get_chunk(members, name, other)
    assert a != b, f"chunks {c} and {other} of {name} are equal: exchanging them changes nothing"
    return set_chunk(set_chunk(members, name, c, b), name, other, a)


def swapped_objects(members: Snapshot, name: str, c: int) -> Snapshot:
    """The shard (file, member, object) holding chunk ``c`` and the one before it exchanged."""
    info = array_info(members, name)
    key, _ = info.locate(c)
    other, _ = info.locate(c - info.per_shard)
    assert members[key] != members[other]
    return {**members, key: members[other], other: members[key]}


BLOSC_MEMCPYED = 0x02
CRAFTED_BYTES = 64
#: what a crafted header claims: near Blosc's limit (2 GiB - 16), so that trusting it reads
#: far past the 64 bytes that are there, into unmapped memory: a crash every time rather
#: than now and then (1.5 MiB over-reads crashed only some runs)
HUGE = 2**31 - 2**20


def blosc_header(nbytes: int, cbytes: int, typesize: int, flags: int = BLOSC_MEMCPYED) -> bytes:
    """A Blosc 1 header: version, versionlz, flags, typesize, nbytes, blocksize, cbytes."""
    return struct.pack("<BBBBIII", 2, 1, flags, typesize, nbytes, nbytes, cbytes)


def crafted_body(info: ArrayInfo, exact: bool, claim: int = HUGE) -> bytes:
    """``CRAFTED_BYTES`` of chunk body whose header lies about what it decodes to.

    Blosc: "memcpyed", decoding to ~2 GiB (``HUGE``; or, ``exact``, to exactly the chunk's size, so
    a size check alone passes) from ``cbytes`` bytes, while only 64 are there. Zstd: a
    frame whose header declares ``HUGE`` bytes of content and holds one raw 48-byte block. Raw
    (codec "none"): 64 bytes where a whole chunk belongs.
    """
    kind = info.codec_kind
    pad = CRAFTED_BYTES - 16
    if kind == "blosc":
        nbytes = info.chunk_len * info.sample_bytes if exact else claim
        typesize = max(1, min(info.itemsize, 255))
        return blosc_header(nbytes, nbytes + 16, typesize) + bytes(range(pad))
    if kind == "zstd":
        fhd = 0xE0  # 8-byte frame content size, single segment
        block = ((pad << 3) | 1).to_bytes(3, "little")  # last block, raw, 48 bytes
        payload = bytes(range(pad))
        return b"\x28\xb5\x2f\xfd" + bytes([fhd]) + struct.pack("<Q", claim) + block + payload
    if kind == "raw":
        return bytes(range(CRAFTED_BYTES))
    raise ValueError(f"no crafted chunk for codec {kind!r}")


def crafted_chunk(
    members: Snapshot, name: str, c: int, *, exact: bool = False, claim: int = HUGE
) -> Snapshot:
    """Chunk ``c`` replaced by a crafted 64-byte chunk WITH a valid crc32c (index fixed)."""
    info = array_info(members, name)
    return set_chunk(members, name, c, with_crc(crafted_body(info, exact, claim)))


def crafted_applies(members: Snapshot, name: str, exact: bool) -> bool:
    kind = array_info(members, name).codec_kind
    return kind == "blosc" if exact else kind in ("blosc", "zstd", "raw")


def drop_array(members: Snapshot, name: str) -> Snapshot:
    """Every member of the array gone (its folder, its metadata and its chunks)."""
    return {k: v for k, v in members.items() if not k.startswith(name + "/")}


def drop_array_meta(members: Snapshot, name: str) -> Snapshot:
    """The array's ``zarr.json`` gone, its chunks left behind."""
    return {k: v for k, v in members.items() if k != f"{name}/zarr.json"}


def edit_json(members: Snapshot, key: str, edit: Callable[[Any], None]) -> Snapshot:
    meta = json.loads(members[key])
    edit(meta)
    return {**members, key: json.dumps(meta, indent=2).encode()}


def fill_valuu(members: Snapshot, name: str) -> Snapshot:
    """One bit flipped in ``<name>/zarr.json``: ``"fill_value"`` becomes ``"fill_valuu"``."""
    key = f"{name}/zarr.json"
    raw = members[key]
    assert raw.count(b'"fill_value"') == 1
    flipped = raw.replace(b'"fill_value"', b'"fill_valuu"')
    assert sum(bin(a ^ b).count("1") for a, b in zip(raw, flipped, strict=True)) == 1
    return {**members, key: flipped}


def unparsable(members: Snapshot, name: str) -> Snapshot:
    key = f"{name}/zarr.json"
    return {**members, key: members[key][: len(members[key]) // 2]}


def huge_shape(members: Snapshot, name: str) -> Snapshot:
    def edit(meta: Any) -> None:
        meta["shape"][0] = 10**12

    return edit_json(members, f"{name}/zarr.json", edit)


def label_beyond_classes(members: Snapshot, value: int, c: int = 1, row: int = 3) -> Snapshot:
    """Row ``row`` of labels chunk ``c`` set to ``value``, re-encoded with a VALID crc32c
    (the labels must be Blosc-encoded int64, as daskimg writes them)."""
    import numpy as np
    from numcodecs import Blosc

    assert array_info(members, "labels").codec_kind == "blosc"
    values = np.frombuffer(Blosc().decode(get_chunk(members, "labels", c)[:-4]), "<i8").copy()
    values[row] = value
    crafted = set_chunk(members, "labels", c, with_crc(Blosc(cname="zstd").encode(values)))
    return resealed(crafted)  # the table of chunk checksums too: only the range check is left


def resealed(members: Snapshot) -> Snapshot:
    """Every checksum over metadata recomputed, as a crafter would: the root's record of each
    array's ``zarr.json`` crc32c, then its own ``attrs_crc32c``."""
    from daskimg.store.format import ATTRS_CRC, attrs_crc32c

    root = json.loads(members["zarr.json"])
    attrs = root["attributes"]["daskimg"]
    for name, entry in (attrs.get("arrays") or {}).items():
        if isinstance(entry, dict) and "zarr_json_crc32c" in entry:
            entry["zarr_json_crc32c"] = crc32c.crc32c(members[f"{name}/zarr.json"])
        if isinstance(entry, dict) and "chunk_crc32c" in entry:
            info = array_info(members, name)
            if info.shape[0] <= 10**6:  # an absurd shape keeps the old table
                crcs = b"".join(c.to_bytes(4, "little") for c in chunk_crcs(members, name))
                entry["chunk_crc32c"] = base64.b64encode(crcs).decode()
    if ATTRS_CRC in attrs:
        attrs[ATTRS_CRC] = attrs_crc32c(attrs)
    return {**members, "zarr.json": json.dumps(root, indent=2).encode()}


def huge_samples(members: Snapshot, name: str, side: int = 100_000) -> Snapshot:
    """Samples of ``name`` claimed ``side`` x ``side`` pixels (shape and chunk shapes), with every
    metadata checksum resealed: a chunk then claims far more memory than any machine has."""

    def edit(meta: Any) -> None:
        meta["shape"][1:3] = [side, side]
        meta["chunk_grid"]["configuration"]["chunk_shape"][1:3] = [side, side]
        first = meta["codecs"][0]
        if first["name"] == "sharding_indexed":
            first["configuration"]["chunk_shape"][1:3] = [side, side]

    return resealed(edit_json(members, f"{name}/zarr.json", edit))


def huge_length(members: Snapshot, n: int = 10**12) -> Snapshot:
    """``num_samples``, every array's length and its shard length claimed ``n``, the tables of
    chunk checksums (which a crafter cannot forge for ``n`` rows) deleted, every other
    metadata checksum resealed: each array is then one shard of ``n / chunk_len`` chunks."""
    root = json.loads(members["zarr.json"])
    attrs = root["attributes"]["daskimg"]
    attrs["num_samples"] = n
    for entry in attrs["arrays"].values():
        entry.pop("chunk_crc32c", None)
    out = {**members, "zarr.json": json.dumps(root).encode()}

    def edit(meta: Any) -> None:
        meta["shape"][0] = n
        meta["chunk_grid"]["configuration"]["chunk_shape"][0] = n

    for name in attrs["arrays"]:
        out = edit_json(out, f"{name}/zarr.json", edit)
    return resealed(out)


def zero_chunk_shape(members: Snapshot, name: str) -> Snapshot:
    def edit(meta: Any) -> None:
        meta["chunk_grid"]["configuration"]["chunk_shape"][0] = 0

    return edit_json(members, f"{name}/zarr.json", edit)


def format_version_true(members: Snapshot) -> Snapshot:
    def edit(meta: Any) -> None:
        meta["attributes"]["daskimg"]["format_version"] = True

    return edit_json(members, "zarr.json", edit)


# -- data whose every value says which sample it is ----------------------------------------


def sample_arrays(n: int, offset: int = 0, shape: tuple[int, ...] = (6, 5, 3)) -> dict[str, Any]:
    """Per-sample arrays (numpy) for an ImageSet: each value tells its sample ``i``.

    ``images[i, ..., 0] == (i + 1 + offset) % 256`` (never 0 for the first 255 samples, so
    zeros are never right); ``labels == (i + offset) % 3``; ``paths``, ``idx == i + offset``,
    ``bbox`` (N, 4) float32 likewise. A different ``offset`` makes a different store.
    """
    import numpy as np

    i = np.arange(n)
    images = np.zeros((n, *shape), np.uint8)
    images[..., 0] = ((i + 1 + offset) % 256).reshape(n, *([1] * len(shape[:-1])))
    if shape[-1] > 1:
        images[..., 1] = ((i * 7 + offset) % 251).reshape(n, *([1] * len(shape[:-1])))
    if shape[-1] > 2:
        rng = np.random.default_rng(offset)
        images[..., 2] = rng.integers(0, 256, (n, *shape[:-1]), dtype=np.uint8)
    return {
        "images": images,
        "labels": ((i + offset) % 3).astype(np.int64),
        "paths": np.array([f"img/{k + offset:04d}.png" for k in i]),
        "idx": (i + offset).astype(np.int64),
        "bbox": np.stack([i, i + 1, i + 2, i + 3], axis=1).astype(np.float32) + offset,
    }


def writer_arrays(n: int, offset: int = 0) -> dict[str, Any]:
    """Arrays for an ArrayWriter store: ``features`` (N, 8) float32 and ``ids`` (N,) int64."""
    import numpy as np

    i = np.arange(n)
    return {
        "features": (i[:, None] * 0.5 + np.arange(8) + offset).astype(np.float32),
        "ids": (i + 1000 + offset).astype(np.int64),
    }


# -- what came back, in a form both processes can compare --------------------------------


def _is_text(a: Any) -> bool:
    return a.dtype.kind in "OUST"


def digest(values: Any) -> str:
    """A hash of an array's values in order (strings compared as ``str``)."""
    import hashlib

    import numpy as np

    a = np.asarray(values)
    if _is_text(a):
        data = "\x00".join(str(x) for x in a.ravel().tolist()).encode()
        kind = "text"
    else:
        data, kind = np.ascontiguousarray(a).tobytes(), a.dtype.str
    return hashlib.sha256(f"{kind}{a.shape}".encode() + data).hexdigest()


def multiset_digest(values: Any) -> str:
    """A hash of an array's rows in any order (a shuffled epoch against the stored array)."""
    import hashlib

    import numpy as np

    a = np.asarray(values)
    if _is_text(a):
        rows = sorted(str(x).encode() for x in a.tolist())
        kind = "text"
    else:
        a = np.ascontiguousarray(a)
        rows = sorted(r.tobytes() for r in a.reshape(len(a), -1))
        kind = a.dtype.str
    return hashlib.sha256(f"{kind}{a.shape}".encode() + b"\x00".join(rows)).hexdigest()


# -- the reader process ------------------------------------------------------------------
#
# Every read of a damaged store runs here, in a child process: a crash (SIGSEGV, SIGBUS) or
# a hang there is a test result, not the end of the test session. The parent sends one job
# per line (JSON) on stdin; the child answers one line per read path, then {"done": true}.
#
# job = {"path": store path or URL, "so": storage_options or None,
#        "memory": {key: base64} or None (a snapshot to put at a memory:// URL first: that
#                  file system lives in this process), "reads": ["open", "iterate", ...],
#        "iter_arrays": [...], "cli": bool}


def describe(e: BaseException) -> dict[str, Any]:
    import traceback

    return {
        "type": type(e).__name__,
        "mro": [c.__name__ for c in type(e).__mro__],
        "msg": str(e)[:3000],
        "tb": "".join(traceback.format_exception(e)[-6:])[-3000:],
    }


def _put_memory(path: str, snapshot: dict[str, str]) -> None:
    import base64

    import fsspec

    fs = fsspec.filesystem("memory")
    key = path.split("://", 1)[1]
    if fs.exists(key):
        fs.rm(key, recursive=True)
    members = {k: base64.b64decode(v) for k, v in snapshot.items()}
    if path.endswith(".zip"):
        fs.pipe_file(key, zip_bytes(members))
    else:
        for k, v in members.items():
            fs.pipe_file(f"{key}/{k}", v)


def _read(job: dict[str, Any], read: str) -> dict[str, Any]:
    import numpy as np

    import daskimg as di
    from daskimg import storeinfo

    path, so = job["path"], job["so"]
    stage = "open"
    try:
        if read == "open":
            ds = di.open_zarr(path, storage_options=so)
            stage = "materialise"
            images_none = ds.images is None
            order = {"images": 0, "labels": 1, "paths": 2}
            names = sorted(ds.arrays, key=lambda n: (order.get(n, 3), n))
            values: dict[str, Any] = {}
            for name in names:
                a = ds.arrays[name]
                values[name] = a.compute() if hasattr(a, "compute") else np.asarray(a)
            if ds.labels is not None:
                values["labels"] = np.asarray(ds.labels)
            if ds.paths is not None:
                values["paths"] = np.asarray(ds.paths)
            return {
                "ok": True,
                "images_none": images_none,
                "digests": {n: digest(v) for n, v in values.items()},
                "lengths": {n: len(v) for n, v in values.items()},
            }
        if read == "iterate":
            names = tuple(job["iter_arrays"])
            it = di.BatchIterator(path, batch_size=7, arrays=names, storage_options=so)
            stage = "iterate"
            got: dict[str, list[Any]] = {n: [] for n in names}
            for batch in it:
                for n, b in zip(names, batch, strict=True):
                    got[n].append(np.asarray(b))
            cat = {n: np.concatenate(v) if v else np.empty(0) for n, v in got.items()}
            return {
                "ok": True,
                "digests": {n: multiset_digest(v) for n, v in cat.items()},
                "lengths": {n: len(v) for n, v in cat.items()},
            }
        if read == "verify":
            stage = "verify"
            problems = storeinfo.verify(path, storage_options=so)
            return {
                "ok": True,
                "problems": [
                    {"array": str(getattr(p, "array", "")), "text": str(p)} for p in problems
                ],
            }
        raise ValueError(f"unknown read {read!r}")
    except BaseException as e:  # everything is a result here
        return {"ok": False, "stage": stage, "error": describe(e)}


def serve() -> None:
    """The reader process's loop (``python store_damage.py serve``)."""
    import faulthandler
    import resource

    faulthandler.enable()  # a crash prints where it happened to stderr
    limit = int(os.environ.get("STORE_DAMAGE_MAX_BYTES") or 0)
    if limit:  # a store claiming 10**12 samples must not take the machine's memory
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # stray prints go to stderr, not into the answers
    for line in sys.stdin:
        job = json.loads(line)
        try:
            if job.get("memory") is not None:
                _put_memory(job["path"], job["memory"])
        except BaseException as e:
            channel.write(json.dumps({"setup_error": describe(e)}) + "\n")
            channel.flush()
            continue
        for read in job["reads"]:
            channel.write(json.dumps({"read": read, **_read(job, read)}) + "\n")
            channel.flush()
        channel.write(json.dumps({"done": True}) + "\n")
        channel.flush()


class ReaderProcess:
    """The parent's end of :func:`serve`: runs jobs, surviving crashes and hangs of the child.

    ``run(job, timeout)`` returns ``{read: result}`` for every read of the job. A read
    whose child died gets ``{"crashed": returncode, "stderr": ...}``; one that took longer
    than ``timeout`` seconds gets ``{"timeout": timeout}`` (the child is killed, by its
    pid). The following reads run in a fresh child.
    """

    def __init__(self, env: dict[str, str], log: str) -> None:
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self._buf = b""

    def _start(self) -> subprocess.Popen[bytes]:
        if self.proc is None or self.proc.poll() is not None:
            with open(self.log, "ab") as err:
                self.proc = subprocess.Popen(
                    [sys.executable, "-u", os.path.abspath(__file__), "serve"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    env=self.env,
                )
            self._buf = b""
        return self.proc

    def _line(self, proc: subprocess.Popen[bytes], deadline: float) -> bytes | None:
        """The next answer line; b"" when the child died; None on timeout."""
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return b""
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def _stop(self) -> int:
        proc = self.proc
        self.proc = None
        if proc is None:
            return 0
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)  # only the child this object started
        rc = proc.wait()
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                f.close()
        return rc

    def _stderr_since(self, offset: int) -> str:
        with open(self.log, "rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")[-3000:]

    def run(
        self, job: dict[str, Any], timeout: float, deadline: float | None = None
    ) -> dict[str, dict[str, Any]]:
        """Run the job's reads: each within ``timeout`` s, all by ``deadline`` (monotonic)."""
        pending = list(job["reads"])
        results: dict[str, dict[str, Any]] = {}
        while pending:
            proc = self._start()
            offset = os.path.getsize(self.log)
            assert proc.stdin is not None
            try:
                proc.stdin.write((json.dumps({**job, "reads": pending}) + "\n").encode())
                proc.stdin.flush()
            except BrokenPipeError:
                pass
            while pending:
                now = time.monotonic()
                until = now + timeout if deadline is None else min(now + timeout, deadline)
                line = self._line(proc, until)
                if line is None:
                    self._stop()
                    results[pending.pop(0)] = {"timeout": until - now}
                    if deadline is not None and time.monotonic() >= deadline:
                        for read in pending:  # no time left for them
                            results[read] = {"timeout": 0.0}
                        pending = []
                    break
                if line == b"":
                    rc = self._stop()
                    results[pending.pop(0)] = {
                        "crashed": rc,
                        "stderr": self._stderr_since(offset),
                    }
                    break
                answer = json.loads(line)
                if "setup_error" in answer:
                    raise RuntimeError(f"could not set up the store: {answer['setup_error']}")
                read = answer.pop("read")
                results[read] = answer
                pending.remove(read)
            else:
                done = self._line(proc, time.monotonic() + timeout)
                assert done is not None and json.loads(done) == {"done": True}, done
        return results

    def close(self) -> None:
        self._stop()


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        serve()
