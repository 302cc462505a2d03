"""One table describes every setting: the Settings docstring and the generated docs page."""

from __future__ import annotations

from pathlib import Path

import attrs

from callflow import Settings
from callflow.settings import TABLE, settings_markdown

PAGE = Path(__file__).resolve().parents[2] / "docs" / "reference" / "settings-table.md"


def _names() -> list[str]:
    return [name.strip() for names, _, _ in TABLE for name in names.split(",")]


def test_the_table_names_every_setting_once() -> None:
    fields = [field.name.upper() for field in attrs.fields(Settings)]
    assert sorted(_names()) == sorted(fields)


def test_the_settings_docstring_lists_every_setting() -> None:
    doc = Settings.__doc__ or ""
    missing = [name for name in _names() if name not in doc]
    assert missing == []
    assert "CALLFLOW_" in doc


def test_the_generated_page_is_up_to_date() -> None:
    """Regenerate it with `make settings-table` after changing the table."""
    assert PAGE.read_text() == settings_markdown(), "run `make settings-table`"
