"""`python -m sweeps …`: see sweeps.cli."""

from .cli import main

raise SystemExit(main())
