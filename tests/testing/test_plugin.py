"""The pytest plugin as a project meets it: loaded by its entry point, strict by default.

A test file in a directory with no ``conftest.py`` runs in a pytest of its own (a
subprocess); the plugin comes in only through the ``pytest11`` entry point pyproject.toml
declares (put on the path as a distribution of its own, as an install would).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

TESTS = """
import pytest
from callflow import Answer, Bot, IncomingCall

pytestmark = pytest.mark.anyio


def broken() -> Bot:
    bot = Bot()

    @bot.incoming_call
    async def says_answer(call: IncomingCall):
        return "answer"

    return bot


async def test_broken_handler_fails(fake_graph, serve_bot):
    async with serve_bot(broken()) as running:
        call = await fake_graph.place_call(running.webhook_url)
        await call.decision()  # the default decision still goes out


@pytest.mark.callflow_lenient
async def test_lenient_allows_it(fake_graph, serve_bot):
    async with serve_bot(broken()) as running:
        call = await fake_graph.place_call(running.webhook_url)
        decision = await call.decision()
        assert (decision.op, decision.reason) == ("reject", "busy")  # the default decision
    (failure,) = await fake_graph.wait_failures()
    assert failure.name == "says_answer"


@pytest.fixture
def callflow_bot():
    bot = Bot()

    @bot.incoming_call
    async def answer(call: IncomingCall) -> Answer:
        return Answer()

    return bot


async def test_running_bot_answers(fake_graph, running_bot):
    call = await fake_graph.place_call(running_bot.webhook_url, kind="phone")
    assert (await call.decision()).op == "answer"


def test_anyio_backend_is_asyncio(anyio_backend):
    assert anyio_backend == "asyncio"
"""


def _entry_point_distribution(where: Path) -> None:
    """A distribution whose only content is the entry points pyproject.toml declares."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    plugins = project["entry-points"]["pytest11"]
    info = where / "callflow_entry_points-0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: callflow-entry-points\nVersion: 0\n"
    )
    lines = "".join(f"{name} = {target}\n" for name, target in plugins.items())
    (info / "entry_points.txt").write_text(f"[pytest11]\n{lines}")


@pytest.mark.slow
def test_a_project_without_conftest_gets_strict_fixtures(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_bot.py").write_text(textwrap.dedent(TESTS))
    site = tmp_path / "site"
    site.mkdir()
    _entry_point_distribution(site)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(site)])}
    report = tmp_path / "report.xml"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
         f"--junitxml={report}", str(project)],
        cwd=project, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    outcomes: dict[str, str] = {}
    messages: dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        outcomes[case.attrib["name"]] = "passed" if problem is None else problem.tag
        messages[case.attrib["name"]] = "" if problem is None else problem.attrib["message"]
    assert outcomes == {
        "test_broken_handler_fails": "failure",
        "test_lenient_allows_it": "passed",
        "test_running_bot_answers": "passed",
        "test_anyio_backend_is_asyncio": "passed",
    }, done.stdout
    message = messages["test_broken_handler_fails"]
    assert "BotCodeError" in message
    assert "handler 'says_answer'" in message
    assert "returned 'answer'" in message
