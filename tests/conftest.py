from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

# The testing kit's fixtures, loaded here (not through an entry point) so that coverage
# measurement starts before callflow is imported.
pytest_plugins = ["callflow.testing.plugin"]

FIXTURES = Path(__file__).parent / "fixtures" / "graph"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def load_fixture(name: str) -> dict[str, Any]:
    """Return a Graph notification body from tests/fixtures/graph as parsed JSON."""
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data
