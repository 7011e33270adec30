"""Write back: the staging folder of :class:`daskimg.writer.ArrayWriter` — created,
checkpointed, resumed and finally published. While a writer is open, everything lives
next to the target in ``<path>.partial/``, under the advisory lock ``<path>.lock``:
``store/`` (the Zarr v3 group being built, a folder), ``writer.json`` (the last
checkpoint: arrays, chunking, rows per array) and ``tail-<array>-<shard>.bin`` (raw rows
of each array's unfinished shard, as of it). A checkpoint waits for the shard writes in
flight, fsyncs the shards written since the previous checkpoint, writes the rows of the
unfinished shards to the tail files (only the rows new since the previous checkpoint)
and then replaces ``writer.json`` atomically — that replacement is the durable point.
Resuming rewrites each array's metadata from ``writer.json``, deletes shards written
after it and reloads the tails. Publishing finishes the arrays, sets ``complete`` and
moves the store into place in one atomic step (``*.zarr.zip``: packed next to the target
and renamed over it; ``*.zarr``: the folder renamed; ``mode="a"``: the zip rewritten, or
one rename per new array). Until then ``<path>`` does not exist (or is the old store),
and :func:`daskimg.open_zarr` refuses the path while ``<path>.partial`` exists.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..errors import StoreExistsError
from ..store.codecs import DEFAULT_CODEC
from ..store.format import (
    ArraySpec,
    auto_chunk_len,
    create_arrays,
    finish_attrs,
    root_attrs,
)
from ..store.location import Location, fsync_path, remove_path
from ..store.open import open_store
from .shards import SHARD_BYTES, SHARD_CHUNKS_MAX, Column, ShardPool

__all__ = [
    "MANIFEST",
    "MANIFEST_VERSION",
    "Spec",
    "check_finished",
    "check_target",
    "create",
    "publish",
    "resume",
    "save_checkpoint",
    "write_json",
]

MANIFEST = "writer.json"
MANIFEST_VERSION = 1
#: one array: the shape and dtype of one sample
Spec = tuple[tuple[int, ...], np.dtype[Any]]


def check_target(
    path: str, names: Collection[str], *, overwrite: bool, chunks: int | None
) -> tuple[int, str, int, tuple[str, ...]]:
    """mode "a": check the store at ``path``.

    Return its chunk length, a token of its identity, its ``num_samples`` and ``classes``.
    """
    if not os.path.lexists(path):
        raise FileNotFoundError(
            f"no store at {path!r} to add arrays to; write a new one with mode='w'"
        )
    st = open_store(path)
    clash = sorted(set(st.layouts) & set(names))
    if clash and not overwrite:
        raise StoreExistsError(
            f"{path!r} already has arrays {clash}; pass overwrite=True to replace them"
        )
    lens = {lay.chunk_len for lay in st.layouts.values()}
    chunk_len = lens.pop()
    if chunks is not None and chunks != chunk_len:
        raise ValueError(
            f"chunks={chunks}, but {path!r} stores {chunk_len} samples per chunk; "
            "new arrays must use the store's chunk length (leave chunks unset)"
        )
    classes = tuple(st.attrs.get("classes") or ())
    raw = st.reader.read_bytes("zarr.json") or b""
    st.reader.close()
    return chunk_len, hashlib.sha256(raw).hexdigest(), int(st.attrs["num_samples"]), classes


def check_finished(path: str, specs: Mapping[str, Spec]) -> tuple[int, int]:
    """A complete store at ``path`` holding exactly the arrays ``specs``: its rows and chunk length.

    For a write to a URL whose upload did not happen: the finished local copy.
    """
    st = open_store(path)
    have = {
        n: {"shape": list(lay.shape[1:]), "dtype": lay.dtype.str} for n, lay in st.layouts.items()
    }
    chunk_len = min((lay.chunk_len for lay in st.layouts.values()), default=0)
    st.reader.close()
    want = {n: {"shape": list(s), "dtype": d.str} for n, (s, d) in specs.items()}
    if have != want:
        raise ValueError(
            f"cannot resume: the finished store at {path!r} (not yet uploaded) holds arrays "
            f"{have}, not {want}. Pass the same arrays, or resume=False to discard it"
        )
    return int(st.attrs["num_samples"]), chunk_len


def create(
    staging: Path,
    specs: Mapping[str, Spec],
    pool: ShardPool,
    *,
    mode: str,
    kind: str,
    chunks: int | None,
    shard_chunks: int | None,
    codec: str | None,
    classes: Sequence[str],
    split: str | None,
    token: str | None,
) -> tuple[dict[str, Any], dict[str, Column]]:
    """A new staging folder with empty arrays and its first checkpoint: (manifest, columns)."""
    widest = max(specs.values(), key=lambda s: int(np.prod(s[0])) * s[1].itemsize)
    chunk_len = chunks or auto_chunk_len(widest[0], widest[1], 2**62)
    os.makedirs(staging)
    try:
        store = staging / "store"
        attrs = root_attrs(
            split=split,
            num_samples=0,
            classes=classes,
            chunk_len=chunk_len,
            codec=codec,
            source={"root": None, "writer": "ArrayWriter"},
        )
        arr_specs = []
        for name, (shape, dtype) in specs.items():
            per_chunk = chunk_len * int(np.prod(shape)) * dtype.itemsize
            k = shard_chunks or min(SHARD_CHUNKS_MAX, max(1, SHARD_BYTES // max(per_chunk, 1)))
            arr_specs.append(ArraySpec(name, shape, dtype, codec or DEFAULT_CODEC, chunk_len * k))
        arrays = create_arrays(str(store), attrs, arr_specs, n=0, shard_len=chunk_len)
        metas = {}
        columns: dict[str, Column] = {}
        for spec in arr_specs:
            assert spec.shard_len is not None
            metas[spec.name] = json.loads((store / spec.name / "zarr.json").read_text())
            columns[spec.name] = Column(
                spec.name,
                spec.sample_shape,
                spec.dtype,
                spec.shard_len,
                arrays[spec.name],
                staging,
                pool,
            )
        manifest = {
            "version": MANIFEST_VERSION,
            "mode": mode,
            "kind": kind,
            "chunk_len": chunk_len,
            "codec": codec or DEFAULT_CODEC,
            "shard_chunks": {n: c.shard_len // chunk_len for n, c in columns.items()},
            "arrays": {n: {"shape": list(s), "dtype": d.str} for n, (s, d) in specs.items()},
            "array_meta": metas,
            "root_meta": json.loads((store / "zarr.json").read_text()),
            "target_token": token,
            "checkpoint": 0,
            "rows": 0,
            "columns": {n: [0, 0] for n in specs},
        }
        _fsync_tree(staging)  # the arrays' folders too: a resume after power loss needs them
        write_json(staging / MANIFEST, manifest)
        return manifest, columns
    except BaseException:
        remove_path(str(staging))  # nothing was appended yet: leave nothing behind
        raise


def save_checkpoint(
    staging: Path, manifest: dict[str, Any], columns: Mapping[str, Column], rows: int
) -> None:
    """Make ``rows`` rows durable (no shard write may be in flight): tails, then ``writer.json``."""
    for col in columns.values():
        col.sync()
    state = {n: [c.shards, c.fill] for n, c in columns.items()}
    manifest.update(rows=rows, columns=state)
    manifest["checkpoint"] += 1
    write_json(staging / MANIFEST, manifest)
    for col in columns.values():
        col.checkpointed()


def resume(
    staging: Path,
    specs: Mapping[str, Spec],
    pool: ShardPool,
    *,
    mode: str,
    chunks: int | None,
    shard_chunks: int | None,
    codec: str | None,
    token: str | None,
    classes: Sequence[str] = (),
    split: str | None = None,
) -> tuple[dict[str, Any], dict[str, Column]] | None:
    """Reload the last checkpoint of an unfinished write: (manifest, columns); None if there is none.

    ``classes`` and ``split`` (``mode="w"``), when given, must be those the write started with.
    """
    try:
        manifest = json.loads((staging / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if not (staging / "store").is_dir():
        return None  # killed after the store moved into place: nothing left to resume
    want = {n: {"shape": list(s), "dtype": d.str} for n, (s, d) in specs.items()}
    problems = []
    if manifest.get("version") != MANIFEST_VERSION:
        problems.append(f"writer format {manifest.get('version')}")
    if manifest.get("mode") != mode:
        problems.append(f"mode={manifest.get('mode')!r}")
    if manifest.get("arrays") != want:
        problems.append(f"arrays {manifest.get('arrays')}")
    if chunks is not None and manifest.get("chunk_len") != chunks:
        problems.append(f"chunks={manifest.get('chunk_len')}")
    if shard_chunks is not None and set(manifest.get("shard_chunks", {}).values()) != {
        shard_chunks
    }:
        problems.append(f"shard_chunks={manifest.get('shard_chunks')}")
    if codec is not None and manifest.get("codec") != codec:
        problems.append(f"codec={manifest.get('codec')!r}")
    if manifest.get("target_token") != token:
        problems.append("another version of the store it adds to")
    attrs = manifest.get("root_meta", {}).get("attributes", {}).get("daskimg", {})
    if mode == "w" and classes and list(classes) != attrs.get("classes"):
        problems.append(f"classes={attrs.get('classes')}")
    if mode == "w" and split is not None and split != attrs.get("split"):
        problems.append(f"split={attrs.get('split')!r}")
    if problems:
        raise ValueError(
            f"cannot resume the unfinished write at {str(staging)!r}: it was started "
            f"with {'; '.join(problems)}. Pass the same arguments, or resume=False to discard it"
        )
    store = staging / "store"
    if not all((store / name / "zarr.json").is_file() for name in specs):
        return None  # killed while moving arrays into the store: some are there already
    for f in [*store.rglob("*.partial"), *store.rglob("*.tmp")]:  # from a kill mid-write
        if f.is_file():  # not an array named "scores.tmp"
            f.unlink()
    write_json(store / "zarr.json", manifest["root_meta"])
    group = zarr.open_group(zarr.storage.LocalStore(store), mode="r+")
    columns: dict[str, Column] = {}
    for name, (shape, dtype) in specs.items():
        meta = manifest["array_meta"][name]
        shards, fill = manifest["columns"][name]
        shard_len = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
        meta["shape"] = [shards * shard_len, *shape]
        write_json(store / name / "zarr.json", meta)
        arr = group[name]
        assert isinstance(arr, zarr.Array)
        arr = arr.with_config({"write_empty_chunks": True})
        col = Column(name, shape, dtype, shard_len, arr, staging, pool)
        col.restore(shards, fill)
        columns[name] = col
    return manifest, columns


def publish(
    location: Location,
    staging: Path,
    columns: Mapping[str, Column],
    rows: int,
    *,
    mode: str,
) -> None:
    """Finish the arrays at ``rows`` rows and move the store into place; remove ``staging``.

    One atomic step either way (see :meth:`~daskimg.store.location.Location.publish`):
    ``mode="w"`` publishes the new store; ``mode="a"`` publishes the old store with the new
    arrays — a folder is assembled next to it from hard links to the old files (copies
    where links are impossible), the new arrays and the new root ``zarr.json``, then
    exchanged with it; a zip is rewritten with them. A kill leaves the old store or the
    new one, never a mix.
    """
    for col in columns.values():
        col.finish(rows)
    store = staging / "store"
    names = tuple(columns)
    root = store / "zarr.json"
    if mode == "w":
        meta = json.loads(root.read_text())
        attrs = {**meta["attributes"]["daskimg"], "num_samples": rows}
        metas = {n: (store / n / "zarr.json").read_bytes() for n in names}
        meta["attributes"]["daskimg"] = finish_attrs(attrs, metas)
        write_json(root, meta)
        location.publish(str(store))
    else:
        path = location.target
        st = open_store(path)
        old_metas = {n: st.reader.read_bytes(f"{n}/zarr.json") or b"" for n in st.layouts}
        meta = st.reader.json("zarr.json")
        st.reader.close()
        metas = {n: m for n, m in old_metas.items() if n not in names}
        metas.update({n: (store / n / "zarr.json").read_bytes() for n in names})
        meta["attributes"]["daskimg"] = finish_attrs(meta["attributes"]["daskimg"], metas)
        write_json(root, meta)
        if location.kind == "zip":
            location.publish(str(store), base=True, drop=names)
        else:
            _link_old_files(path, store, names)
            location.publish(str(store))
    remove_path(str(staging))


def _link_old_files(old: str, new: Path, names: Sequence[str]) -> None:
    """Hard-link (or copy) every file of the store ``old`` into ``new``, but the arrays ``names``
    and the root ``zarr.json`` that ``new`` holds."""
    skip = tuple(os.path.join(old, n) + os.sep for n in names)
    for dirpath, _, files in os.walk(old):
        if (dirpath + os.sep).startswith(skip):
            continue
        rel = os.path.relpath(dirpath, old)
        dest_dir = new / rel if rel != "." else new
        dest_dir.mkdir(parents=True, exist_ok=True)
        for f in files:
            if rel == "." and f == "zarr.json":
                continue
            src, dest = os.path.join(dirpath, f), dest_dir / f
            if dest.exists():
                continue
            try:
                os.link(src, dest)
            except OSError:
                shutil.copy2(src, dest)


def write_json(path: Path, obj: Any) -> None:
    """Replace ``path`` with ``obj`` as JSON, atomically and durably."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_path(str(path.parent))


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for f in files:
            fsync_path(Path(dirpath) / f)
        fsync_path(dirpath)
