"""Ctrl-C held back for the few steps it would break rather than stop.

In a notebook a Ctrl-C is a ``KeyboardInterrupt`` raised wherever the main thread is. In
most places that is what a user wants; in a few it leaves the process broken for the rest
of the session: a fork the pool has not recorded yet (a zombie child, and the Ctrl-C
swallowed by logging's after-fork hook), or numba half-imported (every later resize fails
with ``module 'numba' has no attribute 'core'``). :func:`held_ctrl_c` defers it to the end
of such a step, where it is raised as usual.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["held_ctrl_c"]


@contextlib.contextmanager
def held_ctrl_c() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) back until the block ends, then raise it as it would have been;
    so too a SIGTERM that Python code handles (the command line raises it as an exception).

    The handler is swapped for one that notes the signal: a signal mask would not do, as
    any other thread may take a signal sent to the process. Only the main thread runs (and
    may set) signal handlers; elsewhere, and where the handler was set outside Python (it
    could not be put back), the block runs as it is.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is None  # set outside Python: cannot be put back
    ):
        yield
        return
    held = [signal.SIGINT]
    if callable(signal.getsignal(signal.SIGTERM)):
        held.append(signal.SIGTERM)
    pressed: list[tuple[int, Any]] = []
    old = {
        sig: signal.signal(sig, lambda signum, frame: pressed.append((signum, frame)))
        for sig in held
    }
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if pressed:
            signum, frame = pressed[0]
            handler = old[signal.Signals(signum)]
            if callable(handler):
                handler(signum, frame)  # Python's own: KeyboardInterrupt, here
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), signum)
