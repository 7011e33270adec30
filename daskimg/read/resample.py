"""Read: Pillow's antialiased ``BILINEAR`` resize of 8-bit pixels, bit for bit, compiled.

:func:`resize_into` gives exactly what ``Image.fromarray(src).resize((w, h), BILINEAR,
box=box)`` gives for an ``L`` or ``RGB`` image: Pillow's filter coefficients (a triangle
whose support widens with the scale, in double precision, then 22-bit fixed point), its
two passes in its order (Pillow 13 runs the vertical pass first when the height shrinks
by more than twice as many pixels as the width, older Pillow always the horizontal one;
a pass the box does not need is skipped, as Pillow skips it), its rounding and clipping.
It differs only in speed: each pass runs along contiguous memory (the horizontal one on
a transposed copy) so the compiler vectorizes it -- 0.21 instead of Pillow's 0.86 ms for a
500x375 photo to 224x224 (this machine, quiet) -- and the kernels run without the GIL, so
threads resize at once.

The kernels are compiled by numba on first use and cached on disk (a few seconds, once
per machine; a new process loads them in about half a second). Before the first use
they are checked against the installed Pillow on a few probe images (:func:`compiled`);
without numba, or if the check fails (a Pillow that resamples differently), the same
function calls Pillow itself. Either way the pixels are Pillow's.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any, Final, NamedTuple

import numpy as np
from PIL import Image

from ..interrupts import held_ctrl_c
from .scratch import scratch

logger = logging.getLogger("daskimg")

__all__ = ["compiled", "resize_into", "rgb_to_l", "warm"]

_PRECISION_BITS: Final = 32 - 8 - 2  # Pillow's fixed point for 8-bit images (Resample.c)
#: how Pillow orders its two passes: always the horizontal first (Pillow 11, 12), or the
#: vertical first when the height shrinks by more than twice as many pixels (Pillow 13)
_ALWAYS_HORIZONTAL_FIRST: Final = 0
_VERTICAL_FIRST_WHEN_TALLER: Final = 1


def compiled() -> bool:
    """Whether :func:`resize_into` runs the compiled kernels (else it calls Pillow).

    True when numba imports and the kernels reproduce the installed Pillow on a few
    probe images (checked once per process, on first use).

    Examples
    --------
    >>> isinstance(compiled(), bool)
    True
    """
    return _order() is not None


def resize_into(src: np.ndarray, box: tuple[float, float, float, float], out: np.ndarray) -> None:
    """Resize ``src`` (``(H, W, C)`` uint8, C = 1 or 3) onto ``out`` (``(h, w, C)`` uint8).

    ``box`` is the ``(x0, y0, x1, y1)`` region of ``src`` to resample, as Pillow's
    ``Image.resize(..., box=box)`` takes it (rounded to float32, as Pillow rounds it).
    The result equals Pillow's ``BILINEAR`` resize exactly.

    Examples
    --------
    >>> import numpy as np
    >>> from PIL import Image
    >>> src = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    >>> out = np.empty((12, 17, 3), np.uint8)
    >>> resize_into(src, (0, 0, 40, 30), out)
    >>> expected = Image.fromarray(src).resize((17, 12), Image.Resampling.BILINEAR)
    >>> bool((out == np.asarray(expected)).all())
    True
    """
    c = src.shape[2]
    oc = out.shape[2]
    if c != oc or c not in (1, 3) or src.dtype != np.uint8 or out.dtype != np.uint8:
        raise ValueError(
            f"resize_into takes uint8 (H, W, 1 or 3) arrays with the same channels; got "
            f"{src.dtype} {src.shape} -> {out.dtype} {out.shape}"
        )
    fbox = np.asarray(box, dtype=np.float32)
    order = _order()
    if order is None:
        _pillow_into(src, fbox, out)
    else:
        _compiled_into(src, fbox, order, out)


def _compiled_into(src: np.ndarray, box: np.ndarray, order: int, out: np.ndarray) -> None:
    h, w, c = src.shape
    oh, ow, _ = out.shape
    src2 = np.ascontiguousarray(src).reshape(h, w * c)
    if out.flags.c_contiguous:
        _resample(src2, c, box, order, out.reshape(oh, ow * c))
    else:  # e.g. the picture's region of a padded sample
        tmp = np.empty((oh, ow * c), np.uint8)
        _resample(src2, c, box, order, tmp)
        out[...] = tmp.reshape(oh, ow, c)


def _pillow_into(src: np.ndarray, box: np.ndarray, out: np.ndarray) -> None:
    """The reference: Pillow's own resize."""
    c = src.shape[2]
    im = Image.fromarray(src[:, :, 0] if c == 1 else src)
    res = im.resize(
        (out.shape[1], out.shape[0]),
        Image.Resampling.BILINEAR,
        box=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
    )
    out[...] = np.asarray(res).reshape(out.shape)


#: (source (H, W, C), box, output (h, w)) probes; the first two tell the pass orders apart
_PROBES: Final = (
    ((23, 11, 3), (0.0, 0.0, 11.0, 23.0), (6, 9)),
    ((11, 23, 1), (0.0, 0.0, 23.0, 11.0), (9, 6)),
    ((17, 29, 3), (2.5, 1.25, 27.0, 16.5), (7, 30)),
    ((9, 8, 1), (0.0, 0.0, 8.0, 9.0), (20, 13)),
)


def warm() -> None:
    """Compile (or load from numba's cache) the kernels and choose their pass order now: a
    process about to fork its decode workers does it once for all of them."""
    _order()


@functools.cache
def _order() -> int | None:
    """The pass order that reproduces the installed Pillow on every probe, or None.

    None (use Pillow itself) without numba, or if no order reproduces this Pillow: a
    later Pillow that resamples differently is never matched silently. A Ctrl-C while
    numba loads (a few seconds, once) waits until it is loaded: one that lands inside
    numba's import left it broken for the rest of the session. If numba fails anyway,
    Pillow resizes (the same pixels, slower), and a warning says so.
    """
    with held_ctrl_c():
        try:
            return _probe()
        except Exception as e:  # numba broken (e.g. half-imported by an earlier Ctrl-C)
            _warn_fallback("resize", e)
            return None


def _warn_fallback(what: str, e: Exception) -> None:
    """Say that Pillow does ``what`` because the compiled kernels failed (the pixels are
    Pillow's either way: the kernels are checked against it)."""
    logger.warning(
        "daskimg: the compiled %s failed (%s: %s); Pillow does it instead (the same pixels, "
        "slower). If numba was interrupted while it loaded (a Ctrl-C), restart the Python "
        "process to get it back; otherwise please report this",
        what,
        type(e).__name__,
        e,
    )


def _probe() -> int | None:
    if _kernels() is None:
        return None
    rng = np.random.default_rng(0)
    cases = []
    for shape, box, (oh, ow) in _PROBES:
        src = rng.integers(0, 256, shape, dtype=np.uint8)
        want = np.empty((oh, ow, shape[2]), np.uint8)
        fbox = np.asarray(box, dtype=np.float32)
        _pillow_into(src, fbox, want)
        cases.append((src, fbox, want))
    for order in (_VERTICAL_FIRST_WHEN_TALLER, _ALWAYS_HORIZONTAL_FIRST):
        ok = True
        for src, fbox, want in cases:
            got = np.empty_like(want)
            _compiled_into(src, fbox, order, got)
            ok = ok and bool((got == want).all())
        if ok:
            return order
    return None


class _Kernels(NamedTuple):
    coeffs: Any
    pass_: Any
    transpose: Any
    luma: Any


_KERNELS: list[_Kernels | None] = []
_KERNELS_LOCK = threading.Lock()


def _kernels() -> _Kernels | None:
    """The compiled kernels, or None without numba.

    numba is imported and the kernels compiled (or loaded from numba's cache on disk) on
    the first call, not when daskimg is imported: a process that never resizes a JPEG
    never pays for it.
    """
    if not _KERNELS:
        with _KERNELS_LOCK:
            if not _KERNELS:
                _KERNELS.append(_compile())
    return _KERNELS[0]


def _compile() -> _Kernels | None:
    try:  # an accelerator: the pixels are the same without it
        from numba import njit
    except ImportError:  # pragma: no cover - where numba is missing or refuses this numpy
        return None

    def jit(f: Any) -> Any:
        try:
            return njit(nogil=True, cache=True)(f)
        except RuntimeError:  # no writable place for numba's cache: compile in each process
            return njit(nogil=True)(f)

    return _Kernels(jit(_coeffs), jit(_pass), jit(_transpose), jit(_luma))


def _coeffs(in_size: int, in0: float, in1: float, out_size: int) -> tuple[Any, Any]:
    """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for the bilinear filter.

    Returns ``bounds`` ``(out, 2)`` (first input index, taps) and ``k`` ``(out, ksize)``
    int32 weights. ``in0`` and ``in1`` are float32, as Pillow holds the box.
    """
    scale = np.float64(np.float32(in1 - in0)) / out_size
    filterscale = scale if scale >= 1.0 else 1.0
    support = filterscale  # the bilinear filter's support is 1.0
    ksize = int(np.ceil(support)) * 2 + 1
    kk = np.zeros((out_size, ksize), np.float64)
    bounds = np.zeros((out_size, 2), np.int64)
    ss = 1.0 / filterscale
    start = np.float64(in0)
    for xx in range(out_size):
        center = start + (xx + 0.5) * scale
        ww = 0.0
        xmin = int(center - support + 0.5)  # C's (int) truncates toward zero, as int() does
        if xmin < 0:
            xmin = 0
        xmax = int(center + support + 0.5)
        if xmax > in_size:
            xmax = in_size
        xmax -= xmin
        for x in range(xmax):
            d = (x + xmin - center + 0.5) * ss
            if d < 0.0:
                d = -d
            weight = 1.0 - d if d < 1.0 else 0.0
            kk[xx, x] = weight
            ww += weight
        if ww != 0.0:
            for x in range(xmax):
                kk[xx, x] /= ww
        bounds[xx, 0] = xmin
        bounds[xx, 1] = xmax
    k = np.zeros((out_size, ksize), np.int32)
    one = np.float64(1 << _PRECISION_BITS)
    for xx in range(out_size):
        for x in range(ksize):
            v = kk[xx, x]
            k[xx, x] = int(-0.5 + v * one) if v < 0 else int(0.5 + v * one)
    return bounds, k


def _pass(src: Any, first: int, bounds: Any, k: Any, out: Any) -> None:
    """One pass along axis 0: ``out[i] = clip8(sum_t k[i, t] * src[first + b_i + t])``.

    Rows are contiguous, so the innermost loop (over a whole row) vectorizes.
    """
    n = src.shape[1]
    acc = np.empty(n, np.int32)
    half = np.int32(1 << (_PRECISION_BITS - 1))
    for i in range(out.shape[0]):
        acc[:] = half
        b = first + bounds[i, 0]
        for t in range(bounds[i, 1]):
            kt = k[i, t]
            row = src[b + t]
            for j in range(n):
                acc[j] += np.int32(row[j]) * kt
        o = out[i]
        for j in range(n):
            v = acc[j] >> _PRECISION_BITS
            o[j] = 0 if v < 0 else (255 if v > 255 else v)


def _transpose(src: Any, first: int, rows: int, c: int, out: Any) -> None:
    """``out[x, y*c + ch] = src[first + y, x*c + ch]`` (c = 1 or 3): rows ``first..first+rows`` turned.

    Row by row of ``src``: each is read along its memory, and its pixels go to one place
    in each row of ``out``, whose few hundred cache lines stay in cache from one row to
    the next (faster than the other way round, which reads down the columns: for a 500x375
    RGB photo 0.10 instead of 0.13 ms on a quiet machine, 0.13 instead of 0.41 ms with
    other processes on its cores, whose cache use evicted the columns' lines).
    """
    w = src.shape[1] // c
    if c == 3:  # the common case, with the channel loop unrolled
        for y in range(rows):
            s = src[first + y]
            y3 = 3 * y
            for x in range(w):
                out[x, y3] = s[3 * x]
                out[x, y3 + 1] = s[3 * x + 1]
                out[x, y3 + 2] = s[3 * x + 2]
    else:  # one channel
        for y in range(rows):
            s = src[first + y]
            for x in range(w):
                out[x, y] = s[x]


def _horizontal(src: Any, first: int, rows: int, c: int, bounds: Any, k: Any, out: Any) -> None:
    """The horizontal pass over rows ``first..first+rows`` of ``src`` into ``out`` ``(rows, ow*c)``.

    Along a row the taps are a few pixels apart; turned, they are whole rows apart, so the
    pass runs as :func:`_pass` over a transposed copy and the result is turned back.
    """
    kernels = _kernels()
    assert kernels is not None  # the caller checked (_order)
    w = src.shape[1] // c
    ow = out.shape[1] // c
    turned = scratch("resize-turned", (w, rows * c))
    kernels.transpose(src, first, rows, c, turned)
    done = scratch("resize-done", (ow, rows * c))
    kernels.pass_(turned, 0, bounds, k, done)
    kernels.transpose(done, 0, ow, c, out)


def _resample(src: Any, c: int, box: Any, order: int, out: Any) -> None:
    """Pillow's ``ImagingResampleInner`` for 8-bit images: ``src`` ``(H, W*c)`` -> ``out``.

    ``order`` is how the installed Pillow orders the passes (see :func:`_order`). Plain
    Python over the compiled kernels (each releases the GIL): compiling this as one
    function would take numba several times longer, for a few microseconds.
    """
    kernels = _kernels()
    assert kernels is not None  # the caller checked (_order)
    h = src.shape[0]
    w = src.shape[1] // c
    oh = out.shape[0]
    ow = out.shape[1] // c
    plan = _plan(h, w, oh, ow, tuple(float(v) for v in box), order)
    horizontal_first, need_h, need_v, bounds_h, k_h, bounds_v, k_v, first, rows = plan
    if horizontal_first:
        if need_h:
            if need_v:
                mid = scratch("resize-mid", (rows, ow * c))
                _horizontal(src, first, rows, c, bounds_h, k_h, mid)
                kernels.pass_(mid, -first, bounds_v, k_v, out)
            else:
                _horizontal(src, first, rows, c, bounds_h, k_h, out)
        elif need_v:
            kernels.pass_(src, 0, bounds_v, k_v, out)
        else:
            out[:, :] = src
    elif need_h:
        mid = scratch("resize-mid", (oh, w * c))
        kernels.pass_(src, 0, bounds_v, k_v, mid)
        _horizontal(mid, 0, oh, c, bounds_h, k_h, out)
    else:
        kernels.pass_(src, 0, bounds_v, k_v, out)


@functools.lru_cache(maxsize=256)
def _plan(h: int, w: int, oh: int, ow: int, box: tuple[float, ...], order: int) -> tuple[Any, ...]:
    """The passes and their coefficients for one geometry (photos of a set share a few)."""
    x0, y0, x1, y1 = box  # float32 values, as Pillow holds them
    # Pillow's tests, box[2] and box[3] against the *output* size included
    need_h = ow != w or x0 != 0 or x1 != ow
    need_v = oh != h or y0 != 0 or y1 != oh
    # Pillow 13 runs the vertical pass first when the height shrinks by more than
    # twice as many pixels as the width; older Pillow always runs the horizontal first
    horizontal_first = order == _ALWAYS_HORIZONTAL_FIRST or not (
        h - oh > 0 and h - oh > (w - ow) * 2
    )
    kernels = _kernels()
    assert kernels is not None  # the caller checked (_order)
    bounds_v, k_v = kernels.coeffs(h, np.float32(y0), np.float32(y1), oh)
    bounds_h, k_h = kernels.coeffs(w, np.float32(x0), np.float32(x1), ow)
    first = int(bounds_v[0, 0])
    rows = int(bounds_v[oh - 1, 0] + bounds_v[oh - 1, 1]) - first
    for a in (bounds_h, k_h, bounds_v, k_v):
        a.flags.writeable = False  # shared by every thread that resizes this geometry
    return horizontal_first, need_h, need_v, bounds_h, k_h, bounds_v, k_v, first, rows


def rgb_to_l(rgb: np.ndarray, out: np.ndarray) -> None:
    """Pillow's ``convert("L")`` of ``rgb`` (``(H, W, 3)`` uint8) into ``out`` (``(H, W, 1)``).

    ITU-R 601-2 luma in Pillow's 16-bit fixed point: ``(R*19595 + G*38470 + B*7471 +
    0x8000) >> 16``, checked against the installed Pillow before first use.

    Examples
    --------
    >>> import numpy as np
    >>> from PIL import Image
    >>> rgb = np.random.default_rng(1).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    >>> out = np.empty((4, 5, 1), np.uint8)
    >>> rgb_to_l(rgb, out)
    >>> bool((out[:, :, 0] == np.asarray(Image.fromarray(rgb).convert("L"))).all())
    True
    """
    if rgb.shape[:2] != out.shape[:2] or rgb.shape[2] != 3 or out.shape[2] != 1:
        raise ValueError(f"rgb_to_l takes (H, W, 3) -> (H, W, 1); got {rgb.shape} -> {out.shape}")
    kernels = _kernels() if _luma_matches_pillow() else None  # numba loaded there first
    if kernels is not None:
        flat = np.ascontiguousarray(rgb).reshape(-1, 3)
        if out.flags.c_contiguous:
            kernels.luma(flat, out.reshape(-1))
        else:
            tmp = np.empty(flat.shape[0], np.uint8)
            kernels.luma(flat, tmp)
            out[...] = tmp.reshape(out.shape)
    else:
        out[...] = np.asarray(Image.fromarray(rgb).convert("L")).reshape(out.shape)


def _luma(rgb: Any, out: Any) -> None:
    for i in range(rgb.shape[0]):
        out[i] = (
            np.uint32(rgb[i, 0]) * 19595
            + np.uint32(rgb[i, 1]) * 38470
            + np.uint32(rgb[i, 2]) * 7471
            + 0x8000
        ) >> 16


@functools.cache
def _luma_matches_pillow() -> bool:
    """Whether the compiled :func:`_luma` gives what the installed Pillow's ``convert("L")``
    gives (False when numba cannot load it: see :func:`_order`)."""
    rgb = np.random.default_rng(0).integers(0, 256, (64, 3), dtype=np.uint8)
    got = np.empty(64, np.uint8)
    with held_ctrl_c():
        try:
            kernels = _kernels()
            if kernels is None:
                return False
            kernels.luma(rgb, got)
        except Exception as e:  # numba broken: Pillow converts
            _warn_fallback("conversion to gray", e)
            return False
    want = np.asarray(Image.fromarray(rgb.reshape(8, 8, 3)).convert("L")).reshape(-1)
    return bool((got == want).all())
