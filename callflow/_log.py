"""structlog configuration for the worker: JSON lines in production, console on a TTY.

Only the CLI calls :func:`configure_logging`; a bot embedded in another program keeps that
program's logging. Personal data (display names, phone numbers) is masked unless
``LOG_PII=on``; anything that looks like a credential is always redacted.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Final, TextIO

import structlog

from .events import mask_phone

__all__ = ["configure_logging", "mask_pii", "redact_secrets"]

_SECRET_KEYS: Final = frozenset({"authorization", "api_key", "apikey", "private_key"})
_SECRET_SUFFIXES: Final = ("token", "secret", "password")
_NAME_KEYS: Final = frozenset({"display_name", "caller_name", "name_of_caller"})
_PHONE_KEYS: Final = frozenset({"phone", "phone_number", "caller_phone"})


def _is_secret(key: str) -> bool:
    name = key.lower()
    return name in _SECRET_KEYS or name.endswith(_SECRET_SUFFIXES)


def redact_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Replace the value of any credential-like key with ``[redacted]``.

    A key is credential-like when, in any case, it ends with ``token``, ``secret`` or
    ``password`` (``access_token``, ``client_secret``, ``Token``) or is ``authorization``,
    ``api_key``, ``apikey`` or ``private_key``.
    """
    for key in [key for key in event if isinstance(key, str) and _is_secret(key)]:
        event[key] = "[redacted]"
    return event


def mask_pii(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Mask display names and phone numbers (the processor left out when ``LOG_PII=on``)."""
    for key in _NAME_KEYS.intersection(event):
        value = event[key]
        if isinstance(value, str) and value:
            event[key] = value[0] + "***"
    for key in _PHONE_KEYS.intersection(event):
        value = event[key]
        if isinstance(value, str):
            event[key] = mask_phone(value)
    return event


def configure_logging(
    *,
    fmt: str | None = None,
    level: str = "info",
    pii: bool = False,
    stream: TextIO | None = None,
    cache: bool = True,
) -> None:
    """Configure structlog for a worker process.

    ``fmt`` is ``json`` or ``console``; by default console when ``stream`` is a TTY.
    ``cache`` keeps each logger as first built, which saves work on every log call but
    ties it to this configuration for good; pass ``cache=False`` when logging may be
    configured again in the same process (short commands, tests).
    """
    out = sys.stderr if stream is None else stream
    if fmt is None:
        fmt = "console" if out.isatty() else "json"
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    if not pii:
        processors.append(mask_pii)
    if fmt == "json":
        processors += [
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(),
        ]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=out.isatty()))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=cache,
    )
