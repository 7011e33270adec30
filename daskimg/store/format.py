"""Store: the on-disk format, version 1 — written here and only here, and checked here.

Everything that creates a store (:func:`daskimg.to_zarr`, ``convert``,
:class:`daskimg.ArrayWriter`) builds its root attributes with :func:`root_attrs`, its arrays
with :func:`create_arrays` and finishes it with :func:`finish_attrs`; everything that opens
one checks it with :func:`check_attrs` and :func:`check_arrays`.

A store is a Zarr v3 group. Its arrays share the length ``N`` (``num_samples``) on axis 0
and the chunk length ``chunk_len`` along it, so chunk ``i`` of every array holds the same
samples; every chunk ends with a crc32c; every array has ``dimension_names``. The root
attribute ``daskimg`` records the format version, the split, the classes, which columns
are boxes, the order, the codec, the source, the files skipped, ``complete`` (true only
once every chunk is written) and ``arrays``: the name of every array with a crc32c of its
``zarr.json``, so that an array that vanished or whose metadata changed is an error, and
the crc32c of each of its chunks (:mod:`~daskimg.store.chunktable`), so that a chunk
moved to another place is an error too.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import crc32c
import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from ..errors import (
    ForeignStoreError,
    FormatVersionError,
    IncompleteStoreError,
    MetadataError,
    NewerFormatError,
    UnsupportedStoreError,
)
from .bytesource import MISSING_SAID
from .chunktable import TABLE, num_inner
from .codecs import DEFAULT_CODEC, canonical_codec, compressors, serializer
from .layout import ArrayLayout

if TYPE_CHECKING:
    from .reader import StoreReader

__all__ = [
    "CHUNK_BYTES",
    "FORMAT_VERSION",
    "SHARD_CHUNKS",
    "ArraySpec",
    "auto_chunk_len",
    "check_array",
    "check_arrays",
    "check_attrs",
    "check_together",
    "create_arrays",
    "dimension_names",
    "finish_attrs",
    "required_arrays",
    "root_attrs",
    "versions",
]

#: the on-disk format this daskimg writes; it opens every version <= this one
FORMAT_VERSION = 1
#: the root attribute holding :func:`attrs_crc32c` (finished stores written since 2026-12;
#: older ones lack it and open as before)
ATTRS_CRC = "attrs_crc32c"
#: uncompressed bytes aimed at per chunk (the unit the loader reads) and per shard (one write task)
CHUNK_BYTES = 8 * 2**20
#: chunks a store is cut into at least, where chunks stay at least ``MIN_CHUNK_BYTES``: DDP
#: ranks share an epoch chunk by chunk, and a rank with a chunk fewer pads with repeats (a
#: 2,000-image store in one 8 MiB chunk gave both of 2 ranks all of it, batch for batch)
MIN_CHUNKS = 128
MIN_CHUNK_BYTES = 2**20
SHARD_CHUNKS = 8


@dataclass(frozen=True)
class ArraySpec:
    """One array of a store: its name, the shape and dtype of one sample, and its codec.

    ``dtype=str`` (``np.dtype(object)``) stores strings (``paths``).
    """

    name: str
    sample_shape: tuple[int, ...]
    dtype: np.dtype[Any]
    codec: str = "zstd"
    shard_len: int | None = None  # samples per shard; None: the store's


def versions() -> dict[str, str]:
    """Versions of the packages that shape the bytes (recorded as ``created_with``)."""
    return dict(_versions())


@functools.cache
def _versions() -> tuple[tuple[str, str], ...]:
    # read once a process (~4 ms each time, a first ingest's serial start): the code that
    # writes is the code imported, whatever is installed after (pip in a notebook)
    out = {}
    for pkg in ("daskimg", "zarr", "numcodecs", "dask", "simplejpeg"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return tuple(out.items())


def auto_chunk_len(sample_shape: Sequence[int], dtype: Any, n: int) -> int:
    """Samples per chunk: about ``CHUNK_BYTES`` uncompressed, fewer where that leaves fewer
    than ``MIN_CHUNKS`` chunks (down to ``MIN_CHUNK_BYTES`` a chunk); at least 1, at most ``n``.

    >>> auto_chunk_len((224, 224, 3), "uint8", 1_000_000), auto_chunk_len((224, 224, 3), "uint8", 1000)
    (55, 8)
    >>> auto_chunk_len((32, 32, 3), "uint8", 2000), auto_chunk_len((8, 8, 3), "uint8", 40)
    (341, 40)
    """
    per = max(int(np.prod(sample_shape)) * np.dtype(dtype).itemsize, 1)
    spread = max(-(-n // MIN_CHUNKS), MIN_CHUNK_BYTES // per)
    return max(1, min(max(n, 1), CHUNK_BYTES // per, spread))


def dimension_names(name: str, ndim: int, *, box: bool = False) -> list[str]:
    """Zarr v3 ``dimension_names`` (xarray needs them): ``sample`` first, then per array.

    Images ``sample, y, x, channel`` (volumes ``sample, z, y, x, channel``), masks
    ``sample, y, x`` (``z, y, x``), boxes ``sample, corner``, ``source_size``
    ``sample, axis``; other arrays ``sample, <name>_1, ...`` so no two arrays claim one
    dimension with different sizes.
    """
    if name == "images" and ndim in (4, 5):
        return ["sample", *(["z"] if ndim == 5 else []), "y", "x", "channel"]
    if name == "masks" and ndim in (3, 4):
        return ["sample", *(["z"] if ndim == 4 else []), "y", "x"]
    if box and ndim == 2:
        return ["sample", "corner"]
    if name == "source_size" and ndim == 2:
        return ["sample", "axis"]
    return ["sample", *(f"{name}_{i}" for i in range(1, ndim))]


def root_attrs(
    *,
    split: str | None,
    num_samples: int,
    classes: Sequence[str],
    chunk_len: int,
    codec: str | None,
    order: str = "source",
    seed: int | None = None,
    boxes: Sequence[str] = (),
    source: Mapping[str, Any] | None = None,
    skipped: Sequence[Sequence[str]] = (),
) -> dict[str, Any]:
    """The ``daskimg`` root attribute of a new store (``complete: false`` until finished)."""
    return {
        "format_version": FORMAT_VERSION,
        "split": split,
        "num_samples": int(num_samples),
        "classes": [str(c) for c in classes],
        "boxes": [str(b) for b in boxes],
        "order": order,
        "seed": seed if order == "shuffled" else None,
        "codec": canonical_codec(codec) or DEFAULT_CODEC,
        "chunk_len": int(chunk_len),
        "complete": False,
        "created_with": versions(),
        "source": dict(source or {"root": None}),
        "skipped": [list(s) for s in skipped],
        "arrays": {},
    }


def create_arrays(
    store: Any,
    attrs: dict[str, Any],
    specs: Sequence[ArraySpec],
    *,
    n: int,
    shard_len: int,
) -> dict[str, zarr.Array]:
    """Create the group (with ``attrs``) and its empty arrays in ``store``; return the arrays.

    ``store`` is a local folder path or a zarr store. Every array gets ``N`` rows, inner
    chunks of ``attrs["chunk_len"]`` samples and shards of ``shard_len`` (or its spec's).
    Write through the returned objects: they carry ``write_empty_chunks=True``, which
    zarr does not persist, so an array re-opened from the group would silently skip
    chunks that are all zeros — and a missing chunk means damage. (One inner chunk per
    sample was measured too: 35% slower to decode, and plain zarr-python then read a
    ``*.zarr.zip`` at 18 samples/s; stores of that layout are still read.)
    """
    if isinstance(store, str):
        store = zarr.storage.LocalStore(store)
    group = zarr.open_group(store, mode="w", zarr_format=3)
    group.attrs["daskimg"] = attrs
    chunk_len = int(attrs["chunk_len"])
    out: dict[str, zarr.Array] = {}
    for spec in specs:
        shape = (n, *spec.sample_shape)
        shard = spec.shard_len or shard_len
        text = spec.dtype.kind == "O"
        out[spec.name] = group.create_array(
            spec.name,
            shape=shape,
            dtype=str if text else spec.dtype,
            chunks=(chunk_len, *spec.sample_shape),
            shards=(shard, *spec.sample_shape) if shard != chunk_len else None,
            compressors=[ZstdCodec(level=3), Crc32cCodec()]
            if text
            else compressors(spec.codec, spec.dtype),
            serializer="auto" if text else serializer(spec.codec),
            fill_value=None if text else 0,
            dimension_names=dimension_names(
                spec.name, len(shape), box=spec.name in (attrs.get("boxes") or ())
            ),
            config={"write_empty_chunks": True},
        )
    return out


def finish_attrs(
    attrs: dict[str, Any],
    array_meta: Mapping[str, bytes],
    tables: Mapping[str, str | None] | None = None,
) -> dict[str, Any]:
    """``attrs`` of a finished store: ``complete: true``, each array's ``zarr.json`` checksum
    and the crc32c of each of its chunks.

    ``array_meta`` maps every array name to the bytes of its final ``zarr.json``;
    ``tables`` maps array names to their chunk tables
    (:mod:`daskimg.store.chunktable`; ``None``: an array of an older store, without one).
    """
    tables = tables or {}
    arrays: dict[str, dict[str, Any]] = {}
    for name, raw in sorted(array_meta.items()):
        arrays[name] = {"zarr_json_crc32c": crc32c.crc32c(raw)}
        if tables.get(name) is not None:
            arrays[name][TABLE] = tables[name]
    out = {
        **{k: v for k, v in attrs.items() if k != ATTRS_CRC},
        "complete": True,
        "arrays": arrays,
    }
    out[ATTRS_CRC] = attrs_crc32c(out)
    return out


def attrs_crc32c(attrs: Mapping[str, Any]) -> int:
    """The crc32c of the ``daskimg`` attributes (all but this checksum), as canonical JSON:
    a flipped byte in a class name or any other root attribute is caught on opening, as one
    in an array's ``zarr.json`` is."""
    body = {k: v for k, v in attrs.items() if k != ATTRS_CRC}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return int(crc32c.crc32c(text.encode()))


# -- checks ----------------------------------------------------------------------------------
def _is_int(v: Any, low: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def check_attrs(
    where: str, meta: Any, *, check_complete: bool, keys: Iterable[str] = ()
) -> dict[str, Any]:
    """The ``daskimg`` attributes from a root ``zarr.json``, checked; newer or unfinished stores
    refused. ``keys``: the store's keys, to say what a store without a root ``zarr.json`` is."""
    if meta is None:
        raise no_root_error(where, set(keys))
    if not isinstance(meta, dict) or meta.get("node_type") != "group":
        kind = meta.get("node_type") if isinstance(meta, dict) else None
        if kind == "array" and meta.get("zarr_format") == 3:
            raise ForeignStoreError(
                f"{where!r} is a Zarr array, not a daskimg store (a Zarr group of arrays); "
                "open it with zarr.open_array instead"
            )
        raise MetadataError(  # a zarr.json is there: what it holds is wrong
            f"{where!r}: its root zarr.json has node_type {kind!r}, not 'group' (it holds "
            f"{json.dumps(meta)[:60]}); the store's metadata is damaged — re-create it"
        )
    if meta.get("zarr_format") != 3:  # plain zarr would not see the arrays
        raise MetadataError(
            f"{where!r}: its root zarr.json says zarr_format {meta.get('zarr_format')!r}, not 3; "
            "the store's metadata is damaged — re-create it"
        )
    attrs = (
        (meta.get("attributes") or {}).get("daskimg")
        if isinstance(meta.get("attributes"), dict)
        else None
    )
    if not isinstance(attrs, dict):
        flipped = _flipped_key(meta, "attributes", "daskimg") or _flipped_key(
            meta.get("attributes"), "daskimg", "format_version"
        )
        if flipped:  # a sound Zarr group of another program cannot be told by one bit
            raise MetadataError(
                f"{where!r}: its root zarr.json has a key {flipped!r} where a daskimg store has "
                "'attributes' and 'daskimg' (one bit apart): the store's metadata is damaged "
                "— re-create it"
            )
        raise ForeignStoreError(
            f"{where!r} is a Zarr group but not a daskimg store (no 'daskimg' attribute); "
            "open it with zarr.open_group instead"
        )
    fv = attrs.get("format_version")
    if not _is_int(fv, 1):
        raise FormatVersionError(
            f"{where!r} has an invalid format_version {fv!r} (an integer >= 1)"
        )
    assert isinstance(fv, int)
    if fv > FORMAT_VERSION:
        sealed = attrs.get(ATTRS_CRC)
        if (
            isinstance(sealed, int)
            and not isinstance(sealed, bool)
            and sealed not in (attrs_crc32c(attrs), attrs_crc32c({**attrs, "complete": True}))
        ):
            # its attributes' checksum (as this version seals them) does not match: a flipped
            # bit in format_version is as likely as a newer store; not said to be sound
            raise FormatVersionError(
                f"{where!r} has format version {fv}, newer than this daskimg reads "
                f"({FORMAT_VERSION}), or its root attributes are damaged (their checksum "
                "does not match): upgrade daskimg (pip install -U daskimg); if it still "
                "fails, the store is damaged — re-create it"
            )
        raise NewerFormatError(
            f"{where!r} has format version {fv}, newer than this daskimg reads ({FORMAT_VERSION}); "
            "upgrade daskimg (pip install -U daskimg)"
        )
    problems = []
    if not _is_int(attrs.get("num_samples")):
        problems.append(f"num_samples {attrs.get('num_samples')!r} is not a non-negative integer")
    classes = attrs.get("classes", [])
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        problems.append("classes is not a list of names")
    elif len(set(classes)) != len(classes):
        problems.append("classes names a class more than once")
    problems += _attr_type_problems(attrs)
    if "chunk_len" in attrs and not _is_int(attrs["chunk_len"], 1):
        problems.append(f"chunk_len {attrs['chunk_len']!r} is not a positive integer")
    boxes = attrs.get("boxes", [])
    if not isinstance(boxes, list) or not all(isinstance(b, str) for b in boxes):
        problems.append("boxes is not a list of array names")
    if "arrays" in attrs and not isinstance(attrs["arrays"], dict):
        problems.append("arrays is not a mapping of array names")
    if not isinstance(attrs.get("complete", False), bool):
        problems.append("complete is not true or false")
    if problems:
        raise MetadataError(
            f"{where!r}: the root attributes are damaged ({'; '.join(problems)}); re-create the store"
        )
    tables = any(isinstance(a, dict) and TABLE in a for a in (attrs.get("arrays") or {}).values())
    if ATTRS_CRC not in attrs and tables:
        # written with chunk tables, so with the root checksum too: its name was damaged,
        # and nothing would check the classes and the tables
        raise MetadataError(
            f"{where!r}: the checksum of its root attributes ({ATTRS_CRC}) is missing; the "
            "store's metadata is damaged — re-create it"
        )
    if (
        ATTRS_CRC in attrs
        and attrs_crc32c(attrs) != attrs[ATTRS_CRC]
        # a finished store's attributes marked unfinished on purpose (a store at a URL while
        # its chunks are uploaded: complete=false, the checksum of the finished ones)
        and not (
            attrs.get("complete") is False
            and attrs_crc32c({**attrs, "complete": True}) == attrs[ATTRS_CRC]
        )
    ):
        raise MetadataError(
            f"{where!r}: its root attributes (classes, num_samples, ...) changed after the store "
            "was written (checksum mismatch); the store is damaged — re-create it"
        )
    if "complete" not in attrs:  # every store has it (False until finished): damage
        raise MetadataError(
            f"{where!r}: its root attributes have no 'complete' mark, which every daskimg store "
            "records; the store's metadata is damaged — re-create it"
        )
    # after the checksum: a flipped byte in the name "complete" of a finished store said
    # "its writer stopped before the end", not that the store is damaged
    if check_complete and attrs.get("complete") is not True:
        raise IncompleteStoreError(
            f"{where!r} is incomplete (complete=false): its writer stopped before the end. "
            "Re-run the ingest/to_zarr that made it."
        )
    return attrs


def _flipped_key(mapping: Any, want: str, inside: str) -> str | None:
    """A key of ``mapping`` (a dict without ``want``) that is ``want`` with one bit flipped
    and whose value holds ``inside``, as ``want``'s does in a daskimg store (a group of
    another program's with an attribute ``Daskimg`` of its own is no damaged store)."""
    if not isinstance(mapping, dict) or want in mapping:
        return None
    for key, value in mapping.items():
        if isinstance(key, str) and len(key) == len(want) and isinstance(value, dict):
            diff = [ord(a) ^ ord(b) for a, b in zip(key, want, strict=True) if a != b]
            if len(diff) == 1 and diff[0] & (diff[0] - 1) == 0 and inside in value:
                return key
    return None


def no_root_error(where: str, keys: set[str]) -> Exception:
    """What a store without a root ``zarr.json`` is: a Zarr v2 store, a store one folder
    deeper (a folder zipped from outside it), a daskimg store that lost its root file, or
    no Zarr store (each was "not a Zarr v3 group")."""
    v2 = [n for n in (".zgroup", ".zarray", ".zattrs", ".zmetadata") if n in keys]
    if v2:
        return ForeignStoreError(
            f"{where!r} is a Zarr v2 store ({v2[0]} at its root), not a daskimg store: daskimg "
            "reads the Zarr v3 stores it writes. Open it with zarr.open_group(path, "
            "zarr_format=2), or store its arrays anew with "
            "daskimg.to_zarr(daskimg.ImageSet(images, labels), ...)"
        )
    tops = {k.split("/", 1)[0] for k in keys} - {"__MACOSX"}  # (macOS zips add that)
    top = next(iter(tops)) if len(tops) == 1 else ""
    # a store's arrays one level deeper (top/<array>/zarr.json); a store of one array that
    # lost its root file has top/zarr.json alone
    if (
        top
        and f"{top}/zarr.json" in keys
        and any(
            k.startswith(f"{top}/") and k.count("/") == 2 and k.endswith("/zarr.json") for k in keys
        )
    ):
        name = os.path.basename(where)
        if top == ".":  # members named ./zarr.json, ./images/...: a zip tool's odd names
            return ForeignStoreError(
                f"{where!r}: its members' names begin with './' (./zarr.json, ...), which "
                "zarr does not read as the store's root: zip the store again from inside its "
                f"folder, without './' (cd <store folder> && zip -0 -r ../fixed-{name} .), "
                f"or rename the members, then use fixed-{name}"
            )
        fix = (
            f"zip the store from inside its folder into a new, stored zip: (cd {top} && zip "
            f"-0 -r ../fixed-{name} .), then use fixed-{name}"
            if where.endswith(".zip")
            else f"open {where.rstrip('/')}/{top} instead"
        )
        return ForeignStoreError(
            f"{where!r} holds its store one folder deeper, under {top + '/'!r} (a folder "
            f"zipped from outside it?), where a store's zarr.json is at the root: {fix}"
        )
    arrays = sorted(k[: -len("/zarr.json")] for k in keys if k.endswith("/zarr.json"))
    if arrays and all(a.count("/") == 0 for a in arrays):
        return MetadataError(
            f"{where!r}: its root zarr.json is missing (its arrays {arrays[:4]} are there); "
            "the store's metadata is damaged — re-create it"
        )
    return ForeignStoreError(f"{where!r} is not a Zarr v3 group (no zarr.json at its root)")


def _attr_type_problems(attrs: Mapping[str, Any]) -> list[str]:
    """The other root attributes daskimg reads, of the types it writes (``split``, ``order``,
    ``seed``, ``codec``, ``source``, ``created_with``, ``skipped``), where present."""
    problems = []
    if attrs.get("split") is not None and not isinstance(attrs["split"], str):
        problems.append(f"split {attrs['split']!r} is not a name")
    if "order" in attrs and attrs["order"] not in ("source", "shuffled"):
        problems.append(f"order {attrs['order']!r} is not 'source' or 'shuffled'")
    if attrs.get("seed") is not None and not _is_int(attrs["seed"]):
        problems.append(f"seed {attrs['seed']!r} is not a non-negative integer")
    if "codec" in attrs and not isinstance(attrs["codec"], str):
        problems.append(f"codec {attrs['codec']!r} is not a name")
    for key in ("source", "created_with"):
        if key in attrs and not isinstance(attrs[key], dict):
            problems.append(f"{key} is not a mapping")
    skipped = attrs.get("skipped", [])
    if not isinstance(skipped, list) or not all(
        isinstance(s, list) and len(s) == 2 and all(isinstance(x, str) for x in s) for s in skipped
    ):
        problems.append("skipped is not a list of [file, reason] pairs")
    return problems


def required_arrays(attrs: Mapping[str, Any], present: Sequence[str]) -> list[str]:
    """The arrays a store must hold: those its ``arrays`` attribute lists; for stores written
    before it existed, ``images`` (unless written by ArrayWriter), ``labels`` when there are
    classes, and every array present."""
    declared = attrs.get("arrays")
    writer = (attrs.get("source") or {}).get("writer") == "ArrayWriter"
    if isinstance(declared, dict) and declared:
        need = set(declared)
        # what the format implies, whatever the list says: a list without 'images', or
        # without the 'labels' the store holds, opened as a set without them
        if not writer:
            need.add("images")
        if attrs.get("classes") and "labels" in present:
            need.add("labels")
    else:
        need = set(present)
        if not writer:
            need.add("images")
            if attrs.get("classes"):
                need.add("labels")
    need.update(attrs.get("boxes") or [])
    return sorted(need)


def check_arrays(reader: StoreReader, attrs: Mapping[str, Any]) -> dict[str, ArrayLayout]:
    """Every array the attributes imply, present and consistent: ``{name: layout}``.

    Raises :class:`MetadataError` naming the store, the array and what is wrong: a missing
    array, unparsable or changed ``zarr.json``, a length other than ``num_samples``, a
    chunk length other than the store's, or a shape absurd for the files it has (refused
    before any task graph is built).
    """
    names = required_arrays(attrs, reader.array_names())
    layouts = {name: check_array(reader, attrs, name) for name in names}
    check_together(reader.path, attrs, layouts)
    return layouts


def check_array(reader: StoreReader, attrs: Mapping[str, Any], name: str) -> ArrayLayout:
    """One array's checks (see :func:`check_arrays`); its layout."""
    where, n = reader.path, int(attrs["num_samples"])
    if f"{name}/zarr.json" not in reader.source.keys:
        if f"{name}\\zarr.json" in reader.source.keys:  # (a Windows zip tool's names)
            raise UnsupportedStoreError(
                f"{where}: its members' names use backslashes ({name}\\zarr.json, ...), "
                "which zarr does not read as folders (a Windows zip tool wrote them): zip the "
                "store's folder again with a tool that writes '/' (Python's zipfile, 7-Zip, "
                "`zip -0 -r`), stored (not deflated)"
            )
        _, said = reader.source.absent(f"{name}/zarr.json")
        raise MetadataError(
            f"{where}: array {name!r} is missing ({name}/zarr.json not found); "
            "the store is damaged — re-create it"
            if said == MISSING_SAID
            else f"{where}: array {name!r}: {name}/zarr.json "
            + reader.source.absent_said(f"{name}/zarr.json")
        )
    declared = attrs.get("arrays")
    entry = declared.get(name) if isinstance(declared, dict) else None
    if isinstance(entry, dict) and "zarr_json_crc32c" in entry:
        raw = reader.read_bytes(f"{name}/zarr.json") or b""
        if crc32c.crc32c(raw) != entry["zarr_json_crc32c"]:
            raise MetadataError(
                f"{where}: array {name!r}: its zarr.json changed after the store was written "
                "(checksum mismatch); the store is damaged — re-create it"
            )
    lay = reader.layout(name)
    reader.chunk_table(lay)  # a damaged table of chunk checksums is an error on opening
    if name == "labels" and (lay.dtype.kind not in "iu" or len(lay.shape) != 1):
        raise MetadataError(
            f"{where}: array 'labels' is {lay.dtype} of shape {list(lay.shape)}; labels are "
            "class indices, one integer per sample. The store's metadata is damaged — "
            "re-create the store"
        )
    if lay.shape[0] != n:
        raise MetadataError(
            f"{where}: array {name!r} has {lay.shape[0]} rows, the store {n} samples; "
            "the store is damaged — re-create it"
        )
    sizes = [
        size
        for k, size in reader.source.keys.items()
        if k.startswith(name + "/") and k != f"{name}/zarr.json"
    ]
    held = len(sizes)
    objects = lay.num_shards if lay.sharded else -(-n // lay.inner_len)
    if objects > 2 * held + 16:
        raise MetadataError(
            f"{where}: array {name!r} claims {n} samples in {objects} "
            f"{'shards' if lay.sharded else 'chunks'}, but the store holds {held} for it; its "
            "metadata is damaged — re-create the store"
        )
    # every chunk takes at least its 4-byte checksum (and a 16-byte shard index entry): a
    # length claimed in both the shape and the shard size is refused here, before a task
    # graph of one task per claimed chunk is built
    if num_inner(lay) * 4 > sum(sizes) + 64:
        raise MetadataError(
            f"{where}: array {name!r} claims {n} samples in {num_inner(lay)} chunks, but the "
            f"store holds {sum(sizes)} bytes for it; its metadata is damaged — re-create the store"
        )
    return lay


def check_labels(
    where: str, attrs: Mapping[str, Any], labels: np.ndarray, chunk_len: int, first: int = 0
) -> None:
    """Stored labels ``labels`` (samples ``first``...) lie in ``-1..len(classes) - 1``.

    A value beyond the classes in a chunk whose checksum matches was written that way or
    crafted: a :class:`MetadataError` naming the store, the sample and its chunk, before any
    label is handed out.
    """
    classes = attrs.get("classes") or ()
    if not classes or not len(labels):
        return
    bad = np.flatnonzero((labels < -1) | (labels >= len(classes)))
    if len(bad):
        i = first + int(bad[0])
        raise MetadataError(
            f"{where}: array 'labels', sample {i} (chunk {i // chunk_len}) holds "
            f"{int(labels[bad[0]])}, but the store has {len(classes)} classes (a label is "
            f"0..{len(classes) - 1}, or -1: no label); {len(bad)} label(s) out of range. Their "
            "checksum matches, so they were written this way or crafted — re-create the store"
        )


def check_fits_memory(where: str, lay: ArrayLayout) -> None:
    """Refuse an array whose chunk, decoded, is larger than this machine's memory: daskimg
    reads a whole chunk at a time (a crafted sample shape with resealed checksums made numpy
    raise MemoryError). Metadata-only work (``info``, adding a column) does not need it."""
    rows = lay.chunk_len  # a last chunk is decoded whole too, rows past the array included
    need, memory = rows * lay.row_bytes, memory_bytes()
    if memory and need > memory:
        raise MetadataError(
            f"{where}: array {lay.name!r} declares chunks of {rows} samples of "
            f"{list(lay.shape[1:])} {lay.dtype} ({need / 2**30:,.1f} GiB decoded), more than this "
            f"machine's {memory / 2**30:,.1f} GiB of memory: daskimg reads a whole chunk at a "
            "time, so the store cannot be read here. If it is a real store, re-write it with "
            "smaller chunks on a machine that can read it (to_zarr(open_zarr(path), new_path, "
            "chunks=..., order='source')); otherwise its metadata is damaged — re-create the store"
        )


def check_together(
    where: str, attrs: Mapping[str, Any], layouts: Mapping[str, ArrayLayout]
) -> None:
    """The checks across arrays: one chunk length along samples; boxes are (N, 4) arrays."""
    lens = {lay.chunk_len for lay in layouts.values()}
    want = attrs.get("chunk_len")
    if len(lens) > 1 or (want is not None and lens and lens != {want}):
        detail = ", ".join(f"{k}: {v.chunk_len}" for k, v in layouts.items())
        raise MetadataError(
            f"{where}: arrays must share one chunk length along samples"
            + (f" ({want})" if want is not None else "")
            + f"; found {detail}. The store is damaged or not written by daskimg"
        )
    for b in attrs.get("boxes") or []:
        lay = layouts.get(b)
        if lay is None or len(lay.shape) != 2 or lay.shape[1] != 4:
            raise MetadataError(f"{where}: boxes names {b!r}, which is not an (N, 4) array")


def memory_bytes() -> int | None:
    """This machine's physical memory, or None where the platform does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return None
