"""Allows `python -m lorafuse`."""

from lorafuse.cli import main

raise SystemExit(main())
