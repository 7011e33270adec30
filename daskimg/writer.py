"""Write back: :class:`ArrayWriter` streams model outputs into a daskimg store, batch by batch.

While a writer is open, everything lives next to the target in ``<path>.partial/``,
under the advisory lock ``<path>.lock``::

    store/                       the Zarr v3 group being built (a folder)
    writer.json                  the last checkpoint: arrays, chunking, rows per array
    tail-<array>-<shard>.bin     raw rows of each array's unfinished shard, as of it

Whole shards are compressed and written as soon as they fill, by background threads
(so compression overlaps the caller's work, e.g. the model's next forward pass); in
memory are the unfinished shard per array and at most ``threads`` shards being
written. A checkpoint waits for those writes, fsyncs the shards written since the
previous checkpoint, writes the rows of the unfinished shards to the tail files (only
the rows new since the previous checkpoint) and then replaces ``writer.json``
atomically — that replacement is the durable point. Resuming rewrites each array's metadata from
``writer.json``, deletes shards written after it and reloads the tails.

``close`` finishes the arrays, sets ``complete`` and moves the store into place in one
atomic step (``*.zarr.zip``: packed next to the target and renamed over it; ``*.zarr``:
the folder renamed). Until then ``<path>`` does not exist (or is the old store), and
:func:`daskimg.open_zarr` refuses the path while ``<path>.partial`` exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
import zipfile
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import zarr

from .chunks import StoreReader
from .codecs import DEFAULT_CODEC, compressors
from .errors import DaskImgError, StoreExistsError
from .store import (
    CHUNK_BYTES,
    FORMAT_VERSION,
    _open_group,
    _pack_zip,
    _remove,
    auto_chunk_len,
    fsync_path,
    read_attrs,
    store_kind,
    versions,
    write_lock,
)

__all__ = ["ArrayWriter"]

logger = logging.getLogger("daskimg")

#: default shard size per array: about this many bytes (whole chunks, at least one) ...
SHARD_BYTES = CHUNK_BYTES
#: ... and at most this many chunks (each costs 16 bytes of shard index)
SHARD_CHUNKS_MAX = 64
_MANIFEST = "writer.json"
_MANIFEST_VERSION = 1
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")
_Spec = tuple[tuple[int, ...], np.dtype[Any]]


class ArrayWriter:
    """Append per-sample arrays (features, predictions, ids) to a daskimg store as they come.

    The number of samples need not be known in advance. The result is a daskimg store
    of format version 1 (``order: "source"``, rows in the order appended) that
    :func:`daskimg.open_zarr`, ``daskimg verify`` and :class:`daskimg.BatchIterator` read.

    Parameters
    ----------
    path
        ``*.zarr.zip`` (one file) or ``*.zarr`` (a folder).
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
        store's order; the store's other arrays are kept.
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
    and so is float to a narrower float (float64 -> float32: precision only); float ->
    int, int -> narrower int, signed -> unsigned and int64 -> float are refused: cast
    explicitly. Not thread-safe: append from one thread.

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
    ) -> None:
        self.specs = _parse_specs(name, shape, dtype, arrays)
        if mode not in ("w", "a"):
            raise ValueError(f"mode must be 'w' (a new store) or 'a' (add arrays); got {mode!r}")
        if chunks is not None and (not isinstance(chunks, int) or chunks < 1):
            raise ValueError(f"chunks must be a positive number of samples, got {chunks!r}")
        if shard_chunks is not None and (not isinstance(shard_chunks, int) or shard_chunks < 1):
            raise ValueError(f"shard_chunks must be a positive integer, got {shard_chunks!r}")
        self._shard_chunks = shard_chunks
        if not isinstance(threads, int) or threads < 0:
            raise ValueError(f"threads must be an integer >= 0, got {threads!r}")
        if checkpoint_every is not None and checkpoint_every < 0:
            raise ValueError(
                f"checkpoint_every must be >= 0 seconds or None, got {checkpoint_every}"
            )
        if codec == "jpeg":
            # appends that fill part of a chunk make zarr decode and re-encode it: a second
            # round of JPEG loss for samples already written
            raise ValueError(
                "ArrayWriter does not write codec='jpeg' (lossy re-encoding of partial chunks); "
                "use 'lz4' or 'zstd', or write images with daskimg.to_zarr(codec='jpeg')"
            )
        compressors(codec, np.dtype("u1"))  # refuse an unknown codec before touching the disk
        self.path = os.path.abspath(os.fspath(path)).rstrip("/")
        self.kind = store_kind(self.path)
        self.mode = mode
        self.overwrite = overwrite
        self.classes = tuple(str(c) for c in classes)
        self.checkpoint_every = checkpoint_every
        self._staging = Path(self.path + ".partial")
        self._columns: dict[str, _Column] = {}
        self._rows = 0
        self._durable = 0
        self._expected: int | None = None  # mode "a": the store's num_samples
        self._manifest: dict[str, Any] = {}
        self._closed = False
        self._broken: str | None = None
        self._last_checkpoint = time.monotonic()
        self._pool = _Pool(threads)
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
        return f"ArrayWriter({self.path!r}, arrays={arrays}, mode={self.mode!r}, {state})"

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
        self._check_usable()
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
        self._check_usable()
        try:
            self._pool.drain()
            for col in self._columns.values():
                col.sync()
            state = {n: [c.shards, c.fill] for n, c in self._columns.items()}
            self._manifest.update(rows=self._rows, columns=state)
            self._manifest["checkpoint"] += 1
            _write_json(self._staging / _MANIFEST, self._manifest)
            for col in self._columns.values():
                col.checkpointed()
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
        (an empty store is not written) and leaves nothing behind.
        """
        if self._closed and self._broken is None:
            return
        self._check_usable()
        if self._expected is not None and self._rows != self._expected:
            raise ValueError(
                f"{self.path!r} has {self._expected} samples but {self._rows} rows were appended "
                f"to {list(self.specs)}; append exactly one row per sample, in the store's order "
                "(nothing was changed)"
            )
        if self._rows == 0:
            self._closed = True
            _remove(str(self._staging))
            self._lock.close()
            raise ValueError(
                f"nothing was appended to {self.path!r}, so no store was written; "
                "an empty store is not written (nothing to read back)"
            )
        self.checkpoint()  # a crash while closing loses no row; no write is in flight after it
        try:
            for col in self._columns.values():
                col.finish(self._rows)
            store = self._staging / "store"
            _fsync_tree(store)
            if self.mode == "w":
                root = store / "zarr.json"
                meta = json.loads(root.read_text())
                meta["attributes"]["daskimg"].update(complete=True, num_samples=self._rows)
                _write_json(root, meta)
                self._publish_new(store)
            else:
                self._publish_added(store)
            fsync_path(os.path.dirname(self.path))
            _remove(str(self._staging))
        finally:
            self._closed = True
            self._lock.close()

    # -- opening ----------------------------------------------------------------------
    def _open(self, chunks: int | None, codec: str | None, resume: bool, split: str | None) -> None:
        target_exists = os.path.lexists(self.path)
        if self.mode == "w" and target_exists and not self.overwrite:
            raise StoreExistsError(
                f"{self.path!r} exists; pass overwrite=True to replace it, or mode='a' to add "
                "arrays to it"
            )
        token = None
        if self.mode == "a":
            chunks, token = self._check_target(chunks)
        if resume and self._resume(chunks, codec, token):
            return
        if self._staging.exists():
            logger.warning("discarding the unfinished write at %s (resume=False)", self._staging)
        _remove(str(self._staging))
        _remove(self.path + ".tmp")
        widest = max(self.specs.values(), key=lambda s: int(np.prod(s[0])) * s[1].itemsize)
        chunk_len = chunks or auto_chunk_len(widest[0], widest[1], 2**62)
        store = self._staging / "store"
        os.makedirs(self._staging)
        group = zarr.open_group(zarr.storage.LocalStore(store), mode="w", zarr_format=3)
        if self.mode == "w":
            group.attrs["daskimg"] = {
                "format_version": FORMAT_VERSION,
                "split": split,
                "num_samples": 0,
                "classes": list(self.classes),
                "order": "source",
                "seed": None,
                "codec": codec or DEFAULT_CODEC,
                "complete": False,
                "created_with": versions(),
                "source": {"root": None, "writer": "ArrayWriter"},
                "skipped": [],
            }
        metas = {}
        for name, (shape, dtype) in self.specs.items():
            per_chunk = chunk_len * int(np.prod(shape)) * dtype.itemsize
            k = self._shard_chunks or min(
                SHARD_CHUNKS_MAX, max(1, SHARD_BYTES // max(per_chunk, 1))
            )
            shard_len = chunk_len * k
            arr = group.create_array(
                name,
                shape=(0, *shape),
                dtype=dtype,
                chunks=(chunk_len, *shape),
                shards=(shard_len, *shape) if shard_len != chunk_len else None,
                compressors=compressors(codec, dtype),
                fill_value=0,
                config={"write_empty_chunks": True},
            )
            metas[name] = json.loads((store / name / "zarr.json").read_text())
            self._columns[name] = _Column(name, shape, dtype, shard_len, arr, self)
        self._manifest = {
            "version": _MANIFEST_VERSION,
            "mode": self.mode,
            "kind": self.kind,
            "chunk_len": chunk_len,
            "codec": codec or DEFAULT_CODEC,
            "shard_chunks": {n: c.shard_len // chunk_len for n, c in self._columns.items()},
            "arrays": {n: {"shape": list(s), "dtype": d.str} for n, (s, d) in self.specs.items()},
            "array_meta": metas,
            "root_meta": json.loads((store / "zarr.json").read_text()),
            "target_token": token,
            "checkpoint": 0,
            "rows": 0,
            "columns": {n: [0, 0] for n in self.specs},
        }
        _write_json(self._staging / _MANIFEST, self._manifest)

    def _check_target(self, chunks: int | None) -> tuple[int, str]:
        """mode "a": check the store; return its chunk length and a token of its identity."""
        if not os.path.lexists(self.path):
            raise FileNotFoundError(
                f"no store at {self.path!r} to add arrays to; write a new one with mode='w'"
            )
        attrs = read_attrs(self.path)
        reader = StoreReader(self.path)
        group = _open_group(self.path)
        names = [n for n, _ in group.arrays()]
        with contextlib.suppress(Exception):
            group.store.close()  # the zip file handle
        clash = sorted(set(names) & set(self.specs))
        if clash and not self.overwrite:
            raise StoreExistsError(
                f"{self.path!r} already has arrays {clash}; pass overwrite=True to replace them"
            )
        kept = [n for n in names if n not in self.specs] or names
        lens = {reader.layout(n).chunk_len for n in kept}
        if len(lens) != 1:
            raise DaskImgError(
                f"{self.path!r} has arrays with different chunk lengths {sorted(lens)}; "
                "it was not written by daskimg"
            )
        chunk_len = lens.pop()
        if chunks is not None and chunks != chunk_len:
            raise ValueError(
                f"chunks={chunks}, but {self.path!r} stores {chunk_len} samples per chunk; "
                "new arrays must use the store's chunk length (leave chunks unset)"
            )
        self._expected = int(attrs["num_samples"])
        self.classes = self.classes or tuple(attrs.get("classes") or ())
        raw = reader.read_bytes("zarr.json") or b""
        reader.close()
        return chunk_len, hashlib.sha256(raw).hexdigest()

    def _resume(self, chunks: int | None, codec: str | None, token: str | None) -> bool:
        """Reload the last checkpoint of an unfinished write; False if there is none."""
        try:
            manifest = json.loads((self._staging / _MANIFEST).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return False
        if not (self._staging / "store").is_dir():
            return False  # killed after the store moved into place: nothing left to resume
        want = {n: {"shape": list(s), "dtype": d.str} for n, (s, d) in self.specs.items()}
        problems = []
        if manifest.get("version") != _MANIFEST_VERSION:
            problems.append(f"writer format {manifest.get('version')}")
        if manifest.get("mode") != self.mode:
            problems.append(f"mode={manifest.get('mode')!r}")
        if manifest.get("arrays") != want:
            problems.append(f"arrays {manifest.get('arrays')}")
        if chunks is not None and manifest.get("chunk_len") != chunks:
            problems.append(f"chunks={manifest.get('chunk_len')}")
        if self._shard_chunks is not None and set(manifest.get("shard_chunks", {}).values()) != {
            self._shard_chunks
        }:
            problems.append(f"shard_chunks={manifest.get('shard_chunks')}")
        if codec is not None and manifest.get("codec") != codec:
            problems.append(f"codec={manifest.get('codec')!r}")
        if manifest.get("target_token") != token:
            problems.append("another version of the store it adds to")
        if problems:
            raise ValueError(
                f"cannot resume the unfinished write at {str(self._staging)!r}: it was started "
                f"with {'; '.join(problems)}. Pass the same arguments, or resume=False to discard it"
            )
        store = self._staging / "store"
        if not all((store / name / "zarr.json").is_file() for name in self.specs):
            return False  # killed while moving arrays into the store: some are there already
        for f in [*store.rglob("*.partial"), *store.rglob("*.tmp")]:  # from a kill mid-write
            f.unlink()
        _write_json(store / "zarr.json", manifest["root_meta"])
        group = zarr.open_group(zarr.storage.LocalStore(store), mode="r+")
        for name, (shape, dtype) in self.specs.items():
            meta = manifest["array_meta"][name]
            shards, fill = manifest["columns"][name]
            shard_len = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
            meta["shape"] = [shards * shard_len, *shape]
            _write_json(store / name / "zarr.json", meta)
            arr = group[name]
            assert isinstance(arr, zarr.Array)
            arr = arr.with_config({"write_empty_chunks": True})
            col = _Column(name, shape, dtype, shard_len, arr, self)
            col.restore(shards, fill)
            self._columns[name] = col
        self._manifest = manifest
        self._rows = self._durable = int(manifest["rows"])
        logger.info("resumed %s at row %d", self.path, self._rows)
        return True

    # -- appending --------------------------------------------------------------------
    def _check_usable(self) -> None:
        if self._broken is not None:
            raise DaskImgError(
                f"this writer of {self.path!r} cannot continue: {self._broken}. Open a new one "
                f"with resume=True to continue from its last checkpoint ({self._durable} rows)"
            )
        if self._closed:
            raise ValueError(f"this writer of {self.path!r} is closed")

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
        _check_batch(name, arr.shape, arr.dtype, shape, dtype)
        if name == "labels" and self.classes and arr.size:
            lo, hi = int(arr.min()), int(arr.max())
            if lo < 0 or hi >= len(self.classes):
                raise ValueError(
                    f"labels must lie in 0..{len(self.classes) - 1} for {len(self.classes)} classes; "
                    f"this batch has {lo}..{hi}"
                )
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
                _check_batch(name, v.shape, v.dtype, *self.specs[name])
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
        if self._closed:
            return
        try:
            self.checkpoint()
        except Exception:
            logger.exception("could not checkpoint %s before leaving it unfinished", self.path)
        finally:
            self._closed = True
            self._lock.close()

    def _publish_new(self, store: Path) -> None:
        if self.kind == "zip":
            _pack_zip(str(store), self.path)  # atomic: packed next to it, then renamed over it
        else:
            if os.path.lexists(self.path):  # overwrite=True
                old = self._staging / "old"
                os.replace(self.path, old)
            os.replace(store, self.path)

    def _publish_added(self, store: Path) -> None:
        if self.kind == "zip":
            _rewrite_zip(self.path, store, self.names)
            return
        # one rename per array: each new array appears whole or not at all
        for name in self.names:
            dest = os.path.join(self.path, name)
            if os.path.lexists(dest):  # overwrite=True
                os.replace(dest, self._staging / f"old-{name}")
            os.replace(store / name, dest)
        fsync_path(self.path)


class _Column:
    """One array being written: whole shards go to zarr, the unfinished one stays in ``buf``."""

    def __init__(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: np.dtype[Any],
        shard_len: int,
        arr: zarr.Array,
        writer: ArrayWriter,
    ) -> None:
        self.name = name
        self.shape = shape
        self.shard_len = shard_len
        self.arr: Any = arr
        self.staging = writer._staging
        self.dir = self.staging / "store" / name
        self.pool = writer._pool
        self.buf = np.empty((shard_len, *shape), dtype)
        self.spare: list[np.ndarray] = []  # buffers whose shard is written, to reuse
        self.row_bytes = int(np.prod(shape)) * dtype.itemsize
        self.shards = 0  # whole shards written
        self.fill = 0  # rows in buf
        self.saved = (0, 0)  # (shards, fill) at the last checkpoint
        self.unsynced: set[int] = set()

    def shard_path(self, s: int) -> Path:
        return self.dir.joinpath("c", str(s), *["0"] * len(self.shape))

    def tail_path(self, s: int) -> Path:
        return self.staging / f"tail-{self.name}-{s}.bin"

    def extend(self, data: np.ndarray) -> None:
        # always copied: the caller may reuse its array (or tensor) once append returns
        i, n, size = 0, len(data), self.shard_len
        while i < n:
            k = min(size - self.fill, n - i)
            self.buf[self.fill : self.fill + k] = data[i : i + k]
            self.fill += k
            i += k
            if self.fill == size:
                self._write_shard()

    def _write_shard(self) -> None:
        s, size, full = self.shards, self.shard_len, self.buf
        if self.arr.shape[0] < (s + 1) * size:
            self.arr.resize(((s + 1) * size, *self.shape))  # metadata only: grows, deletes nothing

        def write() -> None:
            self.arr[s * size : (s + 1) * size] = full
            self.spare.append(full)

        self.pool.run(write)
        self.buf = self.spare.pop() if self.spare else np.empty_like(full)
        self.shards += 1
        self.fill = 0
        self.unsynced.add(s)

    def rewind(self, shards: int, fill: int) -> None:
        if self.shards != shards and fill:
            # the unfinished rows went into shard `shards`, which was written whole
            s = shards * self.shard_len
            self.buf[:fill] = self.arr[s : s + fill]
        self.unsynced = {s for s in self.unsynced if s < shards}
        self.shards, self.fill = shards, fill

    def sync(self) -> None:
        """fsync the shards written since the last checkpoint and save the unfinished rows."""
        for s in sorted(self.unsynced):
            fsync_path(self.shard_path(s))
            for parent in self.shard_path(s).parents:
                fsync_path(str(parent))
                if parent == self.dir:
                    break
        if self.fill:
            start = self.saved[1] if self.saved[0] == self.shards else 0
            fd = os.open(self.tail_path(self.shards), os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.pwrite(fd, self.buf[start : self.fill].tobytes(), start * self.row_bytes)
                os.fsync(fd)
            finally:
                os.close(fd)

    def checkpointed(self) -> None:
        for s in range(self.saved[0], self.shards):
            self.tail_path(s).unlink(missing_ok=True)
        self.saved = (self.shards, self.fill)
        self.unsynced.clear()

    def drop_shards(self, first: int) -> None:
        """Delete shard ``first`` and all after it (and zarr's temporary files)."""
        chunk_dir = self.dir / "c"
        for entry in chunk_dir.iterdir() if chunk_dir.is_dir() else ():
            if not entry.name.isdigit() or int(entry.name) >= first:
                _remove(str(entry))

    def restore(self, shards: int, fill: int) -> None:
        """Back to a checkpoint: drop shards written after it, reload the unfinished rows."""
        self.drop_shards(shards)
        if fill:
            want = fill * self.row_bytes
            data = self.tail_path(shards).read_bytes()[:want]
            if len(data) != want:
                raise DaskImgError(
                    f"cannot resume {str(self.staging)!r}: the saved rows of {self.name!r} are "
                    "truncated; pass resume=False to start over"
                )
            self.buf[:fill] = np.frombuffer(data, self.buf.dtype).reshape(fill, *self.shape)
        self.shards, self.fill = shards, fill
        self.saved = (shards, fill)

    def finish(self, n: int) -> None:
        """Write the unfinished shard and size the array to ``n`` rows exactly."""
        self.drop_shards(self.shards)  # any left by a batch that was undone
        self.arr.resize((n, *self.shape))
        if self.fill:
            self.arr[self.shards * self.shard_len : n] = self.buf[: self.fill]


class _Pool:
    """Runs shard writes in background threads, at most ``threads`` at a time."""

    def __init__(self, threads: int) -> None:
        self.executor = ThreadPoolExecutor(threads, "daskimg-writer") if threads else None
        self.limit = max(1, threads)
        self.pending: deque[Future[None]] = deque()
        #: the first error of a background write: the rows it held are lost
        self.failed: BaseException | None = None

    def run(self, fn: Callable[[], None]) -> None:
        if self.executor is None:
            fn()  # a failure here leaves the shard's rows in their buffer: undoable
            return
        while len(self.pending) >= self.limit:
            self._wait_oldest()
        self.pending.append(self.executor.submit(fn))

    def drain(self) -> None:
        """Wait for every write; raise the first error."""
        while self.pending:
            self._wait_oldest()

    def _wait_oldest(self) -> None:
        future = self.pending[0]
        try:
            future.result()
        except BaseException as e:
            if future.done():  # the write failed (not an interrupt while waiting)
                self.pending.popleft()
                self.failed = self.failed or e
            raise
        self.pending.popleft()

    def shutdown(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)


# -- helpers -------------------------------------------------------------------------


def _parse_specs(
    name: str,
    shape: int | Sequence[int] | None,
    dtype: Any,
    arrays: Mapping[str, tuple[int | Sequence[int], Any]] | None,
) -> dict[str, _Spec]:
    if arrays is None:
        if shape is None or dtype is None:
            raise TypeError(
                "pass shape= and dtype= (of one sample, e.g. shape=(2048,), dtype='float32'), "
                "or arrays={name: (shape, dtype), ...}"
            )
        arrays = {name: (shape, dtype)}
    elif shape is not None or dtype is not None:
        raise TypeError("pass shape= and dtype= for one array or arrays= for several, not both")
    if not arrays:
        raise ValueError("arrays is empty; name at least one array")
    out: dict[str, _Spec] = {}
    for n, spec in arrays.items():
        if not isinstance(n, str) or not _NAME.match(n):
            raise ValueError(f"array name {n!r} must be letters, digits, '_', '-' or '.'")
        if n in ("images", "paths"):
            raise ValueError(f"{n!r} is reserved for the store's own arrays; pick another name")
        try:
            shp, dt = spec
            shp = (shp,) if isinstance(shp, int) else tuple(int(d) for d in shp)
            dt = np.dtype(dt)
        except (TypeError, ValueError) as e:
            raise TypeError(
                f"arrays[{n!r}] must be (shape, dtype) of one sample, e.g. ((2048,), 'float32'); "
                f"got {spec!r} ({e})"
            ) from None
        if any(d < 1 for d in shp):
            raise ValueError(f"{n}: every dimension of a sample must be >= 1, got {shp}")
        if dt.kind not in "biuf":
            raise TypeError(f"{n}: dtype {dt} is not supported; use bool, integer or float")
        if n == "labels" and (shp != () or dt.kind not in "iu"):
            raise ValueError(
                "'labels' holds one integer class index per sample: shape () and an integer dtype"
            )
        out[n] = (shp, dt.newbyteorder("<"))
    return out


def _check_batch(
    name: str,
    got_shape: tuple[Any, ...],
    got: np.dtype[Any],
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
) -> None:
    want = f"(n, {', '.join(map(str, shape))})" if shape else "(n,)"
    if len(got_shape) != len(shape) + 1 or tuple(got_shape[1:]) != shape:
        hint = " (a single sample? add a batch axis: x[None])" if tuple(got_shape) == shape else ""
        raise ValueError(
            f"{name}: expected a batch of shape {want} {dtype}, got {tuple(got_shape)} {got}{hint}"
        )
    if not _safe_cast(got, dtype):
        raise TypeError(
            f"{name}: expected {dtype} (or a type that converts to it without losing values), "
            f"got {got}; cast it explicitly, e.g. batch.astype({str(dtype)!r})"
        )


def _safe_cast(src: np.dtype[Any], dst: np.dtype[Any]) -> bool:
    if np.can_cast(src, dst, casting="safe"):
        return True
    return src.kind == "f" and dst.kind == "f"  # float64 -> float32: precision only


def _write_json(path: Path, obj: Any) -> None:
    """Replace ``path`` with ``obj`` as JSON, atomically and durably."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_path(str(path.parent))


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for f in files:
            fsync_path(Path(dirpath) / f)
        fsync_path(dirpath)


def _rewrite_zip(target: str, staging: Path, names: Sequence[str]) -> None:
    """A new ``target``: its members (but ``names``) and the arrays ``names`` from ``staging``.

    Written to ``target.tmp`` (each old member copied once, streamed) and renamed over
    ``target``, so readers see the old store or the new one, never a mix.
    """
    tmp = target + ".tmp"
    replaced = tuple(n + "/" for n in names)
    with zipfile.ZipFile(target) as old:
        members: list[tuple[str, Any]] = [
            (i.filename, i)
            for i in old.infolist()
            if not i.filename.startswith(replaced) and not i.is_dir()
        ]
        for name in names:
            for f in sorted((staging / name).rglob("*")):
                if f.is_file():
                    members.append((f.relative_to(staging).as_posix(), f))
        members.sort(key=lambda m: (not m[0].endswith("zarr.json"), m[0].count("/"), m[0]))
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as new:
            for arc, src in members:
                if isinstance(src, Path):
                    new.write(src, arc)
                    continue
                info = zipfile.ZipInfo(arc, date_time=src.date_time)
                info.compress_type = zipfile.ZIP_STORED
                info.file_size = src.file_size
                with (
                    old.open(src) as fin,
                    new.open(info, "w", force_zip64=src.file_size >= 2**31) as fout,
                ):
                    shutil.copyfileobj(fin, fout, 2**22)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, target)
