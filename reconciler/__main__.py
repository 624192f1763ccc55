"""`python -m certgit.reconciler` runs the CLI."""

from certgit.reconciler.cli import main

raise SystemExit(main())
