"""pytest plugin: fixtures for testing callflow bots.

Installing ``callflow-graph[testing]`` is all it takes: the plugin is loaded through its
``pytest11`` entry point (``-p no:callflow`` turns it off; without the package installed,
``pytest_plugins = ["callflow.testing.plugin"]`` in ``conftest.py`` loads it). It adds:

- ``fake_graph``: a running :class:`~callflow.testing.FakeGraph` in **strict mode**: a
  handler, observer, middleware, filter, flow or error hook of a bot it serves that raises
  (or a handler that returns something that is not a decision) fails the test, naming the
  function, the call and the error. Built with the keyword arguments of the
  ``fake_graph_options`` fixture (``{}`` unless you override it);
- ``serve_bot``: ``async with serve_bot(bot, **settings_overrides) as running:`` serves a
  bot against ``fake_graph`` (see :meth:`FakeGraph.serve <callflow.testing.FakeGraph.serve>`;
  ``services=`` hands the bot fakes);
- ``running_bot``: the bot your own ``callflow_bot`` fixture returns, already serving;
- ``anyio_backend``: ``"asyncio"`` (FakeGraph runs on asyncio), so that ``async def`` tests
  marked ``@pytest.mark.anyio`` run (a ``conftest.py`` fixture of the same name wins).

A test that provokes errors in bot code on purpose turns strict mode off with
``@pytest.mark.callflow_lenient``; it can still assert on ``fake_graph.failures``. A bot
can be served only once: build a new ``Bot`` in each test (or in a function-scoped
``callflow_bot`` fixture).

Runs in pytest's process; the fixtures run on the test's event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Generator
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from callflow.bot import Bot, RunningBot
    from callflow.testing._fake_graph import FakeGraph
    from callflow.testing._keys import SigningKey

__all__ = [
    "anyio_backend",
    "callflow_signing_key",
    "fake_graph",
    "fake_graph_options",
    "running_bot",
    "serve_bot",
]

LENIENT = "callflow_lenient"


def pytest_configure(config: pytest.Config) -> None:
    """Declare the plugin's marker (so that ``--strict-markers`` accepts it)."""
    config.addinivalue_line(
        "markers",
        f"{LENIENT}: errors in bot code do not fail this test (FakeGraph strict mode off); "
        "fake_graph.failures still lists them",
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """Fail a test whose strict ``fake_graph`` saw the bot's own code fail, as it returns;
    a test failing anyway gets those failures as a note."""
    fake = getattr(item, "funcargs", {}).get("fake_graph")
    try:
        result = yield
    except BaseException as exc:
        if fake is not None and fake.strict:
            fake._failures.note_on(exc)
        raise
    if fake is not None and fake.strict:
        fake.check_failures()
    return result


def _require_asyncio(anyio_backend: Any) -> None:
    name = anyio_backend if isinstance(anyio_backend, str) else anyio_backend[0]
    if name != "asyncio":
        pytest.skip(
            f"FakeGraph runs on asyncio (aiohttp), not {name!r}: define an `anyio_backend` "
            "fixture returning 'asyncio'"
        )


@pytest.fixture
def anyio_backend() -> str:
    """FakeGraph runs on asyncio: async tests and fixtures run there."""
    return "asyncio"


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
    request: pytest.FixtureRequest,
    anyio_backend: Any,
    fake_graph_options: dict[str, Any],
    callflow_signing_key: SigningKey,
) -> AsyncIterator[FakeGraph]:
    """A running FakeGraph in strict mode (unless the test is marked ``callflow_lenient``
    or ``fake_graph_options`` says ``strict=False``), stopped after the test."""
    _require_asyncio(anyio_backend)
    from callflow.testing._fake_graph import FakeGraph

    strict = request.node.get_closest_marker(LENIENT) is None
    options = {"signing_key": callflow_signing_key, "strict": strict, **fake_graph_options}
    async with FakeGraph(**options) as fake:
        yield fake


@pytest.fixture
def serve_bot(
    fake_graph: FakeGraph,
) -> Callable[..., AbstractAsyncContextManager[RunningBot]]:
    """``serve_bot(bot, *, services=None, **settings_overrides)``: serve a bot against
    ``fake_graph``."""
    return fake_graph.serve


@pytest.fixture
async def running_bot(
    anyio_backend: Any, fake_graph: FakeGraph, callflow_bot: Bot[Any]
) -> AsyncIterator[RunningBot]:
    """The bot returned by your ``callflow_bot`` fixture, serving against ``fake_graph``."""
    _require_asyncio(anyio_backend)
    async with fake_graph.serve(callflow_bot) as running:
        yield running
