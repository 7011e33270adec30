"""Store: :func:`to_zarr` — write an :class:`~daskimg.ImageSet` to one checksummed store.

The store is built in a staging folder under the writer's lock and published in one
atomic step by its :class:`~daskimg.store.location.Location` (see there); its arrays and
attributes come from :mod:`daskimg.store.format`. A kill at any moment leaves the old
store (or none) or the finished one; re-running the same call redoes it. A write that
fails (a decode error, a full disk) removes what it wrote and says where and why.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import functools
import hashlib
import ipaddress
import json
import logging
import math
import os
import posixpath
import sys
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize

from ..errors import DaskImgError, DecodeError, StoreExistsError
from ..read.boxes import box_dtype, checked_column, image_frame, warn_fractions
from ..read.files import FileSource
from ..read.imageset import ImageSet, channels_first
from ..read.lazy import check_persisted_reachable, exact_blocks
from ..remote import process_local, protocol_of
from . import shmchunks
from .bytesource import LocalDir
from .chunktable import read_tables
from .codecs import DEFAULT_CODEC, canonical_codec, check_text_length
from .encode import ShardEncoder, check_fits, fitted
from .format import (
    SHARD_CHUNKS,
    ArraySpec,
    auto_chunk_len,
    create_arrays,
    finish_attrs,
    memory_bytes,
    root_attrs,
)
from .location import Location
from .procpool import decoded_blocks, workers_for, write_chunks
from .shardwrite import (
    FolderWriter,
    ShardAssembler,
    encoded_chunks,
    fused_chunks,
    fused_writes,
    put_rows,
    shard_writes,
    write_file,
)
from .splits import check_beside, check_new_store
from .zipbuild import ZipBuilder

__all__ = ["to_zarr"]

logger = logging.getLogger("daskimg")

#: called once a store is built, just before it is published (``daskimg ingest
#: --overwrite`` removes the earlier run's other splits there: a kill between publishing a
#: new train and removing them left it beside the old valid)
BEFORE_PUBLISH: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "daskimg_before_publish", default=None
)

#: numpy columns up to this size are written in one call; larger ones chunk by chunk
_SMALL = 64 * 2**20


def to_zarr(
    imageset: ImageSet,
    path: str | os.PathLike[str],
    *,
    chunks: int | None = None,
    shard_chunks: int | None = None,
    codec: str | None = None,
    order: str = "shuffled",
    seed: int | None = 0,
    split: str | None = None,
    overwrite: bool = False,
    compute: bool = True,
    progress: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    check_layout: bool = True,
) -> str:
    """Write ``imageset`` to a checksummed, versioned Zarr v3 store; return its path.

    Parameters
    ----------
    imageset
        What to write; images are decoded here (by whatever dask scheduler is active).
    path
        ``*.zarr.zip`` (one file; the default to use) or ``*.zarr`` (a folder of shards).
        A URL (``"s3://bucket/out/train.zarr.zip"``) writes to object storage with
        fsspec; see :mod:`daskimg.store.location` for how that stays crash-safe.
    chunks
        Samples per chunk — the unit the loader reads at once. Default: about 8 MiB of
        uncompressed pixels, less (down to 1 MiB) where that would leave fewer than 128
        chunks: DDP ranks share an epoch chunk by chunk, so each should get many.
    shard_chunks
        Chunks per shard (one write task, one file in a ``*.zarr`` folder). Default 8.
    codec
        ``"lz4"`` (default), ``"zstd"``, ``"none"`` or ``"jpeg"`` (lossy, per image, q90,
        ~10x smaller on photos; uint8 with 1 or 3 channels); ``"jpeg:Q"`` sets the JPEG
        quality (1-100). See :mod:`daskimg.store.codecs`; ``daskimg bench STORE --codecs``
        measures them on your data and disk.
    order
        ``"shuffled"`` (samples in a seeded random order, so reading whole chunks in
        random order later mixes well) or ``"source"``.
    seed
        Seed of the shuffled order (a non-negative int; None: a random order, recorded as None).
    split
        Name recorded in the attributes (``train``, ``valid``, ...). A store named as a
        split (``out/valid.zarr.zip``) is compared with the other splits' stores beside it:
        one whose label numbers mean other classes is refused (a warning with
        ``overwrite``; :mod:`daskimg.store.splits`).
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
    check_layout
        Refuse images that look channels-first, ``(N, 1-4, H, W)`` with ``W`` > 4
        (:func:`~daskimg.read.imageset.channels_first`); False stores them as given.

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
    # "" is an error; the attribute records "jpeg" as "jpeg:90" (format.root_attrs), the
    # fingerprint keeps the spelling given (an ingest re-run finds its finished splits)
    canonical_codec(codec)
    if chunks is not None and (
        not isinstance(chunks, int) or isinstance(chunks, bool) or chunks < 1
    ):
        raise ValueError(f"chunks must be a positive number of samples, got {chunks!r}")
    if shard_chunks is not None and (
        not isinstance(shard_chunks, int) or isinstance(shard_chunks, bool) or shard_chunks < 1
    ):
        raise ValueError(f"shard_chunks must be a positive integer, got {shard_chunks!r}")
    if seed is not None and (
        isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0
    ):
        raise ValueError(f"seed must be a non-negative int (or None: a random order); got {seed!r}")
    seed = None if seed is None else int(seed)  # the attributes record it (JSON)
    loc = Location.of(path, storage_options)
    _check_workers_reach(loc)
    check_writable(imageset, check_layout=check_layout)
    with loc.lock():
        loc.check_writable(overwrite=overwrite)
        _keep_resumable_writes(loc, overwrite=overwrite)
        beside: list[str] = []
        if not loc.is_url:  # (a URL's neighbours are not listed)
            # labels without class names, not all -1 (no label): numbers beside the others
            numbers = (
                imageset.labels is not None
                and not imageset.classes
                and bool((np.asarray(imageset.labels) >= 0).any())
            )
            beside = check_new_store(
                loc.target, split, imageset.classes, overwrite=overwrite, numbers=numbers
            )
        ds, attrs, specs, shard_len = plan_store(
            checked_boxes(exact_arrays(imageset)), chunks=chunks, shard_chunks=shard_chunks, codec=codec, order=order,
            seed=seed, split=split,
        )  # fmt: skip
        if not isinstance(imageset.row_source, FileSource):
            # a set opened from a store: the files left out when it was written are kept on
            # record (`to_zarr(open_zarr(a), b)` converts a store); a set of files is decoded
            # here, and what fails is this write's own list
            attrs["skipped"] = [[str(p), str(r)] for p, r in imageset.skipped]
        write_store(loc, ds, attrs, specs, shard_len, progress=progress)
        if not loc.is_url:  # a split written by another process meanwhile: said
            check_beside(loc.target, imageset.classes, overwrite=True, said=beside, numbers=numbers)
        imageset.skipped = [(str(p), str(r)) for p, r in attrs["skipped"]]
        # the feed's "index" of this set (its rows, or a subset's rows in the store it was
        # taken from) is no row of the new store: said when fed (feed.source)
        renumbered = order == "shuffled" and len(imageset) > 1
        if (renumbered or imageset.store_rows is not None) and (
            loc.target not in imageset.reordered_in
        ):
            imageset.reordered_in.append(loc.target)
        elif not (renumbered or imageset.store_rows is not None):
            imageset.stored_in_order.append(loc.target)
    return loc.target


def _keep_resumable_writes(loc: Location, *, overwrite: bool) -> None:
    """Refuse to throw away an unfinished :class:`~daskimg.ArrayWriter` write at ``loc``
    (its checkpoint, which ``resume=True`` continues) unless ``overwrite``; say so if it is."""
    staging = loc.unfinished_writer()
    if staging is None:
        return
    if not overwrite:
        raise StoreExistsError(
            f"{staging!r} holds an unfinished ArrayWriter write (continue it with "
            "ArrayWriter(..., resume=True)); pass overwrite=True to discard it and write this "
            "store instead"
        )
    logger.warning(
        "to_zarr: discarding the unfinished ArrayWriter write at %s (overwrite=True)", staging
    )


def check_writable(imageset: ImageSet, *, check_layout: bool = True) -> None:
    """Refuse sets that to_zarr cannot write (no ImageSet, no images, or empty)."""
    if not isinstance(imageset, ImageSet):
        what = "dict" if isinstance(imageset, Mapping) else type(imageset).__name__
        raise TypeError(
            f"to_zarr writes an ImageSet, got a {what}: read files with daskimg.from_folder, "
            "from_csv or imread, or wrap arrays as daskimg.ImageSet(images, labels, "
            "columns={...})"
        )
    if imageset.images is None:
        raise ValueError("this ImageSet has no images; write other arrays with daskimg.ArrayWriter")
    if len(imageset) == 0:
        raise ValueError("the ImageSet is empty; there is nothing to store")
    imageset.check_one_split("storing")
    if 0 in imageset.images.shape[1:]:
        raise ValueError(f"every image is empty (shape {imageset.images.shape}); nothing to store")
    if check_layout and (why := channels_first(tuple(imageset.images.shape))):
        raise ValueError(why)
    shape = tuple(imageset.images.shape)
    if check_layout and len(shape) == 4 and shape[-1] > 4 and imageset.decoded_as is None:
        # files never give more than 4 channels: an array of (N, D, H, W) volumes without
        # their channel axis would be stored as 2-D images of W channels (flips and crops
        # then move other axes, and a loader hands out (N, W, D, H))
        logger.warning(
            "images of shape %s are stored as 2-D images of %d channels each; if they are "
            "volumes (N, D, H, W), add the channel axis first (images[..., None]); if they "
            "are images of many bands, this is right",
            shape,
            shape[-1],
        )
    if np.dtype(imageset.images.dtype).kind not in "biuf":
        # an object array of numbers would be stored as their text, whatever the codec
        raise ValueError(
            f"images are {imageset.images.dtype}, not numbers: images are stored as integers, "
            "floats or bools; convert them first, e.g. images.astype(np.uint8)"
        )
    # also columns put in or replaced after the set was made (one row per sample, names)
    imageset.check_columns()
    for name, values in imageset.arrays.items():
        if np.dtype(values.dtype).kind not in "biufOUST":
            raise ValueError(
                f"array {name!r} is {values.dtype}: a store holds integers, floats, bools or "
                "text (complex values: store np.abs or the real and imaginary parts)"
            )
        if np.dtype(values.dtype).kind == "f" and np.dtype(values.dtype).itemsize > 8:
            raise ValueError(
                f"array {name!r} is {values.dtype} (long double), which Zarr has no type "
                "for: cast it to float64 first (.astype(np.float64); values past float64's "
                "16 digits are rounded)"
            )
        if 0 in values.shape[1:]:
            raise ValueError(
                f"array {name!r} has shape {tuple(values.shape)}: no values per sample; "
                "leave it out, or give each sample at least one value"
            )
        if name != "images" and not isinstance(values, da.Array):
            check_text(name, np.asarray(values))


def check_text(name: str, values: np.ndarray, first: int = 0) -> None:
    """A text array (objects, bytes, numpy strings) holds text: each value a ``str`` that is
    valid Unicode, UTF-8 ``bytes`` (as HDF5 strings come), a path (``pathlib.Path``) or a
    whole number (an ID). A ``None``, a float, or a pandas column of numbers with gaps would
    be stored as the text ``"None"``, ``"1.5"``, ``"nan"``. ``first``: the row of
    ``values[0]`` in the whole array (for the message)."""
    if values.dtype.kind not in "OSUT":
        return
    per_row = max(1, int(np.prod(values.shape[1:])))
    for i, v in enumerate(values.ravel().tolist()):  # a StringDType's missing: its na_object
        row = first + i // per_row
        if isinstance(v, os.PathLike):
            v = os.fspath(v)  # checked as the text it is stored as (as_text)
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"array {name!r}, row {row}: {v[:40]!r} is not UTF-8 text "
                    f"({e.reason}); decode it to str first"
                ) from None
        if isinstance(v, str):
            check_text_length(name, row, v)
            if v.isascii():
                continue
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(
                    f"array {name!r}, row {row}: {v[:40]!r} is not valid "
                    f"Unicode text ({e.reason}; a file name that was not UTF-8?); fix the name "
                    "or store it as bytes decoded with errors='replace'"
                ) from None
        elif not isinstance(v, (int, np.integer)) or isinstance(v, (bool, np.bool_)):
            raise ValueError(
                f"array {name!r}, row {row} is {type(v).__name__} {v!r}, not "
                "text: an array of objects is stored as text (str, bytes, paths or whole-number "
                "IDs). Numbers with gaps (a pandas column with None) belong in a float array "
                "with NaN, e.g. np.array(values, dtype=float); text with gaps needs a "
                "placeholder string"
            )


def as_text(values: np.ndarray) -> np.ndarray:
    """A text array (checked by :func:`check_text`) as ``str`` objects, same shape."""
    if values.dtype.kind in "UT":
        return values.astype(object)
    return np.array([_text(v) for v in values.ravel().tolist()], dtype=object).reshape(values.shape)


def _text(value: Any) -> str:
    """One value of a text array (checked by :func:`check_text`) as the ``str`` stored."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def plan_store(
    imageset: ImageSet,
    *,
    chunks: int | None,
    shard_chunks: int | None,
    codec: str | None,
    order: str,
    seed: int | None,
    split: str | None,
) -> tuple[ImageSet, dict[str, Any], list[ArraySpec], int]:
    """The set in stored order, its attributes (``complete: false``), array specs, shard length."""
    n = len(imageset)
    if order == "shuffled":
        check_shuffle_fits(imageset)
        rows = np.random.default_rng(seed).permutation(n)
        ds = imageset.take(rows)
        if ds.paths is None and SOURCE_ROW not in ds.columns and n > 1:
            # no paths to tell the samples by (a set of arrays): each one's row in the set,
            # as convert keeps, so what is written back by store index can be traced (with
            # seed=None the order could not even be drawn again)
            ds.columns[SOURCE_ROW] = rows.astype(np.int64)
    else:
        ds = imageset
    images = ds.require_images()
    chunk_len = chunks or auto_chunk_len(images.shape[1:], images.dtype, n)
    shard_len = min(chunk_len * (shard_chunks or SHARD_CHUNKS), -(-n // chunk_len) * chunk_len)
    source: dict[str, Any] = {"root": ds.root}
    spec = ds.spec
    decoded = ds.decoded_as  # None, or with a "size" (open_zarr)
    if spec is not None:
        source.update(
            size=list(spec.size), channels=spec.channels, dtype=spec.dtype,
            resize=spec.resize, draft=spec.draft,
        )  # fmt: skip
    elif decoded and list(images.shape[1 : 1 + len(decoded["size"])]) == list(decoded["size"]):
        # written from a store's set: how its images were decoded still maps its boxes back
        source.update(decoded)
    source["fingerprint"] = fingerprint(
        imageset,
        codec=codec,
        chunks=chunks,
        shard_chunks=shard_chunks,
        order=order,
        seed=seed,
        split=split,
    )
    attrs = root_attrs(
        split=split, num_samples=n, classes=ds.classes, chunk_len=chunk_len, codec=codec,
        order=order, seed=seed, boxes=ds.boxes, source=source,
    )  # fmt: skip
    specs = [
        ArraySpec(
            "images", tuple(images.shape[1:]), np.dtype(images.dtype), codec or attrs["codec"]
        )
    ]
    for name, values in ds.arrays.items():
        if name != "images":
            dtype = (
                np.dtype(object)
                if np.dtype(values.dtype).kind in "OUST"
                else np.dtype(values.dtype)
            )
            specs.append(ArraySpec(name, tuple(values.shape[1:]), dtype))
    return ds, attrs, specs, shard_len


#: the column of each sample's row in the set it was written from, where no paths tell it
SOURCE_ROW = "source_row"

#: a shuffled write gathers arrays not read from files in memory: refused beyond this
#: share of the machine's memory (re-storing a 1.1 GiB store shuffled peaked at 6.2 GiB
#: of RSS, a dask array of 1.1 GiB at 1.7 GiB)
SHUFFLE_MEMORY_SHARE = 8


def check_shuffle_fits(imageset: ImageSet) -> None:
    """Refuse ``order="shuffled"`` for a set whose arrays would be gathered in memory beyond
    :data:`SHUFFLE_MEMORY_SHARE` of it: a set read from files is shuffled by decoding each
    chunk's files, but a store's arrays (``open_zarr``) and dask arrays the user made are
    cut by dask, where every chunk written needs rows of almost every chunk read, so all of
    them are held at once (the process was killed for memory, mid-write)."""
    memory = memory_bytes()
    gathered = {
        name: int(a.nbytes)
        for name, a in imageset.arrays.items()
        if isinstance(a, da.Array) and not imageset.is_from_files(name)
    }
    total = sum(gathered.values())
    if not memory or total * SHUFFLE_MEMORY_SHARE <= memory:
        return
    names = ", ".join(sorted(gathered))

    def size(b: int) -> str:
        return f"{b / 2**30:,.1f} GiB" if b >= 2**30 else f"{b / 2**20:,.1f} MiB"

    raise ValueError(
        f"order='shuffled' would gather {names} ({size(total)}) in memory, more than this "
        f"machine's {size(memory)} can hold while writing: arrays read from a "
        "store or made as dask arrays are shuffled in memory (only a set read from files is "
        "shuffled chunk by chunk). Write it with order='source' (a store daskimg wrote is "
        "shuffled already), or shuffle it from its files (from_folder/from_csv -> to_zarr)"
    )


def fingerprint(imageset: ImageSet, **settings: Any) -> str:
    """A digest of what a store is made from (files, labels, columns) and how, so a re-run of
    the same ingest can keep a split that is finished already.

    Local files (images and mask files) count with their size, modification time, inode
    and status-change time (``st_ctime``, which no tool can set back), so a file replaced
    or rewritten since makes
    it another store, also when its size and modification time were kept (``cp -p``,
    ``rsync -a``, ``touch -r``); files at URLs with their size and version marks (ETag,
    modification time, generation) from a listing of each folder holding some
    (:func:`_url_states`): an object written again under its name makes another store.
    """
    if "codec" in settings:  # as the store records it: lz4 given is the default's lz4
        codec = canonical_codec(settings["codec"])
        settings = {**settings, "codec": None if codec == DEFAULT_CODEC else codec}
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    h.update(json.dumps([imageset.root, list(imageset.classes), list(imageset.boxes)]).encode())
    h.update(str(imageset.on_error).encode())
    files = imageset.from_files()
    if isinstance(files, FileSource):
        # a path's bytes as the file system has them: a folder named in another encoding
        # (donn\xe9es) is read through Python's surrogate escapes, which plain UTF-8 refuses
        h.update("\0".join(map(str, files.paths)).encode("utf-8", "surrogateescape"))
        h.update(repr(files.spec).encode())
        if files.masks is not None:  # mask files count as the images do
            masks = "\0masks\0" + "\0".join(map(str, files.masks))
            h.update(masks.encode("utf-8", "surrogateescape"))
        if files.remote is None:
            h.update(_file_states(files.paths))
            if files.masks is not None:
                h.update(_file_states(files.masks))
        else:
            h.update(_url_states(files))
    elif imageset.images is not None:
        h.update(tokenize(imageset.images).encode())
    for name, values in sorted(imageset.arrays.items()):
        if name != "images":
            h.update(name.encode())
            h.update(tokenize(values).encode())
    return h.hexdigest()[:32]


#: what a listing says of an object that changes when it is written again (fsspec's info
#: keys: s3, gcs, azure, memory, http, local)
_VERSION_KEYS = (
    "size", "ETag", "etag", "md5Hash", "VersionId", "generation", "LastModified",
    "last_modified", "updated", "mtime", "created",
)  # fmt: skip


def _url_states(files: FileSource) -> bytes:
    """The state of each file at a URL (images and masks): its size and version marks
    (ETag, modification time, generation) from a listing of each folder holding some (the
    requests a folder read makes, a page per thousand objects on s3, never one per
    object), so an object written again under its name makes another store. Where a folder
    cannot be listed (a web server without folder listings, a bucket readable but not
    listable), its files are asked one by one, up to :data:`_ASKED`; beyond that they
    count by their names only, and a warning says so. A file a folder's listing does not
    hold is asked for itself (missing: decoding names it)."""
    assert files.remote is not None
    fs = files.remote.filesystem()
    from fsspec.core import strip_protocol  # importable: filesystem() imported fsspec

    keys = [strip_protocol(str(u)).rstrip("/") for u in (*files.paths, *(files.masks or ()))]
    folders: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        folders.setdefault(posixpath.dirname(k), []).append(i)
    infos: list[Any] = [None] * len(keys)
    unlisted: list[int] = []
    refused: dict[str, str] = {}
    for folder, at in folders.items():
        try:
            fs.invalidate_cache(folder)  # what the objects are now, not a listing kept from before
            listed = {str(e["name"]).rstrip("/"): e for e in fs.ls(folder, detail=True)}
        except Exception as e:  # 403, no listing permission, no folders on this protocol
            refused[folder] = f"{type(e).__name__}: {e}"[:200]
            unlisted += at
            continue
        for i in at:
            info = listed.get(keys[i])
            if _says_state(info):
                infos[i] = info
            else:  # not listed, or listed without a size or mark (a web server's links)
                unlisted.append(i)
    asked = unlisted[:_ASKED]
    for i in asked:
        try:
            infos[i] = fs.info(keys[i])
        except FileNotFoundError:
            infos[i] = {}  # missing now: decoding names it
        except Exception as e:
            refused.setdefault(posixpath.dirname(keys[i]), f"{type(e).__name__}: {e}"[:200])
    # none said, or said nothing that changes with a rewrite ({}: missing, decoding names it)
    unknown = [i for i in unlisted if infos[i] != {} and not _says_state(infos[i])]
    if unknown:
        where, why = (
            next(iter(refused.items())) if refused else (keys[unknown[0]], "no size or mark")
        )
        logger.warning(
            "%d files at URLs could not be listed or asked for their state (%s: %s); a "
            "re-run of this write counts them by their names only, so it would not notice "
            "one written again under its name: pass overwrite=True (--overwrite) after "
            "changing files there",
            len(unknown), where, why,
        )  # fmt: skip
    states = [[str((info or {}).get(v)) for v in _VERSION_KEYS] for info in infos]
    return json.dumps(states).encode()


def _says_state(info: Mapping[str, Any] | None) -> bool:
    """Whether fsspec's ``info`` of a file holds something a rewrite changes."""
    return info is not None and any(info.get(v) is not None for v in _VERSION_KEYS)


#: files at URLs asked for their state one by one, at most, where their folder's listing
#: does not say (a request each)
_ASKED = 1000


def _file_states(paths: Any) -> bytes:
    """Each local file's size, modification time, inode and status-change time (``-1``
    where it cannot be read)."""
    states = np.full((len(paths), 4), -1, dtype=np.int64)
    for i, p in enumerate(paths):
        try:
            st = os.stat(p)
        except OSError:
            continue  # missing: decoding names it (or skip records it)
        states[i] = st.st_size, st.st_mtime_ns, st.st_ino & (2**63 - 1), st.st_ctime_ns
    return states.tobytes()


def write_store(
    loc: Location,
    ds: ImageSet,
    attrs: dict[str, Any],
    specs: list[ArraySpec],
    shard_len: int,
    *,
    progress: bool,
) -> None:
    """Build the store for ``ds`` and publish it at ``loc`` (the caller holds the lock).

    Three ways, one result: a ``*.zarr.zip`` is built in one pass as a zip file
    (:class:`~daskimg.store.zipbuild.ZipBuilder`, each member written once) when the
    shards are made or put together in this process as they finish (threads here, or a
    ``distributed`` cluster's workers sending their chunks); a ``*.zarr`` URL is written
    in place (a cluster's workers write its shards); anything else in a staging folder
    (written by this process, or by the ``processes`` scheduler's tasks).
    """
    in_place = loc.is_url and loc.kind == "dir"
    one_pass = loc.kind == "zip" and _results_stream_here()
    staging = None if in_place else loc.staging_path()
    target: Any = None  # until made: a Ctrl-C may come before
    try:
        if staging is None:
            target = loc.open_in_place()
        else:
            loc.discard(staging)  # a stale one from a killed writer: redo from scratch
            os.makedirs(os.path.dirname(staging), exist_ok=True)
            target = ZipBuilder(staging) if one_pass else staging
        with _shard_writer(target) as put:
            write_arrays(target, ds, attrs, specs, shard_len, put=put, progress=progress)
        metas = {s.name: _staged(loc, target, f"{s.name}/zarr.json") for s in specs}
        root = json.loads(_staged(loc, target, "zarr.json"))
        root["attributes"]["daskimg"] = finish_attrs(attrs, metas, _tables(loc, target, metas))
        attrs.update(root["attributes"]["daskimg"])
        hook = BEFORE_PUBLISH.get() or (lambda: None)  # once the store is whole, if set
        if staging is None:
            hook()  # (writing the root is what publishes a store written in place)
            loc.finish_in_place(root)
        elif isinstance(target, ZipBuilder):
            target.finish(json.dumps(root, indent=2).encode())
            hook()
            loc.publish_file(staging)
        else:
            _write_json(os.path.join(staging, "zarr.json"), root)
            hook()
            loc.publish(staging)
    except BaseException as e:
        # an error (not a kill): leave nothing half-written behind, and say where and why
        if staging is None:
            loc.abandon_in_place(e)
        else:
            if isinstance(target, ZipBuilder):
                with contextlib.suppress(Exception):
                    target.close()
            loc.discard(staging)
        if isinstance(e, Exception) and not isinstance(e, DaskImgError):
            try:  # persisted on a cluster this process no longer reaches: said so
                check_persisted_reachable(ds.arrays)
            except DaskImgError as said:
                raise said from e
        if isinstance(e, OSError) and not isinstance(e, DaskImgError) and e.errno is not None:
            raise OSError(
                e.errno,
                f"writing {loc.target} failed ({e.strerror}"
                + (f": {e.filename}" if e.filename else "")
                + "); what was written is removed"
                + (f" ({staging})" if staging else ""),
            ) from e
        if isinstance(e, Exception) and not isinstance(e, (DaskImgError, ValueError, TypeError)):
            # another library's error (a storage server gone, a cluster restarted): say
            # which store and what is left, not only what failed
            e.add_note(
                f"daskimg: writing {loc.target} failed; "
                + (
                    "the store there opens as unfinished until written again (overwrite=True)"
                    if staging is None
                    else "nothing was published: what was at that path is as it was"
                )
            )
        raise


def _results_stream_here() -> bool:
    """True when a zip can be built here as shards finish: dask runs the tasks in threads of
    this process, or on a ``distributed`` cluster whose workers send each finished shard
    (not with the ``processes`` scheduler, which returns results only at the end)."""
    chosen = dask.config.get("scheduler", None)
    if chosen is not None and not isinstance(chosen, str):  # a get function, or a client
        return _active_client() is not None  # (another get function: its own results)
    return chosen not in ("processes", "multiprocessing")


def _staged(loc: Location, target: Any, key: str) -> bytes:
    """Bytes of ``key`` in what is being built: a folder, a zip being built, or a URL in place."""
    if isinstance(target, str):
        with open(os.path.join(target, *key.split("/")), "rb") as fh:
            return fh.read()
    if isinstance(target, ZipBuilder):
        return target.meta(key)
    return loc.read_in_place(key, target)


def _tables(loc: Location, target: Any, metas: dict[str, bytes]) -> dict[str, str]:
    """The chunk tables of what was written (:mod:`~daskimg.store.chunktable`)."""
    if isinstance(target, ZipBuilder):
        return target.tables(metas)
    return read_tables(LocalDir(target) if isinstance(target, str) else loc.open(), metas)


def _write_json(path: str, obj: Any) -> None:
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())


def write_arrays(
    target: Any,
    ds: ImageSet,
    attrs: dict[str, Any],
    specs: list[ArraySpec],
    shard_len: int,
    *,
    put: Callable[[str, list[Any]], None] | None,
    progress: bool,
) -> None:
    """Create and write every array (files that fail to decode left out when skipping);
    ``put`` writes whole stored values (:func:`_shard_writer`), ``None``: zarr writes them.

    Images and every dask column are written shard by shard in one computation, so tasks
    that several arrays share (the decode of a block of files) run once.
    """
    if ds.on_error == "skip" and isinstance(ds.row_source, FileSource):
        replaced = [
            k
            for k in ("images", *ds.row_source.derived)
            if (k == "images" or isinstance(ds.columns.get(k), da.Array))
            and not ds.is_from_files(k)  # in memory, a replaced column decodes nothing: kept
        ]
        if replaced:
            raise ValueError(
                f"this set reads its files with on_error='skip', but {', '.join(map(repr, replaced))} "
                "were replaced (e.g. ds.images = flipped): which files to leave out is found by "
                "decoding them as read, and a replaced array would be computed from them "
                "without skipping. Store the set as read first (to_zarr), then open_zarr it and "
                "change that; or read it with on_error='raise'"
            )
        _write_skipping(target, ds, attrs, specs, shard_len, put=put, progress=progress)
        return
    dest = create_arrays(target, attrs, specs, n=len(ds), shard_len=shard_len)
    chunk_len = int(attrs["chunk_len"])
    client = _active_client()
    # a store built here (a zip, or a local staging folder) from a cluster: the workers'
    # encoded chunks come to this process, which puts each shard together and writes it
    # (the workers need no file system shared with it, and no chunk moves between them)
    streamed = client is not None and put is not None
    encoders = _encoders(target, dest, dest) if put is not None else {}
    pending: dict[str, Any] = dict(ds.arrays)
    writes: list[Any] = []
    streams: list[tuple[list[Any], list[tuple[str | None, ShardEncoder]]]] = []
    forked: tuple[int, list[tuple[Any, ...]], dict[str, ShardEncoder]] | None = None
    files = ds.from_files()
    files_of: Callable[[int], str] | None = None
    shm_token: str | None = None  # the cluster's chunks of images come in shared memory
    again: Callable[[int], Any] | None = None
    if isinstance(files, FileSource):
        # the arrays that are the files' own (not arrays put in their place) are made by
        # one task per chunk, which decodes the chunk's files and encodes them at once
        default = files.to_dask_arrays()
        own = [
            k
            for k in ("images", *files.derived)
            if isinstance(pending.get(k), da.Array) and pending[k].name == default[k].name
        ]
        if "images" in own and all(k in encoders for k in own):
            token = tokenize(default["images"].name, chunk_len, [encoders[k] for k in own])
            blocks, fused = files.block_args(chunk_len), {k: encoders[k] for k in own}
            files_of = functools.partial(_files_of, blocks)
            workers = 0 if client is not None else workers_for(files, len(blocks))
            if workers:  # in worker processes of this machine (procpool)
                forked = (workers, blocks, fused)
            elif streamed:
                assert client is not None
                shm_token = shmchunks.new_token() if gather_direct(client) else None
                if shm_token is not None and not shmchunks.usable(client, shm_token):
                    shm_token = None
                chunks = fused_chunks(blocks, fused, token, portable=True, shared=shm_token)
                streams.append((chunks, list(fused.items())))
                if shm_token is not None:  # a chunk whose worker ended first: decoded again
                    again = functools.partial(_again, blocks, fused, token)
            else:
                assert put is not None
                writes += fused_writes(blocks, fused, put, token)
            pending = {k: v for k, v in pending.items() if k not in own}
        else:  # zarr writes them, from one decode per block
            shared = files.to_dask_arrays(block=chunk_len)
            pending.update({k: shared[k] for k in own})
    sources: list[Any] = []
    targets: list[Any] = []
    small: list[tuple[Any, Any]] = []
    for name, values in pending.items():
        if not isinstance(values, da.Array) and np.asarray(values).nbytes <= _SMALL:
            small.append((name, values))
            continue
        arr = values if isinstance(values, da.Array) else da.from_array(np.asarray(values))
        if arr.dtype.kind in "OUST":  # checked, as str
            arr = da.map_blocks(_text_block, arr, name, dtype=object)
        if name in encoders and streamed:
            streams.append(
                (encoded_chunks(arr, encoders[name], portable=True), [(None, encoders[name])])
            )
        elif name in encoders:
            assert put is not None
            writes += shard_writes(arr, encoders[name], put)
        else:  # zarr casts what it is given: numbers must fit, as the encoder checks
            if arr.dtype.kind not in "OUST":
                arr = da.map_blocks(fitted, arr, name, arr.dtype, dtype=arr.dtype)
            sources.append(arr)
            targets.append(dest[name])
    sources = [a.rechunk((shard_len, *a.shape[1:])) for a in sources]
    # the columns in memory (labels, paths) are written while the images decode
    with ThreadPoolExecutor(1, thread_name_prefix="daskimg-columns") as pool:
        done = [
            pool.submit(_write_small, dest[name], encoders.get(name), put, values)
            for name, values in small
        ]
        if streamed:
            assert put is not None
            with _said_if_client_gone(client):
                _stream_into(
                    client, streams, put, progress=progress, files_of=files_of,
                    shared=shm_token, again=again,
                )  # fmt: skip
            for arr, dst in zip(sources, targets, strict=True):  # no encoder: strings, rare
                _write_numpy(dst, compute_collections(arr, progress=False)[0])
        else:
            if forked is not None:
                assert put is not None
                workers, blocks, fused = forked
                bar = _progress(len(blocks), progress, unit="chunk")
                write_chunks(workers, blocks, fused, put, bar=bar)
            compute_collections(
                writes, da.store(sources, cast(Any, targets), lock=False, compute=False),
                progress=progress and forked is None,
            )  # fmt: skip
        for f in done:
            f.result()


def _stream_into(
    client: Any,
    streams: list[tuple[list[Any], list[tuple[str | None, ShardEncoder]]]],
    put: Callable[..., None],
    *,
    progress: bool,
    files_of: Callable[[int], str] | None = None,
    shared: str | None = None,
    again: Callable[[int], Any] | None = None,
) -> None:
    """Run the chunk tasks on the cluster; as each encoded chunk arrives, keep it until its
    shard is whole, then write the shard with ``put`` (in this process). ``streams``: the
    delayed chunks of one or more arrays (``field``: the array's entry in each chunk's
    result, ``None`` when the result is the chunk itself). Each byte crosses the network
    once, worker to client (shard tasks on the workers would first move chunks between
    workers); or, ``shared`` (the workers are on this machine), a body sent as where it
    is in a worker's memory is read from there (:mod:`~daskimg.store.shmchunks`), and a
    chunk whose worker ended before it was read is made again by ``again(c)``."""
    delayeds, where = [], []
    for chunks, fields in streams:
        for c, d in enumerate(chunks):
            delayeds.append(d)
            where.append((c, fields))
    futures = client.compute(delayeds)
    position = {f.key: i for i, f in enumerate(futures)}
    direct = gather_direct(client)
    if progress:
        announce_dashboard(client)
    bar = _progress(len(futures), progress, unit="chunk")
    receiver = shmchunks.Receiver()
    shards = ShardAssembler(lambda key, pieces: put(key, pieces, done=receiver.written(pieces)))
    try:
        for batch in _finished(futures, _GATHERED, client):
            try:
                values = client.gather(batch, direct=direct)
            except Exception as e:
                if type(e).__name__ == "KilledWorker" and files_of is not None:
                    # (the cluster names its task only): the files of every chunk that
                    # failed by now (one of them killed the workers; the others died with it)
                    dead = sorted(
                        {where[position[f.key]][0] for f in futures if f.status == "error"}
                        or {where[position[f.key]][0] for f in batch}
                    )
                    _note_killed(e, dead, files_of)
                raise
            for fut, value in zip(batch, values, strict=True):
                c, fields = where[position[fut.key]]
                if shared is not None:
                    value = _shared_read(receiver, value, c, again)
                for field, enc in fields:
                    shards.add(enc, c, value if field is None else value[field])
                fut.release()
            del values
            bar(len(batch))
        shards.check_done()
    except BaseException:
        # a cluster gone (closed, scheduler lost) cannot cancel: the error that says so is
        # the one raised (_said_if_client_gone), not the client's about the cancel message
        with contextlib.suppress(Exception):
            client.cancel(futures)
        raise
    finally:
        receiver.close()
        if shared is not None:  # the workers close this write's buffers
            with contextlib.suppress(Exception):
                client.run(shmchunks.release, shared)


def _shared_read(
    receiver: shmchunks.Receiver, value: Any, c: int, again: Callable[[int], Any] | None
) -> Any:
    """Chunk ``c``'s result with each body a worker sent as where it is in its memory
    replaced by a view of it there; made again (``again``) if that worker has ended."""
    if not isinstance(value, dict):
        return value
    out = dict(value)
    try:
        for name, v in value.items():
            if isinstance(v, tuple) and isinstance(v[0], shmchunks.SharedBody):
                out[name] = (receiver.view(v[0]), v[1])
    except OSError:
        if again is None:
            raise
        return again(c)  # its worker died after sending where the chunk was
    return out


def _again(
    blocks: Sequence[tuple[Any, ...]], encoders: Mapping[str, ShardEncoder], token: str, c: int
) -> Any:
    """Chunk ``c`` decoded again on the cluster and sent through the network."""
    (task,) = fused_chunks([blocks[c]], encoders, f"{token}-again-{c}", portable=True)
    return compute_collections(task, progress=False)[0]


#: most chunks fetched from the cluster at once (what this process holds beyond the shards
#: being put together)
_GATHERED = 8


def _finished(futures: list[Any], most: int, client: Any) -> Iterator[list[Any]]:
    """The chunks finished by now, in groups of up to ``most``: each group is fetched with
    one request to each worker holding some, instead of a round trip (and the scheduler
    asked where it is) for every chunk. (On ``client``'s loop: a client chosen with
    ``dask.config.set(scheduler=client)`` need not be the default, and ``as_completed``
    asked for the default one: "No clients found".)"""
    from distributed import as_completed

    for ready in as_completed(futures, loop=client.loop).batches():
        for at in range(0, len(ready), most):
            yield ready[at : at + most]


def _note_killed(e: BaseException, chunks: list[int], files_of: Callable[[int], str]) -> None:
    """Say which files a cluster's workers died with (its KilledWorker names a task only)."""
    said = "; ".join(f"chunk {d}: {files_of(d)}" for d in chunks[:4])
    more = f"; and {len(chunks) - 4} more chunks" if len(chunks) > 4 else ""
    e.add_note(
        "daskimg: the workers died (killed for memory, e.g. by a very large "
        f"image, or a crash in a decoder) with these chunks: {said}{more}; give "
        "the workers more memory, or decode those files with "
        "dask.config.set(scheduler='sync') to find the one"
    )


def _files_of(blocks: Sequence[tuple[Any, ...]], c: int) -> str:
    """The files of chunk ``c`` (its block's paths), for a message: up to 8 named."""
    paths = [str(p) for p in blocks[c][0]]
    more = f" and {len(paths) - 8} more" if len(paths) > 8 else ""
    return ", ".join(paths[:8]) + more


def gather_direct(client: Any) -> bool:
    """Whether this client fetches results straight from the workers: its own
    ``direct_to_workers`` if set; by default only when every worker runs on this machine
    (loopback or in-process addresses), because then the scheduler relaying each chunk
    is a second trip through the network stack for every byte (on a 2-process
    ``LocalCluster``, about a sixth of the client's CPU), while a worker on another
    machine may not be reachable from here. A worker it cannot reach is still read
    through the scheduler (distributed falls back)."""
    from distributed.comm import parse_address

    if client.direct_to_workers is not None:
        return bool(client.direct_to_workers)
    workers = client.scheduler_info().get("workers", {})
    return bool(workers) and all(_on_this_machine(parse_address(a)) for a in workers)


def _on_this_machine(address: tuple[str, str]) -> bool:
    scheme, location = address
    if scheme == "inproc":
        return True
    host = location.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _encoders(
    target: Any, dest: Mapping[str, Any], names: Iterable[str]
) -> dict[str, ShardEncoder]:
    """daskimg's encoders for the arrays ``names`` of ``dest`` whose chains it encodes
    (the others are written through zarr)."""
    out = {}
    for name in names:
        meta = json.loads(json.dumps(dest[name].metadata.to_dict(), default=str))
        enc = ShardEncoder.of(str(target), name, meta)
        if enc is not None:
            out[name] = enc
    return out


@contextlib.contextmanager
def _shard_writer(target: Any) -> Iterator[Callable[[str, list[Any]], None] | None]:
    """How whole stored values are written into ``target`` by daskimg's own encoder: a zip
    being built; a local staging folder (by a writer thread here when the shards are made
    or put together in this process — threads, or a ``distributed`` cluster sending its
    chunks — else by the ``processes`` scheduler's tasks themselves); ``None`` (zarr
    writes) for a URL in place."""
    if isinstance(target, ZipBuilder):
        yield target.put
    elif not isinstance(target, str):
        yield None
    elif not _results_stream_here():
        yield functools.partial(write_file, target)
    else:
        writer = FolderWriter(target)
        try:
            yield writer
        except BaseException:
            with contextlib.suppress(Exception):
                writer.close()  # before the staging folder is removed
            raise
        writer.finish()
        writer.close()


def exact_arrays(imageset: ImageSet) -> ImageSet:
    """``imageset`` with each dask array it was given (not those it decodes from files,
    made to their shape) checked block by block as computed (:func:`~daskimg.read.lazy.
    exact_blocks`): a block shorter than its declared chunk was stored with the rows after
    it moved up and zeros at the end."""
    given = {
        name: a
        for name, a in (("images", imageset.images), *imageset.columns.items())
        if isinstance(a, da.Array) and not imageset.is_from_files(name)
    }
    if not given:
        return imageset
    out = copy.copy(imageset)
    if "images" in given:
        out.images = exact_blocks(given.pop("images"), "images")
    out.columns = {**imageset.columns, **{n: exact_blocks(a, n) for n, a in given.items()}}
    return out


def checked_boxes(imageset: ImageSet) -> ImageSet:
    """``imageset`` with its box columns as stored: integer ones as floats
    (:func:`~daskimg.read.boxes.box_dtype`: a crop makes NaN, a flip negatives), lazy ones
    checked block by block as they are computed (:func:`~daskimg.read.boxes.check_boxes`;
    rows named in the set as given). Columns in memory were checked when the set was made,
    and boxes read from files against their sources' sizes."""
    for name in imageset.boxes:
        if not imageset.is_from_files(name):  # (from_csv says so as it reads them)
            values = imageset.columns[name]  # (N, 4): small beside the images, read once here
            warn_fractions(values.compute() if isinstance(values, da.Array) else values, name,
                           f"to_zarr(boxes={name!r})")  # fmt: skip
    cast = {
        name: values.astype(box_dtype(values.dtype))
        for name in imageset.boxes
        if (values := imageset.columns[name]).dtype != box_dtype(values.dtype)
    }
    columns = {**imageset.columns, **cast}
    lazy: dict[str, da.Array] = {}
    if any(isinstance(columns[b], da.Array) for b in imageset.boxes):
        frame = image_frame(imageset.require_images().shape)
        lazy = {
            name: checked_column(values, name, frame)
            for name in imageset.boxes
            if isinstance(values := columns[name], da.Array) and not imageset.is_from_files(name)
        }
    if not cast and not lazy:
        return imageset
    out = copy.copy(imageset)
    out.columns = {**columns, **lazy}
    return out


def _text_block(block: np.ndarray, name: str, block_info: Any = None) -> np.ndarray:
    """A block of a lazy text array, checked (:func:`check_text`, rows counted in the whole
    array) and as ``str`` objects. A block of numbers (a dask array declared ``object``
    whose blocks are floats) is checked value by value as objects are: whole numbers are
    IDs, anything else an error (it was stored as the text ``"1.5"``)."""
    block = np.asarray(block)
    if block.dtype.kind not in "OSUT":
        block = block.astype(object)
    check_text(name, block, block_info[0]["array-location"][0][0] if block_info else 0)
    return as_text(block)


def _write_small(
    arr: Any,
    enc: ShardEncoder | None,
    put: Callable[[str, list[Any]], None] | None,
    values: Any,
) -> None:
    """Write a column held in memory (checked: :func:`check_writable`) into ``arr``, by its
    encoder's whole shards when it has one (zarr's codec pipeline took ~15 µs a row, 60-90
    ms of CPU a column for 4,000 photos, beside the decoding workers), else through zarr."""
    if enc is None or put is None:
        _write_numpy(arr, values)
        return
    values = np.asarray(values)
    if values.dtype.kind in "OUST":
        values = as_text(values)
    step = enc.layout.shard_len
    for start in range(0, len(values), step):
        put_rows(enc, put, start, values[start : start + step])


def _write_numpy(arr: Any, values: Any) -> None:
    values = np.asarray(values)
    # StringDType, not str: numpy's fixed-width str drops trailing NUL characters
    text = values.dtype.kind in "OUST"
    arr[...] = as_text(values).astype(np.dtypes.StringDType()) if text else values


def _write_skipping(
    target: Any,
    ds: ImageSet,
    attrs: dict[str, Any],
    specs: list[ArraySpec],
    shard_len: int,
    *,
    put: Callable[[str, list[Any]], None] | None,
    progress: bool,
) -> None:
    """Write the rows of the files that decode, in one pass: no row is written twice.

    Blocks of files are decoded a window at a time (in parallel, by the active scheduler);
    each block's good rows go on into shard buffers, and each full shard is written at
    the position the good rows before it give it. At the end the arrays are cut to the
    number of good rows (their metadata is written last) and the files that failed are
    recorded with their reasons. Memory: the window of decoded blocks and one shard per array.
    """
    files = ds.row_source
    assert isinstance(files, FileSource)
    chunk_len = int(attrs["chunk_len"])
    # images and the arrays derived from the same files (source_size, masks, boxes) come
    # from one task per block, which also says which files decoded (ok)
    shared = files.to_dask_arrays(block=chunk_len, skip=True)
    pixels, ok_mask = shared["images"], shared["ok"]
    lazy: dict[str, da.Array] = {"images": pixels}
    # the derived arrays as the files give them, unless one was put in another's place
    lazy.update({k: shared[k] for k in files.derived if ds.is_from_files(k)})
    small: dict[str, np.ndarray] = {}
    for name, values in ds.arrays.items():
        if name in lazy:
            continue
        if isinstance(values, da.Array):
            values = values.rechunk({0: pixels.chunks[0]})
            if values.dtype.kind in "OUST":  # checked and made str, as to_zarr does
                values = da.map_blocks(_text_block, values, name, dtype=object)
            lazy[name] = values
        else:
            small[name] = np.asarray(values)
    n = len(ds)
    dest = create_arrays(target, attrs, specs, n=n, shard_len=shard_len)
    encoders = _encoders(target, dest, lazy) if put is not None else {}

    def write(name: str, start: int, rows: np.ndarray) -> None:
        enc = encoders.get(name)
        if enc is None or put is None:
            _write_rows(dest[name], start, rows)
            return
        # keep=False: the shard buffers are filled again while the writer thread writes
        put_rows(enc, put, start, rows, keep=False)

    bufs = {k: np.empty((shard_len, *v.shape[1:]), dtype=v.dtype) for k, v in lazy.items()}
    ok_all: list[np.ndarray] = []
    fill = written = 0
    blocks = len(pixels.chunks[0])
    bar = _progress(blocks, progress)
    # only the files' own arrays: decoded in worker processes when to_zarr would be
    own = set(lazy) <= {"images", *files.derived} and _active_client() is None
    workers = workers_for(files, blocks) if own and put is not None else 0
    if workers:
        size = sum(math.prod(v.shape[1:]) * v.dtype.itemsize * chunk_len for v in lazy.values())
        decoded: Generator[Any, None, None] = decoded_blocks(
            workers, files.block_args(chunk_len), size + 4096
        )
        names = list(lazy)
        parts: Iterator[tuple[Any, ...]] = (
            (arrays["ok"], *(arrays[k] for k in names)) for arrays in decoded
        )
    else:
        named = functools.partial(_files_of, files.block_args(chunk_len))
        decoded = parts = _decoded_windows(ok_mask, list(lazy.values()), blocks, named)
    with contextlib.closing(decoded):  # stop the decoding at once if writing fails
        for ok, *values in parts:
            good = np.flatnonzero(ok)
            ok_all.append(np.array(ok, dtype=bool))  # a copy: ``ok`` may be a view
            pos = 0
            while pos < len(good):
                take = good[pos : pos + shard_len - fill]
                for (name, buf), block in zip(bufs.items(), values, strict=True):
                    rows = np.asarray(block)[take]
                    if rows.dtype != buf.dtype:  # the copy would cast: values must fit
                        check_fits(name, rows, buf.dtype)
                    buf[fill : fill + len(take)] = rows
                fill += len(take)
                pos += len(take)
                if fill == shard_len:
                    for name, buf in bufs.items():
                        write(name, written, buf)
                    written, fill = written + shard_len, 0
            bar(1)
    ok = np.concatenate(ok_all) if ok_all else np.zeros(0, bool)
    good = skipped_rows(ds, ok, attrs)
    total = written + fill
    for arr in dest.values():
        if arr.shape[0] != total:
            arr.resize((total, *arr.shape[1:]))
    for name, buf in bufs.items():
        if fill:
            write(name, written, buf[:fill])
    cut = _encoders(target, dest, small) if put is not None else {}  # (of the rows kept)
    for name, values in small.items():
        _write_small(dest[name], cut.get(name), put, values[good])


def _decoded_windows(
    ok_mask: da.Array,
    lazy: list[da.Array],
    blocks: int,
    files_of: Callable[[int], str] | None = None,
) -> Generator[tuple[Any, ...], None, None]:
    """Each block's ``(ok, *arrays)``, in order, computed a window of blocks at a time (in
    parallel, by the active scheduler); the next window decodes while the caller copies,
    encodes and writes this one's good rows. ``files_of(i)``: block ``i``'s files, named
    when a cluster's workers die with a window (a file that kills its decoder is not one
    that fails to decode: it cannot be skipped)."""
    window = max(2, 2 * (os.cpu_count() or 1))

    def decode(start: int) -> tuple[Any, ...]:
        todo = range(start, min(start + window, blocks))
        try:
            return compute_collections(
                *[(ok_mask.blocks[i], *(a.blocks[i] for a in lazy)) for i in todo],
                progress=False,
            )
        except Exception as e:
            if type(e).__name__ == "KilledWorker" and files_of is not None:
                _note_killed(e, list(todo), files_of)
            raise

    def ahead_of(start: int) -> Any:
        # in a copy of this thread's context: a client made current here only
        # (client.as_current(), a context variable) is the one the decode runs on
        return ahead.submit(contextvars.copy_context().run, decode, start)

    with ThreadPoolExecutor(1, thread_name_prefix="daskimg-decode") as ahead:
        following = ahead_of(0) if blocks else None
        for start in range(0, blocks, window):
            assert following is not None
            parts = following.result()
            following = ahead_of(start + window) if start + window < blocks else None
            yield from parts


def _write_rows(arr: Any, start: int, rows: np.ndarray) -> None:
    # StringDType, not str: numpy's fixed-width str drops trailing NUL characters
    text = rows.dtype.kind in "OUST"
    arr[start : start + len(rows)] = as_text(rows).astype(np.dtypes.StringDType()) if text else rows


def _progress(total: int, show: bool, unit: str = "block") -> Callable[[int], None]:
    if not show:
        return lambda k: None
    from tqdm import tqdm

    bar = tqdm(total=total, unit=unit, desc="decode+write", disable=None)
    return bar.update


def skipped_rows(ds: ImageSet, ok: np.ndarray, attrs: dict[str, Any]) -> np.ndarray:
    """Record the files that failed (and why) in ``attrs``; return the good rows."""
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
    attrs["num_samples"] = len(good)
    labels = ds.labels
    if labels is not None and ds.classes:
        had = set(np.unique(labels).tolist())
        left = set(np.unique(np.asarray(labels)[good]).tolist())
        gone = [ds.classes[k] for k in sorted(had - left) if 0 <= k < len(ds.classes)]
        if gone:
            logger.warning(
                "every file of class(es) %s failed to decode and is skipped: they stay "
                "classes (their indices are kept, a model gets an output for each) but no "
                "sample in the store has them; see the store's skipped list",
                ", ".join(repr(c) for c in gone),
            )
    return good


_ANNOUNCED: set[str] = set()


@contextlib.contextmanager
def _said_if_client_gone(client: Any) -> Iterator[None]:
    """A failure of the work inside, when ``client`` was closed (or lost its scheduler)
    under it, said so: distributed says "cancelled for reason: unknown" of its futures
    then. Raised as it is while the client still runs (the work's own error), and for an
    interrupt."""
    try:
        yield
    except Exception as e:
        status = str(getattr(client, "status", "running"))
        if status in ("running", "connecting", "newly-created"):
            raise
        raise DaskImgError(
            f"the dask client was closed or lost its scheduler (status {status!r}) while the "
            f"store was being written ({type(e).__name__}: {e}); keep the client and its "
            "cluster open until to_zarr returns, then write again"
        ) from e


def announce_dashboard(client: Any, file: Any = None) -> None:
    """Print the link of ``client``'s dashboard, once per process (an ingest of three
    splits printed it three times, and again for each split's labels). Nothing when there
    is none to show: the link is asked of the scheduler, and one lost as a write starts
    failed the ingest with distributed's traceback ("ConnectionPool is closed") instead
    of the write's own error, which says so."""
    try:
        link = client.dashboard_link
    except Exception:  # the scheduler gone (or no dashboard service)
        return
    if link and link not in _ANNOUNCED:
        _ANNOUNCED.add(link)
        print(f"dask dashboard: {link}", file=sys.stderr if file is None else file)


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
        from tqdm import tqdm
        from tqdm.dask import TqdmCallback

        # plain tqdm, as the forked workers' path: nothing where stderr is no terminal
        # (dask's ProgressBar wrote a line every 0.1 s into CI logs)
        with TqdmCallback(
            tqdm_class=tqdm, desc="tasks", unit="task", disable=None, file=sys.stderr
        ):
            return tuple(dask.compute(*collections))
    futures = client.compute(list(collections))
    if progress:
        from distributed import progress as show_progress

        announce_dashboard(client)
        show_progress(futures)
    with _said_if_client_gone(client):
        return tuple(client.gather(futures, direct=gather_direct(client)))


def _check_workers_reach(loc: Location) -> None:
    """Refuse a ``memory://`` store to be written by dask workers in other processes (a
    ``distributed`` cluster of processes, the ``"processes"`` scheduler): fsspec's in-memory
    filesystem lives in one process, so a folder's shards landed in the workers' own
    memory and the store was then found "damaged" (shards missing), on every try."""
    if not loc.is_url or protocol_of(loc.target) != "memory":
        return
    chosen = dask.config.get("scheduler", None)
    client = _active_client()
    elsewhere = chosen in ("processes", "multiprocessing") or (
        # workers of another process (asked: a cluster of this process's threads may talk
        # over tcp:// too, and sees this process's memory://)
        client is not None and set(client.run(os.getpid).values()) - {os.getpid()}
    )
    if elsewhere:
        raise process_local(
            loc.target,
            "the active dask scheduler runs tasks in other processes, which would write into "
            "their own",
        )


def _active_client() -> Any:
    """The ``distributed`` client the tasks run on, or None (a local scheduler): the
    default client, or one chosen as dask's docs allow, ``dask.config.set(scheduler=client)``
    or ``scheduler=client.get`` (taken for a local scheduler, its workers were sent a zip
    being built, or wrote a folder's shards on their own disks)."""
    chosen = dask.config.get("scheduler", None)
    if "distributed" in sys.modules and chosen is not None and not isinstance(chosen, str):
        from distributed import Client

        owner = getattr(chosen, "__self__", chosen)  # client.get: a method of its client
        return owner if isinstance(owner, Client) else None
    if chosen not in (None, "dask.distributed", "distributed"):
        return None  # a local scheduler was asked for explicitly
    if "distributed" not in sys.modules:
        return None  # no client without it (and importing it to ask costs ~1 s)
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None
