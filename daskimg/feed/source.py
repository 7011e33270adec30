"""Feed: the per-sample arrays a :class:`~daskimg.BatchIterator` reads, chunk by chunk."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np

from ..read.boxes import checked_column, image_frame
from ..read.imageset import ImageSet, looks_channels_first
from ..read.lazy import check_block, check_persisted_reachable, persisted_futures, unmasked
from ..store.encode import fitted
from ..store.jpeg import JpegChunk
from ..store.open import READ_SHAPES, open_zarr, store_array_name
from ..store.reader import StoreReader

try:  # per-thread I/O counters tell a store read from disk from one in the page cache
    import resource

    _RUSAGE_THREAD: int | None = resource.RUSAGE_THREAD
except (ImportError, AttributeError):  # not Linux
    _RUSAGE_THREAD = None

logger = logging.getLogger("daskimg")


#: The name of the virtual array of store indices: sample ``i`` of the source is row ``i``
#: (of a subset of a store's set, made with ``take`` or ``split``: its row in the store).
INDEX = "index"


_WARNED_REORDERED: set[tuple[str, ...]] = set()


def shown(source: Any) -> str:
    """``source`` in a loader's ``repr``: a store by its path or URL, else its kind
    (``ImageSet(...)``'s own repr, ``dict of ['images', 'labels']``, ``array (N, ...)``)."""
    if isinstance(source, (str, os.PathLike)):
        return repr(os.fspath(source))
    if isinstance(source, ImageSet):
        return repr(source)
    if isinstance(source, Mapping):
        return f"dict of {sorted(source)}"
    if isinstance(source, (tuple, list)):
        return f"{type(source).__name__} of {len(source)} arrays"
    shape = getattr(source, "shape", None)
    return f"{type(source).__name__} {tuple(shape)}" if shape is not None else type(source).__name__


def _own_rows(ds: ImageSet) -> bool:
    """Whether ``ds``'s rows are its own, maybe no store's: read from files (``from_folder``,
    ``from_csv``, ``imread``) or made from arrays, not opened from a store (nor a subset of
    one), and not written in its own order by this process."""
    # (stored_in_order: written in its own order here, its rows are that store's)
    return ds.store is None and ds.store_rows is None and not ds.stored_in_order


def _warn_set_rows(what: str) -> None:
    """Log that a set (``what``: read from files, made from arrays, or arrays given
    directly) numbers its samples by its own rows: a store written from it in another
    process (a set made again from the same files or arrays) holds them shuffled, which the
    set cannot know. Once per process and ``what``."""
    if ("own rows", what) in _WARNED_REORDERED:
        return
    _WARNED_REORDERED.add(("own rows", what))
    logger.warning(
        "arrays=(..., %r) from %s: each sample's index is its row in this set, not its row "
        "in a store written from it, which to_zarr and daskimg ingest store shuffled by "
        "default: predictions written back into such a store by these indices would land "
        "on other samples. To write back into a store, feed from the store: "
        "BatchIterator('train.zarr.zip', arrays=(..., %r)); to keep them by this set's rows, "
        "write them to a store of their own (ArrayWriter(..., num_samples=len(ds)))",
        INDEX,
        what,
        INDEX,
    )


def _warn_reordered(stores: Sequence[str]) -> None:
    """Log that a set's ``"index"`` is no row of the stores it was written to in another
    order (``ImageSet.reordered_in``): predictions written back into one by these indices land on other samples. Once
    per process and stores (a TorchDataset makes an iterator per epoch and worker)."""
    if tuple(stores) in _WARNED_REORDERED:
        return
    _WARNED_REORDERED.add(tuple(stores))
    logger.warning(
        "arrays=(..., %r): each sample's index is its row in this set (for a take or split "
        "of a store's set, its row in that store), and this set was written to %s in "
        "another order (to_zarr's order='shuffled', or a subset's rows numbered anew): "
        "these are not its rows there, and predictions written back into that store by "
        "them would land on other samples. To write back into it, feed from the store: "
        "BatchIterator(%r, arrays=(..., %r))",
        INDEX,
        ", ".join(map(repr, stores)),
        stores[-1],
        INDEX,
    )


def context_client() -> Any:
    """The ``distributed`` client made current in this thread's context only, by
    ``client.as_current()`` (a context variable, which other threads do not inherit, beside
    ``scheduler="dask.distributed"``); None otherwise (a default client is found from any
    thread)."""
    if "distributed" not in sys.modules:
        return None
    if dask.config.get("scheduler", None) not in ("dask.distributed", "distributed"):
        return None
    from distributed import Client

    try:
        return Client.current(allow_global=False)
    except ValueError:  # not inside as_current()
        return None


class FeedSource:
    """Per-sample arrays split into chunks of ``chunk_len`` rows along axis 0.

    Small arrays live in memory (``memory``); large ones are read chunk by chunk,
    from a store file (``reader``) or by computing dask blocks (``lazy``). The name
    ``"index"`` asks for each sample's row number in the source (int64, ``virtual``),
    which nothing needs to read.
    """

    def __init__(
        self,
        source: Any,
        names: Sequence[str] | None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.reader: StoreReader | None = None
        self.memory: dict[str, np.ndarray] = {}
        self.lazy: dict[str, da.Array] = {}
        #: a lazy array's block boundaries along axis 0, where they are not chunk_len's
        self.bounds: dict[str, list[int]] = {}
        self.attrs: dict[str, Any] = {}
        #: dask scheduler for lazy blocks; None: whatever is active (DataLoader workers:
        #: "threads"); a client made current in this thread only (``client.as_current()``),
        #: which the feed's reading threads would not find ("no Client active")
        self.scheduler: Any = context_client()
        location: str | None = None
        if isinstance(source, (str, os.PathLike)):
            # opened once, checked (version, completeness, metadata); local or at a URL
            source = open_zarr(os.fspath(source), storage_options=storage_options)
        #: each sample's store index where it is not its row here (a subset of a store's set)
        self.store_rows: np.ndarray | None = None
        #: the box arrays and mask arrays of the set (they move with the pixels)
        self.boxes: tuple[str, ...] = ()
        unchecked: list[str] = []  # a set's box columns to check (a dict's values are its own)
        #: boxes told by their names only (a dict's ``bbox``), for the transform's message
        self.guessed_boxes: tuple[str, ...] = ()
        self.masks: tuple[str, ...] = ()
        origin: Mapping[str, Any] = {}  # the store a subset's samples come from
        if isinstance(source, ImageSet):
            source.check_one_split("feeding")
            source.check_columns(strict=False)  # columns put in or replaced since it was made
            if source.on_error == "skip" and source.row_source is not None:
                raise ValueError(
                    "this set reads its files with on_error='skip': which files fail is found "
                    "when it is stored, so feed it from its store: "
                    "BatchIterator(di.to_zarr(ds, 'train.zarr.zip'), ...) leaves the bad files "
                    "out and records them (ds.skipped). Fed straight from the files, the "
                    "first bad file would stop the epoch; read with on_error='raise' to feed "
                    "the files directly"
                )
            arrays = source.arrays
            self.attrs = source.attrs
            # (N, 4) arrays named as boxes that the set does not declare (predicted boxes
            # written back with ArrayWriter) count as boxes, as a dict's do
            self.guessed_boxes = tuple(
                n for n, a in arrays.items() if n not in source.boxes and _box_named(n, a)
            )
            self.boxes = (*source.boxes, *self.guessed_boxes)
            # lazy box columns checked as they are computed, as to_zarr checks them: not
            # those decoded with the files (checked against their sources there)
            unchecked = [b for b in self.boxes if not source.is_from_files(b)]
            self.store_rows = source.store_rows
            origin = source.origin or {}
            if names is not None and INDEX in names and source.reordered_in:
                _warn_reordered(source.reordered_in)
            elif names is not None and INDEX in names and _own_rows(source):
                _warn_set_rows(
                    f"a set read from files ({source.root or 'its files'!r})"
                    if source.row_source is not None
                    else f"a set of {len(source)} samples made from arrays, not opened from a store"
                )
            if source.store is not None:
                # the opened store's own checked reader: chunks straight from it, local or URL
                self.reader = source.store.reader
                location = source.store.location.target
        elif isinstance(source, Mapping):
            arrays = dict(source)
            # a dict says nothing of boxes: (N, 4) arrays named as boxes (bbox, boxes,
            # gt_boxes) count as such, so a flip or crop must be told to move them (their
            # values are the caller's: not checked as a set's declared boxes are)
            self.boxes = self.guessed_boxes = tuple(
                n for n, a in arrays.items() if _box_named(n, a)
            )
        elif isinstance(source, (tuple, list)):
            arrays = {
                ("images", "labels")[i] if i < 2 else f"array{i}": a for i, a in enumerate(source)
            }
        elif isinstance(source, (da.Array, np.ndarray)):
            arrays = {"images": source}
        else:
            raise TypeError(
                "source must be a store path, an ImageSet, a dask/numpy array, or a dict or tuple of them; "
                f"got {type(source).__name__}"
            )
        for name, a in list(arrays.items()):  # len() failed in dask or numpy, naming no array
            if not isinstance(a, (np.ndarray, da.Array)):  # a list (labels), as numpy takes it
                arrays[name] = a = unmasked(name, a)
            if np.ndim(a) == 0:
                raise ValueError(
                    f"array {name!r} is a single value (shape ()); every array holds one row "
                    "per sample"
                )
            if isinstance(a, da.Array) and a.shape[0] != a.shape[0]:
                raise ValueError(
                    f"array {name!r} has an unknown length (shape {a.shape}); every array holds "
                    "one row per sample. A dask array cut by a boolean mask (x[x > 0]) does not "
                    "know its length: call .compute_chunk_sizes() on it first"
                )
        if not isinstance(source, ImageSet) and names is not None and INDEX in names:
            rows = {a.shape[0] for a in arrays.values()}
            _warn_set_rows(f"arrays given as they are ({'/'.join(map(str, sorted(rows)))} rows)")
        images = arrays.get("images")
        if images is not None and len(images.shape) >= 3:
            # an (N, H, W) array beside the images (or (N, H, W, C): one-hot, several labels),
            # "masks" or any other (a predicted mask written back with ArrayWriter): it
            # lies in the pixels' frame, so it moves with them (any source)
            frame = 4 if len(images.shape) == 5 else 3  # (N, [D,] H, W): the pixels' frame
            self.masks = tuple(
                name
                for name, a in arrays.items()
                if name != "images"
                and len(a.shape) >= frame
                and tuple(a.shape[:frame]) == tuple(images.shape[:frame])
            )
        if names is None:
            names = [n for n in ("images", "labels") if n in arrays]
        if isinstance(names, str):
            raise TypeError(f"arrays must be a sequence of names, e.g. ({names!r},); got {names!r}")
        if isinstance(names, Mapping):  # KerasDataset's spelling: its values were ignored
            raise TypeError(
                f"arrays must be a sequence of store array names here, e.g. "
                f"{tuple(names.values())!r}; got a dict {dict(names)!r} (a dict of model "
                "input/output names is KerasDataset's arrays=, not this one's)"
            )
        if INDEX in names and INDEX in arrays:
            raise ValueError(
                f"the source has an array named {INDEX!r}, which the name {INDEX!r} would hide: "
                "it asks for each sample's store index. Rename that array to feed it"
            )
        missing = [n for n in names if n not in arrays and n != INDEX]
        if missing:
            there = set(self.reader.array_names()) if self.reader is not None else set()
            foreign = [n for n in missing if n in there]
            raise KeyError(
                f"arrays {missing} are not in the source; it has {sorted(arrays)} "
                f"(and {INDEX!r}, each sample's store index)"
                + (
                    f". {foreign} are in the store's folder but not among its arrays: added by "
                    "another tool (plain zarr), without the checksums daskimg reads by; write "
                    "them with ArrayWriter(store, ..., mode='a') instead"
                    if foreign
                    else ""
                )
            )
        self.names = tuple(names)
        #: arrays made up here, not read: {"index"} when asked for
        self.virtual = {INDEX} & set(self.names)
        real = [n for n in self.names if n not in self.virtual] or list(arrays)
        lengths = {n: len(arrays[n]) for n in real}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"arrays must have the same length; got {lengths}")
        if not lengths:
            raise ValueError("the source holds no arrays")
        self.n = next(iter(lengths.values()))
        self.chunk_len = 1
        for name in self.names:
            if name in self.virtual:
                continue
            a = arrays[name]
            if isinstance(a, da.Array):
                self.lazy[name] = a
            else:
                self.memory[name] = unmasked(name, a)
        # the chunk length of every chunked array of the source, fed or not: the order of an
        # epoch must not depend on which arrays are asked for
        chunk_lens = {
            n: _regular_chunk_len(a)
            for n, a in arrays.items()
            if isinstance(a, da.Array) and len(a) == self.n
        }
        if chunk_lens:
            self.chunk_len = max(chunk_lens.values())
            for n, a in self.lazy.items():
                # chunk c must be rows c * chunk_len on: a last block longer than the others
                # ((15, ..., 15, 16), as take() or split() can leave) is rechunked too
                if a.chunks[0] != _chunks_of(self.n, self.chunk_len):
                    # chunk c is made from the array's own blocks over its rows, each held
                    # to its declared shape as computed (a rechunk's slices cut off what a
                    # block had beyond it, unseen; and a layer of checks before one made
                    # every load's graph work 30-50% larger)
                    self.bounds[n] = np.cumsum((0, *a.chunks[0])).tolist()
        else:
            self.chunk_len = max(1, min(self.n, 1024))
        if self.reader is not None:
            # read straight from the store: only the store's own arrays (an array put in the
            # place of one, or added, is computed as the dask array it is)
            stored = set(self.reader.array_names())
            self.fast = {
                n
                for n, a in self.lazy.items()
                if n in stored
                and a.name == store_array_name(self.reader, n)
                and self.reader.layout(n).kind
                and self.reader.layout(n).chunk_len == self.chunk_len
            }
        else:
            self.fast = set()
        if images is not None and len(images.shape) >= 3:
            # a box in another frame would be flipped and cropped as if it were in the
            # images' (the store's own boxes were checked when written)
            pixels = image_frame(images.shape)
            for n in set(unchecked) & set(self.lazy) - self.fast:
                self.lazy[n] = checked_column(self.lazy[n], n, pixels)
        reader = self.reader
        #: arrays stored one sample per inner chunk: decoded straight into batch rows
        self.per_sample = {
            n for n in self.fast if reader is not None and reader.layout(n).per_sample
        }
        #: what a resumed iteration must find again: where the store is and what it holds
        attrs = self.attrs or origin.get("attrs") or {}
        self.identity: dict[str, Any] = {
            "path": location or origin.get("path"),
            "token": _token(attrs) if attrs else None,
        }
        if self.n == 0:  # every epoch empty: a training loop would do nothing, silently
            raise ValueError(
                "the source holds no samples, so every epoch would be empty; check how the "
                "set was made (an empty split or take(), a filter that kept nothing)"
            )
        if self.store_rows is not None:  # a subset: which of the store's rows, in which order
            self.identity["rows"] = hashlib.sha256(self.store_rows.tobytes()).hexdigest()[:16]

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self.virtual:
            return ()
        a = self.memory.get(name)
        return tuple((a if a is not None else self.lazy[name]).shape[1:])

    def channels_first(self, name: str) -> str | None:
        """The channels-first layout, ``(N, C, H, W)`` or ``(N, C, D, H, W)``, that array
        ``name`` looks to have, where its samples are taken channels-last; None for a
        store's images, whole or a part (``take``, ``split``), whose layout was checked
        when written (or written told it is right, ``check_layout=False``). Arrays put in
        a set from a store (a column, images in the place of its own) are checked."""
        a = self.lazy.get(name)
        if name == "images" and a is not None:
            shape = tuple(a.shape[1:])
            if any(
                str(layer).startswith("daskimg-read-images-")
                and READ_SHAPES.get(str(layer)) == shape
                for layer in a.dask.layers
            ):
                return None  # a store's images, or rows of them (in their stored shape)
        return looks_channels_first((self.n, *self.shape(name)))

    def dtype(self, name: str) -> np.dtype[Any]:
        if name in self.virtual:
            return np.dtype(np.int64)
        a = self.memory.get(name)
        return (a if a is not None else self.lazy[name]).dtype

    def gather(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """The in-memory and virtual arrays of the samples ``idx`` (a batch)."""
        out = {n: a[idx] for n, a in self.memory.items()}
        if self.virtual:
            out[INDEX] = self.index(idx)
        return out

    def index(self, idx: np.ndarray) -> np.ndarray:
        """The store index of the samples ``idx`` (their row numbers, for a whole store)."""
        if self.store_rows is not None:
            return self.store_rows[np.asarray(idx, dtype=np.int64)]
        return np.array(idx, dtype=np.int64)  # a copy: plans are read-only

    def rows(self, c: int) -> tuple[int, int]:
        a = c * self.chunk_len
        return a, min(a + self.chunk_len, self.n)

    def load(self, c: int, scratch: dict[str, np.ndarray]) -> dict[str, Any]:
        """Chunk ``c`` of every lazy array, ready to copy rows from (runs in a background thread).

        Uncompressed chunks (lz4 ones stored raw in their Blosc frame included) are read
        straight into their batch rows later and checksummed there; JPEG chunks and
        per-sample stores give their encoded samples, each decoded straight into its batch
        row later; compressed lz4/zstd chunks are decoded into this thread's ``scratch``, to
        copy rows out of while it is in the CPU cache.
        """
        a, b = self.rows(c)
        reader = self.reader
        out: dict[str, Any] = {}
        slow = []
        for name in self.lazy:
            if name not in self.fast:
                slow.append(name)
                continue
            assert reader is not None
            if name in self.per_sample:
                out[name] = reader.read_unit(name, c)
                continue
            view = reader.view_chunk(name, c)
            if view is not None:
                out[name] = view
                continue
            buf = scratch.get(name)
            if buf is None:
                buf = scratch[name] = np.empty(
                    (self.chunk_len, *self.shape(name)), dtype=self.dtype(name)
                )
            out[name] = reader.read_chunk(name, c, out=buf[: b - a])
        if slow:
            # whatever dask scheduler is active (threads, processes, distributed) computes the
            # blocks: chunk c's own, or those of the array's blocks that hold its rows
            parts = {n: self._blocks_over(n, c, a, b) for n in slow}
            tasks = [self.lazy[n].blocks[i] for n in slow for i, _ in parts[n]]
            try:
                results = dask.compute(*tasks, scheduler=self.scheduler)
            except Exception as e:
                # persisted on a cluster whose client is gone: said so, not dask's
                # "Missing dependency" (else the error as it is)
                check_persisted_reachable({n: self.lazy[n] for n in slow}, self.scheduler)
                if "Cancelled" in type(e).__name__:  # distributed's, or concurrent's
                    e.add_note(
                        f"daskimg: computing the array(s) {', '.join(map(repr, slow))} for "
                        f"chunk {c} was cancelled (a dask.distributed client closed, or "
                        "restarted, mid-epoch?); start the epoch again with a running client"
                    )
                raise
            if any(type(r).__name__ == "Future" for r in results):
                # (dask before 2025 hands a closed client's futures back as values)
                check_persisted_reachable({n: self.lazy[n] for n in slow}, self.scheduler)
            computed = iter(results)
            for name in slow:
                got = [self._checked(name, rows, next(computed)) for _, rows in parts[name]]
                if len(got) == 1 and parts[name][0][1] == (a, b):
                    out[name] = got[0]
                else:
                    first = parts[name][0][1][0]
                    out[name] = np.concatenate(got)[a - first : b - first]
        return out

    def _blocks_over(self, name: str, c: int, a: int, b: int) -> list[tuple[int, tuple[int, int]]]:
        """The blocks of the lazy array ``name`` holding chunk ``c`` (rows ``a..b``), with
        their rows: ``[(c, (a, b))]`` where its blocks are the chunks."""
        bounds = self.bounds.get(name)
        if bounds is None:
            return [(c, (a, b))]
        first, last = bisect_right(bounds, a) - 1, bisect_left(bounds, b)
        return [
            (i, (bounds[i], bounds[i + 1])) for i in range(first, last) if bounds[i + 1] > bounds[i]
        ]

    def _checked(self, name: str, rows: tuple[int, int], block: Any) -> np.ndarray:
        """A computed block of a lazy array as declared: its rows (a short one put other
        samples' rows in a batch, or failed with an IndexError naming nothing) and values
        its dtype holds (the copy into a batch would cast 300 to 44 in uint8)."""
        block = check_block(str(name), block, rows, (rows[1] - rows[0], *self.shape(name)))
        return fitted(unmasked(str(name), block, rows), str(name), self.dtype(name))

    def copy_rows(
        self, name: str, c: int, chunk: Any, rows: np.ndarray, dest: np.ndarray, at: np.ndarray
    ) -> None:
        """``dest[at] = chunk[rows]`` for one array of a loaded chunk."""
        if name in self.per_sample:
            assert self.reader is not None
            self.reader.decode_rows(name, chunk, rows, dest, at, first=c * self.chunk_len)
        elif isinstance(chunk, JpegChunk):
            chunk.decode_into(rows, dest, at)  # each JPEG straight into its batch row
        elif dest.dtype != object and dest[:1].nbytes >= 4096:  # text: Python objects
            # row by row, from the just-decoded chunk into the batch: no temporary copy
            for r, p in zip(rows.tolist(), at.tolist(), strict=True):
                dest[p] = chunk[r]
        else:
            dest[at] = chunk.take(rows, axis=0)


def persisted(lazy: Mapping[str, da.Array]) -> list[str]:
    """The names of ``lazy`` arrays persisted on a ``distributed`` cluster
    (``ds.images.persist()``): their chunks live on the cluster, which only the process
    holding the client reaches (another process failed with dask's "Missing dependency")."""
    return [name for name, arr in lazy.items() if persisted_futures(arr)]


def blocks_read() -> int:
    """File-system blocks this thread has read from disk so far; -1 where the OS does not say."""
    if _RUSAGE_THREAD is None:
        return -1
    return int(resource.getrusage(_RUSAGE_THREAD).ru_inblock)


def _token(attrs: Mapping[str, Any]) -> str:
    """A short hash of a store's ``daskimg`` attributes (``complete`` aside): which store it is."""
    text = json.dumps(
        {k: v for k, v in attrs.items() if k != "complete"}, sort_keys=True, default=str
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _chunks_of(n: int, chunk_len: int) -> tuple[int, ...]:
    """The blocks along axis 0 of ``n`` rows in chunks of ``chunk_len`` (dask's spelling)."""
    return tuple(min(chunk_len, n - a) for a in range(0, n, chunk_len)) or (0,)


def _regular_chunk_len(a: da.Array) -> int:
    # the first block that holds samples (x[mask] may leave the first ones empty)
    return next((int(c) for c in a.chunks[0] if c), 1)


def _box_named(name: Any, array: Any) -> bool:
    """An ``(N, 4)`` array whose name says boxes (``bbox``, ``gt_boxes``, ``pred_boxes``)."""
    shape: tuple[int, ...] = tuple(getattr(array, "shape", ()))
    return "box" in str(name).lower() and len(shape) == 2 and shape[1] == 4
