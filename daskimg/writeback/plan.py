"""Write back: what an :class:`~daskimg.ArrayWriter` was asked to write, and where — its
arguments, checked, as one :class:`Plan`."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..store.codecs import parse_codec
from ..store.location import Location
from .checks import Spec, integer_arg, parse_specs

__all__ = ["ORDERS", "Plan"]

ORDERS = ("index", "store")


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
    num_samples: int | None = None
    threads: int = 2

    @property
    def staging(self) -> Path:
        return Path(self.path + ".partial")

    @classmethod
    def of(
        cls,
        path: str | os.PathLike[str],
        *,
        name: str,
        shape: int | Sequence[int] | None,
        dtype: Any,
        arrays: Mapping[str, tuple[int | Sequence[int], Any]] | None,
        chunks: int | None,
        shard_chunks: int | None,
        codec: str | None,
        mode: str,
        order: str | None,
        num_samples: int | None,
        overwrite: bool,
        split: str | None,
        checkpoint_every: float | None,
        threads: int,
        storage_options: Mapping[str, Any] | None,
    ) -> Plan:
        """The plan of ``ArrayWriter(path, ...)``: its arguments checked (see ArrayWriter)."""
        specs = parse_specs(name, shape, dtype, arrays)
        if mode not in ("w", "a"):
            raise ValueError(f"mode must be 'w' (a new store) or 'a' (add arrays); got {mode!r}")
        if order not in (None, *ORDERS):
            raise ValueError(
                f"order must be 'index' (rows placed by append(..., index=)) or 'store' (the "
                f"k-th row appended is sample k); got {order!r}"
            )
        if num_samples is not None:
            num_samples = integer_arg(num_samples, 1, "num_samples must be a positive integer")
        if mode == "w" and order == "index" and num_samples is None:
            raise ValueError(
                "order='index' places rows by store index, in a store whose length is known: "
                "pass num_samples=N too"
            )
        order = order or ("index" if mode == "a" or num_samples is not None else "store")
        if chunks is not None:
            chunks = integer_arg(chunks, 1, "chunks must be a positive number of samples")
        if shard_chunks is not None:
            shard_chunks = integer_arg(shard_chunks, 1, "shard_chunks must be a positive integer")
        threads = integer_arg(threads, 0, "threads must be an integer >= 0")
        if checkpoint_every is not None and checkpoint_every < 0:
            raise ValueError(
                f"checkpoint_every must be >= 0 seconds or None, got {checkpoint_every}"
            )
        if parse_codec(codec)[0] == "jpeg":
            # appends that fill part of a chunk make zarr decode and re-encode it: a second
            # round of JPEG loss for samples already written
            raise ValueError(
                "ArrayWriter does not write codec='jpeg' (lossy re-encoding of partial chunks); "
                "use 'lz4' or 'zstd', or write images with daskimg.to_zarr(codec='jpeg')"
            )
        loc = Location.of(path, storage_options)
        if loc.is_url:
            if mode == "a":
                raise ValueError(
                    f"mode='a' cannot add arrays to a store at a URL ({loc.target!r}): download "
                    "it, add the arrays to the local copy with mode='a', and upload it"
                )
            loc.check_writable(overwrite=overwrite)
        return cls(
            path=loc.build_path(), target=loc.target, url=loc.target if loc.is_url else None,
            kind=loc.kind, mode=mode, order=order, overwrite=overwrite, specs=specs,
            chunks=chunks, shard_chunks=shard_chunks, codec=codec, split=split,
            num_samples=num_samples, threads=threads,
        )  # fmt: skip
