"""Write back: :class:`ArrayWriter` streams model outputs (features, predictions, ids, paths)
into a daskimg store, batch by batch.

This module holds the public writer. Its arguments are checked into a plan (:mod:`.plan`);
each batch is checked and its rows placed (:mod:`.batches`): in arrival order, buffered
per shard (:mod:`.shards`), or by store index through a staging file (:mod:`.placed`). The
write's lifecycle — the lock, checkpoints, publishing and upload — is :mod:`.lifecycle`,
over the staging folder ``<path>.partial/`` (:mod:`.staging`).

**When appended rows are safe.** The store appears at ``path`` only when
:meth:`~ArrayWriter.close` returns, in one atomic step; a crash before that leaves the old
store (``mode="a"``, or ``overwrite=True``) or none, never a mix. Rows survive a crash
(kill, power loss) once a *checkpoint* that covers them has completed: when
:meth:`~ArrayWriter.checkpoint` returns, at the end of an :meth:`~ArrayWriter.append` made
``checkpoint_every`` seconds or more after the previous checkpoint, and at the start of
:meth:`~ArrayWriter.close`. ``ArrayWriter(path, <same arguments>, resume=True)`` then
reopens the write with exactly the rows of the last checkpoint — whole batches — and
``len(writer)`` says how many; :meth:`~ArrayWriter.missing` lists the samples still to
write. If the crash came after the new store was published (inside
:meth:`~ArrayWriter.close`), the resumed writer holds every row and its
:meth:`~ArrayWriter.close` has nothing left to do. A batch is all or nothing: one that
fails (bad input, a bad index, a failing dask task, an interrupt) leaves the rows before
it as they were. An exception inside a ``with`` block makes a checkpoint of the batches
appended before it and leaves the write open for ``resume=True``.

**Memory stays bounded.** ``order="store"``: per array, the unfinished shard (about 8 MiB,
at least one chunk) and up to ``threads`` shards being written, plus the batch being
appended. ``order="index"``: rows go straight to a staging file of ``N`` rows per array in
``<path>.partial/`` (written with ``pwrite``; it takes up to the uncompressed size of the
arrays on disk until :meth:`~ArrayWriter.close`), plus one byte per sample in memory; each
shard is compressed as soon as all its samples have arrived, so however scattered the
order, at most ``threads`` shards are in memory. A dask array is computed a few blocks at
a time.

**Batches.** numpy arrays, anything with ``.detach().cpu().numpy()`` (torch tensors), dask
arrays; for text, lists or tuples of ``str`` or numpy str arrays. Casts that cannot lose
values are done silently, and so is float to a narrower float (a finite value too large
for it, which would become inf, is refused); float -> int, int -> narrower int, signed ->
unsigned and int -> a float that could round it are refused: cast explicitly. Appends from
several threads are taken one at a time.

**Writing to a URL.** A complete store already at the URL is refused at once unless
``overwrite=True``. The store is built, with the same checkpoints, in a local folder that
depends only on the URL:
``<tempfile.gettempdir()>/daskimg-writer/<sha256(url)[:16]>/<name>`` (it needs room for
the whole store). :meth:`~ArrayWriter.close` finishes it there, then uploads it and
removes the local copy: a ``*.zarr.zip`` as one object, which appears whole or not at all;
a ``*.zarr`` folder after clearing the old one, its root ``zarr.json`` (``complete:
true``) last, so until then :func:`daskimg.open_zarr` refuses it. If the upload fails, the
finished local copy stays: ``close()`` again, or after a crash ``ArrayWriter(url, <same
arguments>, resume=True).close()`` on the same machine, uploads it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import DaskImgError
from ..store.location import Location
from ..store.splits import check_new_store
from . import staging
from .batches import append_rows, missing_rows
from .checks import TEXT
from .lifecycle import OpenWrite
from .plan import ORDERS as ORDERS
from .plan import Plan
from .shards import SHARD_BYTES as SHARD_BYTES
from .shards import SHARD_CHUNKS_MAX as SHARD_CHUNKS_MAX

__all__ = ["ArrayWriter"]


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
    When appended rows are safe (checkpoints, ``resume=True``), how memory stays bounded,
    which batches are taken, and how a store reaches a URL: see
    :mod:`daskimg.writeback.writer`.

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
        plan = Plan.of(
            path, name=name, shape=shape, dtype=dtype, arrays=arrays, chunks=chunks,
            shard_chunks=shard_chunks, codec=codec, mode=mode, order=order,
            num_samples=num_samples, overwrite=overwrite, split=split,
            checkpoint_every=checkpoint_every, threads=threads, storage_options=storage_options,
        )  # fmt: skip
        self.specs = plan.specs
        #: ``"index"`` (rows placed by ``append(..., index=)``) or ``"store"`` (arrival order)
        self.order: str = plan.order
        #: the URL the store is uploaded to at close(), or None for a local path
        self.url: str | None = plan.url
        #: where the store is built (and, for a local path, where it appears)
        self.path = plan.path
        self.target = plan.target
        self.kind = plan.kind
        self.mode = mode
        self.overwrite = overwrite
        self.checkpoint_every = checkpoint_every
        self._mutex = threading.RLock()  # one append, checkpoint or close at a time
        self._plan = plan
        if mode == "w" and plan.url is None:  # a split store of its own: as to_zarr's
            # a labels array without class names: its numbers are compared with the other
            # splits' names as to_zarr's are (daskimg info says so of the stores written)
            numbers = "labels" in self.specs and not classes
            check_new_store(plan.target, split, list(classes), overwrite=overwrite, numbers=numbers)
        # the lock, shard pool, staging folder and checkpoints; how the write ends
        self._write = OpenWrite(plan, storage_options)
        with _no_space_named(str(plan.staging), self.target, starting=True, resume=resume):
            st = self._write.open(resume=resume, classes=classes)
        self._sink: staging.Sink | None = st.sink
        self._expected = st.num_samples  # known number of samples (mode "a": the store's)
        self.classes = st.classes
        self._final_rows = st.rows  # rows of a store finished before this writer opened

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
        return self._write.durable

    @property
    def chunk_len(self) -> int:
        """Samples per chunk along axis 0 (the same for every array)."""
        return int(self._write.manifest["chunk_len"])

    def __len__(self) -> int:
        return self.num_rows

    def __repr__(self) -> str:
        arrays = {n: (s, "str" if d == TEXT else str(d)) for n, (s, d) in self.specs.items()}
        state = "closed" if self._write.closed else f"rows={self.num_rows}"
        return (
            f"ArrayWriter({self.target!r}, arrays={arrays}, mode={self.mode!r}, "
            f"order={self.order!r}, {state})"
        )

    def __reduce__(self) -> Any:
        # sent to a dask worker or a DataLoader worker, it failed with "cannot pickle
        # '_thread.RLock' object", naming neither the writer nor what to do
        raise TypeError(
            f"an ArrayWriter ({self.path}) cannot be sent to another process (a dask or "
            "DataLoader worker): one process writes a store. Append from the process that "
            "made it: compute the batches there (e.g. client.gather / .compute()), then "
            "writer.append(batch)"
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
        # never finalise here (the rows may be incomplete); just release the lock, and say so
        # when rows were appended and never closed: they are in no store
        with contextlib.suppress(Exception):
            unclosed = False
            with contextlib.suppress(Exception):  # (a writer whose __init__ failed half-way)
                unclosed = not self._write.closed and self.num_rows > 0
            self._write.release()
            if unclosed:
                durable = self.durable_rows
                warnings.warn(
                    f"ArrayWriter({self.target!r}) was never closed: its {self.num_rows} rows "
                    f"are in no store ({durable} saved at its last checkpoint, which "
                    "ArrayWriter(..., resume=True) continues from; the rest are lost). Call "
                    "close() when done, or write in a `with ArrayWriter(...) as w:` block",
                    RuntimeWarning,
                    stacklevel=2,
                )

    def missing(self) -> np.ndarray:
        """Store indices of the samples that have no row yet (int64, ascending).

        For a store whose length is known (``mode="a"``, or ``num_samples=``); after
        ``resume=True``, the samples still to write.
        """
        with self._mutex:
            sink = self._sink
            if sink is None:  # finished
                return np.zeros(0, dtype=np.int64)
            return missing_rows(sink, self._expected)

    def append(self, batch: Any = None, /, *, index: Any = None, **named: Any) -> None:
        """Append a batch of rows: ``append(batch)`` for one array, ``append(a=..., b=...)``
        or ``append({"a": ..., "b": ...})`` (e.g. what a predict step returns) for several
        (each a batch of samples along axis 0).

        ``index``: the store indices of the batch's rows (an int array or tensor, a
        ``range`` or a ``slice``), one per row. Required with ``order="index"`` (the
        default for ``mode="a"`` and with ``num_samples``): each row lands on its sample
        whatever the order of the batches; an index out of range, repeated, or of a
        sample written already is refused naming it. With ``order="store"`` it is
        optional and checked: it must be the next rows; a writer of a new store that
        does not know its number of samples refuses it (pass ``num_samples=`` to place
        rows by index, or drop ``index=``).

        Every named array gets the same number of rows. A batch that is refused (wrong
        shape, unsafe cast, bad index, too many rows) raises before anything changes;
        the writer stays usable.
        """
        with self._mutex, _no_space_named(str(self._plan.staging), self.target):
            try:
                self._append(batch, named, index)
            except Exception as e:
                if not isinstance(e, (DaskImgError, ValueError, TypeError, OSError)):
                    # a dask task's own error (a model, a data loader): say which writer
                    e.add_note(
                        f"daskimg: ArrayWriter({self.target!r}).append failed; a batch is "
                        f"added whole or not at all, and the writer holds {self.num_rows} rows"
                    )
                raise

    def checkpoint(self) -> int:
        """Make every row appended so far durable; return their number.

        After a crash, ``ArrayWriter(path, ..., resume=True)`` continues from here.
        """
        with self._mutex:
            self._write.check_usable()
            if self._sink is None:
                return self.num_rows  # the store is complete: every row is durable
            with _no_space_named(str(self._plan.staging), self.target):
                return self._write.checkpoint(self._sink)

    def close(self) -> None:
        """Finish the store and move it into place (atomically); release the lock.

        If samples have no row yet (a store of known length), this raises saying how
        many and the first, the store is left unchanged and the writer stays open
        (append them and close again). Closing a writer with no rows raises (an empty
        store is not written) and leaves nothing behind. If moving the store into place
        fails, the write stays unfinished (as after a crash) and every later call,
        ``close()`` too, raises: reopen it with ``resume=True``; a Ctrl-C once the store
        is in place (removing the staging folder) leaves the write finished, and
        ``close()`` again returns. For a URL, the finished store is then uploaded and its
        local copy removed; if the upload fails, this raises and the local copy stays:
        call ``close()`` again to retry.
        """
        with self._mutex:
            write = self._write
            if write.closed and write.broken is None and not write.abandoned:
                return
            write.check_usable()
            sink = self._sink
            if sink is not None:
                try:
                    with _no_space_named(str(self._plan.staging), self.target):
                        write.finish(sink, self._expected)
                except MemoryError as e:  # (empty: it named nothing)
                    e.add_note(
                        f"daskimg: ArrayWriter({self.target!r}).close ran out of memory "
                        "finishing the store; at least the rows of its last checkpoint "
                        f"({write.durable}) are kept in {str(self._plan.staging)!r}: reopen "
                        "with ArrayWriter(..., resume=True) where more memory is free (or "
                        "call checkpoint() more often: checkpoint_every=)"
                    )
                    raise
                self._final_rows = sink.rows
                self._sink = None
            write.end()

    # -- appending --------------------------------------------------------------------
    def _append(self, batch: Any, named: dict[str, Any], index: Any) -> None:
        self._write.check_usable()
        if self._sink is None:
            raise self._write.all_written(self.num_rows)
        sink = self._sink
        try:
            append_rows(self._plan, sink, self.classes, self._expected, batch, named, index)
        except BaseException:
            if sink.lost is not None:  # only a failing write loses rows
                self._write.broke(sink.lost)
            raise
        if self._write.checkpoint_due(self.checkpoint_every):
            self.checkpoint()

    def _abandon(self) -> None:
        """Leave the write unfinished: checkpoint what was appended, release the lock."""
        with self._mutex:
            self._write.abandon(self._sink)


@contextlib.contextmanager
def _no_space_named(
    partial: str, target: str, *, starting: bool = False, resume: bool = False
) -> Iterator[None]:
    """A full disk (or quota) while writing: say which store, what is kept, what to do
    (``starting``: making the writer, which leaves no rows behind; ``resume``: making it to
    continue an unfinished write, whose staging it keeps)."""
    try:
        yield
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        if starting:
            raise OSError(
                e.errno,
                f"{target}: no room left to start writing ({e.strerror}: the disk, a quota "
                f"or the file size limit, at {e.filename or partial!r}); no rows were "
                "written and a store there is as it was"
                + (
                    f"; the unfinished write in {partial!r} is kept: free space and resume "
                    "it again (resume=True)"
                    if resume
                    else ": free space and make the ArrayWriter again"
                ),
            ) from e
        raise OSError(
            e.errno,
            f"{target}: no room left while writing ({e.strerror}: the disk, a quota or the "
            f"file size limit); what was "
            f"written so far is kept in {partial!r} (with its last checkpoint): free space and "
            "reopen with ArrayWriter(..., resume=True), or remove it. Finishing a store needs "
            "free space of up to about three times its size (the rows, the shards, the zip)",
        ) from e


def local_copy(url: str) -> str:
    """Where the store for ``url`` is built: the same folder each time, so ``resume=True`` finds it."""
    return Location.of(url, {}).build_path()
