"""``python -m execpool``: the command line (see :mod:`execpool.cli`)."""

from execpool.cli import main

raise SystemExit(main())
