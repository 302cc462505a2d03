"""The public surface: every module's __all__ is real, and the top-level names are stable."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import callflow

PUBLIC_NAMES = {
    "Bot", "Router", "IncomingCall", "CallStateChanged", "CallTerminated", "Answer", "Reject",
    "Redirect", "RejectReason", "Target", "CallContext", "ParticipantsUpdated",
    "UnknownNotification", "NotificationFormatError", "ConfigError", "CallflowError",
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
