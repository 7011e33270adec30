"""Feed: PyTorch adapter — an ``IterableDataset`` over a :class:`~daskimg.feed.BatchIterator`.

Import it as ``from daskimg.torch import TorchDataset``; torch is imported here only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .feed.iterator import BatchIterator, Transform
from .feed.shuffle import num_batches, split_consumer

__all__ = ["TorchDataset"]


class TorchDataset(IterableDataset):
    """Batches as tensors, split across DataLoader workers and DDP ranks.

    Each (rank, worker) pair is one consumer of :func:`daskimg.shuffle.plan_epoch`: it
    reads its own whole chunks, so together they deliver every sample exactly once per
    epoch. Use it with ``DataLoader(ds, batch_size=None, num_workers=k)`` — batching is
    done here. Call :meth:`set_epoch` before each epoch (like ``DistributedSampler``);
    workers are re-created each epoch unless ``persistent_workers=True``, which would
    keep the old epoch's order.

    Parameters
    ----------
    source
        A store path (best: each worker opens its own file, fork-safe), an ImageSet or
        dask arrays, as for :class:`~daskimg.feed.BatchIterator`.
    rank, world_size
        This process's DDP rank and the number of ranks. Default: from
        ``torch.distributed`` when it is initialised, else 0 and 1.
    even
        Give every rank (and worker) the same number of batches, by repeating a few
        samples at the end of the short ones. Uneven batch counts hang DDP; use this
        for DDP training (validation should keep ``even=False`` to count each sample once).
    channels_first
        Yield images as ``(N, C, H, W)`` (``(N, C, D, H, W)`` for volumes).
    num_workers
        The DataLoader's ``num_workers``, used only by ``len()``.
    dtype
        If given, images are converted to this torch dtype (``torch.float32`` scales
        ``uint8`` to 0..1).
    storage_options
        For a store URL (``s3://...``), as for :func:`daskimg.open_zarr`.

    Examples
    --------
    >>> from daskimg.torch import TorchDataset  # doctest: +SKIP
    >>> ds = TorchDataset("out/train.zarr.zip", batch_size=64, num_workers=2)  # doctest: +SKIP
    >>> loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)  # doctest: +SKIP
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
        arrays: Sequence[str] | None = None,
        transform: Transform | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        even: bool = False,
        channels_first: bool = False,
        num_workers: int = 0,
        dtype: torch.dtype | None = None,
        prefetch: int = 1,
        threads: int = 2,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if rank is None or world_size is None:
            dist = torch.distributed
            if dist.is_available() and dist.is_initialized():
                rank = dist.get_rank() if rank is None else rank
                world_size = dist.get_world_size() if world_size is None else world_size
            else:
                rank = 0 if rank is None else rank
                world_size = 1 if world_size is None else world_size
        if not 0 <= rank < world_size:
            raise ValueError(
                f"rank must lie in 0..world_size-1; got rank={rank}, world_size={world_size}"
            )
        self.source = source
        self.rank, self.world_size = rank, world_size
        self.num_workers = num_workers
        self.channels_first = channels_first
        self.dtype = dtype
        self.epoch = 0
        self._kw: dict[str, Any] = {
            "batch_size": batch_size,
            "shuffle": shuffle,
            "seed": seed,
            "buffer_chunks": buffer_chunks,
            "drop_last": drop_last,
            "arrays": arrays,
            "transform": transform,
            "even": even,
            "prefetch": prefetch,
            "threads": threads,
            "storage_options": storage_options,
        }
        self._probe = BatchIterator(source, **self._kw)  # validates arguments, knows N and chunks

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration follows."""
        self.epoch = int(epoch)

    def _iterator(self, worker: int, num_workers: int) -> BatchIterator:
        consumer, n = split_consumer(self.rank, self.world_size, worker, num_workers)
        it = BatchIterator(self.source, consumer=consumer, num_consumers=n, **self._kw)
        it.set_epoch(self.epoch)
        return it

    def __len__(self) -> int:
        workers = max(1, self.num_workers)
        total = 0
        for w in range(workers):
            consumer, n = split_consumer(self.rank, self.world_size, w, workers)
            total += num_batches(
                self._probe.num_samples,
                self._probe.chunk_len,
                batch_size=self._kw["batch_size"],
                drop_last=self._kw["drop_last"],
                consumer=consumer,
                num_consumers=n,
                even=self._kw["even"],
            )
        return total

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        it = self._iterator(worker, num_workers)
        names = it.arrays
        for batch in it:
            yield tuple(self._tensor(name, a) for name, a in zip(names, batch, strict=True))

    def _tensor(self, name: str, a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a))
        if name == "images":
            if self.channels_first:
                t = t.movedim(-1, 1).contiguous()
            if self.dtype is not None:
                scale = 255.0 if a.dtype == np.uint8 else 65535.0 if a.dtype == np.uint16 else 1.0
                t = t.to(self.dtype)
                if self.dtype.is_floating_point and scale != 1.0:
                    t = t / scale
        return t
