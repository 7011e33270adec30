"""Store: :func:`to_zarr` — write an :class:`~daskimg.ImageSet` to one checksummed store.

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

import os
import shutil
import sys
from collections.abc import Mapping
from typing import Any, cast

import dask
import dask.array as da
import numpy as np
import zarr
from zarr.abc.store import Store

from ..errors import (
    DaskImgError,
    DecodeError,
    StoreExistsError,
)
from ..read.files import FileSource
from ..read.imageset import ImageSet
from ..remote import check_options, is_url, local_path
from .format import check_writable, create_layout, plan_store
from .location import fsync_path, pack_zip, remove_path, replace_store, store_kind, write_lock


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
        from .url import to_zarr_url

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
        remove_path(staging)  # a stale one from a killed writer: redo from scratch
        remove_path(target + ".tmp")
        remove_path(staging + ".uncompacted")

        ds, chunk_len, shard_len, attrs = plan_store(
            imageset,
            chunks=chunks,
            shard_chunks=shard_chunks,
            codec=codec,
            order=order,
            seed=seed,
            split=split,
        )
        skip = ds.on_error == "skip" and isinstance(ds.row_source, FileSource)
        try:
            ok = write_arrays(
                staging, ds, chunk_len, shard_len, codec, attrs, skip=skip, progress=progress
            )
            if ok is not None and not ok.all():
                _compact_skipped(
                    staging, ds, ok, chunk_len, shard_len, codec, attrs, progress=progress
                )
        except BaseException:
            # an error (not a kill): leave nothing half-written behind
            remove_path(staging)
            remove_path(staging + ".uncompacted")
            raise
        imageset.skipped = [(str(p), str(r)) for p, r in attrs["skipped"]]
        group = zarr.open_group(zarr.storage.LocalStore(staging), mode="r+")
        attrs["complete"] = True
        group.attrs["daskimg"] = attrs
        # the old store (overwrite=True) stays in place until the new one replaces it
        if kind == "zip":
            pack_zip(staging, target)  # packed next to it, then renamed over it
            remove_path(staging)
        else:
            replace_store(staging, target)
        fsync_path(os.path.dirname(target))
    return target


def write_arrays(
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
    if ds.row_source is not None:
        files = ds.row_source
        if skip and isinstance(files, FileSource):
            pixels, mask = files.to_dask_masked(block=chunk_len)
        else:
            pixels, mask = files.to_dask(block=chunk_len), None
    else:
        pixels, mask = ds.require_images(), None
    pixels = pixels.rechunk((shard_len, *pixels.shape[1:]))
    stored = da.store(pixels, cast(Any, dest["images"]), lock=False, compute=False)
    ok = compute_collections(stored, mask, progress=progress)[1]
    for name, values in ds.arrays.items():
        if name != "images":
            write_small(dest[name], values)
    return None if ok is None else np.asarray(ok, dtype=bool)


def write_small(arr: Any, values: Any) -> None:
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
    files = ds.row_source
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
    compute_collections(
        da.store(pixels, cast(Any, dest["images"]), lock=False, compute=False), progress=progress
    )
    for name, values in kept.arrays.items():
        if name != "images":
            write_small(dest[name], values)


def compute_collections(*collections: Any, progress: bool) -> tuple[Any, ...]:
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
