"""``python -m headcount`` is the ``headcount`` command."""

from headcount.cli import main

raise SystemExit(main())
