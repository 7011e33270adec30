"""The ``daskimg`` command line: ingest, convert, info, verify, bench, show.

One module per job: :mod:`.args` (the parser), :mod:`.ingest` (ingest, convert),
:mod:`.stores` (info, verify, show), :mod:`.measure` (bench).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = parser().parse_args(argv)
    try:
        return int(_COMMANDS[args.command](args))
    except (DaskImgError, OSError, ValueError, KeyError, ImportError) as e:
        print(f"daskimg {args.command}: error: {e}", file=sys.stderr)
        return 2
