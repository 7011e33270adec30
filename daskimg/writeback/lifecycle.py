"""Write back: the lifecycle of an :class:`~daskimg.ArrayWriter`'s write, from opening to its end.

:func:`start` decides, under the writer's lock, what a writer opens: a new staging folder;
with ``resume=True`` the last checkpoint of an unfinished write, or a write that was
published before it was interrupted (nothing left to do), or — for a URL — a finished
local copy still to upload. :func:`check_complete` says whether every sample has its row
before :meth:`~daskimg.ArrayWriter.close` publishes. :class:`OpenWrite` holds what an open
write owns — the lock, the shard pool, the staging folder and its checkpoints — and ends
it: published (and uploaded), broken by a failure that lost rows, or abandoned for
``resume=True``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import DaskImgError, StoreExistsError
from ..interrupts import held_ctrl_c
from ..store.location import Location, check_replaceable, make_parent, remove_path, write_lock
from . import staging
from .placed import Placed
from .plan import Plan
from .shards import ShardPool

__all__ = ["OpenWrite", "Started", "check_complete", "start"]

logger = logging.getLogger("daskimg")


@dataclass
class Started:
    """What a writer opened: a sink for rows (with its manifest), or a finished store."""

    manifest: dict[str, Any]
    sink: staging.Sink | None
    num_samples: int | None
    classes: tuple[str, ...]
    rows: int = 0  # of a finished store (sink None)
    pending: bool = False  # a URL's finished local copy, not uploaded yet
    done: bool = False  # published by the write resumed, before it was interrupted


def start(
    plan: Plan,
    pool: ShardPool,
    *,
    resume: bool,
    num_samples: int | None,
    classes: Sequence[str],
) -> Started:
    """Open the write ``plan`` describes (the caller holds the lock)."""
    target_exists = os.path.lexists(plan.path)
    classes = tuple(classes)
    if plan.url is not None and target_exists:
        # a finished local copy whose upload failed or was cut short
        if resume:
            return _finished_local_copy(plan, num_samples, classes)
        logger.warning("discarding the finished, not uploaded store at %s", plan.path)
        remove_path(plan.path)
        target_exists = False
    if resume and target_exists:
        rows = staging.published(plan.staging, Location.of(plan.path))
        if rows is not None:
            logger.warning(
                "%s: the write being resumed was published before it was interrupted; all %d "
                "rows are in the store, and close() has nothing left to do",
                plan.target,
                rows,
            )
            manifest = dict(staging.read_manifest(plan.staging) or {})
            remove_path(str(plan.staging))
            return Started(manifest, None, num_samples, classes, rows=rows, done=True)
    if plan.mode == "w" and target_exists and not plan.overwrite:
        if resume and staging.read_manifest(plan.staging) is None:
            # (a kill just after close() returned, and the script run again with resume)
            raise StoreExistsError(
                f"{plan.path!r} exists, and resume=True found no unfinished write here: the "
                "write that made it finished (look at it: daskimg info). Pass overwrite=True "
                "only to write it again from the start"
            )
        raise StoreExistsError(
            f"{plan.path!r} exists; pass overwrite=True to replace it, or mode='a' to add "
            "arrays to it"
        )
    if plan.mode == "w" and target_exists and plan.url is None:
        check_replaceable(plan.path)  # a store, not a folder of the user's own files
    chunks, token = plan.chunks, None
    if plan.mode == "a":
        chunks, token, num_samples, classes = _check_target(plan, resume, num_samples, classes)
    if resume:
        state = staging.resume(
            plan.staging, plan.specs, pool,
            mode=plan.mode, order=plan.order, num_samples=num_samples, chunks=chunks,
            shard_chunks=plan.shard_chunks, codec=plan.codec, token=token, classes=classes,
            split=plan.split, where=repr(plan.target),
        )  # fmt: skip
        if state is not None:
            manifest, sink = state
            if plan.mode == "w":  # labels are checked against the classes the store records
                classes = tuple(manifest["root_meta"]["attributes"]["daskimg"].get("classes") or ())
            logger.info("resumed %s with %d rows", plan.target, sink.rows)
            return Started(manifest, sink, num_samples, classes)
    if plan.staging.exists():
        _keep_another_write(plan)
        why = "it has no checkpoint to resume from" if resume else "resume=False"
        logger.warning("discarding the unfinished write at %s (%s)", plan.staging, why)
    remove_path(str(plan.staging))
    remove_path(plan.path + ".tmp")
    manifest, sink = staging.create(
        plan.staging, plan.specs, pool,
        mode=plan.mode, kind=plan.kind, order=plan.order, num_samples=num_samples,
        chunks=chunks, shard_chunks=plan.shard_chunks, codec=plan.codec, classes=classes,
        split=plan.split, token=token, where=repr(plan.target),
    )  # fmt: skip
    return Started(manifest, sink, num_samples, classes)


def _keep_another_write(plan: Plan) -> None:
    """Refuse to discard an unfinished write of other arrays with rows saved: the staging
    folder is the store's, so a quick writer of another column (``mode="a"``) threw away a
    long one's checkpointed rows with a log line."""
    manifest = staging.read_manifest(plan.staging)
    if manifest is None or plan.mode != "a" or manifest.get("mode") != "a":
        return  # a new store's write started over with other arrays: that one is obsolete
    theirs = sorted(manifest.get("arrays") or {})
    rows = manifest.get("rows")
    if theirs == sorted(plan.specs) or not isinstance(rows, int) or rows <= 0:
        return  # the same write started over (resume=False), or nothing saved
    raise StoreExistsError(
        f"{plan.target!r} has an unfinished write of {theirs} with {rows} rows saved (in "
        f"{str(plan.staging)!r}); writing {sorted(plan.specs)} now would discard it. Finish "
        "it first (ArrayWriter(..., resume=True) with its arrays, then close()), or remove "
        "that folder to discard it"
    )


def _finished_local_copy(plan: Plan, num_samples: int | None, classes: tuple[str, ...]) -> Started:
    rows, chunk_len = staging.check_finished(plan.path, plan.specs)
    if plan.chunks is not None and plan.chunks != chunk_len:
        raise ValueError(
            f"cannot resume: the finished store at {plan.path!r} (not yet uploaded) has "
            f"chunks={chunk_len}. Pass the same arguments, or resume=False to discard it"
        )
    remove_path(str(plan.staging))  # left by a kill just after the store was finished
    logger.info("resumed %s: %d rows, finished, to upload", plan.target, rows)
    return Started({"chunk_len": chunk_len}, None, num_samples, classes, rows=rows, pending=True)


def _check_target(
    plan: Plan, resume: bool, num_samples: int | None, classes: tuple[str, ...]
) -> tuple[int, str, int, tuple[str, ...]]:
    """mode "a": the store's chunk length, identity token, number of samples and classes."""
    try:
        chunk_len, token, n, have = staging.check_target(
            plan.path, plan.specs, overwrite=plan.overwrite, chunks=plan.chunks
        )
    except StoreExistsError as e:
        if not resume or staging.read_manifest(plan.staging) is not None:
            raise
        remove_path(str(plan.staging))  # what a kill left of a finished write's
        raise StoreExistsError(
            f"{e}. resume=True found no unfinished write here: the write that added them "
            "finished (its arrays are in the store)"
        ) from None
    if num_samples is not None and num_samples != n:
        raise ValueError(
            f"num_samples={num_samples}, but {plan.path!r} has {n} samples; leave "
            "num_samples unset with mode='a'"
        )
    if classes and tuple(classes) != tuple(have):
        # labels are checked against the classes given, but mode "a" keeps the store's:
        # other classes would publish labels the store's classes do not name
        raise ValueError(
            f"classes={list(classes)}, but {plan.path!r} keeps its own classes {list(have)} "
            "with mode='a' (they are recorded when a store is made); leave classes out, so "
            "labels are checked against the store's"
        )
    return chunk_len, token, n, have


def check_complete(plan: Plan, sink: staging.Sink, num_samples: int | None) -> None:
    """Refuse to finish while samples have no row (a store of known length)."""
    if isinstance(sink, Placed):
        missing = sink.missing()
        if len(missing):
            raise ValueError(
                f"{plan.target!r}: {len(missing)} of {sink.n} samples have no row yet (the "
                f"first is index {int(missing[0])}); append them with their index= "
                "(missing() lists them), then close() again. Nothing was changed"
            )
    elif num_samples is not None and sink.rows != num_samples:
        raise ValueError(
            f"{plan.path!r} has {num_samples} samples but {sink.rows} rows were appended to "
            f"{list(plan.specs)}; append exactly one row per sample, in the store's order "
            "(nothing was changed)"
        )


class OpenWrite:
    """What an open write owns, and how it ends: the lock on ``plan.path``, the shard pool,
    the staging folder and its checkpoints; publishing, uploading, breaking, abandoning.

    The writer's rows (its sink) stay with the writer, which passes them in. Nothing here
    refers back to the writer, so that deleting a writer releases its lock at once.

    Parameters
    ----------
    plan
        What is written, and where.
    storage_options
        For the upload to ``plan.url``.
    """

    def __init__(self, plan: Plan, storage_options: Mapping[str, Any] | None) -> None:
        self.plan = plan
        self._storage_options = dict(storage_options or {})
        self.closed = False
        self.abandoned = False  # left unfinished (an error in the with block): not published
        self.broken: str | None = None  # why the write cannot continue
        self.last_checkpoint = time.monotonic()
        self.pool = ShardPool(plan.threads)
        make_parent(plan.path)
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(write_lock(plan.path))
        # staging files are closed after the pool's last writes, which read them (a list,
        # not a method of self: the writer must stay free of cycles so that del releases it)
        self._files: list[Placed] = []
        self._lock.callback(_close_all, self._files)
        self._lock.callback(self.pool.shutdown)
        self.manifest: dict[str, Any] = {}
        self.pending = False  # URL: the store is complete locally, not uploaded yet
        self.done = False  # published by the write this resumed, before it was interrupted
        self.published = False  # moved into place by this close() (an upload may be pending)
        self.durable = 0  # rows covered by the last completed checkpoint

    def open(self, *, resume: bool, classes: Sequence[str]) -> Started:
        """Start the write (see :func:`start`); on failure the lock is released."""
        try:
            st = start(
                self.plan,
                self.pool,
                resume=resume,
                num_samples=self.plan.num_samples,
                classes=tuple(str(c) for c in classes),
            )
        except BaseException:
            self._lock.close()
            raise
        self.manifest = st.manifest
        if isinstance(st.sink, Placed):
            self._files.append(st.sink)
        self.pending = st.pending
        self.done = st.done
        self.durable = st.sink.rows if st.sink is not None else st.rows
        return st

    def check_usable(self) -> None:
        """Refuse to go on after a failure that lost rows, or after the end."""
        target = self.plan.target
        if self.broken is not None:
            raise DaskImgError(
                f"this writer of {target!r} cannot continue: {self.broken}. Open a new one "
                f"with resume=True to continue from its last checkpoint ({self.durable} rows)"
            )
        if self.closed and self.abandoned:
            raise DaskImgError(
                f"the write of {target!r} was left unfinished (an error inside its with "
                "block); nothing was published. Reopen it with ArrayWriter(..., resume=True) "
                f"to continue from its last checkpoint ({self.durable} rows)"
            )
        if self.closed:
            raise ValueError(
                f"this writer of {target!r} is closed; append before close(), or open a new "
                "ArrayWriter (mode='a' adds arrays to a finished store)"
            )

    def all_written(self, rows: int) -> ValueError:
        """The error for rows appended after all ``rows`` are written (the write is finished)."""
        where = (
            "it was published before the write this resumed was interrupted); close() has "
            "nothing left to do"
            if self.done
            else f"the finished store waits at {self.plan.path!r}); close() uploads them"
        )
        return ValueError(
            f"all {rows} rows of {self.plan.target!r} are written ({where}. Nothing "
            "can be appended to it"
        )

    def broke(self, reason: str) -> None:
        """Stop for good after a failure that lost rows: the last checkpoint stands."""
        self.broken = reason
        self.closed = True
        self._lock.close()  # another writer may resume now

    def checkpoint_due(self, every: float | None) -> bool:
        """``every`` seconds (None: never) have passed since the last checkpoint."""
        return every is not None and time.monotonic() - self.last_checkpoint >= every

    def checkpoint(self, sink: staging.Sink) -> int:
        """Make every row of ``sink`` durable; return their number.

        A Ctrl-C (or a SIGTERM the program raises) is held until the checkpoint is made:
        raised inside it, it marked the writer broken, so the ``with`` block's own
        checkpoint was skipped and every row since the previous one was lost to a resume,
        though they were on disk (a Ctrl-C during ``close()``'s fsyncs). A hung fsync
        (a network file system) therefore delays the Ctrl-C until it returns."""
        with held_ctrl_c():  # raised as the block ends: after the checkpoint is made
            try:
                staging.save_checkpoint(self.plan.staging, self.manifest, sink)
            except BaseException as e:
                self.broke(f"a checkpoint failed ({e!r})")
                raise
            self.durable = sink.rows
            self.last_checkpoint = time.monotonic()
        return self.durable

    def finish(self, sink: staging.Sink, num_samples: int | None) -> None:
        """Finish the store at ``plan.path`` (the local copy of a URL's) from ``sink``."""
        plan = self.plan
        check_complete(plan, sink, num_samples)
        if sink.rows == 0:
            self.closed = True
            remove_path(str(plan.staging))
            self._lock.close()
            raise ValueError(
                f"nothing was appended to {plan.target!r}, so no store was written; "
                "an empty store is not written (nothing to read back)"
            )
        if self.published:  # (a close() interrupted after the store moved into place)
            return
        self.checkpoint(sink)  # a crash while closing loses no row; no write is in flight after it
        where = Location.of(plan.path)
        try:
            staging.publish(where, plan.staging, self.manifest, sink, mode=plan.mode)
        except BaseException as e:
            done = False
            with contextlib.suppress(Exception):  # (looking must not hide the error)
                done = staging.is_published(where, self.manifest)
            if done:
                # a Ctrl-C after the store moved into place (removing the staging folder,
                # or the old store it replaced): the write is done. Said broken, "moving the
                # store into place failed", a user redid a finished write with overwrite=True
                self.published = True
                self.pending = plan.url is not None
                with contextlib.suppress(OSError):
                    remove_path(str(plan.staging))
                raise
            # no store at path (or the old one): a second close must not pass for success
            step = (
                "moving the store into place"
                if "publishing" in self.manifest
                else "finishing the store before moving it into place"
            )
            self.broke(f"{step} failed ({e!r})")
            raise
        self.published = True
        self.pending = plan.url is not None

    def end(self) -> None:
        """Upload a finished store still pending, then release the lock: the write is over."""
        url = self.plan.url
        if self.pending and url is not None:
            self._upload(url)
        self.closed = True
        self._lock.close()
        if url is not None:  # the local copy's own folder, empty now
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(self.plan.path))

    def abandon(self, sink: staging.Sink | None) -> None:
        """Leave the write unfinished: checkpoint what was appended, release the lock."""
        if self.closed:
            return
        if self.published and not self.pending:
            # (a Ctrl-C in close() after the store moved into place, in a with block): the
            # write is finished, not left; its checkpoint, in the staging folder removed,
            # failed, and close() again said "cannot continue: a checkpoint failed". (A
            # URL's store whose upload failed is left as before: its lock is released and
            # close() again, or a resume, uploads it.)
            self.closed = True
            self._lock.close()
            return
        try:
            if sink is not None:
                self.checkpoint(sink)
        except Exception:
            logger.exception("could not checkpoint %s before leaving it unfinished", self.plan.path)
        finally:
            self.closed = True
            # rows still to finish: nothing was published (a finished write whose upload
            # failed is not abandoned)
            self.abandoned = sink is not None
            self._lock.close()

    def release(self) -> None:
        """Release the lock, finishing nothing (a writer deleted while open)."""
        if not self.closed:
            self.closed = True
            self._lock.close()

    def _upload(self, url: str) -> None:
        """Upload the finished local store to ``url``, then remove it; on failure keep it."""
        path = self.plan.path
        try:
            Location.of(url, self._storage_options).upload(path)
        except BaseException:
            logger.warning(
                "uploading %s to %s failed; the finished store stays there: close() again, or "
                "ArrayWriter(<same arguments>, resume=True).close(), uploads it",
                path,
                url,
            )
            raise
        self.pending = False
        remove_path(path)


def _close_all(sinks: list[Placed]) -> None:
    for sink in sinks:
        sink.close()
