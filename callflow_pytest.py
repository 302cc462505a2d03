"""The ``pytest11`` entry point of callflow's pytest plugin, importing nothing of callflow.

pytest loads entry-point plugins before it starts coverage (pytest-cov): importing
:mod:`callflow.testing.plugin` here would import callflow before its lines can be counted.
So this module only asks pytest, once it is configured, to load the real plugin (a no-op
when ``pytest_plugins`` in a ``conftest.py`` loaded it already). Runs in pytest's process.
"""

from __future__ import annotations

import pytest

PLUGIN = "callflow.testing.plugin"


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Load :mod:`callflow.testing.plugin` (its fixtures, marker and hooks)."""
    config.pluginmanager.import_plugin(PLUGIN)
