"""Write back: :class:`ArrayWriter` streams model outputs (features, predictions, ids, paths)
into a daskimg store, batch by batch. This module holds the public writer: its arguments,
the checks on every batch, where its rows go (in arrival order or by store index), when
to checkpoint, and the lifecycle from opening (``mode="w"`` or ``"a"``, ``resume=True``)
to :meth:`ArrayWriter.close`. Rows in arrival order are buffered per shard in
:mod:`.shards`; rows placed by index go through a staging file in :mod:`.placed`; the
staging folder ``<path>.partial/`` — checkpoints, resuming and the atomic move into place
— is :mod:`.staging`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import DaskImgError
from ..store.codecs import parse_codec
from ..store.location import Location, remove_path, write_lock
from . import staging
from .batches import Batch, needs_index, next_rows
from .checks import TEXT, integer_arg, parse_index, parse_specs
from .lifecycle import Plan, check_complete, start
from .placed import Placed
from .shards import SHARD_BYTES as SHARD_BYTES
from .shards import SHARD_CHUNKS_MAX as SHARD_CHUNKS_MAX
from .shards import ShardPool

__all__ = ["ArrayWriter"]

logger = logging.getLogger("daskimg")

ORDERS = ("index", "store")


class ArrayWriter:
    """Append per-sample arrays (features, predictions, ids, paths) to a daskimg store as they come.

    The result is a daskimg store of format version 1 that :func:`daskimg.open_zarr`,
    ``daskimg verify``, :class:`daskimg.BatchIterator` and plain ``zarr`` read.

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
        Several arrays instead: ``{"features": ((2048,), "float32"), "paths": ((), str)}``.
        Each :meth:`append` then names them all. Dtypes: bool, integer, float, or ``str``
        (text, shape ``()``: stored as Zarr v3 strings, as ``to_zarr`` stores ``paths``).
        ``labels`` must be ``((), <integer>)`` and ``paths`` ``((), str)``; ``images`` and
        ``index`` are reserved.
    chunks
        Samples per chunk (the unit the loader reads). Default: about 8 MiB of the
        largest array per chunk; with ``mode="a"``, the store's chunk length (required).
    shard_chunks
        Chunks per shard (the unit compressed and written at once, one file in a
        ``*.zarr`` folder). Default per array: about 8 MiB, at most 64 chunks.
    codec
        ``"lz4"`` (default), ``"zstd"`` or ``"none"``, for every numeric array (text is
        always zstd); see :mod:`daskimg.store.codecs`.
    mode
        ``"w"``: write a new store. ``"a"``: add arrays to an existing, complete store,
        one row per sample; the store's other arrays are kept. Not for a URL (refused):
        download the store, add the arrays locally, upload it.
    order
        Where appended rows go. ``"index"``: each :meth:`append` passes ``index=``, the
        store indices of its rows; rows may arrive in any order (DataLoader workers
        interleave batches) and every sample gets exactly one row. ``"store"``: the k-th
        row appended is sample k. Default: ``"index"`` with ``mode="a"`` and with
        ``num_samples``; ``"store"`` for a new store of unknown length. ``mode="a"`` with
        ``order="store"`` is a promise that rows arrive in the store's order (e.g.
        ``BatchIterator(shuffle=False)`` in one process, no DataLoader workers); the writer
        cannot check it unless ``index=`` is passed too.
    num_samples
        ``mode="w"``: the number of samples, known up front. Needed for ``order="index"``
        (then the default); with ``order="store"`` :meth:`close` checks the count.
        ``mode="a"``: the store's (leave it unset, or it must match).
    overwrite
        ``mode="w"``: replace an existing store. ``mode="a"``: replace arrays of the
        same names. The old store stays readable until :meth:`close` replaces it.
    resume
        Continue an unfinished write of the same arrays from its last checkpoint (see
        Notes). Without it, an unfinished write at ``path`` is discarded and started over.
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
    :meth:`close` returns, in one atomic step; a crash before that leaves the old store
    (``mode="a"``, or ``overwrite=True``) or none, never a mix. Rows survive a crash
    (kill, power loss) once a *checkpoint* that covers them has completed: when
    :meth:`checkpoint` returns, at the end of an :meth:`append` made ``checkpoint_every``
    seconds or more after the previous checkpoint, and at the start of :meth:`close`.
    ``ArrayWriter(path, <same arguments>, resume=True)`` then reopens the write with
    exactly the rows of the last checkpoint — whole batches — and ``len(writer)`` says
    how many; :meth:`missing` lists the samples still to write. If the crash came after
    the new store was published (inside :meth:`close`), the resumed writer holds every
    row and its :meth:`close` has nothing left to do. A batch is all or nothing: one that
    fails (bad input, a bad index, a failing dask task, an interrupt) leaves the rows
    before it as they were. An exception inside a ``with`` block makes a checkpoint of
    the batches appended before it and leaves the write open for ``resume=True``.

    **Memory stays bounded.** ``order="store"``: per array, the unfinished shard (about
    8 MiB, at least one chunk) and up to ``threads`` shards being written, plus the batch
    being appended. ``order="index"``: rows go straight to a staging file of ``N`` rows
    per array in ``<path>.partial/`` (written with ``pwrite``; it takes up to the
    uncompressed size of the arrays on disk until :meth:`close`), plus one byte per
    sample in memory; each shard is compressed as soon as all its samples have arrived,
    so however scattered the order, at most ``threads`` shards are in memory. A dask
    array is computed a few blocks at a time.

    **Batches.** numpy arrays, anything with ``.detach().cpu().numpy()`` (torch
    tensors), dask arrays; for text, lists or tuples of ``str`` or numpy str arrays.
    Casts that cannot lose values are done silently, and so is float to a narrower float
    (a finite value too large for it, which would become inf, is refused); float -> int,
    int -> narrower int, signed -> unsigned and int -> a float that could round it are
    refused: cast explicitly. Appends from several threads are taken one at a time.

    **Writing to a URL.** A complete store already at the URL is refused at once
    unless ``overwrite=True``. The store is built, with the same checkpoints, in a local
    folder that depends only on the URL:
    ``<tempfile.gettempdir()>/daskimg-writer/<sha256(url)[:16]>/<name>`` (it needs room
    for the whole store). :meth:`close` finishes it there, then uploads it and removes
    the local copy: a ``*.zarr.zip`` as one object, which appears whole or not at all; a
    ``*.zarr`` folder after clearing the old one, its root ``zarr.json`` (``complete:
    true``) last, so until then :func:`daskimg.open_zarr` refuses it. If the upload
    fails, the finished local copy stays: ``close()`` again, or after a crash
    ``ArrayWriter(url, <same arguments>, resume=True).close()`` on the same machine,
    uploads it.

    Examples
    --------
    >>> with ArrayWriter("out/features.zarr.zip", shape=(2048,), dtype="float32") as w:  # doctest: +SKIP
    ...     for batch in predictions:
    ...         w.append(batch)
    >>> feats = di.open_zarr("out/features.zarr.zip").arrays["features"]  # doctest: +SKIP

    Predictions added to a split store, each row on its sample, whatever the order the
    batches arrive in (``index`` is the store indices of the batch's rows):

    >>> with ArrayWriter("out/train.zarr.zip", name="pred", shape=(10,), dtype="float32",
    ...                  mode="a") as w:  # doctest: +SKIP
    ...     for images, index in di.BatchIterator("out/train.zarr.zip", batch_size=64,
    ...                                            shuffle=False, arrays=("images", "index")):
    ...         w.append(model(images), index=index)

    Several arrays, text among them, to a new store of known length:

    >>> w = ArrayWriter("out/f.zarr", arrays={"features": ((512,), "float32"),
    ...                                       "paths": ((), str)}, num_samples=n)  # doctest: +SKIP
    >>> w.append(features=f, paths=list_of_names, index=idx); w.close()  # doctest: +SKIP

    After a crash, continue where the last checkpoint left off:

    >>> with ArrayWriter("out/train.zarr.zip", name="pred", shape=(10,), dtype="float32",
    ...                  mode="a", resume=True) as w:  # doctest: +SKIP
    ...     todo = set(w.missing().tolist())
    ...     for images, index in batches:
    ...         if todo.issuperset(index.tolist()):
    ...             w.append(model(images), index=index)
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
        order: str | None = None,
        num_samples: int | None = None,
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
        if order not in (None, *ORDERS):
            raise ValueError(
                f"order must be 'index' (rows placed by append(..., index=)) or 'store' (the "
                f"k-th row appended is sample k); got {order!r}"
            )
        if num_samples is not None:
            num_samples = integer_arg(num_samples, 1, "num_samples must be a positive integer")
        if mode == "w" and order == "index" and num_samples is None:
            raise ValueError(
                "order='index' places rows by store index, in a store whose length is known: "
                "pass num_samples=N too"
            )
        #: ``"index"`` (rows placed by ``append(..., index=)``) or ``"store"`` (arrival order)
        self.order: str = order or ("index" if mode == "a" or num_samples is not None else "store")
        if chunks is not None:
            chunks = integer_arg(chunks, 1, "chunks must be a positive number of samples")
        if shard_chunks is not None:
            shard_chunks = integer_arg(shard_chunks, 1, "shard_chunks must be a positive integer")
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
        loc = Location.of(path, storage_options)
        #: the URL the store is uploaded to at close(), or None for a local path
        self.url: str | None = loc.target if loc.is_url else None
        self._storage_options = dict(storage_options or {})
        if loc.is_url:
            if mode == "a":
                raise ValueError(
                    f"mode='a' cannot add arrays to a store at a URL ({loc.target!r}): download "
                    "it, add the arrays to the local copy with mode='a', and upload it"
                )
            loc.check_writable(overwrite=overwrite)
        #: where the store is built (and, for a local path, where it appears)
        self.path = loc.build_path()
        self.target = loc.target
        self.kind = loc.kind
        self.mode = mode
        self.overwrite = overwrite
        self.checkpoint_every = checkpoint_every
        self._plan = Plan(
            path=self.path, target=self.target, url=self.url, kind=self.kind, mode=mode,
            order=self.order, overwrite=overwrite, specs=self.specs, chunks=chunks,
            shard_chunks=shard_chunks, codec=codec, split=split,
        )  # fmt: skip
        self._staging = self._plan.staging
        self._closed = False
        self._broken: str | None = None
        self._mutex = threading.RLock()  # one append, checkpoint or close at a time
        self._last_checkpoint = time.monotonic()
        self._pool = ShardPool(threads)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(write_lock(self.path))
        # staging files are closed after the pool's last writes, which read them (a list,
        # not a method of self: the writer must stay free of cycles so that del releases it)
        self._files: list[Placed] = []
        self._lock.callback(_close_all, self._files)
        self._lock.callback(self._pool.shutdown)
        try:
            st = start(
                self._plan,
                self._pool,
                resume=resume,
                num_samples=num_samples,
                classes=tuple(str(c) for c in classes),
            )
        except BaseException:
            self._lock.close()
            raise
        self._manifest: dict[str, Any] = st.manifest
        self._sink: staging.Sink | None = st.sink
        if isinstance(st.sink, Placed):
            self._files.append(st.sink)
        self._expected = st.num_samples  # known number of samples (mode "a": the store's)
        self.classes = st.classes
        self._final_rows = st.rows  # rows of a store finished before this writer opened
        self._pending = st.pending  # URL: the store is complete locally, not uploaded yet
        self._done = st.done  # published by the write this resumed, before it was interrupted
        self._durable = self.num_rows

    # -- public -----------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        """The names of the arrays written."""
        return tuple(self.specs)

    @property
    def num_rows(self) -> int:
        """Rows appended so far (including any recovered by ``resume=True``)."""
        return self._sink.rows if self._sink is not None else self._final_rows

    @property
    def num_samples(self) -> int | None:
        """The number of samples of the store, when known (``mode="a"``, ``num_samples=``)."""
        return self._expected

    @property
    def durable_rows(self) -> int:
        """Rows covered by the last completed checkpoint (they survive a crash)."""
        return self._durable

    @property
    def chunk_len(self) -> int:
        """Samples per chunk along axis 0 (the same for every array)."""
        return int(self._manifest["chunk_len"])

    def __len__(self) -> int:
        return self.num_rows

    def __repr__(self) -> str:
        arrays = {n: (s, "str" if d == TEXT else str(d)) for n, (s, d) in self.specs.items()}
        state = "closed" if self._closed else f"rows={self.num_rows}"
        return (
            f"ArrayWriter({self.target!r}, arrays={arrays}, mode={self.mode!r}, "
            f"order={self.order!r}, {state})"
        )

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

    def missing(self) -> np.ndarray:
        """Store indices of the samples that have no row yet (int64, ascending).

        For a store whose length is known (``mode="a"``, or ``num_samples=``); after
        ``resume=True``, the samples still to write.
        """
        with self._mutex:
            sink = self._sink
            if sink is None:  # finished
                return np.zeros(0, dtype=np.int64)
            if isinstance(sink, Placed):
                return sink.missing()
            if self._expected is None:
                raise ValueError(
                    "the number of samples of this store is not known (mode='w' without "
                    "num_samples); every row appended is kept, in order"
                )
            return np.arange(self.num_rows, self._expected, dtype=np.int64)

    def append(self, batch: Any = None, /, *, index: Any = None, **named: Any) -> None:
        """Append a batch of rows: ``append(batch)`` for one array, ``append(a=..., b=...)``
        for several (each a batch of samples along axis 0).

        ``index``: the store indices of the batch's rows (an int array or tensor, a
        ``range`` or a ``slice``), one per row. Required with ``order="index"`` (the
        default for ``mode="a"`` and with ``num_samples``): each row lands on its sample
        whatever the order of the batches; an index out of range, repeated, or of a
        sample written already is refused naming it. With ``order="store"`` it is
        optional and checked: it must be the next rows.

        Every named array gets the same number of rows. A batch that is refused (wrong
        shape, unsafe cast, bad index, too many rows) raises before anything changes;
        the writer stays usable.
        """
        with self._mutex:
            self._append(batch, named, index)

    def checkpoint(self) -> int:
        """Make every row appended so far durable; return their number.

        After a crash, ``ArrayWriter(path, ..., resume=True)`` continues from here.
        """
        with self._mutex:
            self._check_usable()
            if self._sink is None:
                return self.num_rows  # the store is complete: every row is durable
            try:
                staging.save_checkpoint(self._staging, self._manifest, self._sink)
            except BaseException as e:
                self._break(f"a checkpoint failed ({e!r})")
                raise
            self._durable = self._sink.rows
            self._last_checkpoint = time.monotonic()
            return self._durable

    def close(self) -> None:
        """Finish the store and move it into place (atomically); release the lock.

        If samples have no row yet (a store of known length), this raises saying how
        many and the first, the store is left unchanged and the writer stays open
        (append them and close again). Closing a writer with no rows raises (an empty
        store is not written) and leaves nothing behind. If moving the store into place
        fails, the write stays unfinished (as after a crash) and every later call,
        ``close()`` too, raises: reopen it with ``resume=True``. For a URL, the finished
        store is then uploaded and its local copy removed; if the upload fails, this
        raises and the local copy stays: call ``close()`` again to retry.
        """
        with self._mutex:
            self._close()

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

    def _append(self, batch: Any, named: dict[str, Any], index: Any) -> None:
        self._check_usable()
        if self._sink is None:
            where = (
                "it was published before the write this resumed was interrupted); close() has "
                "nothing left to do"
                if self._done
                else f"the finished store waits at {self.path!r}); close() uploads them"
            )
            raise ValueError(
                f"all {self.num_rows} rows of {self.target!r} are written ({where}. Nothing "
                "can be appended to it"
            )
        sink = self._sink
        given = Batch.of(self.specs, self.classes, batch, named)
        idx = self._index(index, given.rows)
        pieces = given.pieces(idx, sink.step)
        try:
            if isinstance(sink, Placed):
                assert idx is not None
                sink.add(pieces, idx)
            else:
                sink.add(piece for _, piece in pieces)
        except BaseException:
            if sink.lost is not None:
                self._break(sink.lost)
            raise
        if (
            self.checkpoint_every is not None
            and time.monotonic() - self._last_checkpoint >= self.checkpoint_every
        ):
            self.checkpoint()

    def _index(self, index: Any, n: int) -> np.ndarray | None:
        """The batch's store indices, checked (None: rows in arrival order)."""
        sink = self._sink
        if isinstance(sink, Placed):
            if index is None:
                raise ValueError(needs_index(self.mode, self.target, self._expected))
            idx = parse_index(index, n)
            sink.check(idx)
            return idx
        have = self.num_rows
        if self._expected is not None and have + n > self._expected:
            raise ValueError(
                f"{self.path!r} has {self._expected} samples; {have} rows are appended "
                f"already, so this batch of {n} is {have + n - self._expected} too many"
            )
        return None if index is None else next_rows(index, n, have, self._expected)

    # -- closing ----------------------------------------------------------------------
    def _close(self) -> None:
        if self._closed and self._broken is None:
            return
        self._check_usable()
        if self._sink is not None:
            self._finish(self._sink)
        if self._pending and self.url is not None:
            self._upload(self.url)
        self._closed = True
        self._lock.close()
        if self.url is not None:  # the local copy's own folder, empty now
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(self.path))

    def _finish(self, sink: staging.Sink) -> None:
        """Finish the store at ``self.path`` (the local copy of a URL's)."""
        check_complete(self._plan, sink, self._expected)
        if sink.rows == 0:
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
                Location.of(self.path), self._staging, self._manifest, sink, mode=self.mode
            )
        except BaseException as e:
            # no store at path (or the old one): a second close must not pass for success
            self._break(f"moving the store into place failed ({e!r})")
            raise
        self._final_rows = sink.rows
        self._sink = None
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

    def _abandon(self) -> None:
        """Leave the write unfinished: checkpoint what was appended, release the lock."""
        with self._mutex:
            if self._closed:
                return
            try:
                if self._sink is not None:
                    self.checkpoint()
            except Exception:
                logger.exception("could not checkpoint %s before leaving it unfinished", self.path)
            finally:
                self._closed = True
                self._lock.close()


def _close_all(sinks: list[Placed]) -> None:
    for sink in sinks:
        sink.close()


def local_copy(url: str) -> str:
    """Where the store for ``url`` is built: the same folder each time, so ``resume=True`` finds it."""
    return Location.of(url, {}).build_path()
