"""Write back: the staging folder of :class:`daskimg.ArrayWriter` — created, checkpointed,
resumed and finally published.

While a writer is open, everything lives next to the target in ``<path>.partial/``, under
the advisory lock ``<path>.lock``: ``store/`` (the Zarr v3 group being built, a folder),
``writer.json`` (the manifest: arrays, chunking, the state of the last checkpoint) and the
rows not yet in a shard — for rows in arrival order (``order="store"``, see
:mod:`.shards`) ``tail-<array>-<shard>.bin``; for rows placed by index
(``order="index"``, see :mod:`.placed`) ``rows-<array>.bin``, ``text-<array>.bin`` and
the bitmap ``filled-<k>.bin``. A checkpoint waits for the shard writes in flight, fsyncs
what was written since the previous one and then replaces ``writer.json`` atomically —
that replacement is the durable point. Resuming rewrites the metadata from
``writer.json`` and restores the rows of that checkpoint exactly.

Publishing finishes the arrays, sets ``complete``, records in ``writer.json`` a digest of
the root ``zarr.json`` about to be published, and moves the store into place in one
atomic step (:meth:`~daskimg.store.location.Location.publish`). A kill at any point
leaves the old store (or none) or the new one; ``resume=True`` after a kill recognises by
that digest whether the new store was published already.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import crc32c
import numpy as np
import zarr

from ..errors import DaskImgError, StoreExistsError
from ..store.bytesource import LocalDir
from ..store.chunktable import TABLE, read_tables
from ..store.codecs import DEFAULT_CODEC
from ..store.format import ArraySpec, auto_chunk_len, create_arrays, finish_attrs, root_attrs
from ..store.location import WRITER_MANIFEST, Location, fsync_path, fsync_tree, remove_path
from ..store.open import open_store
from .checks import TEXT, Spec
from .placed import Placed, PlacedColumn
from .shards import SHARD_BYTES, SHARD_CHUNKS_MAX, Appended, Column, ShardPool

logger = logging.getLogger("daskimg")

__all__ = [
    "MANIFEST",
    "MANIFEST_VERSION",
    "Sink",
    "check_finished",
    "check_target",
    "create",
    "publish",
    "published",
    "resume",
    "save_checkpoint",
    "write_json",
]

MANIFEST = WRITER_MANIFEST
#: 2: ``order`` ("store" or "index"), ``num_samples``, tail sizes; 3: the crc32c of the
#: saved rows (each column's tail; per row for ``order="index"``, ``row_crc32c``). 1 and 2
#: (rows in arrival order; without checksums) resume too
MANIFEST_VERSION = 3
#: bytes per sample assumed for a text array when sizing chunks
TEXT_BYTES = 64
#: at most this many samples per chunk (by default) when there is text: zarr pads the last
#: chunk with empty strings, 4 bytes each, which compress so well that longer chunks would
#: exceed the compression ratio daskimg's checked reader accepts from a Zstandard frame
TEXT_CHUNK_MAX = 4096
Sink = Appended | Placed


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
    order: str,
    num_samples: int | None,
    chunks: int | None,
    shard_chunks: int | None,
    codec: str | None,
    classes: Sequence[str],
    split: str | None,
    token: str | None,
    where: str,
) -> tuple[dict[str, Any], Sink]:
    """A new staging folder with empty arrays and its first checkpoint: (manifest, sink).

    ``order="index"`` needs ``num_samples``: its arrays have that many rows from the start.
    """
    placed = order == "index"
    assert not placed or num_samples is not None
    n = num_samples if placed else 0
    widest = max(specs.values(), key=lambda s: _sample_bytes(*s))
    chunk_len = chunks or auto_chunk_len((_sample_bytes(*widest),), "u1", num_samples or 2**62)
    if chunks is None and any(d == TEXT for _, d in specs.values()):
        chunk_len = min(chunk_len, TEXT_CHUNK_MAX)
    os.makedirs(staging)
    try:
        store = staging / "store"
        attrs = root_attrs(
            split=split,
            num_samples=n or 0,
            classes=classes,
            chunk_len=chunk_len,
            codec=codec,
            source={"root": None, "writer": "ArrayWriter"},
        )
        arr_specs = []
        for name, (shape, dtype) in specs.items():
            per_chunk = chunk_len * _sample_bytes(shape, dtype)
            k = shard_chunks or min(SHARD_CHUNKS_MAX, max(1, SHARD_BYTES // max(per_chunk, 1)))
            if placed:  # no shard longer than the array
                k = min(k, -(-(n or 1) // chunk_len))
            arr_specs.append(ArraySpec(name, shape, dtype, codec or DEFAULT_CODEC, chunk_len * k))
        arrays = create_arrays(str(store), attrs, arr_specs, n=n or 0, shard_len=chunk_len)
        metas = {s.name: json.loads((store / s.name / "zarr.json").read_text()) for s in arr_specs}
        manifest: dict[str, Any] = {
            "version": MANIFEST_VERSION,
            "mode": mode,
            "kind": kind,
            "order": order,
            "num_samples": num_samples,
            "chunk_len": chunk_len,
            "codec": codec or DEFAULT_CODEC,
            "shard_chunks": {s.name: (s.shard_len or chunk_len) // chunk_len for s in arr_specs},
            "arrays": _arrays_entry(specs),
            "array_meta": metas,
            "root_meta": json.loads((store / "zarr.json").read_text()),
            "target_token": token,
            "checkpoint": 0,
            "rows": 0,
        }
        sink: Sink
        if placed:
            assert num_samples is not None
            cols = {}
            for spec in arr_specs:
                assert spec.shard_len is not None
                cols[spec.name] = PlacedColumn(
                    spec.name, spec.sample_shape, spec.dtype, spec.shard_len,
                    arrays[spec.name], staging, num_samples,
                )  # fmt: skip
                cols[spec.name].create()
            sink = Placed(cols, pool, np.zeros(num_samples, dtype=bool), where)
            manifest.update(filled=None, text_bytes={}, row_crc32c=True)
        else:
            columns = {}
            for spec in arr_specs:
                assert spec.shard_len is not None
                columns[spec.name] = Column(
                    spec.name, spec.sample_shape, spec.dtype, spec.shard_len,
                    arrays[spec.name], staging, pool,
                )  # fmt: skip
            sink = Appended(columns, pool, 0)
            manifest["columns"] = {s.name: [0, 0, 0] for s in arr_specs}
        fsync_tree(staging)  # the arrays' folders too: a resume after power loss needs them
        if placed:
            save_checkpoint(staging, manifest, sink)
        else:
            write_json(staging / MANIFEST, manifest)
        return manifest, sink
    except BaseException:
        remove_path(str(staging))  # nothing was appended yet: leave nothing behind
        raise


def _sample_bytes(shape: tuple[int, ...], dtype: np.dtype[Any]) -> int:
    return TEXT_BYTES if dtype == TEXT else int(np.prod(shape)) * dtype.itemsize


def _arrays_entry(specs: Mapping[str, Spec]) -> dict[str, Any]:
    return {
        n: {"shape": list(s), "dtype": "str" if d == TEXT else d.str} for n, (s, d) in specs.items()
    }


def save_checkpoint(staging: Path, manifest: dict[str, Any], sink: Sink) -> None:
    """Make every row of ``sink`` durable; the replacement of ``writer.json`` is the durable point."""
    if isinstance(sink, Placed):
        sink.sync()
        k = manifest["checkpoint"] + 1
        name = f"filled-{k}.bin"
        bits = np.packbits(sink.filled).tobytes()
        with open(staging / name, "wb") as fh:
            fh.write(bits)
            fh.flush()
            os.fsync(fh.fileno())
        fsync_path(staging)
        old = manifest.get("filled")
        manifest.update(
            rows=sink.rows,
            checkpoint=k,
            filled=name,
            filled_crc32c=crc32c.crc32c(bits),
            text_bytes={n: c.text_bytes for n, c in sink.columns.items() if c.text},
        )
        write_json(staging / MANIFEST, manifest)
        if old and old != name:
            (staging / old).unlink(missing_ok=True)
        return
    sink.pool.drain()
    for col in sink.columns.values():
        col.sync()
    manifest.update(rows=sink.rows, columns=sink.state())
    manifest["checkpoint"] += 1
    write_json(staging / MANIFEST, manifest)
    for col in sink.columns.values():
        col.checkpointed()


def read_manifest(staging: Path) -> dict[str, Any] | None:
    """The last checkpoint's ``writer.json``, or None if there is none (or it is unreadable)."""
    try:
        manifest = json.loads((staging / MANIFEST).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return manifest if isinstance(manifest, dict) else None


def published(staging: Path, location: Location) -> int | None:
    """If the write in ``staging`` was published (killed after its store moved into place,
    before the staging folder was removed): its number of rows; else None."""
    manifest = read_manifest(staging)
    if manifest is None or not is_published(location, manifest):
        return None
    return int(manifest["rows"])


def is_published(location: Location, manifest: Mapping[str, Any]) -> bool:
    """Whether the store at ``location`` is the one :func:`publish` was publishing with
    ``manifest`` (its root ``zarr.json`` has the digest recorded before the move)."""
    digest = manifest.get("publishing")
    if not digest:
        return False
    try:
        source = location.open()
    except (FileNotFoundError, DaskImgError):
        return False
    try:
        raw = source.read("zarr.json") if "zarr.json" in source.keys else b""
    except DaskImgError:
        return False
    finally:
        source.close()
    return hashlib.sha256(raw).hexdigest() == digest


def resume(
    staging: Path,
    specs: Mapping[str, Spec],
    pool: ShardPool,
    *,
    mode: str,
    order: str,
    num_samples: int | None,
    chunks: int | None,
    shard_chunks: int | None,
    codec: str | None,
    token: str | None,
    classes: Sequence[str] = (),
    split: str | None = None,
    where: str = "",
) -> tuple[dict[str, Any], Sink] | None:
    """Reload the last checkpoint of an unfinished write: (manifest, sink); None if there is none.

    ``classes`` and ``split`` (``mode="w"``), when given, must be those the write started with.
    """
    manifest = read_manifest(staging)
    if manifest is None and (staging / MANIFEST).is_file():
        # written atomically (write_json): unreadable is damage, never a kill mid-write, and
        # starting over would drop every row it records without a word
        raise DaskImgError(
            f"cannot resume the unfinished write at {str(staging)!r}: its {MANIFEST} is "
            "damaged (not readable JSON), so the rows written so far cannot be found. Pass "
            "resume=False to discard them and start over"
        )
    if manifest is None or not (staging / "store").is_dir():
        return None
    with _staged_damage(staging):
        problems = []
        if manifest.get("version") not in (1, 2, MANIFEST_VERSION):
            problems.append(f"writer format {manifest.get('version')}")
        if manifest.get("mode") != mode:
            problems.append(f"mode={manifest.get('mode')!r}")
        if manifest.get("order", "store") != order:
            was = manifest.get("order", "store")
            # order='index' is the default with num_samples=: leaving that out changed it
            problems.append(
                f"order={was!r}"
                + (
                    f" (the default with num_samples={manifest.get('num_samples')})"
                    if was == "index" and mode == "w"
                    else ""
                )
            )
        if order == "index" and manifest.get("num_samples") != num_samples:
            problems.append(f"num_samples={manifest.get('num_samples')}")
        if manifest.get("arrays") != _arrays_entry(specs):
            problems.append(f"arrays {manifest.get('arrays')}")
        if chunks is not None and manifest.get("chunk_len") != chunks:
            problems.append(f"chunks={manifest.get('chunk_len')}")
        if shard_chunks is not None:
            want = shard_chunks
            if order == "index" and isinstance(manifest.get("chunk_len"), int) and num_samples:
                # create() shortened the shards of a placed write to the array's length
                want = min(want, -(-num_samples // manifest["chunk_len"]))
            if set(manifest.get("shard_chunks", {}).values()) != {want}:
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
            changed = "another version of the store it adds to" in problems
            raise ValueError(
                f"cannot resume the unfinished write at {str(staging)!r}: it was started "
                f"with {'; '.join(problems)}. "
                + (
                    "The store was replaced or rewritten since: the rows staged belong to the "
                    "samples of the one before, so resume=False (discard them and start again) "
                    "is the way on"
                    if changed
                    else "Pass the same arguments, or resume=False to discard it"
                )
            )
        store = staging / "store"
        if not all((store / name / "zarr.json").is_file() for name in specs):
            return None  # the staging folder is not what a checkpoint left
        manifest.pop("publishing", None)  # it was not published (see published())
        write_json(store / "zarr.json", manifest["root_meta"])
        if order == "index":
            return manifest, _resume_placed(staging, manifest, specs, pool, where)
        for f in [*store.rglob("*.partial"), *store.rglob("*.tmp")]:  # from a kill mid-write
            if f.is_file():  # not an array named "scores.tmp"
                f.unlink()
        group = zarr.open_group(zarr.storage.LocalStore(store), mode="r+")
        columns: dict[str, Column] = {}
        for name, (shape, dtype) in specs.items():
            meta = manifest["array_meta"][name]
            shards, fill, *tail = manifest["columns"][name]
            shard_len = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
            if shards * shard_len + fill != int(manifest["rows"]):
                raise DaskImgError(
                    f"cannot resume the unfinished write at {str(staging)!r}: its {MANIFEST} "
                    f"records {manifest['rows']} rows, but {shards} shards of {shard_len} and "
                    f"{fill} more of {name!r}; it was changed by hand or is damaged. Pass "
                    "resume=False to discard the write and start over"
                )
            meta["shape"] = [shards * shard_len, *shape]
            write_json(store / name / "zarr.json", meta)
            arr = group[name]
            assert isinstance(arr, zarr.Array)
            arr = arr.with_config({"write_empty_chunks": True})
            col = Column(name, shape, dtype, shard_len, arr, staging, pool)
            col.restore(shards, fill, tail[0] if tail else None, tail[1] if len(tail) > 1 else None)
            columns[name] = col
        return manifest, Appended(columns, pool, int(manifest["rows"]))


@contextlib.contextmanager
def _staged_damage(staging: Path) -> Iterator[None]:
    """Staged files missing or damaged, said as such (a bare FileNotFoundError, KeyError or
    broadcast error before), with what to do."""
    try:
        yield
    except DaskImgError:
        raise  # said already (some are OSErrors: a checksum, a lock)
    except OSError as e:
        if e.errno in _NOT_STAGED_BYTES:
            # a full disk, a file size limit, no descriptors: the staged rows are sound, and
            # resume=False would discard them (the caller names the store)
            raise
        raise _damaged(staging, e) from e
    except (KeyError, TypeError, IndexError, AttributeError) as e:
        raise _damaged(staging, e) from e


#: OS errors that say nothing of the staged files' bytes
_NOT_STAGED_BYTES = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EMFILE, errno.ENFILE, errno.ENOMEM}
)


def _damaged(staging: Path, e: BaseException) -> DaskImgError:
    return DaskImgError(
        f"cannot resume the unfinished write at {str(staging)!r}: its staged files are "
        f"damaged or missing ({type(e).__name__}: {e}). Pass resume=False to discard "
        "them and start over"
    )


def _resume_placed(
    staging: Path, manifest: dict[str, Any], specs: Mapping[str, Spec], pool: ShardPool, where: str
) -> Placed:
    n = int(manifest["num_samples"])
    bits = (staging / str(manifest["filled"])).read_bytes()
    if crc32c.crc32c(bits) != manifest.get("filled_crc32c") or len(bits) != -(-n // 8):
        raise DaskImgError(
            f"cannot resume {str(staging)!r}: its record of the rows written is damaged; "
            "pass resume=False to start over"
        )
    filled = np.unpackbits(np.frombuffer(bits, np.uint8), count=n).astype(bool)
    store = staging / "store"
    for name in specs:
        write_json(store / name / "zarr.json", manifest["array_meta"][name])
    group = zarr.open_group(zarr.storage.LocalStore(store), mode="r+")
    cols: dict[str, PlacedColumn] = {}
    try:
        for name, (shape, dtype) in specs.items():
            meta = manifest["array_meta"][name]
            shard_len = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
            arr = group[name]
            assert isinstance(arr, zarr.Array)
            arr = arr.with_config({"write_empty_chunks": True})
            checked = bool(manifest.get("row_crc32c"))  # version 3 on
            cols[name] = col = PlacedColumn(name, shape, dtype, shard_len, arr, staging, n, checked)
            col.reopen(int(manifest.get("text_bytes", {}).get(name, 0)))
            col.restore(filled, pool)
    except BaseException:
        for col in cols.values():
            col.close()
        raise
    return Placed(cols, pool, filled, where)


def publish(
    location: Location,
    staging: Path,
    manifest: dict[str, Any],
    sink: Sink,
    *,
    mode: str,
) -> None:
    """Finish the arrays and move the store into place; remove ``staging``.

    One atomic step either way (see :meth:`~daskimg.store.location.Location.publish`):
    ``mode="w"`` publishes the new store; ``mode="a"`` publishes the old store with the new
    arrays — a folder is assembled next to it from hard links to the old files (copies
    where links are impossible), the new arrays and the new root ``zarr.json``, then
    exchanged with it; a zip is rewritten with them. A kill leaves the old store or the
    new one, never a mix.
    """
    rows = sink.rows
    if isinstance(sink, Placed):
        sink.finish()
    else:
        for col in sink.columns.values():
            col.finish(rows)
    store = staging / "store"
    names = tuple(sink.columns)
    root = store / "zarr.json"
    if mode == "w":
        meta = json.loads(root.read_text())
        attrs = {**meta["attributes"]["daskimg"], "num_samples": rows}
        metas = {n: (store / n / "zarr.json").read_bytes() for n in names}
        meta["attributes"]["daskimg"] = finish_attrs(
            attrs, metas, read_tables(LocalDir(str(store)), metas)
        )
    else:
        st = open_store(location)
        raw = st.reader.read_bytes("zarr.json") or b""
        old_metas = {n: st.reader.read_bytes(f"{n}/zarr.json") or b"" for n in st.layouts}
        meta = st.reader.json("zarr.json")
        st.reader.close()
        if hashlib.sha256(raw).hexdigest() != manifest.get("target_token"):
            raise DaskImgError(
                f"{location.target!r} changed since this write started (its zarr.json differs); "
                "nothing was published. Add the arrays again with resume=False"
            )
        metas = {n: m for n, m in old_metas.items() if n not in names}
        old_attrs = meta["attributes"]["daskimg"]
        tables: dict[str, str | None] = {
            n: (old_attrs.get("arrays") or {}).get(n, {}).get(TABLE) for n in metas
        }
        new = {n: (store / n / "zarr.json").read_bytes() for n in names}
        metas.update(new)
        tables.update(read_tables(LocalDir(str(store)), new))
        meta["attributes"]["daskimg"] = finish_attrs(old_attrs, metas, tables)
        if meta.get("consolidated_metadata") is not None:
            # another tool's copy of every array's zarr.json (zarr.consolidate_metadata),
            # which plain zarr and xarray read instead: stale now, it would hide the new
            # arrays or misread a replaced one
            meta.pop("consolidated_metadata")
            logger.warning(
                "%s: dropped the consolidated metadata of its root zarr.json, out of date "
                "with the arrays written; run zarr.consolidate_metadata again if you use it",
                location.target,
            )
    write_json(root, meta)
    # what is about to be published: a resume after a kill from here on tells by this
    # digest whether the store at the target is the new one
    manifest["publishing"] = hashlib.sha256(root.read_bytes()).hexdigest()
    write_json(staging / MANIFEST, manifest)
    if isinstance(sink, Placed):
        sink.close()
    if mode == "w" or location.kind == "zip":
        location.publish(str(store), base=mode == "a", drop=names if mode == "a" else ())
    else:
        _link_old_files(location.target, store, names)
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
