"""Store: stores at URLs (object storage such as ``s3://bucket/out/train.zarr.zip``).

Object storage has no rename and no lock, so a write stays crash-safe another way:

* ``*.zarr.zip``: the store is built in a local temporary folder by the local code path
  (staging, checksums, compaction of skipped files), then uploaded as one object with
  one ``put``. On S3 (and GCS, Azure) an object becomes visible only when its upload
  completes (a multipart upload included), so a reader sees the old object, none, or
  the whole new one. Other filesystems get ``<url>.partial`` and then a move. This needs
  local disk for one store (``TMPDIR``), and on a cluster of several machines the
  workers must share that disk: there, write a ``*.zarr`` URL instead.
* ``*.zarr``: written in place, straight from the workers: group and array metadata
  with ``complete: false`` first, then every shard, then the small arrays, and the root
  ``zarr.json`` with ``complete: true`` last (one ``put``, atomic). A write that stops
  anywhere leaves ``complete: false`` (or no root ``zarr.json``), which
  :func:`daskimg.open_zarr` refuses. Replacing a store first deletes its root
  ``zarr.json``, so an interrupted overwrite never shows old metadata over new chunks.
  An unfinished store at the URL is replaced without ``overwrite=True``; a complete one
  only with it.
* :class:`daskimg.ArrayWriter` to a URL builds the store locally (its own staging,
  checkpoints and resume) and :func:`upload_store` uploads it at ``close()``: a zip
  as above, a folder cleared first and then uploaded with its root ``zarr.json`` last.
* A multipart upload that fails may leave invisible parts behind on S3, billed until an
  ``AbortIncompleteMultipartUpload`` lifecycle rule (or ``s3fs``'s own abort) removes them.
* No lock spans machines: two writers on one URL at once are not detected (for a zip
  the last upload wins, whole; for a folder, don't).

Reading: a folder is a zarr ``FsspecStore``; a zip is read in place with byte-range
requests through fsspec's ``ReferenceFileSystem``, from the member offsets in the zip's
central directory (read once at open; zipfile's own seek in Python < 3.12 would read a
stored member from its start, i.e. whole shards for every chunk).
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import struct
import tempfile
import zipfile
from collections.abc import Mapping
from typing import Any

import dask.array as da
import numpy as np
import zarr
from zarr.abc.store import Store
from zarr.storage import FsspecStore

from ..errors import DaskImgError, IncompleteStoreError, StoreExistsError
from ..read.files import FileSource
from ..read.imageset import ImageSet
from ..remote import ATOMIC_PUT, filesystem, protocol_of
from .format import check_attrs, check_writable, plan_store
from .location import store_kind
from .open import imageset_of
from .write import rewrite_kept, skipped_rows, to_zarr, write_arrays

__all__ = [
    "check_target_url",
    "open_store",
    "open_zarr_url",
    "read_attrs_url",
    "to_zarr_url",
    "upload_store",
]

_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # a zip member's local file header


def to_zarr_url(
    imageset: ImageSet,
    url: str,
    storage_options: Mapping[str, Any] | None,
    *,
    chunks: int | None,
    shard_chunks: int | None,
    codec: str | None,
    order: str,
    seed: int,
    split: str | None,
    overwrite: bool,
    progress: bool,
) -> str:
    """:func:`daskimg.to_zarr` to a URL (see the module notes on crash safety); return the URL."""
    url = url.rstrip("/")
    kind = store_kind(url)
    check_writable(imageset)
    fs, key = filesystem(url, storage_options)
    key = key.rstrip("/")
    fs.invalidate_cache(key)
    _check_target(fs, key, url, kind, overwrite=overwrite)
    if kind == "zip":
        with tempfile.TemporaryDirectory(prefix="daskimg-upload-") as tmp:
            local = to_zarr(
                imageset,
                os.path.join(tmp, posixpath.basename(key)),
                chunks=chunks,
                shard_chunks=shard_chunks,
                codec=codec,
                order=order,
                seed=seed,
                split=split,
                progress=progress,
            )
            _put_zip(fs, key, local, url)
        fs.invalidate_cache(key)
        return url

    _clear(fs, key)
    _clear(fs, key + ".uncompacted")
    ds, chunk_len, shard_len, attrs = plan_store(
        imageset,
        chunks=chunks,
        shard_chunks=shard_chunks,
        codec=codec,
        order=order,
        seed=seed,
        split=split,
    )
    store = FsspecStore.from_url(url, storage_options=dict(storage_options or {}))
    skip = ds.on_error == "skip" and isinstance(ds.row_source, FileSource)
    try:
        ok = write_arrays(
            store, ds, chunk_len, shard_len, codec, attrs, skip=skip, progress=progress
        )
        if ok is not None and not ok.all():
            good, kept = skipped_rows(ds, ok, attrs)
            _move(fs, key, key + ".uncompacted")
            old = FsspecStore.from_url(
                url + ".uncompacted", storage_options=dict(storage_options or {}), read_only=True
            )
            rewrite_kept(
                old, store, kept, good, chunk_len, shard_len, codec, attrs, progress=progress
            )
            _clear(fs, key + ".uncompacted")
    except BaseException:
        # an error (not a kill): leave nothing half-written behind
        with contextlib.suppress(Exception):
            _clear(fs, key)
            _clear(fs, key + ".uncompacted")
        raise
    imageset.skipped = [(str(p), str(r)) for p, r in attrs["skipped"]]
    attrs["complete"] = True
    # the last write: the root zarr.json, now with complete=true, in one atomic put
    zarr.open_group(store, mode="r+").attrs["daskimg"] = attrs
    fs.invalidate_cache(key)
    return url


def check_target_url(
    url: str, storage_options: Mapping[str, Any] | None, *, overwrite: bool
) -> None:
    """Refuse a store at ``url`` that only ``overwrite=True`` may replace (see :func:`upload_store`)."""
    url = url.rstrip("/")
    kind = store_kind(url)
    fs, key = filesystem(url, storage_options)
    key = key.rstrip("/")
    fs.invalidate_cache(key)
    _check_target(fs, key, url, kind, overwrite=overwrite)


def upload_store(local: str, url: str, storage_options: Mapping[str, Any] | None) -> None:
    """Upload the finished local store ``local`` to ``url``, replacing what is there.

    A ``*.zarr.zip`` is one object, put whole (see the module notes). A ``*.zarr``
    folder: the old one is cleared (its root ``zarr.json`` first), a root ``zarr.json``
    saying ``complete: false`` is put (so what a kill leaves is an unfinished store,
    replaced without ``overwrite=True``), every other file is uploaded, and the root
    ``zarr.json`` with ``complete: true`` last. A failure or a kill anywhere leaves no
    store that opens as complete at ``url``.
    """
    url = url.rstrip("/")
    fs, key = filesystem(url, storage_options)
    key = key.rstrip("/")
    fs.invalidate_cache(key)
    if store_kind(url) == "zip":
        _put_zip(fs, key, local, url)
    else:
        _clear(fs, key)
        root = os.path.join(local, "zarr.json")
        with open(root, "rb") as fh:
            meta = json.load(fh)
        meta["attributes"]["daskimg"]["complete"] = False
        fs.pipe_file(key + "/zarr.json", json.dumps(meta, indent=2).encode())
        files = [os.path.join(d, f) for d, _, names in os.walk(local) for f in sorted(names)]
        files = [f for f in files if f != root]
        rel = [os.path.relpath(f, local).replace(os.sep, "/") for f in files]
        if files:  # lists: no glob or folder guessing
            fs.put(files, [f"{key}/{r}" for r in rel])
        fs.put_file(root, key + "/zarr.json")
    fs.invalidate_cache(key)


def _check_target(fs: Any, key: str, url: str, kind: str, *, overwrite: bool) -> None:
    """Refuse an existing store (or other objects) at ``key`` unless ``overwrite``."""
    if overwrite:
        return
    if kind == "zip":
        if fs.exists(key):
            raise StoreExistsError(f"{url!r} exists; pass overwrite=True to replace it")
        return
    state = _dir_state(fs, key)
    if state == "complete":
        raise StoreExistsError(f"{url!r} holds a complete store; pass overwrite=True to replace it")
    if state == "other":
        raise StoreExistsError(
            f"{url!r} holds objects but no daskimg store (or an overwrite that stopped); "
            "pass overwrite=True to replace them"
        )


def _put_zip(fs: Any, key: str, local: str, url: str) -> None:
    """Upload the zip file ``local`` as the object ``key``: whole or not at all."""
    if protocol_of(url) in ATOMIC_PUT:
        fs.put_file(local, key)  # the object appears only once the upload completes
    else:
        fs.put_file(local, key + ".partial")
        fs.mv(key + ".partial", key)


def _dir_state(fs: Any, key: str) -> str:
    """``"absent"``, ``"complete"``, ``"incomplete"`` (a daskimg store) or ``"other"``."""
    try:
        meta = json.loads(fs.cat_file(key + "/zarr.json"))
    except FileNotFoundError:
        return "other" if fs.exists(key) else "absent"
    attrs = (meta.get("attributes") or {}).get("daskimg")
    if not isinstance(attrs, dict):
        return "other"
    return "complete" if attrs.get("complete") is True else "incomplete"


def _clear(fs: Any, key: str) -> None:
    """Remove a store folder, its root ``zarr.json`` first (so it stops looking like a store)."""
    fs.invalidate_cache(key)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(key + "/zarr.json")
    if fs.exists(key):
        fs.rm(key, recursive=True)
    fs.invalidate_cache(key)


def _move(fs: Any, key: str, dest: str) -> None:
    """Move a folder of objects (server-side copies, then removal of the originals)."""
    fs.invalidate_cache(key)
    files = fs.find(key)
    fs.copy(files, [dest + f[len(key) :] for f in files])  # lists: no glob or folder guessing
    _clear(fs, key)


def open_store(
    url: str, storage_options: Mapping[str, Any] | None, *, check_complete: bool = True
) -> tuple[Store, dict[str, Any], dict[str, int]]:
    """A read-only zarr store at ``url``, its checked attributes, and stored bytes per key."""
    url = url.rstrip("/")
    kind = store_kind(url)
    fs, key = filesystem(url, storage_options)
    key = key.rstrip("/")
    fs.invalidate_cache(key)
    opts = dict(storage_options or {})
    if kind == "dir":
        try:
            raw = fs.cat_file(key + "/zarr.json")
        except FileNotFoundError:
            if fs.exists(key):
                raise IncompleteStoreError(
                    f"{url!r} has objects but no root zarr.json: a write into it stopped "
                    "(or it is not a store). Re-run the to_zarr that made it."
                ) from None
            raise FileNotFoundError(f"no store at {url!r}") from None
        attrs = check_attrs(url, json.loads(raw), check_complete=check_complete)
        sizes = {k[len(key) + 1 :]: int(v["size"]) for k, v in fs.find(key, detail=True).items()}
        return FsspecStore.from_url(url, storage_options=opts, read_only=True), attrs, sizes
    if not fs.exists(key):
        raise FileNotFoundError(
            f"no store at {url!r} (a *.zarr.zip appears there only once its upload is complete)"
        )
    refs = _zip_refs(fs, key, fs.unstrip_protocol(key))
    if "zarr.json" not in refs:
        raise DaskImgError(f"{url!r} is a zip file without a zarr.json: not a daskimg store")
    _, start, size = refs["zarr.json"]
    meta = json.loads(fs.cat_file(key, start=start, end=start + size))
    attrs = check_attrs(url, meta, check_complete=check_complete)
    import fsspec

    refs_fs = fsspec.filesystem(
        "reference",
        fo={"version": 1, "refs": refs},
        remote_protocol=protocol_of(url),
        remote_options={**opts, "asynchronous": True},
        asynchronous=True,
        skip_instance_cache=True,
    )
    sizes = {k: int(v[2]) for k, v in refs.items()}
    return FsspecStore(refs_fs, path="", read_only=True), attrs, sizes


def _zip_refs(fs: Any, key: str, url: str) -> dict[str, list[Any]]:
    """``{member: [url, data offset, size]}`` from the central directory and local headers."""
    with fs.open(key, "rb", block_size=2**16) as fh:  # zipfile reads only the directory here
        infos = zipfile.ZipFile(fh).infolist()
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            raise DaskImgError(
                f"{url}: member {info.filename!r} is compressed inside the zip; daskimg stores "
                "keep chunks uncompressed in the zip. Re-pack it with `zip -0` or write it with daskimg."
            )
    starts = [i.header_offset for i in infos]
    heads = fs.cat_ranges([key] * len(infos), starts, [s + _LOCAL_HEADER.size for s in starts])
    refs: dict[str, list[Any]] = {}
    for info, head in zip(infos, heads, strict=True):
        if isinstance(head, BaseException):
            raise head
        fields = _LOCAL_HEADER.unpack(head)
        data = info.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10]
        refs[info.filename] = [url, data, info.file_size]  # a later duplicate wins, as in zipfile
    return refs


def read_attrs_url(
    url: str, storage_options: Mapping[str, Any] | None, *, check_complete: bool = True
) -> dict[str, Any]:
    """:func:`daskimg.store.read_attrs` for a URL."""
    return open_store(url, storage_options, check_complete=check_complete)[1]


def open_zarr_url(url: str, storage_options: Mapping[str, Any] | None) -> ImageSet:
    """:func:`daskimg.open_zarr` for a URL: zarr reads the chunks, with byte-range requests."""
    from .jpeg import register

    register()
    url = url.rstrip("/")
    store, attrs, _ = open_store(url, storage_options)
    group = zarr.open_group(store, mode="r")
    arrays: dict[str, Any] = {}
    for name, arr in group.arrays():
        if name == "images" or arr.ndim > 1:
            rows = int(attrs.get("chunk_len") or arr.chunks[0])
            arrays[name] = da.from_zarr(arr, chunks=(rows, *arr.shape[1:]))
        else:
            arrays[name] = np.asarray(arr[...])
    ds = imageset_of(arrays, attrs)
    ds.store_url = url  # store_path stays None: there is no local file to memory-map
    return ds
