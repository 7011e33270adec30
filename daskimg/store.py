"""Store: write an :class:`ImageSet` to one Zarr v3 store per split, and open it again.

How a write stays crash-safe: everything is written into a staging folder
``<path>.partial`` next to the target, guarded by an advisory lock on ``<path>.lock``
(released by the OS if the writer dies). Only when every chunk is written is
``complete`` set and the result moved into place in one atomic rename — for
``*.zarr.zip`` after packing the staging folder into a zip file (each member written
once, so no duplicate ``zarr.json``; chunks are stored uncompressed inside the zip as
they are compressed already). A kill at any moment therefore leaves either the old
state or the finished store; re-running the same call removes the stale staging folder
and writes again.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import shutil
import sys
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, cast

import dask
import dask.array as da
import numpy as np
import zarr
from dask._task_spec import Task
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from zarr.abc.store import Store
from zarr.codecs import Crc32cCodec, ZstdCodec

from .chunks import StoreReader
from .codecs import DEFAULT_CODEC, compressors, serializer
from .errors import (
    DaskImgError,
    DecodeError,
    FormatVersionError,
    IncompleteStoreError,
    StoreExistsError,
    StoreLockedError,
)
from .imageset import ImageSet
from .read import FileSource
from .remote import check_options, is_url, local_path

__all__ = ["FORMAT_VERSION", "open_zarr", "read_attrs", "store_kind", "to_zarr"]

logger = logging.getLogger("daskimg")

#: the on-disk format this daskimg writes; it opens every version <= this one
FORMAT_VERSION = 1
#: uncompressed bytes aimed at per chunk (the unit the loader reads) and per shard (one write task)
CHUNK_BYTES = 8 * 2**20
SHARD_CHUNKS = 8


def store_kind(path: str | os.PathLike[str]) -> str:
    """``"zip"`` for ``*.zarr.zip``, ``"dir"`` for ``*.zarr``; anything else is refused."""
    name = os.fspath(path).rstrip("/")
    if name.endswith(".zarr.zip"):
        return "zip"
    if name.endswith(".zarr"):
        return "dir"
    raise ValueError(
        f"store path {name!r} must end in '.zarr.zip' (one file, the default) or '.zarr' (a folder)"
    )


def versions() -> dict[str, str]:
    out = {}
    for pkg in ("daskimg", "zarr", "numcodecs", "dask", "simplejpeg"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def auto_chunk_len(sample_shape: Sequence[int], dtype: Any, n: int) -> int:
    """Samples per chunk: about ``CHUNK_BYTES`` uncompressed, at least 1, at most ``n``."""
    per = int(np.prod(sample_shape)) * np.dtype(dtype).itemsize
    return max(1, min(max(n, 1), CHUNK_BYTES // max(per, 1)))


@contextlib.contextmanager
def write_lock(path: str) -> Iterator[None]:
    """Hold ``<path>.lock`` exclusively; a second writer on the same path is refused.

    The OS releases the lock when its holder dies, so a killed writer never blocks the
    next one. Only the holder removes the file, and a lock taken on a file that was
    removed meanwhile is not trusted (the path must still name the locked file).
    """
    lock_path = path + ".lock"
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLockedError(
                f"another process is writing {path!r} (it holds {lock_path!r}); wait for it to "
                "finish, or stop it and run again"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder we waited on removed it: lock the new file instead
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)  # still holding the lock, so nobody else owns this file
        os.close(fd)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def replace_store(new: str, target: str) -> None:
    """Move the finished store ``new`` to ``target``, replacing whatever is there.

    There is no moment without a store at ``target``: a file is renamed over it, and a
    folder is exchanged with the old folder (Linux ``renameat2(RENAME_EXCHANGE)``), which
    is then removed from under the name ``new``. Where the OS cannot exchange two folders,
    the old one is removed first (a kill in between leaves no store; re-run to redo it).
    """
    if os.path.lexists(target):
        if os.path.isdir(new) and _is_folder(target) and _exchange(new, target):
            _remove(new)  # the old store, now under the staging name
            return
        if os.path.isdir(new) or _is_folder(target):
            _remove(target)  # a rename cannot replace a folder, nor a file with a folder
    os.replace(new, target)


def _is_folder(path: str) -> bool:
    return os.path.isdir(path) and not os.path.islink(path)


def _exchange(a: str, b: str) -> bool:
    """Swap two paths in one step (Linux ``renameat2`` with ``RENAME_EXCHANGE``).

    False where the OS, the C library or the file system cannot; nothing has moved then.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a C library without it (glibc < 2.28, musl < 1.2.?)
        return False
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    # ENOENT: the old store vanished meanwhile, so a plain rename will do
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOENT):
        return False
    raise OSError(err, os.strerror(err), b)


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file or a folder (a folder's entries: renames and new files in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_layout(
    root: str | Store,
    ds: ImageSet,
    *,
    n: int,
    chunk_len: int,
    shard_len: int,
    codec: str | None,
    attrs: dict[str, Any],
) -> dict[str, zarr.Array]:
    """Create the group and its (empty) arrays in a local folder (or a zarr store); return the arrays.

    Write through the returned objects: they carry ``write_empty_chunks=True``, which
    zarr does not persist, so an array re-opened from the group would silently skip
    chunks (and shards) that are all zeros — and a missing chunk must mean damage.

    Every array has the same Zarr chunk grid along axis 0 (the shards), and inner chunks
    of ``chunk_len`` samples: the unit the loader reads and decompresses at once. (One
    inner chunk per sample was measured too: 35% slower to decode, and plain zarr-python
    then read a ``*.zarr.zip`` at 18 samples/s; stores of that layout are still read.)
    """
    store = zarr.storage.LocalStore(root) if isinstance(root, str) else root
    group = zarr.open_group(store, mode="w", zarr_format=3)
    attrs["chunk_len"] = chunk_len
    group.attrs["daskimg"] = attrs
    cfg: Any = {"write_empty_chunks": True}
    out: dict[str, zarr.Array] = {}

    def make(
        name: str,
        shape: tuple[int, ...],
        dtype: Any,
        comp: list[Any],
        serializer: Any = "auto",
    ) -> None:
        out[name] = group.create_array(
            name,
            shape=shape,
            dtype=dtype,
            chunks=(chunk_len, *shape[1:]),
            shards=(shard_len, *shape[1:]) if shard_len != chunk_len else None,
            compressors=comp,
            serializer=serializer,
            fill_value=None if dtype is str else 0,
            config=cfg,
        )

    images = ds.require_images()
    make(
        "images",
        (n, *images.shape[1:]),
        images.dtype,
        compressors(codec, images.dtype),
        serializer=serializer(codec),
    )
    if ds.labels is not None:
        make("labels", (n,), np.int64, compressors("zstd", np.dtype(np.int64)))
    if ds.paths is not None:
        make("paths", (n,), str, [ZstdCodec(level=3), Crc32cCodec()])
    for name, col in ds.columns.items():
        make(name, (n, *col.shape[1:]), col.dtype, compressors("zstd", col.dtype))
    return out


def to_zarr(
    imageset: ImageSet,
    path: str | os.PathLike[str],
    *,
    chunks: int | None = None,
    shard_chunks: int | None = None,
    codec: str | None = None,
    order: str = "shuffled",
    seed: int = 0,
    split: str | None = None,
    overwrite: bool = False,
    compute: bool = True,
    progress: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Write ``imageset`` to a checksummed, versioned Zarr v3 store; return its path.

    Parameters
    ----------
    imageset
        What to write; images are decoded here (by whatever dask scheduler is active).
    path
        ``*.zarr.zip`` (one file; the default to use) or ``*.zarr`` (a folder of shards).
        A URL (``"s3://bucket/out/train.zarr.zip"``) writes to object storage with
        fsspec; see :mod:`daskimg.urlstore` for how that stays crash-safe.
    chunks
        Samples per chunk — the unit the loader reads at once. Default: about 8 MiB of
        uncompressed pixels.
    shard_chunks
        Chunks per shard (one write task, one file in a ``*.zarr`` folder). Default 8.
    codec
        ``"lz4"`` (default), ``"zstd"``, ``"none"`` or ``"jpeg"`` (lossy, per image, q90,
        ~10x smaller on photos; uint8 with 1 or 3 channels); ``"jpeg:Q"`` sets the JPEG
        quality (1-100). See :mod:`daskimg.codecs`; ``daskimg bench STORE --codecs``
        measures them on your data and disk.
    order
        ``"shuffled"`` (samples in a seeded random order, so reading whole chunks in
        random order later mixes well) or ``"source"``.
    seed
        Seed of the shuffled order.
    split
        Name recorded in the attributes (``train``, ``valid``, ...).
    overwrite
        Replace an existing store at ``path``.
    compute
        Must be True: the write is done when this returns (the staging and atomic
        rename need the result).
    progress
        Show a progress bar (local schedulers: dask's; distributed: its progress).
    storage_options
        fsspec options when ``path`` is a URL (for s3: ``key``, ``secret``,
        ``client_kwargs={"endpoint_url": ...}``, ...).

    Notes
    -----
    Files that fail to decode raise :class:`~daskimg.errors.DecodeError` if the set's
    ``on_error`` is ``"raise"``; with ``"skip"`` they are left out (never stored as
    blank images) and listed with their reason in the attribute ``daskimg.skipped`` and
    in ``imageset.skipped``.

    Examples
    --------
    >>> import daskimg as di, tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> _ = di.testing.make_image_folder(root / "src", n=6)
    >>> ds = di.from_folder(root / "src", size=(16, 16))
    >>> di.to_zarr(ds, root / "train.zarr.zip", split="train").endswith("train.zarr.zip")
    True
    >>> len(di.open_zarr(root / "train.zarr.zip"))
    6
    """
    if not compute:
        raise ValueError(
            "to_zarr(compute=False) is not supported: the store is finished atomically"
        )
    if order not in ("shuffled", "source"):
        raise ValueError(f"order must be 'shuffled' or 'source', got {order!r}")
    if is_url(path) and local_path(str(path)) is None:
        from .urlstore import to_zarr_url

        return to_zarr_url(
            imageset,
            str(path),
            storage_options,
            chunks=chunks,
            shard_chunks=shard_chunks,
            codec=codec,
            order=order,
            seed=seed,
            split=split,
            overwrite=overwrite,
            progress=progress,
        )
    check_options(path, storage_options)
    path = local_path(path) or path if isinstance(path, str) else path
    target = os.path.abspath(os.fspath(path)).rstrip("/")
    kind = store_kind(target)
    check_writable(imageset)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with write_lock(target):
        if os.path.lexists(target) and not overwrite:
            raise StoreExistsError(
                f"{target!r} exists; pass overwrite=True (or --overwrite) to replace it"
            )
        staging = target + ".partial"
        _remove(staging)  # a stale one from a killed writer: redo from scratch
        _remove(target + ".tmp")
        _remove(staging + ".uncompacted")

        ds, chunk_len, shard_len, attrs = plan_store(
            imageset,
            chunks=chunks,
            shard_chunks=shard_chunks,
            codec=codec,
            order=order,
            seed=seed,
            split=split,
        )
        skip = ds.on_error == "skip" and isinstance(ds._files, FileSource)
        try:
            ok = _write(
                staging, ds, chunk_len, shard_len, codec, attrs, skip=skip, progress=progress
            )
            if ok is not None and not ok.all():
                _compact_skipped(
                    staging, ds, ok, chunk_len, shard_len, codec, attrs, progress=progress
                )
        except BaseException:
            # an error (not a kill): leave nothing half-written behind
            _remove(staging)
            _remove(staging + ".uncompacted")
            raise
        imageset.skipped = [(str(p), str(r)) for p, r in attrs["skipped"]]
        group = zarr.open_group(zarr.storage.LocalStore(staging), mode="r+")
        attrs["complete"] = True
        group.attrs["daskimg"] = attrs
        # the old store (overwrite=True) stays in place until the new one replaces it
        if kind == "zip":
            _pack_zip(staging, target)  # packed next to it, then renamed over it
            _remove(staging)
        else:
            replace_store(staging, target)
        fsync_path(os.path.dirname(target))
    return target


def check_writable(imageset: ImageSet) -> None:
    """Refuse sets that to_zarr cannot write (no images, or empty)."""
    if imageset.images is None:
        raise ValueError("this ImageSet has no images; write other arrays with daskimg.ArrayWriter")
    if len(imageset) == 0:
        raise ValueError("the ImageSet is empty; there is nothing to store")


def plan_store(
    imageset: ImageSet,
    *,
    chunks: int | None,
    shard_chunks: int | None,
    codec: str | None,
    order: str,
    seed: int,
    split: str | None,
) -> tuple[ImageSet, int, int, dict[str, Any]]:
    """The set in stored order, chunk and shard lengths, and the attributes (complete=False)."""
    n_in = len(imageset)
    perm = np.random.default_rng(seed).permutation(n_in) if order == "shuffled" else None
    ds = imageset.take(perm) if perm is not None else imageset
    images = ds.require_images()
    chunk_len = chunks or auto_chunk_len(images.shape[1:], images.dtype, n_in)
    if not isinstance(chunk_len, int) or chunk_len < 1:
        raise ValueError(f"chunks must be a positive number of samples, got {chunks!r}")
    shard_len = chunk_len * (shard_chunks or SHARD_CHUNKS)
    shard_len = min(shard_len, -(-n_in // chunk_len) * chunk_len)
    attrs: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "split": split,
        "num_samples": n_in,
        "classes": list(ds.classes),
        "order": order,
        "seed": seed if order == "shuffled" else None,
        "codec": codec or DEFAULT_CODEC,
        "complete": False,
        "created_with": versions(),
        "source": _source_attrs(ds),
        "skipped": [],
    }
    return ds, chunk_len, shard_len, attrs


def _source_attrs(ds: ImageSet) -> dict[str, Any]:
    spec = ds.spec
    out: dict[str, Any] = {"root": ds.root}
    if spec is not None:
        out.update(
            size=list(spec.size),
            channels=spec.channels,
            dtype=spec.dtype,
            resize=spec.resize,
            draft=spec.draft,
        )
    return out


def _write(
    staging: str | Store,
    ds: ImageSet,
    chunk_len: int,
    shard_len: int,
    codec: str | None,
    attrs: dict[str, Any],
    *,
    skip: bool,
    progress: bool,
) -> np.ndarray | None:
    """Write every array; return the decoded-ok mask when bad files are skipped."""
    n = len(ds)
    dest = create_layout(
        staging, ds, n=n, chunk_len=chunk_len, shard_len=shard_len, codec=codec, attrs=attrs
    )
    if ds._files is not None:
        files = ds._files
        if skip and isinstance(files, FileSource):
            pixels, mask = files.to_dask_masked(block=chunk_len)
        else:
            pixels, mask = files.to_dask(block=chunk_len), None
    else:
        pixels, mask = ds.require_images(), None
    pixels = pixels.rechunk((shard_len, *pixels.shape[1:]))
    stored = da.store(pixels, cast(Any, dest["images"]), lock=False, compute=False)
    ok = _compute(stored, mask, progress=progress)[1]
    for name, values in ds.arrays.items():
        if name != "images":
            _write_small(dest[name], values)
    return None if ok is None else np.asarray(ok, dtype=bool)


def _write_small(arr: Any, values: Any) -> None:
    values = values.compute() if isinstance(values, da.Array) else np.asarray(values)
    if values.dtype == object:
        values = values.astype(str)
    arr[...] = values


def _compact_skipped(
    staging: str,
    ds: ImageSet,
    ok: np.ndarray,
    chunk_len: int,
    shard_len: int,
    codec: str | None,
    attrs: dict[str, Any],
    *,
    progress: bool,
) -> None:
    """Drop the rows of files that failed to decode, so no blank image is ever a sample."""
    good, kept = skipped_rows(ds, ok, attrs)
    old = staging + ".uncompacted"
    os.replace(staging, old)
    rewrite_kept(
        zarr.storage.LocalStore(old),
        staging,
        kept,
        good,
        chunk_len,
        shard_len,
        codec,
        attrs,
        progress=progress,
    )
    shutil.rmtree(old)


def skipped_rows(
    ds: ImageSet, ok: np.ndarray, attrs: dict[str, Any]
) -> tuple[np.ndarray, ImageSet]:
    """Record the files that failed in ``attrs``; return the good rows and the set of them."""
    bad = np.flatnonzero(~ok)
    files = ds._files
    assert isinstance(files, FileSource)
    skipped = []
    for i in bad:
        try:
            files.decode_file(int(i))
            reason = "failed to decode during the write (the file changed?)"
        except DecodeError as e:
            reason = e.reason
        rel = str(ds.paths[i]) if ds.paths is not None else files.paths[i]
        skipped.append([rel, reason])
    attrs["skipped"] = skipped
    good = np.flatnonzero(ok)
    if not len(good):
        raise DaskImgError(
            f"every one of the {len(ok)} files failed to decode; first: {skipped[0]}"
        )
    kept = ds.take(good)
    attrs["num_samples"] = len(kept)
    return good, kept


def rewrite_kept(
    old: Store,
    dest_root: str | Store,
    kept: ImageSet,
    good: np.ndarray,
    chunk_len: int,
    shard_len: int,
    codec: str | None,
    attrs: dict[str, Any],
    *,
    progress: bool,
) -> None:
    """Write the ``good`` rows of the images in ``old`` (and ``kept``'s arrays) as a new store."""
    dest = create_layout(
        dest_root,
        kept,
        n=len(kept),
        chunk_len=chunk_len,
        shard_len=min(shard_len, -(-len(kept) // chunk_len) * chunk_len),
        codec=codec,
        attrs=attrs,
    )
    src = da.from_zarr(zarr.open_array(old, path="images", mode="r"))
    pixels = src[good].rechunk(dest["images"].shards or dest["images"].chunks)
    _compute(
        da.store(pixels, cast(Any, dest["images"]), lock=False, compute=False), progress=progress
    )
    for name, values in kept.arrays.items():
        if name != "images":
            _write_small(dest[name], values)


def _compute(*collections: Any, progress: bool) -> tuple[Any, ...]:
    """``dask.compute`` on whatever scheduler is active, with a progress bar if asked.

    On a ``distributed`` cluster the work runs on the workers (pixels never pass through
    the client; only the small results come back) and ``distributed.progress`` shows it,
    with the dashboard link printed once.
    """
    client = _active_client()
    if client is None:
        if not progress:
            return tuple(dask.compute(*collections))
        from dask.diagnostics import ProgressBar

        with ProgressBar(out=sys.stderr):
            return tuple(dask.compute(*collections))
    futures = client.compute(list(collections))
    if progress:
        from distributed import progress as show_progress

        if client.dashboard_link:
            print(f"dask dashboard: {client.dashboard_link}", file=sys.stderr)
        show_progress(futures)
    return tuple(client.gather(futures))


def _active_client() -> Any:
    if dask.config.get("scheduler", None) not in (None, "dask.distributed", "distributed"):
        return None  # a local scheduler was asked for explicitly
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None


def _pack_zip(staging: str, target: str) -> None:
    """Pack a staging folder into ``target`` (via ``target.tmp`` and an atomic rename)."""
    tmp = target + ".tmp"
    members = []
    for dirpath, dirnames, filenames in os.walk(staging):
        dirnames.sort()
        for f in sorted(filenames):
            full = os.path.join(dirpath, f)
            members.append((full, Path(os.path.relpath(full, staging)).as_posix()))
    # metadata first, so readers that scan from the front find the group early
    members.sort(key=lambda m: (not m[1].endswith("zarr.json"), m[1].count("/"), m[1]))
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for full, arc in members:
            zf.write(full, arc)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    replace_store(tmp, target)


def read_attrs(
    path: str | os.PathLike[str],
    *,
    check_complete: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``daskimg`` attributes of a store, after checking version and completeness.

    ``path`` may be a URL (with ``storage_options``), as for :func:`open_zarr`.
    """
    if is_url(path) and local_path(str(path)) is None:
        from .urlstore import read_attrs_url

        return read_attrs_url(str(path), storage_options, check_complete=check_complete)
    check_options(path, storage_options)
    path = local_path(path) or path if isinstance(path, str) else path
    p = os.path.abspath(os.fspath(path)).rstrip("/")
    if not os.path.exists(p):
        if os.path.exists(p + ".partial"):
            how = (
                "Reopen it with ArrayWriter(..., resume=True) to continue from its last checkpoint"
                if os.path.exists(os.path.join(p + ".partial", "writer.json"))
                else "Re-run the same ingest/to_zarr to redo it"
            )
            raise IncompleteStoreError(
                f"{p!r} was never finished: a write into it stopped or is still running "
                f"(staging folder {p + '.partial'!r}). {how}."
            )
        raise FileNotFoundError(f"no store at {p!r}")
    return check_attrs(p, StoreReader(p).json("zarr.json"), check_complete=check_complete)


def check_attrs(p: str, meta: Any, *, check_complete: bool) -> dict[str, Any]:
    """The ``daskimg`` attributes from a root ``zarr.json``, refusing newer or unfinished stores."""
    if meta is None or meta.get("node_type") != "group":
        raise FormatVersionError(f"{p!r} is not a Zarr v3 group (no zarr.json at its root)")
    attrs = meta.get("attributes", {}).get("daskimg")
    if not isinstance(attrs, dict):
        raise FormatVersionError(
            f"{p!r} is a Zarr group but not a daskimg store (no 'daskimg' attribute); "
            "open it with zarr.open_group instead"
        )
    fv = attrs.get("format_version")
    if not isinstance(fv, int) or fv < 1:
        raise FormatVersionError(f"{p!r} has an invalid format_version {fv!r}")
    if fv > FORMAT_VERSION:
        raise FormatVersionError(
            f"{p!r} has format version {fv}, newer than this daskimg reads ({FORMAT_VERSION}); "
            "upgrade daskimg (pip install -U daskimg)"
        )
    if check_complete and attrs.get("complete") is not True:
        raise IncompleteStoreError(
            f"{p!r} is incomplete (complete=false): its writer stopped before the end. "
            "Re-run the ingest/to_zarr that made it."
        )
    return attrs


def open_zarr(
    path: str | os.PathLike[str], *, storage_options: Mapping[str, Any] | None = None
) -> ImageSet:
    """Open a daskimg store lazily as an :class:`ImageSet`.

    ``images`` and other multi-dimensional arrays are dask arrays read chunk by chunk
    (checksums checked, fork-safe); ``labels``, ``paths`` and 1-D columns are loaded.
    ``.arrays`` holds every per-sample array; attributes are in ``.attrs``.

    ``path`` may be a URL (``"s3://bucket/out/train.zarr.zip"`` or ``.../train.zarr``)
    with fsspec ``storage_options``: chunks are then read by zarr with byte-range
    requests (a zip is never downloaded whole), ``.store_url`` is set and
    ``.store_path`` is None.

    Examples
    --------
    >>> train = di.open_zarr("out/train.zarr.zip")  # doctest: +SKIP
    >>> train.images.shape  # doctest: +SKIP
    (800, 224, 224, 3)
    """
    if is_url(path) and local_path(str(path)) is None:
        from .urlstore import open_zarr_url

        return open_zarr_url(str(path), storage_options)
    check_options(path, storage_options)
    path = local_path(path) or path if isinstance(path, str) else path
    p = os.path.abspath(os.fspath(path)).rstrip("/")
    attrs = read_attrs(p)
    reader = StoreReader(p)
    group = _open_group(p)
    names = [name for name, _ in group.arrays()]
    arrays: dict[str, Any] = {}
    for name in names:
        arr = group[name]
        lay = reader.layout(name)
        if lay.kind is not None and (name == "images" or len(lay.shape) > 1):
            arrays[name] = lazy_array(reader, name)
        else:
            arrays[name] = cast(Any, arr)[...]
    ds = imageset_of(arrays, attrs)
    ds.store_path = p
    return ds


def imageset_of(arrays: dict[str, Any], attrs: dict[str, Any]) -> ImageSet:
    """An opened store's arrays and ``daskimg`` attributes as an :class:`ImageSet`."""
    columns = {k: v for k, v in arrays.items() if k not in ("images", "labels", "paths")}
    ds = ImageSet(
        arrays.get("images"),
        arrays.get("labels"),
        classes=attrs.get("classes") or (),
        paths=arrays.get("paths"),
        columns=columns,
        root=(attrs.get("source") or {}).get("root"),
    )
    ds.attrs = attrs
    ds.skipped = [(str(path), str(reason)) for path, reason in attrs.get("skipped", [])]
    return ds


def _open_group(p: str) -> zarr.Group:
    from .jpeg import register

    register()  # stores written with codec="jpeg" need it (the entry point covers installed copies)
    if os.path.isfile(p):
        return zarr.open_group(zarr.storage.ZipStore(p, mode="r"), mode="r")
    return zarr.open_group(zarr.storage.LocalStore(p, read_only=True), mode="r")


def lazy_array(reader: StoreReader, name: str) -> da.Array:
    """A dask array over one stored array, one task per chunk, read by :class:`StoreReader`."""
    lay = reader.layout(name)
    token = tokenize(reader.path, name, os.path.getmtime(reader.path))
    key = f"daskimg-read-{name}-{token}"
    zeros = (0,) * (len(lay.shape) - 1)
    dsk: dict[Any, Task] = {
        (key, c, *zeros): Task((key, c, *zeros), reader.read_chunk, name, c)
        for c in range(lay.num_chunks)
    }
    sizes = tuple(b - a for a, b in (lay.chunk_rows(c) for c in range(lay.num_chunks)))
    chunks = (sizes or (0,), *((d,) for d in lay.shape[1:]))
    graph = HighLevelGraph.from_collections(key, dsk, dependencies=())
    return da.Array(graph, key, chunks, dtype=lay.dtype)
