"""``python -m callflow``: the same as the ``callflow`` command."""

from __future__ import annotations

from callflow.cli import main

raise SystemExit(main())
