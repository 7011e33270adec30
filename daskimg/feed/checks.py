"""Feed: the argument checks of the shuffle planning functions (ValueError naming the argument)."""

from __future__ import annotations

import numbers

import numpy as np

__all__ = [
    "check_at_least",
    "check_consumer",
    "check_count",
    "check_flag",
    "check_int",
    "check_positive",
    "check_seed",
    "check_worker",
]


def check_int(name: str, value: object, *, low: int, high: int | None = None, allowed: str) -> int:
    """``value`` as a Python int in ``[low, high)``, or a ValueError naming ``name``."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
    if ok:
        v = int(value)  # type: ignore[call-overload]
        if v >= low and (high is None or v < high):
            return v
    raise ValueError(f"{name} must be {allowed}; got {value!r}")


def check_count(name: str, value: object) -> int:
    """``value`` as a non-negative int."""
    return check_int(name, value, low=0, allowed="a non-negative int")


def check_positive(name: str, value: object) -> int:
    """``value`` as a positive int."""
    return check_int(name, value, low=1, allowed="a positive int")


def check_flag(name: str, value: object) -> bool:
    """``value`` as a bool (numpy bools too); nothing else passes for one."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False; got {value!r}")
    return bool(value)


def check_consumer(consumer: object, num_consumers: object) -> tuple[int, int]:
    """``(consumer, num_consumers)``: ``0 <= consumer < num_consumers``."""
    n = check_positive("num_consumers", num_consumers)
    k = check_int("consumer", consumer, low=0, high=n, allowed=f"an int in [0, num_consumers={n})")
    return k, n


def check_worker(worker: object, num_workers: object) -> tuple[int, int]:
    """``(worker, num_workers)``: ``0 <= worker < num_workers``."""
    m = check_positive("num_workers", num_workers)
    w = check_int("worker", worker, low=0, high=m, allowed=f"an int in [0, num_workers={m})")
    return w, m


def check_seed(seed: object) -> int | None:
    """``seed`` as a non-negative int, or None (a nondeterministic order)."""
    if seed is None:
        return None
    return check_int(
        "seed", seed, low=0, allowed="a non-negative int, or None for a nondeterministic order"
    )


def check_at_least(name: str, value: object, low: int) -> None:
    """Refuse (ValueError) anything but an int (numpy ints too) ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
