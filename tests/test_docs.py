"""What the documentation states about the code is true: the error hierarchy its tables
give, the settings page (one row per setting), the API at a glance (tests/test_public_api.py)
and the README's bot, which is examples/first_bot.py and decides as the tutorial says."""

from __future__ import annotations

import builtins
import importlib.util
import re
from pathlib import Path

import attrs
import pytest

import callflow
from callflow import Bot, Settings
from callflow.testing import CALLBACK_URL, FakeGraph

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
_ROW = re.compile(r"^\|(.*)\|\s*$")


def _tables(header: str) -> list[tuple[Path, list[list[str]]]]:
    """Every Markdown table under docs/ whose header row starts with ``header``'s cells."""
    wanted = [cell.strip() for cell in header.split("|") if cell.strip()]
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        rows: list[list[str]] | None = None
        for line in page.read_text().splitlines():
            match = _ROW.match(line)
            cells = [cell.strip() for cell in match.group(1).split("|")] if match else None
            if cells is None:
                if rows:
                    found.append((page, rows))
                rows = None
            elif rows is None:
                rows = [] if cells[: len(wanted)] == wanted else None
            elif not set("".join(cells)) <= set("-: "):  # not the |---| line
                rows.append(cells)
        if rows:
            found.append((page, rows))
    return found


def _names(cell: str) -> list[str]:
    return re.findall(r"`([A-Za-z_.]+)`", cell)


def test_the_documented_error_hierarchy_is_the_real_one() -> None:
    """Each row of every "error | derives from" table names an error and exactly its bases."""
    tables = _tables("| error | derives from |")
    assert any(page.name == "errors.md" for page, _ in tables)
    for page, rows in tables:
        for row in rows:
            (name,) = _names(row[0])
            error = getattr(callflow, name)
            documented = set(_names(row[1]))
            actual = {base.__name__ for base in error.__bases__}
            assert documented == actual, f"{page.name}: {name} derives from {actual}"
            for base in documented:
                parent = getattr(callflow, base, None) or getattr(builtins, base)
                assert issubclass(error, parent)


def test_the_error_reference_lists_every_error() -> None:
    """The reference's table has a row for every error class callflow exports."""
    tables = _tables("| error | derives from |")
    (table,) = [rows for page, rows in tables if page.name == "errors.md"]
    listed = {_names(row[0])[0] for row in table}
    exported = {
        name
        for name in callflow.__all__
        if isinstance(getattr(callflow, name), type)
        and issubclass(getattr(callflow, name), callflow.CallflowError)
    }
    assert listed == exported


def test_the_settings_page_has_one_row_per_setting() -> None:
    """Every field of Settings is a row of the settings page's table, and every row is one."""
    assert (
        '--8<-- "docs/reference/settings-table.md"' in (DOCS / "reference/settings.md").read_text()
    )
    rows = [
        name
        for page, table in _tables("| setting | what it does | default |")
        if page.name == "settings-table.md"
        for row in table
        for name in _names(row[0])
    ]
    fields = [field.name.upper() for field in attrs.fields(Settings)]
    assert len(rows) == len(set(rows)), "a setting listed twice"
    assert set(rows) - set(fields) == set(), "documented but not a setting"
    assert set(fields) - set(rows) == set(), "a setting the page does not list"


def test_the_readme_bot_is_the_first_bot_example() -> None:
    """The bot README.md shows is examples/first_bot.py, line for line (the docs include
    that file, and the next test runs it)."""
    readme = (ROOT / "README.md").read_text()
    (block,) = re.findall(r"```python\n# examples/first_bot.py\n(.*?)```", readme, re.S)
    assert block.strip() in (ROOT / "examples" / "first_bot.py").read_text()


@pytest.mark.anyio
async def test_the_first_bot_decides_as_the_tutorial_says(fake_graph: FakeGraph) -> None:
    """VIPs answered, phone callers redirected to the on-call engineer, meeting invitations
    forbidden, anyone else the default decision (busy)."""
    spec = importlib.util.spec_from_file_location("first_bot_copy", ROOT / "examples/first_bot.py")
    assert spec is not None
    assert spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert isinstance(example.bot, Bot)
    (vip,) = example.VIPS
    async with fake_graph.serve(example.bot) as running:
        url = running.webhook_url
        calls = {
            "vip": await fake_graph.place_call(url, caller={"kind": "user", "id": vip}),
            "phone": await fake_graph.place_call(url, kind="phone"),
            "meeting": await fake_graph.place_call(url, kind="group_meeting"),
            "stranger": await fake_graph.place_call(
                url, caller={"kind": "user", "id": "0a0a0a0a-3333-4333-8333-000000000333"}
            ),
        }
        decided = {name: await call.decision() for name, call in calls.items()}
    assert decided["vip"].op == "answer"
    assert decided["phone"].op == "redirect"
    target = decided["phone"].body["targets"][0]["identity"]["user"]["id"]
    assert target == example.ON_CALL
    assert (decided["meeting"].op, decided["meeting"].body["reason"]) == ("reject", "forbidden")
    assert decided["stranger"].body == {"reason": "busy", "callbackUri": CALLBACK_URL}


def test_every_included_file_is_named_as_the_snippets_extension_reads_it() -> None:
    """The pages that include example and test files name them as ``--8<-- "path:section"``
    (a formatter that rewrote the line would leave the page showing the line itself), and
    each named section is marked in its file."""
    for page in sorted(DOCS.rglob("*.md")):
        for line in page.read_text().splitlines():
            if "8<" not in line.replace(" ", ""):
                continue
            match = re.fullmatch(r'--8<-- "([^":]+)(?::(\w+))?"', line)
            assert match, f"{page.name}: {line!r}"
            text = (ROOT / match.group(1)).read_text()
            if match.group(2):
                assert f"# --8<-- [start:{match.group(2)}]" in text
