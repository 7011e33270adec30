"""Write back: the checks on what an :class:`~daskimg.writer.ArrayWriter` is given.

Array specs (names, per-sample shapes, dtypes), batches (shape, row counts) and the casts
that are safe: whatever would lose or change a value is refused with what to do.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import staging

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")


def parse_specs(
    name: str,
    shape: int | Sequence[int] | None,
    dtype: Any,
    arrays: Mapping[str, tuple[int | Sequence[int], Any]] | None,
) -> dict[str, staging.Spec]:
    """``{name: (per-sample shape, dtype)}`` from ArrayWriter's arguments, checked."""
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
    out: dict[str, staging.Spec] = {}
    for n, spec in arrays.items():
        if not isinstance(n, str) or not _NAME.match(n):
            raise ValueError(f"array name {n!r} must be letters, digits, '_', '-' or '.'")
        if n in ("images", "paths"):
            raise ValueError(f"{n!r} is reserved for the store's own arrays; pick another name")
        if n == "zarr.json":
            raise ValueError(f"{n!r} is the name of Zarr's metadata files; pick another name")
        try:
            dims: Any
            shp: tuple[int, ...]
            dims, dt = spec
            try:
                shp = (operator.index(dims),)
            except TypeError:  # a sequence of dimensions (integers; 2.5 is refused)
                shp = tuple(operator.index(d) for d in dims)
            dt = np.dtype(dt)
        except (TypeError, ValueError) as e:
            raise TypeError(
                f"arrays[{n!r}] must be (shape, dtype) of one sample, e.g. ((2048,), 'float32'); "
                f"got {spec!r} ({e})"
            ) from None
        if any(d < 1 for d in shp):
            raise ValueError(f"{n}: every dimension of a sample must be >= 1, got {shp}")
        if dt.kind not in "biuf" or dt.itemsize > 8:  # Zarr v3 has no float128
            raise TypeError(
                f"{n}: dtype {dt} is not supported; use bool, integer or float (up to int64, "
                "uint64, float64)"
            )
        if n == "labels" and (shp != () or dt.kind not in "iu"):
            raise ValueError(
                "'labels' holds one integer class index per sample: shape () and an integer dtype"
            )
        out[n] = (shp, dt.newbyteorder("<"))
    return out


def check_batch(
    name: str,
    got_shape: tuple[Any, ...],
    got: np.dtype[Any],
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
) -> None:
    """Refuse a batch of another per-sample shape, or of a dtype that would not cast safely."""
    want = f"(n, {', '.join(map(str, shape))})" if shape else "(n,)"
    if len(got_shape) != len(shape) + 1 or tuple(got_shape[1:]) != shape:
        hint = " (a single sample? add a batch axis: x[None])" if tuple(got_shape) == shape else ""
        raise ValueError(
            f"{name}: expected a batch of shape {want} {dtype}, got {tuple(got_shape)} {got}{hint}"
        )
    if not safe_cast(got, dtype):
        raise TypeError(
            f"{name}: expected {dtype} (or a type that converts to it without losing values), "
            f"got {got}; cast it explicitly, e.g. batch.astype({str(dtype)!r})"
        )


def safe_cast(src: np.dtype[Any], dst: np.dtype[Any]) -> bool:
    """Whether every value of ``src`` survives a cast to ``dst`` (narrowing floats aside)."""
    if src.kind in "iu" and dst.kind == "f":
        # numpy calls int64 -> float64 safe, yet 2**53 + 1 comes back as 2**53
        return src.itemsize * 8 - (src.kind == "i") <= np.finfo(dst).nmant + 1
    if np.can_cast(src, dst, casting="safe"):
        return True
    return src.kind == "f" and dst.kind == "f"  # float64 -> float32: precision only


def narrow_float(name: str, arr: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    """``arr`` cast to the narrower float ``dtype``; refused if a finite value would become inf."""
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(arr, dtype=dtype)
    if np.isinf(out).any():
        lost = np.isinf(out) & np.isfinite(arr)
        if lost.any():
            biggest = float(np.abs(arr[lost]).max())
            raise ValueError(
                f"{name}: a value of magnitude {biggest:g} does not fit in {dtype} "
                f"(largest {float(np.finfo(dtype).max):g}) and would become inf; scale or clip "
                f"the batch, or write the array as a wider float"
            )
    return out


def integer_arg(value: Any, least: int, what: str) -> int:
    """``value`` as an int >= ``least`` (numpy integers too), or ``ValueError(what, got ...)``."""
    try:
        n = operator.index(value)
    except TypeError:
        n = None
    if n is None or isinstance(value, bool) or n < least:
        raise ValueError(f"{what}, got {value!r}")
    return n
