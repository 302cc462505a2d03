"""The types guide a bot author: mypy --strict rejects what callflow would refuse at run time.

A handler typed to return something that is not a decision, a call kind FakeGraph does not
know, a caller kind no identity has: each is a type error in a bot checked with mypy
--strict, and the correct forms (services typed through ``CallContext[...]``, ``ctx.log``
a structlog logger) pass.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

GOOD = """
from callflow import Answer, Bot, CallContext, IncomingCall, Reject
from callflow.testing import FakeGraph


class Clinic:
    def is_open(self) -> bool:
        return True


bot = Bot(services=Clinic())


@bot.incoming_call
async def route(call: IncomingCall, ctx: CallContext[Clinic]) -> Answer | Reject:
    ctx.log.info("routing", caller=call.caller.kind)
    return Answer() if ctx.services.is_open() else Reject()


@bot.incoming_call(priority=2)
async def passes(call: IncomingCall) -> None:
    return None


@bot.incoming_call(priority=3)
def plain(call: IncomingCall) -> Reject | None:
    return None


opened: bool = bot.services.is_open()


async def ring(fake: FakeGraph, url: str) -> None:
    await fake.place_call(url, kind="phone")
"""

BAD = """
from callflow import Bot, CallContext, IncomingCall
from callflow.testing import FakeGraph

bot = Bot()


@bot.incoming_call
async def says_answer(call: IncomingCall) -> str:
    return "answer"


@bot.incoming_call(priority=1)
def plain(call: IncomingCall, ctx: CallContext) -> int:
    return 1


async def ring(fake: FakeGraph, url: str) -> None:
    await fake.place_call(url, kind="pstn")


def is_phone(call: IncomingCall) -> bool:
    return call.caller.kind == "pstn"


def log(ctx: CallContext) -> None:
    ctx.log.infoo("typo")
"""


@pytest.mark.slow
def test_mypy_strict_rejects_wrong_handlers_and_accepts_right_ones(tmp_path: Path) -> None:
    (tmp_path / "good_bot.py").write_text(textwrap.dedent(GOOD))
    (tmp_path / "bad_bot.py").write_text(textwrap.dedent(BAD))
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary",
         "--cache-dir", str(tmp_path / "cache"), "good_bot.py", "bad_bot.py"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert not [line for line in errors if line.startswith("good_bot.py")], done.stdout
    lines = {int(m.group(1)) for m in re.finditer(r"^bad_bot\.py:(\d+): error", done.stdout, re.M)}
    source = textwrap.dedent(BAD).splitlines()
    wanted = {
        number
        for number, text in enumerate(source, start=1)
        if text.startswith("@bot.incoming_call") or '"pstn"' in text or "infoo" in text
    }
    assert wanted <= lines, done.stdout
    assert "Non-overlapping equality check" in done.stdout, done.stdout
