"""Write back: :class:`ArrayWriter` streams model outputs (features, predictions, ids)
into a daskimg store, batch by batch, without knowing the total in advance. This module
holds the public writer: its arguments, the checks on every batch (shape, safe casts,
row counts), appending with rollback (a batch is all or nothing), when to checkpoint,
and the lifecycle from opening (``mode="w"`` or ``"a"``, ``resume=True``) to
:meth:`ArrayWriter.close`. How rows are buffered per shard and written in background
threads is in :mod:`daskimg.writer_shards`; the staging folder ``<path>.partial/`` —
its layout, checkpoints, resuming and the atomic move into place — is in
:mod:`daskimg.writer_staging`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np

from ..errors import DaskImgError, StoreExistsError
from ..remote import check_options, is_url, local_path
from ..store.codecs import parse_codec
from ..store.location import Location, remove_path, store_kind, write_lock
from . import staging
from .checks import check_batch, integer_arg, narrow_float, parse_specs
from .shards import SHARD_BYTES as SHARD_BYTES
from .shards import SHARD_CHUNKS_MAX as SHARD_CHUNKS_MAX
from .shards import Column, ShardPool

__all__ = ["ArrayWriter"]

logger = logging.getLogger("daskimg")


class ArrayWriter:
    """Append per-sample arrays (features, predictions, ids) to a daskimg store as they come.

    The number of samples need not be known in advance. The result is a daskimg store
    of format version 1 (``order: "source"``, rows in the order appended) that
    :func:`daskimg.open_zarr`, ``daskimg verify`` and :class:`daskimg.BatchIterator` read.

    Parameters
    ----------
    path
        ``*.zarr.zip`` (one file) or ``*.zarr`` (a folder); or an fsspec URL of one
        (``"s3://bucket/out/features.zarr.zip"``): the store is built locally and
        uploaded by :meth:`close` (see Notes).
    name, shape, dtype
        One array: its name and the shape and dtype of *one sample*, e.g.
        ``shape=(2048,), dtype="float32"``; ``shape=()`` for a scalar per sample.
    arrays
        Several arrays instead: ``{"features": ((2048,), "float32"), "ids": ((), "int64")}``.
        Each :meth:`append` then names them all. Dtypes: bool, integer or float.
        ``labels`` must be ``((), <integer>)``; ``images`` and ``paths`` are reserved.
    chunks
        Samples per chunk (the unit the loader reads). Default: about 8 MiB of the
        largest array per chunk; with ``mode="a"``, the store's chunk length (required).
    shard_chunks
        Chunks per shard (the unit written at once and buffered in memory, one file in
        a ``*.zarr`` folder). Default per array: about 8 MiB, at most 64 chunks.
    codec
        ``"lz4"`` (default), ``"zstd"`` or ``"none"``, for every array; see
        :mod:`daskimg.codecs`.
    mode
        ``"w"``: write a new store. ``"a"``: add arrays to an existing, complete store,
        aligned with its samples: exactly ``num_samples`` rows must be appended, in the
        store's order; the store's other arrays are kept. Not for a URL (refused):
        download the store, add the arrays locally, upload it.
    overwrite
        ``mode="w"``: replace an existing store. ``mode="a"``: replace arrays of the
        same names. The old store stays readable until :meth:`close` replaces it.
    resume
        Continue an unfinished write of the same arrays from its last checkpoint (see
        Notes); ``len(writer)`` says how many rows were kept. Without it, an unfinished
        write at ``path`` is discarded and started over.
    classes, split
        Recorded in the attributes (``mode="w"``); ``classes`` names the values of
        a ``labels`` array, which are then checked to lie in range.
    checkpoint_every
        Seconds between automatic checkpoints (made at the end of an :meth:`append`);
        0: after every append; None: only when :meth:`checkpoint` is called.
    threads
        Background threads compressing and writing whole shards (0: in the caller).
    storage_options
        fsspec options when ``path`` is a URL (for s3: ``key``, ``secret``,
        ``client_kwargs={"endpoint_url": ...}``, ...); an error with a local path.

    Notes
    -----
    **When appended rows are safe.** The store appears at ``path`` only when
    :meth:`close` returns, in one atomic step; a crash before that leaves no store at
    ``path``, which :func:`daskimg.open_zarr` refuses (``mode="a"``: the store as it
    was; with several new arrays in a ``*.zarr`` folder, each array appears whole or
    not at all). Rows survive a crash (kill, power loss) once a *checkpoint* that covers them has
    completed: when :meth:`checkpoint` returns, at the end of an :meth:`append` made
    ``checkpoint_every`` seconds or more after the previous checkpoint, and at the start
    of :meth:`close`. ``ArrayWriter(path, ..., resume=True)`` then reopens the write with
    exactly the rows of the last checkpoint — whole batches, in order — and appending
    continues after them. A batch is all or nothing: one that fails (bad input, a
    failing dask task, an interrupt) leaves the rows before it as they were. An
    exception inside a ``with`` block makes a checkpoint of the batches appended
    before it and leaves the write open for ``resume=True``.

    Memory stays bounded: per array, the unfinished shard (about 8 MiB, at least one
    chunk) and up to ``threads`` shards being written, plus the batch being appended;
    a dask array is computed a few blocks at a time. Accepted batches: numpy arrays, anything with ``.detach().cpu().numpy()``
    (torch tensors) and dask arrays. Casts that cannot lose values are done silently,
    and so is float to a narrower float (float64 -> float32: precision only; a finite
    value too large for it, which would become inf, is refused); float -> int, int ->
    narrower int, signed -> unsigned and int -> a float that could round it (int64 ->
    float64, int32 -> float32) are refused: cast explicitly. Appends from several
    threads are taken one at a time, each batch whole (in no promised order between
    threads).

    **Writing to a URL.** A complete store already at the URL is refused at once
    unless ``overwrite=True``. The store is built, with the same checkpoints, in a local
    folder that depends only on the URL:
    ``<tempfile.gettempdir()>/daskimg-writer/<sha256(url)[:16]>/<name>`` (it needs room
    for the whole store). :meth:`close` finishes it there, then uploads it and removes
    the local copy: a ``*.zarr.zip`` as one object, which appears whole or not at all; a
    ``*.zarr`` folder after clearing the old one, its root ``zarr.json`` (``complete:
    true``) last, so until then :func:`daskimg.open_zarr` refuses it (and the old store
    is gone from the start of the upload). If the upload fails, the finished local copy
    stays: ``close()`` again, or after a crash ``ArrayWriter(url, <same arguments>,
    resume=True)`` on the same machine, then ``close()``, uploads it (appending to it
    raises: every row is written). An unfinished write resumes as for a local path.

    Examples
    --------
    >>> with ArrayWriter("out/features.zarr.zip", shape=(2048,), dtype="float32") as w:  # doctest: +SKIP
    ...     for batch in predictions:
    ...         w.append(batch)
    >>> feats = di.open_zarr("out/features.zarr.zip").arrays["features"]  # doctest: +SKIP

    Several arrays, and a column added to an existing split store:

    >>> w = ArrayWriter("out/f.zarr", arrays={"features": ((512,), "float32"),
    ...                                       "ids": ((), "int64")})  # doctest: +SKIP
    >>> w.append(features=f, ids=i); w.close()  # doctest: +SKIP
    >>> with ArrayWriter("out/train.zarr.zip", name="features", shape=(512,),
    ...                  dtype="float32", mode="a") as w:  # doctest: +SKIP
    ...     for images, _ in di.BatchIterator("out/train.zarr.zip", batch_size=64, shuffle=False):
    ...         w.append(model(images))

    After a crash, continue where the last checkpoint left off (batches of 64):

    >>> with ArrayWriter("out/features.zarr.zip", shape=(2048,), dtype="float32",
    ...                  resume=True) as w:  # doctest: +SKIP
    ...     for batch in predictions[len(w) // 64:]:
    ...         w.append(batch)

    To object storage (built locally, uploaded at close):

    >>> with ArrayWriter("s3://bucket/out/features.zarr.zip", shape=(2048,), dtype="float32",
    ...                  storage_options={"anon": False}) as w:  # doctest: +SKIP
    ...     for batch in predictions:
    ...         w.append(batch)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        name: str = "features",
        shape: int | Sequence[int] | None = None,
        dtype: Any = None,
        arrays: Mapping[str, tuple[int | Sequence[int], Any]] | None = None,
        chunks: int | None = None,
        shard_chunks: int | None = None,
        codec: str | None = None,
        mode: str = "w",
        overwrite: bool = False,
        resume: bool = False,
        classes: Sequence[str] = (),
        split: str | None = None,
        checkpoint_every: float | None = 30.0,
        threads: int = 2,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.specs = parse_specs(name, shape, dtype, arrays)
        if mode not in ("w", "a"):
            raise ValueError(f"mode must be 'w' (a new store) or 'a' (add arrays); got {mode!r}")
        if chunks is not None:
            chunks = integer_arg(chunks, 1, "chunks must be a positive number of samples")
        if shard_chunks is not None:
            shard_chunks = integer_arg(shard_chunks, 1, "shard_chunks must be a positive integer")
        self._shard_chunks = shard_chunks
        threads = integer_arg(threads, 0, "threads must be an integer >= 0")
        if checkpoint_every is not None and checkpoint_every < 0:
            raise ValueError(
                f"checkpoint_every must be >= 0 seconds or None, got {checkpoint_every}"
            )
        if parse_codec(codec)[0] == "jpeg":
            # appends that fill part of a chunk make zarr decode and re-encode it: a second
            # round of JPEG loss for samples already written
            raise ValueError(
                "ArrayWriter does not write codec='jpeg' (lossy re-encoding of partial chunks); "
                "use 'lz4' or 'zstd', or write images with daskimg.to_zarr(codec='jpeg')"
            )
        #: the URL the store is uploaded to at close(), or None for a local path
        self.url: str | None = None
        self._storage_options = dict(storage_options or {})
        if is_url(path) and local_path(str(path)) is None:
            self.url = str(path).rstrip("/")
            store_kind(self.url)  # a bad name is refused before any request
            if mode == "a":
                raise ValueError(
                    f"mode='a' cannot add arrays to a store at a URL ({self.url!r}): download "
                    "it, add the arrays to the local copy with mode='a', and upload it"
                )
            Location.of(self.url, storage_options).check_writable(overwrite=overwrite)
            path = local_copy(self.url)
        else:
            check_options(path, storage_options)
            path = local_path(path) or path if isinstance(path, str) else path
        #: where the store is built (and, for a local path, where it appears)
        self.path = os.path.abspath(os.fspath(path)).rstrip("/")
        self.target = self.url or self.path
        self.kind = store_kind(self.path)
        self.mode = mode
        self.overwrite = overwrite
        self.classes = tuple(str(c) for c in classes)
        self.checkpoint_every = checkpoint_every
        self._staging = Path(self.path + ".partial")
        self._columns: dict[str, Column] = {}
        self._rows = 0
        self._durable = 0
        self._expected: int | None = None  # mode "a": the store's num_samples
        self._manifest: dict[str, Any] = {}
        self._closed = False
        self._broken: str | None = None
        self._pending = False  # URL: the store is complete locally, not uploaded yet
        self._mutex = threading.RLock()  # one append, checkpoint or close at a time
        self._last_checkpoint = time.monotonic()
        self._pool = ShardPool(threads)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(write_lock(self.path))
        self._lock.callback(self._pool.shutdown)
        try:
            self._open(chunks, codec, resume, split)
        except BaseException:
            self._lock.close()
            raise

    # -- public -----------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        """The names of the arrays written."""
        return tuple(self.specs)

    @property
    def num_rows(self) -> int:
        """Rows appended so far (including any recovered by ``resume=True``)."""
        return self._rows

    @property
    def durable_rows(self) -> int:
        """Rows covered by the last completed checkpoint (they survive a crash)."""
        return self._durable

    @property
    def chunk_len(self) -> int:
        """Samples per chunk along axis 0 (the same for every array)."""
        return int(self._manifest["chunk_len"])

    def __len__(self) -> int:
        return self._rows

    def __repr__(self) -> str:
        arrays = {n: (s, str(d)) for n, (s, d) in self.specs.items()}
        state = "closed" if self._closed else f"rows={self._rows}"
        return f"ArrayWriter({self.target!r}, arrays={arrays}, mode={self.mode!r}, {state})"

    def __enter__(self) -> ArrayWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            try:
                self.close()
            except BaseException:
                self._abandon()
                raise
        else:
            self._abandon()

    def __del__(self) -> None:
        # never finalise here (the rows may be incomplete); just release the lock
        with contextlib.suppress(Exception):
            if not self._closed:
                self._closed = True
                self._lock.close()

    def append(self, batch: Any = None, /, **named: Any) -> None:
        """Append rows: ``append(batch)`` for one array, ``append(features=..., ids=...)`` for several.

        Every named array gets the same number of rows. A batch that is refused
        (wrong shape, unsafe cast, mismatched row counts, too many rows for
        ``mode="a"``) raises before anything changes; the writer stays usable.
        """
        with self._mutex:
            self._append(batch, named)

    def _append(self, batch: Any, named: dict[str, Any]) -> None:
        self._check_usable()
        if self._pending:
            raise ValueError(
                f"all {self._rows} rows of {self.target!r} are written (the finished store "
                f"waits at {self.path!r}); close() uploads them. Nothing can be appended to it"
            )
        values = self._name_values(batch, named)
        lazy = [n for n, v in values.items() if isinstance(v, da.Array)]
        if lazy:
            self._append_dask(values, lazy)
        else:
            arrays = {n: self._coerce(n, v) for n, v in values.items()}
            n_rows = self._count_rows(arrays)
            marks = self._marks()
            try:
                for name, col in self._columns.items():
                    col.extend(arrays[name])
            except BaseException as e:
                self._rollback(marks, e)
                raise
            self._rows += n_rows
        if (
            self.checkpoint_every is not None
            and time.monotonic() - self._last_checkpoint >= self.checkpoint_every
        ):
            self.checkpoint()

    def checkpoint(self) -> int:
        """Make every row appended so far durable; return their number.

        After a crash, ``ArrayWriter(path, ..., resume=True)`` continues from here.
        """
        with self._mutex:
            self._check_usable()
            if self._pending:
                return self._rows  # the store is complete locally: every row is durable
            try:
                self._pool.drain()
                staging.save_checkpoint(self._staging, self._manifest, self._columns, self._rows)
            except BaseException as e:
                self._break(f"a checkpoint failed ({e!r})")
                raise
            self._durable = self._rows
            self._last_checkpoint = time.monotonic()
            return self._rows

    def close(self) -> None:
        """Finish the store and move it into place (atomically); release the lock.

        With ``mode="a"``, the number of rows must equal the store's ``num_samples``;
        otherwise this raises, the store is left unchanged and the writer stays open
        (append the missing rows and close again). Closing a writer with no rows raises
        (an empty store is not written) and leaves nothing behind. If moving the store
        into place fails, the write stays unfinished (as after a crash) and every later
        call, ``close()`` too, raises: reopen it with ``resume=True``. For a URL, the
        finished store is then uploaded and its local copy removed; if the upload fails,
        this raises and the local copy stays: call ``close()`` again to retry.
        """
        with self._mutex:
            self._close()

    def _close(self) -> None:
        if self._closed and self._broken is None:
            return
        self._check_usable()
        if not self._pending:
            self._finish()
        if self._pending and self.url is not None:
            self._upload(self.url)
        self._closed = True
        self._lock.close()
        if self.url is not None:  # the local copy's own folder, empty now
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(self.path))

    def _finish(self) -> None:
        """Finish the store at ``self.path`` (the local copy of a URL's)."""
        if self._expected is not None and self._rows != self._expected:
            raise ValueError(
                f"{self.path!r} has {self._expected} samples but {self._rows} rows were appended "
                f"to {list(self.specs)}; append exactly one row per sample, in the store's order "
                "(nothing was changed)"
            )
        if self._rows == 0:
            self._closed = True
            remove_path(str(self._staging))
            self._lock.close()
            raise ValueError(
                f"nothing was appended to {self.target!r}, so no store was written; "
                "an empty store is not written (nothing to read back)"
            )
        self.checkpoint()  # a crash while closing loses no row; no write is in flight after it
        try:
            staging.publish(
                Location.of(self.path), self._staging, self._columns, self._rows, mode=self.mode
            )
        except BaseException as e:
            # no store at path (or the old one): a second close must not pass for success
            self._break(f"moving the store into place failed ({e!r})")
            raise
        self._pending = self.url is not None

    def _upload(self, url: str) -> None:
        """Upload the finished local store to ``url``, then remove it; on failure keep it."""
        try:
            Location.of(url, self._storage_options).upload(self.path)
        except BaseException:
            logger.warning(
                "uploading %s to %s failed; the finished store stays there: close() again, or "
                "ArrayWriter(<same arguments>, resume=True).close(), uploads it",
                self.path,
                url,
            )
            raise
        self._pending = False
        remove_path(self.path)

    # -- opening ----------------------------------------------------------------------
    def _open(self, chunks: int | None, codec: str | None, resume: bool, split: str | None) -> None:
        target_exists = os.path.lexists(self.path)
        if self.url is not None and target_exists:
            # a finished local copy whose upload failed or was cut short
            if resume:
                self._rows, chunk_len = staging.check_finished(self.path, self.specs)
                if chunks is not None and chunks != chunk_len:
                    raise ValueError(
                        f"cannot resume: the finished store at {self.path!r} (not yet uploaded) "
                        f"has chunks={chunk_len}. Pass the same arguments, or resume=False to "
                        "discard it"
                    )
                self._durable = self._rows
                self._manifest = {"chunk_len": chunk_len}
                self._pending = True
                remove_path(str(self._staging))  # left by a kill just after the store was finished
                logger.info("resumed %s: %d rows, finished, to upload", self.target, self._rows)
                return
            logger.warning("discarding the finished, not uploaded store at %s", self.path)
            remove_path(self.path)
            target_exists = False
        if self.mode == "w" and target_exists and not self.overwrite:
            raise StoreExistsError(
                f"{self.path!r} exists; pass overwrite=True to replace it, or mode='a' to add "
                "arrays to it"
            )
        token = None
        if self.mode == "a":
            chunks, token = self._check_target(chunks)
        if resume and self._resume(chunks, codec, token, split):
            return
        if self._staging.exists():
            why = "it has no checkpoint to resume from" if resume else "resume=False"
            logger.warning("discarding the unfinished write at %s (%s)", self._staging, why)
        remove_path(str(self._staging))
        remove_path(self.path + ".tmp")
        self._manifest, self._columns = staging.create(
            self._staging,
            self.specs,
            self._pool,
            mode=self.mode,
            kind=self.kind,
            chunks=chunks,
            shard_chunks=self._shard_chunks,
            codec=codec,
            classes=self.classes,
            split=split,
            token=token,
        )

    def _check_target(self, chunks: int | None) -> tuple[int, str]:
        """mode "a": check the store; return its chunk length and a token of its identity."""
        chunk_len, token, self._expected, classes = staging.check_target(
            self.path, self.specs, overwrite=self.overwrite, chunks=chunks
        )
        self.classes = self.classes or classes
        return chunk_len, token

    def _resume(
        self, chunks: int | None, codec: str | None, token: str | None, split: str | None
    ) -> bool:
        """Reload the last checkpoint of an unfinished write; False if there is none."""
        state = staging.resume(
            self._staging,
            self.specs,
            self._pool,
            mode=self.mode,
            chunks=chunks,
            shard_chunks=self._shard_chunks,
            codec=codec,
            token=token,
            classes=self.classes,
            split=split,
        )
        if state is None:
            return False
        self._manifest, self._columns = state
        if self.mode == "w":  # the labels are checked against the classes the store records
            attrs = self._manifest["root_meta"]["attributes"]["daskimg"]
            self.classes = tuple(attrs.get("classes") or ())
        self._rows = self._durable = int(self._manifest["rows"])
        logger.info("resumed %s at row %d", self.target, self._rows)
        return True

    # -- appending --------------------------------------------------------------------
    def _check_usable(self) -> None:
        if self._broken is not None:
            raise DaskImgError(
                f"this writer of {self.target!r} cannot continue: {self._broken}. Open a new one "
                f"with resume=True to continue from its last checkpoint ({self._durable} rows)"
            )
        if self._closed:
            raise ValueError(
                f"this writer of {self.target!r} is closed; append before close(), or open a new "
                "ArrayWriter (mode='a' adds arrays to a finished store)"
            )

    def _break(self, reason: str) -> None:
        """Stop for good after a failure that lost rows: the last checkpoint stands."""
        self._broken = reason
        self._closed = True
        self._lock.close()  # another writer may resume now

    def _name_values(self, batch: Any, named: dict[str, Any]) -> dict[str, Any]:
        if batch is not None:
            if named:
                raise TypeError("pass one batch, or arrays by name, not both")
            if len(self.specs) != 1:
                raise TypeError(
                    f"this writer has several arrays; name them all: append({', '.join(f'{n}=...' for n in self.specs)})"
                )
            return {next(iter(self.specs)): batch}
        if set(named) != set(self.specs):
            missing = sorted(set(self.specs) - set(named))
            extra = sorted(set(named) - set(self.specs))
            raise TypeError(
                f"append needs every array of this writer, {sorted(self.specs)}"
                + (f"; missing {missing}" if missing else "")
                + (f"; unknown {extra}" if extra else "")
            )
        return named

    def _coerce(self, name: str, value: Any) -> np.ndarray:
        """``value`` as a numpy array of ``name``'s dtype, or an error saying what was expected."""
        shape, dtype = self.specs[name]
        if isinstance(value, np.ndarray):
            arr = value
        elif all(hasattr(value, a) for a in ("detach", "cpu", "numpy")):
            try:
                arr = value.detach().cpu().numpy()
            except TypeError as e:  # e.g. bfloat16, which numpy has no type for
                raise TypeError(
                    f"{name}: cannot convert the tensor to numpy ({e}); cast it to {dtype} first"
                ) from e
        else:
            arr = np.asarray(value)
        check_batch(name, arr.shape, arr.dtype, shape, dtype)
        if name == "labels" and self.classes and arr.size:
            lo, hi = int(arr.min()), int(arr.max())
            if lo < 0 or hi >= len(self.classes):
                raise ValueError(
                    f"labels must lie in 0..{len(self.classes) - 1} for {len(self.classes)} classes; "
                    f"this batch has {lo}..{hi}"
                )
        if arr.dtype.kind == "f" and dtype.kind == "f" and arr.dtype.itemsize > dtype.itemsize:
            return narrow_float(name, arr, dtype)
        return np.ascontiguousarray(arr, dtype=dtype)

    def _count_rows(self, arrays: Mapping[str, Any]) -> int:
        rows = {n: int(a.shape[0]) for n, a in arrays.items()}
        if len(set(rows.values())) != 1:
            raise ValueError(f"every array needs the same number of rows per append; got {rows}")
        n = next(iter(rows.values()))
        if self._expected is not None and self._rows + n > self._expected:
            raise ValueError(
                f"{self.path!r} has {self._expected} samples; {self._rows} rows are appended "
                f"already, so this batch of {n} is {self._rows + n - self._expected} too many"
            )
        return n

    def _append_dask(self, values: dict[str, Any], lazy: list[str]) -> None:
        """Append dask arrays (and the numpy arrays beside them) a few blocks at a time."""
        for name, v in values.items():
            if isinstance(v, da.Array):
                if any(np.isnan(c) for c in v.chunks[0]):
                    raise ValueError(
                        f"{name}: a dask array of unknown length; call .compute_chunk_sizes() first"
                    )
                check_batch(name, v.shape, v.dtype, *self.specs[name])
            else:
                values[name] = self._coerce(name, v)
        n_rows = self._count_rows(values)
        lead: da.Array = values[lazy[0]]
        step = max(c.shard_len for c in self._columns.values())
        bounds = np.cumsum((0, *lead.chunks[0])).tolist()
        marks = self._marks()
        try:
            a = 0
            while a < n_rows:
                b = bounds[min(bisect_left(bounds, a + step), len(bounds) - 1)]
                parts = dask.compute(*[values[n][a:b] for n in lazy])
                piece = dict(zip(lazy, parts, strict=True))
                for name, part in piece.items():
                    got = np.shape(part)[0] if np.ndim(part) else 0
                    if got != b - a:  # else rows would shift against the other arrays
                        raise ValueError(
                            f"{name}: rows {a}..{b} of the dask array computed to {got} rows, "
                            f"not the {b - a} its chunks declare; fix the function that makes "
                            "its blocks (map_blocks chunks=...), or call .compute_chunk_sizes()"
                        )
                for name, col in self._columns.items():
                    v = piece[name] if name in piece else values[name][a:b]
                    col.extend(self._coerce(name, v))
                self._rows += b - a
                a = b
        except BaseException as e:
            self._rollback(marks, e)
            raise

    def _marks(self) -> tuple[int, dict[str, tuple[int, int]]]:
        return self._rows, {n: (c.shards, c.fill) for n, c in self._columns.items()}

    def _rollback(
        self, marks: tuple[int, dict[str, tuple[int, int]]], error: BaseException
    ) -> None:
        """Undo a batch that failed half-way, so the rows before it stand as they were."""
        try:
            self._pool.drain()
            if self._pool.failed is not None:
                raise self._pool.failed  # a shard of an earlier batch was not written
            for name, col in self._columns.items():
                col.rewind(*marks[1][name])
            self._rows = marks[0]
        except BaseException as e:
            self._break(f"writing failed ({e!r})")
            if e is not error:
                raise error from e

    # -- closing ----------------------------------------------------------------------
    def _abandon(self) -> None:
        """Leave the write unfinished: checkpoint what was appended, release the lock."""
        with self._mutex:
            if self._closed:
                return
            try:
                if not self._pending:
                    self.checkpoint()
            except Exception:
                logger.exception("could not checkpoint %s before leaving it unfinished", self.path)
            finally:
                self._closed = True
                self._lock.close()


# -- helpers -------------------------------------------------------------------------


def local_copy(url: str) -> str:
    """Where the store for ``url`` is built: the same folder each time, so ``resume=True`` finds it."""
    return Location.of(url, {}).build_path()
