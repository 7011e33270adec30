"""Write back: :class:`ArrayWriter` streams model outputs into a store, batch by batch.

``writer`` (the public writer), ``batches`` (one append's arrays, checked, in pieces),
``checks`` (specs, batches, safe casts, store indices), ``shards`` (rows in arrival order:
per-array shard buffers, background writes), ``placed`` (rows placed by store index: a
staging file per array and a bitmap), ``staging`` (checkpoints, resume, publish).
"""

from .writer import ArrayWriter

__all__ = ["ArrayWriter"]
