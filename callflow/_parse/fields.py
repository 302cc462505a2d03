"""The parser's shared pieces: limits, enum tables, errors with their location, and the
lenient readers of leaf values (ids, codes, etags, free text).

Part of :mod:`callflow._parse`; no loop, no I/O.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from typing import Any, Final

from callflow.events import (
    ResultInfo,
    canonical_call_id,
)

MAX_NOTIFICATIONS: Final = 100
"""Notifications one body may carry; more get 413."""


MAX_CALL_ID: Final = 128
"""The longest call id accepted (Graph's are 36-character GUIDs)."""


MAX_ID: Final = 256
"""The longest identifier of any other kind (identities, participants, chains, threads)."""


MAX_URL: Final = 2048
"""The longest ``resourceUrl`` or ``callbackUri`` accepted."""


MAX_TEXT: Final = 1000
"""The longest free text kept whole (a ``resultInfo.message``, a display name, a label or an
unknown enum value kept as sent); a longer one is cut to this many characters, marked."""


CALL_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,127}")
"""A call id that is one plain URL path segment: unreserved characters, no leading dot."""


TENANT_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,255}")
"""A tenant id: a GUID or a domain name (it becomes a path segment of the token authority)."""


_CALL_ID_OK: Final = CALL_ID_PATTERN.fullmatch


_TENANT_OK: Final = TENANT_ID_PATTERN.fullmatch


def _canonical(*names: str) -> dict[str, str]:
    """Map each name, and its lowercase form, to the name itself."""
    table = {name.lower(): name for name in names}
    table.update({name: name for name in names})
    return table


_CHANGE_TYPES: Final = _canonical("created", "updated", "deleted")


_STATES: Final = _canonical(
    "incoming",
    "establishing",
    "established",
    "hold",
    "transferring",
    "transferAccepted",
    "redirecting",
    "terminating",
    "terminated",
)


# A worker sees the same few tenant ids, its own app identity, callback URI, endpoint types,
# regions and languages in call after call: one shared string each instead of a copy per
# pending call (about 0.8 KB a call).
_intern: Final = sys.intern


def _text(value: str) -> str:
    """``value``, or its first :data:`MAX_TEXT` characters and a mark that it was cut."""
    if len(value) <= MAX_TEXT:
        return value
    return f"{value[:MAX_TEXT]}...[cut from {len(value)} characters]"


def _label(value: Any) -> str | None:
    """A descriptive string leaf, shared (interned) when short; None when not a string."""
    if not isinstance(value, str):
        return None
    return _intern(value) if len(value) <= MAX_TEXT else _text(value)


_TONE_NAMES: Final = {
    **{f"tone{digit}": str(digit) for digit in range(10)},
    **{str(digit): str(digit) for digit in range(10)},
    "star": "*",
    "*": "*",
    "pound": "#",
    "#": "#",
    **{letter: letter.upper() for letter in "abcd"},
    "flash": "flash",
}


_EMPTY: Final[dict[str, Any]] = {}


_MAX_INT_DIGITS: Final = 18


_NO_CALL_ID: Final = (
    "no call id; expected resourceData.id or a resourceUrl like /communications/calls/{id}"
)


class _Bad(Exception):
    """Internal: what is wrong, and where relative to the value being parsed."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(where, problem)
        self.where = where
        self.problem = problem

    def under(self, segment: str) -> None:
        """Prefix the location with the field or index that contains it."""
        where = self.where
        if not where:
            self.where = segment
        elif where[0] == "[":
            self.where = segment + where
        else:
            self.where = f"{segment}.{where}"


def _type_name(value: Any) -> str:
    return "None" if value is None else type(value).__name__


def _wrong(where: str, expected: str, value: Any) -> _Bad:
    return _Bad(where, f"expected {expected}, got {_type_name(value)}")


def _checked_call_id(call_id: str, where: str) -> str:
    """``call_id`` in its canonical form (:func:`~callflow.events.canonical_call_id`) when it
    can be one segment of a Graph URL path; else the error."""
    if len(call_id) <= MAX_CALL_ID + 2:  # room for braces
        canonical = canonical_call_id(call_id)
        # The same object back: it was a canonical GUID already (nearly always), so valid.
        if canonical is call_id or _CALL_ID_OK(canonical):
            return canonical
    if len(call_id) > MAX_CALL_ID:
        raise _Bad(where, f"a call id of {len(call_id)} characters; expected at most {MAX_CALL_ID}")
    raise _Bad(
        where,
        f"call id {call_id[:40]!r} is not a Graph call id; expected at most {MAX_CALL_ID} "
        "characters of A-Z a-z 0-9 - _ ~ . (not starting with a dot)",
    )


def _bounded(value: str, where: str, limit: int = MAX_ID) -> str:
    """``value`` when it is at most ``limit`` characters long; else the error."""
    if len(value) > limit:
        raise _Bad(where, f"{len(value)} characters; expected at most {limit}")
    return value


def _tone(info: Any) -> tuple[int, str] | None:
    """(sequenceId, tone) of a ``toneInfo``; None when either is missing or unreadable."""
    if not isinstance(info, dict):
        return None
    sequence = _loose_code(info.get("sequenceId"))
    name = info.get("tone")
    if sequence is None or not isinstance(name, str):
        return None
    tone = _TONE_NAMES.get(name)
    if tone is None:
        tone = _TONE_NAMES.get(name.lower())
        if tone is None:
            return None
    return sequence, tone


def _loose_code(value: Any) -> int | None:
    """An integer sent as a number or a numeric string; None for anything else."""
    try:
        return _code(value, "")
    except _Bad:
        return None


def _loose_result(info: Any) -> ResultInfo | None:
    """A ``resultInfo`` read leniently: unreadable codes are None, a non-object is None."""
    if not isinstance(info, dict):
        return None
    code = _loose_code(info.get("code"))
    subcode = _loose_code(info.get("subcode"))
    message = info.get("message")
    message = _text(message) if isinstance(message, str) else None
    if code is None and subcode is None and message is None:
        return None
    return ResultInfo(code, subcode, message)


def _loose_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) and value else None


def _loose_text(data: Mapping[str, Any], key: str) -> str | None:
    """:func:`_loose_str` of a free-text field, cut at :data:`MAX_TEXT`."""
    value = data.get(key)
    return _text(value) if isinstance(value, str) and value else None


def _etag(value: Any) -> int | None:
    """Read ``W/"4021"`` (or ``"4021"``) as 4021; anything else is None."""
    if not isinstance(value, str):
        return None
    if value[:2] in ("W/", "w/"):
        value = value[2:]
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        value = value[1:-1]
    if 0 < len(value) <= _MAX_INT_DIGITS and value.isascii() and value.isdigit():
        return int(value)
    return None


def _code(value: Any, where: str) -> int | None:
    """Read a result code sent as an integer or a numeric string."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        digits = value[1:] if value[:1] == "-" else value
        if 0 < len(digits) <= _MAX_INT_DIGITS and digits.isascii() and digits.isdigit():
            return int(value)
    raise _wrong(where, "an integer or a numeric string", value)


def _result(info: Any) -> ResultInfo | None:
    if info is None:
        return None
    if not isinstance(info, dict):
        raise _wrong("resultInfo", "an object", info)
    code = _code(info.get("code"), "resultInfo.code")
    subcode = _code(info.get("subcode"), "resultInfo.subcode")
    message = info.get("message")
    message = _text(message) if isinstance(message, str) else None
    if code is None and subcode is None and message is None:
        return None
    return ResultInfo(code, subcode, message)


def _opt_str(container: dict[str, Any], key: str, limit: int = MAX_ID) -> str | None:
    value = container.get(key)
    if value is None:
        return value
    if isinstance(value, str):
        return _bounded(value, key, limit) if len(value) > limit else value
    raise _wrong(key, "a string", value)
