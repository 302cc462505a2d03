"""structlog configuration for the worker: JSON lines in production, console on a TTY.

Only the CLI calls :func:`configure_logging`; a bot embedded in another program keeps that
program's logging. Personal data (display names, phone numbers) is masked unless
``LOG_PII=on``; anything that looks like a credential is always redacted.

Every call logs a ``call.decided`` line, so the JSON format renders each line in one
processor (:class:`JsonLines`) that does what structlog's ``merge_contextvars``,
``add_log_level``, ``TimeStamper(fmt="iso", utc=True)``, :func:`redact_secrets`,
:func:`mask_pii`, ``dict_tracebacks`` and ``JSONRenderer`` would do one after the other,
with the same result at a fraction of the cost.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any, Final, TextIO

import structlog

from .events import mask_phone

__all__ = ["JsonLines", "configure_logging", "mask_pii", "redact_secrets"]

_SECRET_KEYS: Final = frozenset({"authorization", "api_key", "apikey", "private_key"})
_SECRET_SUFFIXES: Final = ("token", "secret", "password")
_NAME_KEYS: Final = frozenset({"display_name", "caller_name", "name_of_caller"})
_PHONE_KEYS: Final = frozenset({"phone", "phone_number", "caller_phone"})

_PLAIN: Final = 0
_SECRET: Final = 1
_NAME: Final = 2
_PHONE: Final = 3
_KINDS_MAX: Final = 4096
_kinds: dict[Any, int] = {}
"""What each key seen so far is (plain, secret, name, phone): log lines reuse a few keys."""


def _is_secret(key: str) -> bool:
    name = key.lower()
    return name in _SECRET_KEYS or name.endswith(_SECRET_SUFFIXES)


def _kind(key: Any) -> int:
    kind = _kinds.get(key)
    if kind is None:
        if not isinstance(key, str):
            kind = _PLAIN
        elif _is_secret(key):
            kind = _SECRET
        elif key in _NAME_KEYS:
            kind = _NAME
        elif key in _PHONE_KEYS:
            kind = _PHONE
        else:
            kind = _PLAIN
        if len(_kinds) < _KINDS_MAX:
            _kinds[key] = kind
    return kind


def _mask(kind: int, value: Any) -> Any:
    """The masked form of a name or phone number value (other values are kept)."""
    if kind == _NAME:
        return value[0] + "***" if isinstance(value, str) and value else value
    return mask_phone(value) if isinstance(value, str) else value


def redact_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Replace the value of any credential-like key with ``[redacted]``.

    A key is credential-like when, in any case, it ends with ``token``, ``secret`` or
    ``password`` (``access_token``, ``client_secret``, ``Token``) or is ``authorization``,
    ``api_key``, ``apikey`` or ``private_key``.
    """
    for key in [key for key in event if _kind(key) == _SECRET]:
        event[key] = "[redacted]"
    return event


def mask_pii(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Mask display names and phone numbers (the processor left out when ``LOG_PII=on``)."""
    for key in [key for key in event if _kind(key) >= _NAME]:
        event[key] = _mask(_kind(key), event[key])
    return event


# --- the JSON line processor ---------------------------------------------------------------

_UNSET: Final = Ellipsis  # structlog's value for a context variable that is not bound
_PREFIX_LEN: Final = len(structlog.contextvars.STRUCTLOG_KEY_PREFIX)
# structlog keeps one variable per key bound with bind_contextvars in a module dict (variables
# are only ever added): reading those few is much cheaper than copying the whole context and
# scanning it, which is what merge_contextvars does. Without that dict, merge_contextvars.
_registry: dict[str, contextvars.ContextVar[Any]] | None = getattr(
    structlog.contextvars, "_CONTEXT_VARS", None
)
_known: tuple[int, tuple[tuple[str, contextvars.ContextVar[Any]], ...]] = (0, ())


def _merge_context(logger: Any, method_name: str, event: MutableMapping[str, Any]) -> None:
    """Add the keys bound with ``bind_contextvars`` that ``event`` does not have."""
    global _known
    registry = _registry
    if registry is None:
        structlog.contextvars.merge_contextvars(logger, method_name, event)
        return
    count, pairs = _known
    if len(registry) != count:
        items = tuple(registry.items())
        pairs = tuple((name[_PREFIX_LEN:], var) for name, var in items)
        _known = (len(items), pairs)
    for key, var in pairs:
        value = var.get(_UNSET)
        if value is not _UNSET and key not in event:
            event[key] = value


_stamped: tuple[int, str] = (-1, "")


def _timestamp() -> str:
    """Now in UTC as ``TimeStamper(fmt="iso", utc=True)`` writes it (microseconds, ``Z``)."""
    global _stamped
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    second, prefix = _stamped
    if second != seconds:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _stamped = (seconds, prefix)
    micros = nanos // 1000
    return f"{prefix}.{micros:06d}Z" if micros else prefix + "Z"


def _fallback(value: Any) -> Any:
    """What ``JSONRenderer`` writes for a value JSON has no type for."""
    try:
        return value.__structlog__()
    except AttributeError:
        return repr(value)


def _json_encoder() -> Any:
    """``json.dumps(event, default=...)`` as ``JSONRenderer`` calls it, minus its set-up.

    The C encoder is made for each line (with its own circular-reference markers, so two
    threads may log at once); without the C accelerator, a shared ``JSONEncoder``.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return json.JSONEncoder(default=_fallback).encode
    escape = json.encoder.encode_basestring_ascii
    join = "".join

    def encode(event: Any) -> str:
        return join(make({}, _fallback, escape, None, ": ", ", ", False, False, True)(event, 0))

    return encode


_encode: Final = _json_encoder()
_LEVELS: Final = {"warn": "warning", "exception": "error"}


class JsonLines:
    """Render an event as one JSON line, context variables, level and UTC time included.

    The same line (keys and values) that this chain gives: ``merge_contextvars``,
    ``add_log_level``, ``TimeStamper(fmt="iso", utc=True)``, :func:`redact_secrets`,
    :func:`mask_pii` (unless ``pii``), ``dict_tracebacks`` and ``JSONRenderer()``.
    """

    __slots__ = ("_pii",)

    def __init__(self, *, pii: bool = False) -> None:
        self._pii = pii

    def __call__(self, logger: Any, method_name: str, event: MutableMapping[str, Any]) -> str:
        """Render ``event`` (a structlog processor, the last of the chain)."""
        _merge_context(logger, method_name, event)
        event["level"] = _LEVELS.get(method_name, method_name)
        event["timestamp"] = _timestamp()
        special: list[tuple[Any, int]] | None = None
        kinds = _kinds
        for key in event:
            kind = kinds.get(key)
            if kind is None:
                kind = _kind(key)
            if kind:
                if special is None:
                    special = []
                special.append((key, kind))
        if special is not None:
            for key, kind in special:
                if kind == _SECRET:
                    event[key] = "[redacted]"
                elif not self._pii:
                    event[key] = _mask(kind, event[key])
        if "exc_info" in event:
            structlog.processors.dict_tracebacks(logger, method_name, event)
        result: str = _encode(event)
        return result


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
    processors: list[Any]
    if fmt == "json":
        processors = [JsonLines(pii=pii)]
    else:
        processors = [
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
        ]
        if not pii:
            processors.append(mask_pii)
        processors.append(structlog.dev.ConsoleRenderer(colors=out.isatty()))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=cache,
    )
