"""The public surface: every module's __all__ is real, and the top-level names are stable."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import callflow

PUBLIC_NAMES = {
    "Bot", "Router", "IncomingCall", "CallStateChanged", "CallTerminated", "Answer", "Reject",
    "Redirect", "RejectReason", "Target", "CallContext", "ParticipantsUpdated",
    "UnknownNotification", "ConfigError", "CallflowError",
}  # fmt: skip


def _modules() -> list[str]:
    return sorted(
        m.name
        for m in pkgutil.walk_packages(callflow.__path__, "callflow.")
        if not m.name.endswith("__main__")
    )


def test_documented_names_are_importable_from_callflow() -> None:
    """The names the documentation promises are importable from the package root."""
    missing = PUBLIC_NAMES - set(callflow.__all__)
    assert not missing
    for name in PUBLIC_NAMES:
        assert getattr(callflow, name) is not None


@pytest.mark.parametrize("module_name", _modules())
def test_every_name_in_all_exists(module_name: str) -> None:
    """Each module's __all__ lists only names the module defines, without duplicates."""
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", [])
    assert len(names) == len(set(names))
    for name in names:
        assert hasattr(module, name), f"{module_name}.__all__ names missing {name!r}"


def test_phone_numbers_and_display_names_stay_out_of_repr() -> None:
    """An identity's repr masks a phone number and leaves out the display name."""
    phone = callflow.Identity("phone", "+14255550123")
    user = callflow.Identity("user", "u-1", "Dana Whitfield", "t")
    assert "+14255550123" not in repr(phone)
    assert "+1425" in repr(phone)
    assert "Dana" not in repr(user)
    assert "u-1" in repr(user)


def _documented_names() -> set[str]:
    """The names the docs' "API at a glance" page lists in its bullet points."""
    page = (Path(__file__).parent.parent / "docs" / "reference" / "index.md").read_text()
    section = page.split("# API at a glance", 1)[1]
    start = section.index("\n- **")
    bullets = section[start : section.index("\n\n", start)]  # the list, not the notes around it
    return set(re.findall(r"`([A-Z][A-Za-z]+)`", bullets))


def test_the_documented_surface_and_all_are_the_same_both_ways() -> None:
    """Every name the docs' "API at a glance" lists is exported, and every export is listed:
    nothing public goes undocumented, nothing documented is missing."""
    documented = _documented_names()
    exported = set(callflow.__all__)
    assert documented - exported == set(), "documented but not exported"
    assert exported - documented == set(), "exported but not documented"
