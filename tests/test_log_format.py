"""The log lines' one timestamp format (JSON and console) and the redaction of secrets by key
and by exact value."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator

import pytest
import structlog

import callflow._log
from callflow._log import (
    MIN_SECRET_LENGTH,
    JsonLines,
    configure_logging,
    redact_secrets,
    redact_value,
    redact_values,
)

STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
"""UTC, ISO 8601, milliseconds, the zone: 2026-12-07T16:42:43.123Z."""
LONG_SECRET = "Xq8~vN3.secret-value_0123456789"


@pytest.fixture
def restored() -> Iterator[None]:
    """Put structlog's configuration and the redacted values back as they were."""
    saved = structlog.get_config()
    values = callflow._log._secret_values
    try:
        yield
    finally:
        structlog.reset_defaults()
        structlog.configure(**saved)
        callflow._log._secret_values = values


def _log_one(fmt: str) -> str:
    out = io.StringIO()
    configure_logging(fmt=fmt, level="info", stream=out, cache=False)
    structlog.get_logger("test").info("call.decided", call_id="c-1")
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_both_formats_stamp_lines_in_utc_with_milliseconds_and_the_zone(
    fmt: str, restored: None
) -> None:
    """A JSON line's ``timestamp`` and a console line's leading time are the same format."""
    text = _log_one(fmt)
    stamp = json.loads(text)["timestamp"] if fmt == "json" else text.split()[0]
    assert STAMP.fullmatch(stamp), text


def test_a_short_secret_is_redacted_as_a_field_but_never_inside_other_text(
    restored: None,
) -> None:
    """``APP_SECRET=s`` (shorter than the minimum) is not looked for inside text: host names
    stay whole; as the value of a secret-like key it is still redacted."""
    redact_values("s")
    line = json.loads(
        JsonLines()(
            None,
            "warning",
            {"event": "graph.token_refresh_failed", "url": "https://login.microsoftonline.com"},
        )
    )
    assert line["url"] == "https://login.microsoftonline.com"
    assert redact_value("login.microsoftonline.com", "s") == "login.microsoftonline.com"
    assert redact_secrets(None, "info", {"APP_SECRET": "s"}) == {"APP_SECRET": "[redacted]"}
    assert len("s") < MIN_SECRET_LENGTH


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_a_long_secret_inside_a_message_is_redacted(fmt: str, restored: None) -> None:
    """A secret given to :func:`redact_values` is cut out of any value, in either format."""
    redact_values(LONG_SECRET, None, "")
    out = io.StringIO()
    configure_logging(fmt=fmt, level="info", stream=out, cache=False)
    structlog.get_logger("test").warning(
        "graph.token_acquire_failed", error=f"the IdP echoed client_secret={LONG_SECRET} back"
    )
    text = out.getvalue()
    assert LONG_SECRET not in text
    assert "client_secret=[redacted] back" in text
    assert redact_value(f"x{LONG_SECRET}y", LONG_SECRET) == "x[redacted]y"


def test_credential_fields_are_redacted_whatever_their_length() -> None:
    """client_secret, authorization and the like are redacted by their key, even one letter."""
    line = json.loads(
        JsonLines()(
            None,
            "info",
            {
                "event": "x",
                "client_secret": "c",
                "authorization": "Bearer abc",
                "Authorization": "z",
                "fleet_secret": LONG_SECRET,
                "call_id": "c-1",
            },
        )
    )
    assert line["client_secret"] == line["authorization"] == "[redacted]"
    assert line["Authorization"] == line["fleet_secret"] == "[redacted]"
    assert line["call_id"] == "c-1"
