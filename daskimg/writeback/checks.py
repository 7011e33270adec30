"""Write back: the checks on what an :class:`~daskimg.ArrayWriter` is given.

Array specs (names, per-sample shapes, dtypes; ``str`` for text), batches (shape, row
counts, text), the casts that are safe, and the store indices that say where a batch's
rows go: whatever would lose, change or misplace a value is refused with what to do.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..read.imageset import check_column_name
from ..read.lazy import masked_count
from ..store.codecs import check_text_length
from ..store.encode import becomes_inf, holds_every

#: one array: the shape and dtype of one sample (``object`` for text)
Spec = tuple[tuple[int, ...], np.dtype[Any]]
#: the dtype of text arrays (Zarr v3 ``string``, vlen-utf8, as ``to_zarr`` stores ``paths``)
TEXT = np.dtype(object)

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")


def parse_specs(
    name: str,
    shape: int | Sequence[int] | None,
    dtype: Any,
    arrays: Mapping[str, tuple[int | Sequence[int], Any]] | None,
) -> dict[str, Spec]:
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
    out: dict[str, Spec] = {}
    for n, spec in arrays.items():
        if not isinstance(n, str) or not _NAME.match(n):
            raise ValueError(f"array name {n!r} must be letters, digits, '_', '-' or '.'")
        if n == "images":
            raise ValueError(f"{n!r} is reserved for the store's own arrays; pick another name")
        if n == "index":
            raise ValueError(
                "'index' is reserved: it is append()'s keyword for the store indices of a "
                "batch's rows (and the loader's name for them); pick another name"
            )
        if n == "ok":
            raise ValueError(
                "'ok' is reserved: a store's 'ok' says which files decoded (to_zarr's "
                "on_error='skip'), and a store holding an array so named is not stored again; "
                "pick another name"
            )
        if n == "zarr.json":
            raise ValueError(f"{n!r} is the name of Zarr's metadata files; pick another name")
        check_column_name(n)  # the rules every store array's name follows (length, '__')
        try:
            dims: Any
            shp: tuple[int, ...]
            dims, dt = spec
            try:
                shp = (operator.index(dims),)
            except TypeError:  # a sequence of dimensions (integers; 2.5 is refused)
                shp = tuple(operator.index(d) for d in dims)
            text = is_text(dt)
            dt = TEXT if text else np.dtype(dt)
        except (TypeError, ValueError) as e:
            raise TypeError(
                f"arrays[{n!r}] must be (shape, dtype) of one sample, e.g. ((2048,), 'float32'); "
                f"got {spec!r} ({e})"
            ) from None
        if any(d < 1 for d in shp):
            raise ValueError(f"{n}: every dimension of a sample must be >= 1, got {shp}")
        if text:
            if shp != ():
                raise ValueError(
                    f"{n}: a text array holds one string per sample: shape (), not {shp}"
                )
            out[n] = (shp, TEXT)
            continue
        if n == "paths":
            raise ValueError("'paths' holds one string per sample (its source file): ((), str)")
        if dt.kind not in "biuf" or dt.itemsize > 8:  # Zarr v3 has no float128
            raise TypeError(
                f"{n}: dtype {dt} is not supported; use bool, integer or float (up to int64, "
                "uint64, float64), or str for text"
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
    """Whether every value of ``src`` survives a cast to ``dst`` (narrowing floats aside:
    :func:`narrow_float` checks their values)."""
    return holds_every(src, dst) or (src.kind == "f" and dst.kind == "f")


def narrow_float(name: str, arr: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    """``arr`` cast to the narrower float ``dtype``; refused if a finite value would become inf.
    Values below its smallest become 0, as a float's rounding: model outputs (a float64
    softmax's 1e-60) do so as a matter of course, and refusing them would refuse ordinary
    predictions (the feeds, whose values go into a model, refuse it)."""
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(arr, dtype=dtype)
    if np.isinf(out).any():
        lost = becomes_inf(arr, out)
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


def is_text(dtype: Any) -> bool:
    """Whether a dtype argument asks for text (``str``, ``"str"``, ``"U"``, numpy's StringDType)."""
    if dtype is str or dtype is np.str_:
        return True
    try:
        return np.dtype(dtype).kind in "UT"
    except TypeError:
        return False


def as_numpy(value: Any) -> np.ndarray:
    """A batch as numpy: numpy arrays as they are, torch tensors detached, the rest asarray.

    A masked array with masked entries is refused: storing it would turn the values under
    its mask into real ones; so is a list of masked arrays (numpy's asarray drops masks)."""
    hidden = masked_count(value)
    if hidden:
        raise ValueError(
            f"the batch is a masked array with {hidden} masked "
            "value(s); the store has no mask, so they would be stored as real values. "
            "Fill them first, e.g. batch.filled(np.nan)"
        )
    if isinstance(value, np.ma.MaskedArray):
        return np.ma.getdata(value)
    if isinstance(value, np.ndarray):
        return value
    if all(hasattr(value, a) for a in ("detach", "cpu", "numpy")):
        value = value.detach().cpu()
        for resolve in ("resolve_conj", "resolve_neg"):  # views numpy cannot take
            if hasattr(value, resolve):
                value = getattr(value, resolve)()
        return np.asarray(value.numpy())
    try:
        return np.asarray(value)
    except ValueError:  # numpy's "inhomogeneous shape": rows of different shapes
        if not isinstance(value, (list, tuple)):
            raise
        try:
            shapes = [np.shape(v) for v in value]
        except ValueError:
            shapes = []  # a row ragged in itself: numpy's message says where
        odd = next((i for i, sh in enumerate(shapes) if sh != shapes[0]), None)
        if odd is None:
            raise
        raise ValueError(
            f"the batch is a {type(value).__name__} of rows of different shapes: row 0 has "
            f"shape {shapes[0]}, row {odd} {shapes[odd]}; give rows of one shape (the "
            "array's per-sample shape), or one array with a batch axis"
        ) from None


def coerce(name: str, value: Any, spec: Spec, classes: Sequence[str]) -> np.ndarray:
    """``value`` as a numpy array of ``name``'s dtype, or an error saying what was expected."""
    shape, dtype = spec
    if dtype == TEXT:
        return coerce_text(name, value)
    try:
        arr = as_numpy(value)
    except (TypeError, NotImplementedError, RuntimeError) as e:
        # a bfloat16 tensor (numpy has no such type), a tensor on the meta device, a list of
        # tensors that require grad (numpy() refuses them one by one)
        raise TypeError(
            f"{name}: cannot convert the batch to numpy ({type(e).__name__}: {e}); give one "
            f"tensor or array on the CPU (e.g. torch.stack(rows).detach().cpu()) cast to "
            f"{dtype}"
        ) from e
    except ValueError as e:  # a masked array with masked values
        raise ValueError(f"{name}: {e}") from None
    check_batch(name, arr.shape, arr.dtype, shape, dtype)
    if name == "labels" and classes and arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= len(classes):
            raise ValueError(
                f"labels must lie in 0..{len(classes) - 1} for {len(classes)} classes; "
                f"this batch has {lo}..{hi}"
            )
    if arr.dtype.kind == "f" and dtype.kind == "f" and arr.dtype.itemsize > dtype.itemsize:
        return narrow_float(name, arr, dtype)
    return np.ascontiguousarray(arr, dtype=dtype)


def coerce_text(name: str, value: Any) -> np.ndarray:
    """A batch of text (a list or tuple of str, or a numpy str array) as a 1-D object array."""
    if isinstance(value, (list, tuple)):
        arr = np.empty(len(value), dtype=object)
        arr[:] = list(value)
    elif isinstance(value, str):
        raise ValueError(f"{name}: expected a batch of strings (a list), got one string; use [s]")
    else:
        arr = as_numpy(value)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a batch of shape (n,) of str, got shape {arr.shape}")
    if arr.dtype.kind == "S":
        raise TypeError(
            f"{name}: expected str, got bytes ({arr.dtype}); decode them first, e.g. "
            "[b.decode() for b in batch]"
        )
    if arr.dtype.kind not in "UOT" and len(arr):
        raise TypeError(f"{name}: expected a batch of str, got {arr.dtype}")
    out = arr.astype(object)  # a copy: the caller may reuse its list
    for i, x in enumerate(out):
        if not isinstance(x, str):
            hint = "; decode bytes first, e.g. b.decode()" if isinstance(x, bytes) else ""
            raise TypeError(f"{name}: row {i} is {type(x).__name__} {x!r}, not a str{hint}")
        check_text_length(name, i, x)  # as to_zarr: longer would read back as damage
    try:
        "".join(out).encode("utf-8")
    except UnicodeEncodeError:
        for i, x in enumerate(out):
            try:
                x.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(
                    f"{name}: row {i} ({x!r}) cannot be stored as UTF-8 ({e.reason}); "
                    "decode file names with errors='replace', or store them as bytes elsewhere"
                ) from None
    return out


def parse_index(index: Any, n_rows: int) -> np.ndarray:
    """The store indices of a batch's rows (an int array, a ``range`` or a ``slice``) as
    int64, one per row; negative indices, fractions and wrong lengths are refused."""
    if isinstance(index, slice):
        if index.step is not None and index.step < 1:
            raise ValueError(f"index={index!r}: a slice's step must be positive")
        start = 0 if index.start is None else operator.index(index.start)
        step = 1 if index.step is None else operator.index(index.step)
        stop = start + n_rows * step if index.stop is None else operator.index(index.stop)
        idx = np.arange(start, stop, step, dtype=np.int64)
    elif isinstance(index, range):
        idx = np.arange(index.start, index.stop, index.step, dtype=np.int64)
    else:
        arr = as_numpy(index)
        if arr.ndim != 1:
            raise ValueError(
                f"index must be a 1-D sequence of store indices, one per row; got shape {arr.shape}"
            )
        if arr.dtype.kind not in "iu" and len(arr):
            raise TypeError(
                f"index must hold integers (the store indices of the batch's rows); got {arr.dtype}"
            )
        if arr.dtype.kind == "u" and len(arr) and int(arr.max()) > np.iinfo(np.int64).max:
            raise ValueError(f"index {int(arr.max())} is out of range")
        idx = arr.astype(np.int64)
    if len(idx) != n_rows:
        raise ValueError(
            f"index has {len(idx)} entries but the batch has {n_rows} rows; pass one store "
            "index per row"
        )
    if len(idx) > 1:
        ordered = np.sort(idx)
        twice = ordered[1:][ordered[1:] == ordered[:-1]]
        if len(twice):
            raise ValueError(
                f"index {int(twice[0])} appears more than once in this batch; every sample "
                f"gets exactly one row. {PADDED_REPEATS}"
            )
    return idx


#: why a sample's index may come twice: what to do (said by every duplicate-index error)
PADDED_REPEATS = (
    "Predictions from DDP ranks: a TorchDataset pads ranks to equal batch counts when "
    "shuffling (even), repeating some samples; make it with even=False or shuffle=False "
    "for predictions"
)


def check_range(idx: np.ndarray, num_samples: int, where: str) -> None:
    """Refuse store indices outside ``0..num_samples - 1``, naming the first."""
    if not len(idx):
        return
    bad = idx[(idx < 0) | (idx >= num_samples)]
    if len(bad):
        raise ValueError(
            f"index {int(bad[0])} is out of range: {where} has {num_samples} samples "
            f"(0..{num_samples - 1})"
        )
