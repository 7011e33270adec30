"""The ``daskimg`` command line: ingest, convert, info, verify, bench, show.

One module per job: :mod:`.args` (the parser), :mod:`.ingest` (ingest, convert),
:mod:`.stores` (info, verify, show), :mod:`.measure` (bench).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from ..errors import DaskImgError
from .args import parser
from .ingest import convert, ingest
from .measure import bench_cmd
from .stores import info_cmd, show_cmd, verify_cmd

__all__ = ["main"]

_COMMANDS = {
    "ingest": ingest,
    "convert": convert,
    "info": info_cmd,
    "verify": verify_cmd,
    "bench": bench_cmd,
    "show": show_cmd,
}


class _Terminated(KeyboardInterrupt):
    """A SIGTERM (``kill``, a job scheduler's stop), raised where the main thread is, so that
    what a Ctrl-C cleans up is cleaned up too (a store being written, a bench's scratch
    copy); the default action ended the process there and then."""


def _terminated(signum: int, frame: Any) -> None:
    if _in_finalizer(frame):
        # raised there it would be printed as "Exception ignored" and dropped (the command
        # running on to the end): sent again, to land on the code after it
        threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()
        return
    raise _Terminated


def _in_finalizer(frame: Any) -> bool:
    """The signal came while Python ran a weakref callback or a ``__del__``, where an
    exception raised is dropped."""
    while frame is not None:
        code = frame.f_code
        if code.co_name == "__del__" or os.path.basename(code.co_filename) in (
            "_weakrefset.py",
            "weakref.py",
        ):
            return True
        frame = frame.f_back
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = parser().parse_args(argv)
    out = sys.stdout
    reported = _Reported(out)
    sys.stdout = reported
    term = None
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # not the embedding program's
    ):
        term = signal.signal(signal.SIGTERM, _terminated)
    try:
        return int(_COMMANDS[args.command](args))
    except KeyboardInterrupt as e:
        writes = args.command in ("ingest", "convert")
        print(
            f"daskimg {args.command}: "
            + ("terminated (SIGTERM)" if isinstance(e, _Terminated) else "interrupted")
            + (
                ". A store being written is left unfinished (it never opens as complete) "
                "or removed; run the command again to finish"
                if writes
                else ""
            ),
            file=sys.stderr,
        )
        return 143 if isinstance(e, _Terminated) else 130
    except (DaskImgError, OSError, ValueError, KeyError, ImportError) as e:
        # a KeyError's str() is its message quoted (backslashes and all)
        said = e.args[0] if isinstance(e, KeyError) and len(e.args) == 1 else e
        print(f"daskimg {args.command}: error: {said}{_notes(e)}", file=sys.stderr)
        return 2
    except Exception as e:
        if type(e).__module__.split(".")[0] not in _STORAGE_LIBRARIES:
            raise  # a bug: its traceback is what to report
        # object storage's own errors (botocore's NoCredentialsError: a 72-line traceback)
        print(
            f"daskimg {args.command}: error: {type(e).__name__}: {e}{_notes(e)} (reaching "
            "object storage: check its credentials, e.g. the AWS_* variables or "
            "--storage-options, and its endpoint)",
            file=sys.stderr,
        )
        return 2
    finally:
        if term is not None:
            signal.signal(signal.SIGTERM, term)
        reported.flush()  # what is buffered goes now (a closed pipe: dropped), not at exit
        sys.stdout = out
        if reported.closed_pipe:
            # the interpreter flushes standard output again at exit: onto nothing, so that
            # a closed pipe does not turn the exit status into 120
            with contextlib.suppress(OSError, ValueError, AttributeError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, out.fileno())


def _notes(e: BaseException) -> str:
    """What daskimg added to another library's error (the store, what to check)."""
    notes = [n.removeprefix("daskimg: ") for n in getattr(e, "__notes__", ())]
    return "".join(f" ({n})" for n in notes)


#: the libraries whose errors are object storage's (credentials, endpoints, the network)
_STORAGE_LIBRARIES = frozenset({"botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "adlfs"})


class _Reported:
    """Standard output that a closed pipe (``daskimg ingest ... | head -1``) does not stop:
    the work goes on and its exit status stands; what is printed after is dropped. A
    BrokenPipeError from a report aborted an ingest half-way (with --overwrite, the new
    train beside the earlier run's test) and made a good store's verify exit 2."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._closed = False

    @property
    def closed_pipe(self) -> bool:
        return self._closed

    def write(self, text: str) -> int:
        if not self._closed:
            try:
                self._stream.write(text)
            except BrokenPipeError:
                self._closed = True
        return len(text)

    def flush(self) -> None:
        if not self._closed:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._closed = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
