"""``python -m lowbit`` runs the command line tool."""

from lowbit.cli.main import main

raise SystemExit(main())
