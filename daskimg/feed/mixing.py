"""Feed: how a shuffled plan mixes samples — a random 64-bit key per sample, each group of
chunks yielded in key order — and the sample runs it cuts from a consumer's chunks.

Pure functions on int64 arrays of sample indices (see :func:`daskimg.feed.shuffle.plan_epoch`,
Notes, *Mixing*).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["MIX_STREAM", "chunk_samples", "mix", "take_run"]

# Extra words for ``epoch_rng`` that select the stream of the in-group mixing key. Large on purpose:
# SeedSequence pads short entropy with zeros, so small tags would collide with other streams of the
# same (seed, epoch), e.g. the epoch's chunk order ``epoch_rng(seed, epoch)``.
MIX_STREAM = (0x6D697869, 0x6E675F6B)

# splitmix64 constants (Steele, Lea & Flood 2014)
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)


def _sample_keys(key: np.uint64, samples: np.ndarray) -> np.ndarray:
    """splitmix64 of each global sample index under ``key``: one random 64-bit sort key per sample."""
    z = (samples.astype(np.uint64) + np.uint64(1)) * _GAMMA + key
    z ^= z >> np.uint64(30)
    z *= _MUL1
    z ^= z >> np.uint64(27)
    z *= _MUL2
    z ^= z >> np.uint64(31)
    return z


def chunk_samples(bounds: np.ndarray, chunks: np.ndarray) -> np.ndarray:
    """The samples of ``chunks`` concatenated in that order (vectorised, no loop per chunk)."""
    starts = bounds[chunks]
    sizes = bounds[chunks + 1] - starts
    ends = np.cumsum(sizes)
    return np.repeat(starts - (ends - sizes), sizes) + np.arange(ends[-1] if ends.size else 0)


def mix(samples: np.ndarray, starts: np.ndarray, key: np.uint64) -> np.ndarray:
    """Each group's samples (``samples[starts[g]:starts[g + 1]]``) sorted by the samples' keys."""
    keys = _sample_keys(key, samples)
    ends = np.append(starts[1:], samples.size)
    out = np.empty_like(samples)
    edges: Sequence[int] = range(len(starts))
    if len(starts) > 2:
        # the groups between the first and the last are full: one call sorts them row by row
        size = int(starts[2] - starts[1])
        if size and (np.diff(starts[1:]) == size).all():
            a, b = int(starts[1]), int(starts[-1])
            rows = samples[a:b].reshape(-1, size)
            by_key = np.argsort(keys[a:b].reshape(-1, size), axis=1)
            out[a:b] = np.take_along_axis(rows, by_key, axis=1).ravel()
            edges = (0, len(starts) - 1)
    for g in edges:
        lo, hi = int(starts[g]), int(ends[g])
        out[lo:hi] = samples[lo:hi][np.argsort(keys[lo:hi])]
    return out


def take_run(
    bounds: np.ndarray, chunks: np.ndarray, lo: int, hi: int, per_group: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Samples ``[lo, hi)`` of the concatenation of ``chunks``: ``(their chunks, the samples,
    where each group of ``per_group`` of those chunks starts among the samples)``."""
    sizes = bounds[chunks + 1] - bounds[chunks]
    ends = np.cumsum(sizes)
    firsts = ends - sizes
    a = int(np.searchsorted(ends, lo, side="right"))  # the first chunk ending after lo
    b = int(np.searchsorted(firsts, hi, side="left"))  # the first chunk starting at hi or later
    run = chunks[a:b]
    if hi <= lo or not run.size:
        return run[:0], np.empty(0, dtype=np.int64), np.zeros(1, dtype=np.int64)
    offset = int(firsts[a])
    samples = chunk_samples(bounds, run)[lo - offset : hi - offset]
    starts = np.maximum(firsts[a:b][::per_group] - lo, 0)
    return run, samples, starts
