"""pytest plugin: fixtures for testing callflow bots.

Enable it in your top-level ``conftest.py`` with ``pytest_plugins = ["callflow.testing.plugin"]``
(or run ``pytest -p callflow.testing.plugin``). It adds these fixtures:

- ``fake_graph``: a running :class:`~callflow.testing.FakeGraph` (built with the keyword
  arguments of the ``fake_graph_options`` fixture, ``{}`` unless you override it);
- ``serve_bot``: ``async with serve_bot(bot, **settings_overrides) as running:`` serves a
  bot against ``fake_graph`` (see :meth:`FakeGraph.serve <callflow.testing.FakeGraph.serve>`);
- ``running_bot``: the bot your own ``callflow_bot`` fixture returns, already serving.

The async fixtures run under anyio's pytest plugin, which runs an async fixture only for
tests that use the ``anyio_backend`` fixture. FakeGraph needs asyncio, so mark the tests
``@pytest.mark.anyio`` and pin the backend in your ``conftest.py``::

    @pytest.fixture
    def anyio_backend() -> str:
        return "asyncio"

On any other backend the fixtures skip the test. A bot can be served only once: build a new
``Bot`` in each test (or in a function-scoped ``callflow_bot`` fixture).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from callflow.bot import Bot, RunningBot
    from callflow.testing._fake_graph import FakeGraph
    from callflow.testing._keys import SigningKey

__all__ = [
    "callflow_signing_key",
    "fake_graph",
    "fake_graph_options",
    "running_bot",
    "serve_bot",
]


def _require_asyncio(anyio_backend: Any) -> None:
    name = anyio_backend if isinstance(anyio_backend, str) else anyio_backend[0]
    if name != "asyncio":
        pytest.skip(
            f"FakeGraph runs on asyncio (aiohttp), not {name!r}: define an `anyio_backend` "
            "fixture returning 'asyncio'"
        )


@pytest.fixture(scope="session")
def callflow_signing_key() -> SigningKey:
    """One RSA key for every FakeGraph of the session (making a key takes tens of ms)."""
    from callflow.testing._keys import SigningKey

    return SigningKey.generate()


@pytest.fixture
def fake_graph_options() -> dict[str, Any]:
    """Keyword arguments for the ``fake_graph`` fixture's FakeGraph; override to change them."""
    return {}


@pytest.fixture
async def fake_graph(
    anyio_backend: Any,
    fake_graph_options: dict[str, Any],
    callflow_signing_key: SigningKey,
) -> AsyncIterator[FakeGraph]:
    """A running FakeGraph, stopped after the test."""
    _require_asyncio(anyio_backend)
    from callflow.testing._fake_graph import FakeGraph

    options = {"signing_key": callflow_signing_key, **fake_graph_options}
    async with FakeGraph(**options) as fake:
        yield fake


@pytest.fixture
def serve_bot(
    fake_graph: FakeGraph,
) -> Callable[..., AbstractAsyncContextManager[RunningBot]]:
    """``serve_bot(bot, **settings_overrides)``: serve a bot against ``fake_graph``."""
    return fake_graph.serve


@pytest.fixture
async def running_bot(
    anyio_backend: Any, fake_graph: FakeGraph, callflow_bot: Bot
) -> AsyncIterator[RunningBot]:
    """The bot returned by your ``callflow_bot`` fixture, serving against ``fake_graph``."""
    _require_asyncio(anyio_backend)
    async with fake_graph.serve(callflow_bot) as running:
        yield running
