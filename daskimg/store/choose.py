"""Store: which codec to store with — :func:`recommend` reads the measurements of
:func:`daskimg.bench.compare_codecs` (feeding speed, size, fidelity, write rate) and picks
one for a goal (``"speed"``: the smallest that keeps up with a target rate; ``"size"``: the
smallest lossless one that keeps up), saying why and what it costs. ``daskimg bench
--codecs`` prints its advice; :mod:`daskimg.bench` re-exports these names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .format import memory_bytes

if TYPE_CHECKING:
    from ..bench import CodecResult, Hdf5Result

__all__ = ["GOALS", "Recommendation", "human_bytes", "recommend", "size_summary"]

#: what :func:`recommend` can optimise for: feeding speed, or the size of the store
GOALS = ("speed", "size")


@dataclass(frozen=True)
class Recommendation:
    """The codec :func:`recommend` picks, whether it meets the target, and why."""

    codec: str
    rate: float  # samples/s expected for the whole store (warm or cold, see ``fits``)
    fits_in_memory: bool
    meets_target: bool | None  # None: no target given
    text: str
    goal: str = "speed"


def recommend(
    results: Sequence[CodecResult],
    *,
    target: float | None = None,
    memory: int | None = None,
    goal: str = "speed",
    hdf5: Hdf5Result | None = None,
) -> Recommendation:
    """Pick a codec for a store from :func:`compare_codecs` results.

    A store that fits in half of this machine's memory (``memory``, default: its RAM)
    is read warm after the first epoch; a larger one is read from disk every epoch, so
    its cold rate counts.

    ``goal="speed"`` (default): lossless codecs come first: among those fast enough for
    ``target`` the smallest wins (without a target, the fastest). Only when no lossless
    codec is fast enough is a lossy one (``"jpeg[:Q]"``) proposed: the most faithful
    (highest PSNR) of those fast enough.

    ``goal="size"``: the smallest lossless codec that keeps up with ``target`` (without
    a target, the smallest lossless one; when none keeps up, still the smallest, and
    ``meets_target`` is False). The text says what that costs against the fastest
    lossless codec (warm and cold samples/s, write samples/s), how it compares with
    ``hdf5`` (:func:`measure_hdf5`, e.g. HDF5 LZF) and what a lossy codec would save.
    Lossy codecs are chosen only when no lossless one was measured.
    """
    if not results:
        raise ValueError("no codec results to choose from; run compare_codecs first")
    if goal not in GOALS:
        raise ValueError(f"goal must be one of {', '.join(GOALS)}; got {goal!r}")
    memory = memory or memory_bytes() or 0

    def rate(r: CodecResult) -> float:
        return r.warm if r.store_bytes < memory / 2 else r.cold

    lossless = [r for r in results if not _lossy(r)]
    lossy = [r for r in results if _lossy(r)]
    if goal == "size":
        return _recommend_size(results, lossless, lossy, target, memory, rate, hdf5)
    if target is None:
        best = max(lossless or results, key=rate)
        why = "the fastest lossless codec here"
    else:
        fast = [r for r in lossless if rate(r) >= target]
        fast_lossy = [r for r in lossy if rate(r) >= target]
        if fast:
            best = min(fast, key=lambda r: r.store_bytes)
            why = f"the smallest lossless codec that keeps up with {target:,.0f} samples/s"
        elif fast_lossy:
            best = max(fast_lossy, key=lambda r: (r.psnr, -r.store_bytes))
            why = (
                f"no lossless codec keeps up with {target:,.0f} samples/s here; this one is "
                f"lossy ({best.psnr:.1f} dB PSNR): check that your model tolerates it"
            )
        else:
            best = max(results, key=rate)
            why = (
                f"none keeps up with {target:,.0f} samples/s; this is the fastest. Feed from more "
                "processes (DataLoader workers), or keep the store in the page cache (more RAM)"
            )
    fits = best.store_bytes < memory / 2
    text = (
        f'codec "{best.codec}": {why}. The whole store would be {human_bytes(best.store_bytes)} '
        f"(compression {best.ratio:.2f}x), "
        + (
            f"which fits in memory: {best.warm:,.0f} samples/s after the first epoch."
            if fits
            else f"more than half of the memory: read from disk every epoch, {best.cold:,.0f} samples/s."
        )
    )
    return Recommendation(
        best.codec, rate(best), fits, None if target is None else rate(best) >= target, text
    )


def _recommend_size(
    results: Sequence[CodecResult],
    lossless: list[CodecResult],
    lossy: list[CodecResult],
    target: float | None,
    memory: int,
    rate: Callable[[CodecResult], float],
    hdf5: Hdf5Result | None,
) -> Recommendation:
    """``recommend(goal="size")``: the smallest lossless codec that keeps up."""
    pool = lossless or list(results)
    kind = "lossless codec" if lossless else "codec measured (no lossless one was)"
    fast = pool if target is None else [r for r in pool if rate(r) >= target]
    best = min(fast or pool, key=lambda r: r.store_bytes)
    fits = best.store_bytes < memory / 2
    if target is None:
        why = f"the smallest {kind}"
    elif fast:
        why = f"the smallest {kind} that keeps up with {target:,.0f} samples/s"
    else:
        why = (
            f"the smallest {kind}; none keeps up with {target:,.0f} samples/s here "
            f"(this one: {rate(best):,.0f}). Feed from more processes (DataLoader workers), "
            'or choose for speed (goal "speed")'
        )
    parts = [
        f'codec "{best.codec}": {why}. The whole store would be {human_bytes(best.store_bytes)} '
        f"(compression {best.ratio:.2f}x)"
        + (f", {_versus(best.store_bytes, hdf5)}" if hdf5 is not None else "")
        + "."
    ]
    smallest = min(pool, key=lambda r: r.store_bytes)
    if smallest is not best:  # smaller, but too slow for the target
        parts.append(
            f'"{smallest.codec}" would be smaller ({human_bytes(smallest.store_bytes)}) but feeds '
            f"{rate(smallest):,.0f} samples/s."
        )
    if hdf5 is not None and smallest.store_bytes >= hdf5.store_bytes:
        parts.append(f"No {kind.split(' (')[0]} measured here beats {hdf5.name} on these samples.")
    cache = "warm counts: it fits in memory" if fits else "cold counts: bigger than half the memory"
    fastest = max(pool, key=rate)
    if fastest is best:
        parts.append(f"It is also the fastest here: {_rates(best)} ({cache}).")
    else:
        parts.append(
            f'It costs speed: {_rates(best)}, against "{fastest.codec}" '
            f"({human_bytes(fastest.store_bytes)}): {_rates(fastest)} ({cache})."
        )
    smaller = [r for r in lossy if r.store_bytes < best.store_bytes and lossless]
    if smaller:
        alt = max(smaller, key=lambda r: (r.psnr, -r.store_bytes))
        parts.append(
            f'Lossy "{alt.codec}" would be {human_bytes(alt.store_bytes)} ({alt.psnr:.1f} dB PSNR), '
            "if your model tolerates it."
        )
    return Recommendation(
        best.codec,
        rate(best),
        fits,
        None if target is None else rate(best) >= target,
        " ".join(parts),
        "size",
    )


def size_summary(results: Sequence[CodecResult], hdf5: Hdf5Result | None = None) -> str:
    """One line: the smallest lossless codec, its whole-store size, and against ``hdf5``.

    ``"zstd, 91.0 MiB for the whole store, 14% smaller than HDF5 LZF (106.0 MiB) on these
    samples"``; ``"no lossless codec was measured"`` when none was.
    """
    lossless = [r for r in results if not _lossy(r)]
    if not lossless:
        return "no lossless codec was measured"
    best = min(lossless, key=lambda r: r.store_bytes)
    text = f"{best.codec}, {human_bytes(best.store_bytes)} for the whole store"
    if hdf5 is not None:
        text += f", {_versus(best.store_bytes, hdf5)} on these samples"
    return text


def _lossy(r: CodecResult) -> bool:
    """JPEG, or not exact on the measured samples (exact on those is not proof of lossless)."""
    return r.psnr != float("inf") or r.codec.partition(":")[0] == "jpeg"


def _versus(n: int, hdf5: Hdf5Result) -> str:
    """``"14% smaller than HDF5 LZF (106.0 MiB)"``."""
    change = n / max(hdf5.store_bytes, 1) - 1
    how = (
        "the same size as"
        if round(change * 100) == 0
        else (f"{abs(change):.0%} {'smaller' if change < 0 else 'larger'} than")
    )
    return f"{how} {hdf5.name} ({human_bytes(hdf5.store_bytes)})"


def _rates(r: CodecResult) -> str:
    text = f"{r.warm:,.0f} warm / {r.cold:,.0f} cold samples/s"
    return text + (f", writes {r.write:,.0f}/s" if r.write else "")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
