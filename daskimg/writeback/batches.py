"""Write back: what one :meth:`~daskimg.ArrayWriter.append` is given, checked and cut
into pieces: arrays by name, each coerced to its dtype (or, for dask arrays, computed a
few blocks at a time), the same number of rows in each, what ``index=`` must be — and
where the rows go (:func:`append_rows`): placed by store index, or after those appended.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np

from ..read.lazy import exact_blocks
from .checks import TEXT, Spec, check_batch, coerce, parse_index
from .placed import Placed
from .plan import Plan
from .shards import Appended

__all__ = ["Batch", "append_rows", "missing_rows", "needs_index", "next_rows"]


@dataclass
class Batch:
    """One append's arrays: numpy arrays already coerced to their dtypes, or dask arrays
    (``lazy``) checked for shape and dtype, all with ``rows`` rows."""

    specs: Mapping[str, Spec]
    classes: Sequence[str]
    values: dict[str, Any]
    lazy: list[str]
    rows: int

    @classmethod
    def of(
        cls,
        specs: Mapping[str, Spec],
        classes: Sequence[str],
        batch: Any,
        named: Mapping[str, Any],
    ) -> Batch:
        """``append(batch)`` or ``append(**named)``, checked; nothing is computed yet."""
        values = _name_values(specs, batch, named)
        lazy = [n for n, v in values.items() if isinstance(v, da.Array)]
        for name, v in values.items():
            if name in lazy:
                _check_dask(name, v, specs[name])
                # each block held to its declared shape as computed: a short block and a
                # long one in the same piece kept its row count and shifted rows between
                values[name] = exact_blocks(v, name)
            else:
                values[name] = coerce(name, v, specs[name], classes)
        rows = {n: int(a.shape[0]) for n, a in values.items()}
        if len(set(rows.values())) != 1:
            raise ValueError(f"every array needs the same number of rows per append; got {rows}")
        return cls(specs, classes, values, lazy, next(iter(rows.values())))

    def pieces(
        self, idx: np.ndarray | None, step: int
    ) -> Iterator[tuple[np.ndarray | None, dict[str, np.ndarray]]]:
        """The batch as ``(indices, arrays)`` pieces: whole, or dask arrays computed a few
        blocks (about ``step`` rows) at a time, so memory stays bounded."""
        if not self.lazy:
            yield idx, self.values
            return
        lead: da.Array = self.values[self.lazy[0]]
        bounds = np.cumsum((0, *lead.chunks[0])).tolist()
        a = 0
        while a < self.rows:
            b = bounds[min(bisect_left(bounds, a + step), len(bounds) - 1)]
            parts = dask.compute(*[self.values[n][a:b] for n in self.lazy])
            # (each block was held to its declared shape as computed: Batch.of)
            piece = dict(zip(self.lazy, parts, strict=True))
            out = {
                n: coerce(n, piece[n], self.specs[n], self.classes) if n in piece else v[a:b]
                for n, v in self.values.items()
            }
            yield (None if idx is None else idx[a:b]), out
            a = b


def _name_values(specs: Mapping[str, Spec], batch: Any, named: Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(batch, Mapping) and all(isinstance(k, str) for k in batch) and not named:
        # append({"a": ..., "b": ...}), e.g. what a predict step returns, is append(**it):
        # it was one array's batch, refused as "got () object"
        batch, named = None, batch
    if batch is not None:
        if named:
            raise TypeError("pass one batch, or arrays by name, not both")
        if len(specs) != 1:
            raise TypeError(
                "this writer has several arrays; name them all: "
                f"append({', '.join(f'{n}=...' for n in specs)})"
            )
        return {next(iter(specs)): batch}
    if set(named) != set(specs):
        missing = sorted(set(specs) - set(named))
        extra = sorted(set(named) - set(specs))
        raise TypeError(
            f"append needs every array of this writer, {sorted(specs)}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unknown {extra}" if extra else "")
        )
    return dict(named)


def _check_dask(name: str, v: da.Array, spec: Spec) -> None:
    if any(np.isnan(c) for c in v.chunks[0]):
        raise ValueError(
            f"{name}: a dask array of unknown length; call .compute_chunk_sizes() first"
        )
    shape, dtype = spec
    if dtype == TEXT:
        if v.ndim != 1:
            raise ValueError(f"{name}: expected a batch of shape (n,) of str, got {v.shape}")
    else:
        check_batch(name, v.shape, v.dtype, shape, dtype)


def next_rows(index: Any, n: int, first: int, num_samples: int | None) -> np.ndarray:
    """``order="store"``: an ``index`` given must be the next ``n`` rows after ``first``."""
    if num_samples is None:
        raise ValueError(
            "index= places rows by store index, which needs the number of samples up "
            "front: pass num_samples=N to ArrayWriter (rows may then arrive in any order). "
            "Without it, rows are stored in the order appended: drop index="
        )
    idx = parse_index(index, n)
    if not np.array_equal(idx, np.arange(first, first + n)):
        shown = ", ".join(map(str, idx[:4].tolist())) + (", ..." if n > 4 else "")
        raise ValueError(
            f"order='store' stores the k-th row appended as sample k, so this batch's rows "
            f"are samples {first}..{first + n - 1}, but index= says [{shown}]; leave order "
            "unset to place rows by index, whatever their order"
        )
    return idx


def needs_index(mode: str, target: str, num_samples: int | None) -> str:
    """What to say when a writer that places rows by index gets a batch without ``index=``."""
    if mode == "a":
        return (
            f"mode='a' puts each row on its sample of {target!r} by store index, so append "
            "needs index=, the store indices of the batch's rows: append(batch, index=index). "
            "BatchIterator(..., arrays=('images', 'index')) and TorchDataset(..., "
            "arrays=('images', 'index')) yield them with each batch. If the rows come exactly "
            "in the store's order (BatchIterator(shuffle=False) in one process, no DataLoader "
            "workers), say so: ArrayWriter(..., mode='a', order='store')"
        )
    return (
        f"this writer places rows by store index (num_samples={num_samples}), so append "
        "needs index=, the store indices of the batch's rows; or pass order='store' to "
        "store rows in the order appended"
    )


def append_rows(
    plan: Plan,
    sink: Appended | Placed,
    classes: Sequence[str],
    num_samples: int | None,
    batch: Any,
    named: Mapping[str, Any],
    index: Any,
) -> None:
    """Check one append and add its rows to ``sink``: each on its store index (``index=``),
    or after the rows appended so far. A batch that is refused changes nothing."""
    given = Batch.of(plan.specs, classes, batch, named)
    idx = _batch_index(plan, sink, num_samples, index, given.rows)
    pieces = given.pieces(idx, sink.step)
    if isinstance(sink, Placed):
        assert idx is not None
        sink.add(pieces, idx)
    else:
        sink.add(piece for _, piece in pieces)


def _batch_index(
    plan: Plan, sink: Appended | Placed, num_samples: int | None, index: Any, n: int
) -> np.ndarray | None:
    """The batch's store indices, checked (None: rows in arrival order)."""
    if isinstance(sink, Placed):
        if index is None:
            raise ValueError(needs_index(plan.mode, plan.target, num_samples))
        idx = parse_index(index, n)
        sink.check(idx)
        return idx
    have = sink.rows
    if num_samples is not None and have + n > num_samples:
        raise ValueError(
            f"{plan.path!r} has {num_samples} samples; {have} rows are appended "
            f"already, so this batch of {n} is {have + n - num_samples} too many"
        )
    return None if index is None else next_rows(index, n, have, num_samples)


def missing_rows(sink: Appended | Placed, num_samples: int | None) -> np.ndarray:
    """Store indices of the samples that have no row in ``sink`` yet (int64, ascending)."""
    if isinstance(sink, Placed):
        return sink.missing()
    if num_samples is None:
        raise ValueError(
            "the number of samples of this store is not known (mode='w' without "
            "num_samples); every row appended is kept, in order"
        )
    return np.arange(sink.rows, num_samples, dtype=np.int64)
