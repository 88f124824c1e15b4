"""``python -m ferrotune`` runs the command line."""

from ferrotune.cli import main

raise SystemExit(main())
