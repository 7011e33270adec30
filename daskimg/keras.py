"""Feed: Keras 3 adapter — a ``keras.utils.PyDataset`` for ``model.fit``.

Import it as ``from daskimg.keras import KerasDataset``; keras is imported here only.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import keras
import numpy as np

from .feed.iterator import BatchIterator, Transform

__all__ = ["KerasDataset"]


class KerasDataset(keras.utils.PyDataset):
    """Batches for ``model.fit``, reshuffled every epoch.

    Keras asks for batches by index (from several threads when ``workers > 1``); this
    class serves them from one chunk-wise :class:`~daskimg.feed.BatchIterator`, keeping
    the few batches that are asked for out of order, so reading stays chunk-wise.

    Parameters
    ----------
    source
        A store path, an ImageSet or dask arrays, as for ``BatchIterator``.
    arrays
        ``(inputs, targets)`` names; default ``("images", "labels")``. A name may be a
        tuple of names for several inputs or outputs, e.g. ``(("images",), ("labels", "bbox"))``.
    scale
        Divide images by this (``255.0`` gives floats in 0..1); None leaves them as stored.
    workers, use_multiprocessing, max_queue_size
        Passed to ``keras.utils.PyDataset``.
    storage_options
        For a store URL (``s3://...``), as for :func:`daskimg.open_zarr`.

    Examples
    --------
    >>> from daskimg.keras import KerasDataset  # doctest: +SKIP
    >>> model.fit(KerasDataset("out/train.zarr.zip", batch_size=32), epochs=2)  # doctest: +SKIP
    """

    def __init__(
        self,
        source: Any,
        *,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        buffer_chunks: int = 8,
        drop_last: bool = False,
        arrays: Sequence[str | Sequence[str]] = ("images", "labels"),
        transform: Transform | None = None,
        scale: float | None = 255.0,
        workers: int = 1,
        use_multiprocessing: bool = False,
        max_queue_size: int = 10,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size
        )
        self._structure = [(a,) if isinstance(a, str) else tuple(a) for a in arrays]
        flat = [n for group in self._structure for n in group]
        self._it = BatchIterator(
            source,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            buffer_chunks=buffer_chunks,
            drop_last=drop_last,
            arrays=flat,
            transform=transform,
            storage_options=storage_options,
        )
        self.scale = scale
        self._lock = threading.Lock()
        self._stash: dict[int, dict[str, np.ndarray]] = {}
        self._gen: Iterator[dict[str, np.ndarray]] | None = None
        self._next = 0  # index of the batch the generator yields next

    @property
    def num_batches(self) -> int:
        return len(self._it)

    def __len__(self) -> int:
        return len(self._it)

    def on_epoch_end(self) -> None:
        with self._lock:
            self._it.set_epoch(self._it.epoch + 1)
            self._gen, self._next = None, 0
            self._stash.clear()

    def _batch(self, index: int) -> dict[str, np.ndarray]:
        with self._lock:
            if index in self._stash:
                return self._stash.pop(index)
            if self._gen is None or index < self._next:
                # start (or restart) the epoch at this batch
                self._it.load_state_dict({**self._it.state_dict(), "batch": index})
                self._gen, self._next = self._it.iter_dicts(), index
            while True:
                batch = next(self._gen)
                i = self._next
                self._next += 1
                if i == index:
                    return batch
                self._stash[i] = batch

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range 0..{len(self) - 1}")
        batch = self._batch(index)
        parts = []
        for group in self._structure:
            values = [self._convert(n, batch[n]) for n in group]
            parts.append(values[0] if len(values) == 1 else tuple(values))
        return tuple(parts)

    def _convert(self, name: str, a: np.ndarray) -> np.ndarray:
        if name == "images" and self.scale is not None:
            return a.astype(np.float32) / np.float32(self.scale)
        return a
