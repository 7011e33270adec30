"""Write back: :class:`ArrayWriter` streams model outputs into a store, batch by batch.

``writer`` (the public writer), ``checks`` (specs, batches, safe casts), ``shards``
(per-array shard buffers, background writes), ``staging`` (checkpoints, resume, publish).
"""

from .writer import ArrayWriter

__all__ = ["ArrayWriter"]
