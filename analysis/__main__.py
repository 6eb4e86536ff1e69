"""`python -m analysis …`: the report's command line."""

from .cli import main

raise SystemExit(main())
