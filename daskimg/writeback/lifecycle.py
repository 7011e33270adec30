"""Write back: how an :class:`~daskimg.ArrayWriter` starts, and when it may finish.

:func:`start` decides, under the writer's lock, what a writer opens: a new staging folder;
with ``resume=True`` the last checkpoint of an unfinished write, or a write that was
published before it was interrupted (nothing left to do), or — for a URL — a finished
local copy still to upload. :func:`check_complete` says whether every sample has its row
before :meth:`~daskimg.ArrayWriter.close` publishes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import StoreExistsError
from ..store.location import Location, remove_path
from . import staging
from .checks import Spec
from .placed import Placed
from .shards import ShardPool

__all__ = ["Plan", "Started", "check_complete", "start"]

logger = logging.getLogger("daskimg")


@dataclass(frozen=True)
class Plan:
    """What a writer was asked to write, and where (``path``: where it is built)."""

    path: str
    target: str
    url: str | None
    kind: str
    mode: str
    order: str
    overwrite: bool
    specs: Mapping[str, Spec]
    chunks: int | None
    shard_chunks: int | None
    codec: str | None
    split: str | None

    @property
    def staging(self) -> Path:
        return Path(self.path + ".partial")


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
        raise StoreExistsError(
            f"{plan.path!r} exists; pass overwrite=True to replace it, or mode='a' to add "
            "arrays to it"
        )
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
    return chunk_len, token, n, classes or have


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
