"""Feed: shuffled batches from a store (or dask arrays), read chunk by chunk.

Planning, pure data: ``shuffle`` (the epoch plans: which chunks, which batches), ``plan``
(:class:`~daskimg.feed.plan.EpochPlan`), ``mixing`` (samples mixed within a group),
``ordered`` (store-order plans), ``checks`` (argument checks). Executing a plan front to
back: ``source`` (the arrays, read chunk by chunk), ``runner`` (background reads filling
batches), ``iterator`` (:class:`BatchIterator`). Batches by index: ``batches`` (any batch
of a plan), ``workers`` (worker threads or processes, reads ahead), ``indexed`` (epoch
after epoch, resumable). The framework adapters are :mod:`daskimg.torch` and
:mod:`daskimg.keras`.
"""

from .iterator import BatchIterator, Transform

__all__ = ["BatchIterator", "Transform"]
