"""``python -m callflow``: the same as the ``callflow`` command."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
