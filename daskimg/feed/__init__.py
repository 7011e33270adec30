"""Feed: the chunk-aware shuffled batch iterator.

``shuffle`` (pure epoch plans), ``source`` (the arrays read chunk by chunk), ``iterator``
(:class:`BatchIterator`: executes a plan with background reads). The framework adapters
are :mod:`daskimg.torch` and :mod:`daskimg.keras`.
"""

from .iterator import BatchIterator, Transform

__all__ = ["BatchIterator", "Transform"]
