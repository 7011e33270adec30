"""``python -m daskimg`` is the ``daskimg`` command."""

from .cli import main

raise SystemExit(main())
