"""structlog configuration for the worker: JSON lines in production, console on a TTY.

Only the CLI calls :func:`configure_logging`; a bot embedded in another program keeps that
program's logging. Personal data (display names, phone numbers) is masked unless
``LOG_PII=on``: the values of name and number keys, and any E.164-looking number (``+`` and
8 to 15 digits) anywhere in a rendered line (an exception message, say). Anything that looks
like a credential is always redacted: the value of a credential-like key, a bearer token
or a JWT anywhere in a rendered line, and the exact value of a secret the worker was given
(:func:`redact_values`: the app, fleet and media secrets, the Speech key) anywhere in a
line, when it is at least :data:`MIN_SECRET_LENGTH` characters long: a shorter one (a
placeholder such as ``s``) is only redacted as the value of its key, never as a piece of
other text. Tracebacks never show local variables (a frame's locals hold request headers,
tokens and callers' numbers). On the console, control characters in values (a caller's
display name, a message Graph sent) are escaped, so that no value can move the cursor,
restyle the terminal or start a line of its own.

Every call logs a ``call.decided`` line, so the JSON format renders each line in one
processor (:class:`JsonLines`) that does what structlog's ``merge_contextvars``,
``add_log_level``, :func:`add_timestamp`, :func:`redact_secrets`, :func:`mask_pii`,
``dict_tracebacks`` and ``JSONRenderer`` would do one after the other, with the same result
at a fraction of the cost. Both formats stamp lines the same way: UTC, ISO 8601, with
milliseconds and the zone (``2026-12-07T16:42:43.123Z``).

Runs on whichever thread logs (both loops): the processors keep no per-call state.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import io
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Hashable, MutableMapping
from typing import Any, Final, TextIO

import structlog
from structlog.processors import ExceptionRenderer
from structlog.tracebacks import ExceptionDictTransformer

from callflow.events import mask_phone

__all__ = [
    "MIN_SECRET_LENGTH",
    "JsonLines",
    "LineWriter",
    "Throttle",
    "add_timestamp",
    "configure_logging",
    "dict_tracebacks",
    "escape_controls",
    "mask_numbers",
    "mask_pii",
    "pii_allowed",
    "redact_secrets",
    "redact_value",
    "redact_values",
    "scrub_tokens",
    "timestamp",
]

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


_TOKEN_TEXT: Final = re.compile(
    r"(?i:bearer)\s+[A-Za-z0-9._~+/=-]{8,}"
    r"|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"
)
"""A bearer credential, or a JWT (its header always starts ``eyJ``), in free text."""

dict_tracebacks: Final = ExceptionRenderer(ExceptionDictTransformer(show_locals=False))
"""structlog's ``dict_tracebacks`` without local variables."""


MIN_SECRET_LENGTH: Final = 8
"""Characters a secret needs before its value is redacted inside other text: a shorter one
(``APP_SECRET=s``, a placeholder) would turn every ``s`` of every line into ``[redacted]``."""

_secret_values: tuple[str, ...] = ()
"""The secrets of this process (:func:`redact_values`) redacted wherever they appear."""


def redact_value(text: str, secret: str | None) -> str:
    """``text`` with each occurrence of ``secret`` replaced by ``[redacted]``, when the secret
    is at least :data:`MIN_SECRET_LENGTH` characters long (a shorter one is left: it would
    match pieces of ordinary words)."""
    if not secret or len(secret) < MIN_SECRET_LENGTH or secret not in text:
        return text
    return text.replace(secret, "[redacted]")


def redact_values(*secrets: str | None) -> None:
    """Redact the exact values ``secrets`` (the app, fleet and media secrets, the Speech
    key) in every log line from now on, wherever they appear; those shorter than
    :data:`MIN_SECRET_LENGTH` (or None) are left out."""
    global _secret_values
    kept = [s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH]
    _secret_values = tuple(dict.fromkeys((*_secret_values, *kept)))


def scrub_tokens(text: str) -> str:
    """``text`` with bearer tokens, JWTs and the secrets of :func:`redact_values` replaced by
    ``[redacted]``."""
    for secret in _secret_values:
        if secret in text:
            text = text.replace(secret, "[redacted]")
    if "eyJ" not in text and "earer" not in text and "EARER" not in text:
        return text
    return _TOKEN_TEXT.sub("[redacted]", text)


_pii_allowed = False


def pii_allowed() -> bool:
    """True when personal data may be logged as it is (``LOG_PII=on``, see
    :func:`configure_logging`): code that would log what a caller typed asks this first."""
    return _pii_allowed


_NUMBER_TEXT: Final = re.compile(r"\+\d{8,15}(?!\d)")
"""An E.164-looking phone number in free text: ``+`` and 8 to 15 digits."""


def _mask_number(match: re.Match[str]) -> str:
    return mask_phone(match.group())


def mask_numbers(text: str) -> str:
    """``text`` with every E.164-looking number masked as :func:`mask_phone` masks one."""
    if "+" not in text:
        return text
    return _NUMBER_TEXT.sub(_mask_number, text)


class _ScrubLine:
    """The console renderer's last step: :func:`scrub_tokens` on the rendered line, and
    :func:`mask_numbers` unless ``pii``."""

    __slots__ = ("_pii",)

    def __init__(self, *, pii: bool) -> None:
        self._pii = pii

    def __call__(self, _: Any, __: str, line: str) -> str:
        line = scrub_tokens(line)
        return line if self._pii else mask_numbers(line)


_CONTROLS: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
"""A control character other than tab (C0, DEL and C1: ESC and CSI start terminal commands,
CR and LF start a line)."""
_ESCAPES: Final = {
    **{code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0)) if code != 0x09},
    0x0A: "\\n",
    0x0D: "\\r",
}
_ESCAPES_BUT_NEWLINES: Final = {code: text for code, text in _ESCAPES.items() if code != 0x0A}
_MULTILINE_KEYS: Final = frozenset({"exception", "stack"})


class _Escaped(str):
    """A value whose control characters are escaped: shown as it is, or quoted as it is
    (``repr`` would escape its backslashes a second time)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"'{self}'"


def escape_controls(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Escape the control characters in string values (a newline as ``\\n``), for the
    console; a pre-rendered ``exception`` or ``stack`` keeps its newlines."""
    for key, value in event.items():
        if isinstance(value, str) and _CONTROLS.search(value) is not None:
            table = _ESCAPES_BUT_NEWLINES if key in _MULTILINE_KEYS else _ESCAPES
            event[key] = _Escaped(value.translate(table))
    return event


def _console_traceback(sio: TextIO, exc_info: Any) -> None:
    """structlog's ``plain_traceback``, with control characters escaped but its newlines."""
    text = io.StringIO()
    structlog.dev.plain_traceback(text, exc_info)
    sio.write(text.getvalue().translate(_ESCAPES_BUT_NEWLINES))


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


class Throttle:
    """Rate-limits a log line: at most one per key every ``interval`` seconds.

    ``admit(key)`` returns None when the line is to be left out (it is counted), else how
    many lines of that key were left out since the last one logged (log it as
    ``suppressed``). ``on_suppressed(1)`` is told of every line left out (for a metric).
    Thread-safe.
    """

    __slots__ = (
        "_clock",
        "_interval",
        "_last",
        "_lock",
        "_max_keys",
        "_on_suppressed",
        "_suppressed",
    )

    def __init__(
        self,
        interval: float = 1.0,
        *,
        on_suppressed: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 1024,
    ) -> None:
        self._interval = interval
        self._on_suppressed = on_suppressed
        self._clock = clock
        self._last: dict[Hashable, float] = {}
        self._suppressed: dict[Hashable, int] = {}
        self._lock = threading.Lock()
        self._max_keys = max_keys

    def admit(self, key: Hashable = None) -> int | None:
        """None to leave this line out, else the count of lines left out before it."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                left_out = True
            else:
                if last is None and len(self._last) >= self._max_keys:
                    self._last.clear()  # many distinct keys: start over rather than grow
                self._last[key] = now
                left_out = False
                count = self._suppressed.pop(key, 0)
        if left_out:
            if self._on_suppressed is not None:
                self._on_suppressed(1)
            return None
        return count


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


def timestamp() -> str:
    """Now in UTC, ISO 8601 with milliseconds and the zone: ``2026-12-07T16:42:43.123Z``
    (the one format of every log line, JSON or console)."""
    global _stamped
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    second, prefix = _stamped
    if second != seconds:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _stamped = (seconds, prefix)
    return f"{prefix}.{nanos // 1_000_000:03d}Z"


def add_timestamp(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Stamp ``event`` with :func:`timestamp` (the console's processor; JSON lines do the
    same in :class:`JsonLines`)."""
    event["timestamp"] = timestamp()
    return event


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
    ``add_log_level``, :func:`add_timestamp`, :func:`redact_secrets`,
    :func:`mask_pii` (unless ``pii``), :data:`dict_tracebacks` (no local variables),
    ``JSONRenderer()``, :func:`scrub_tokens` and :func:`mask_numbers` (unless ``pii``).
    """

    __slots__ = ("_pii",)

    def __init__(self, *, pii: bool = False) -> None:
        self._pii = pii

    def __call__(self, logger: Any, method_name: str, event: MutableMapping[str, Any]) -> str:
        """Render ``event`` (a structlog processor, the last of the chain)."""
        _merge_context(logger, method_name, event)
        event["level"] = _LEVELS.get(method_name, method_name)
        event["timestamp"] = timestamp()
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
            dict_tracebacks(logger, method_name, event)
        line = scrub_tokens(_encode(event))
        return line if self._pii else mask_numbers(line)


class LineWriter:
    """Writes log lines to ``file``, one write per event-loop iteration rather than per line.

    A line logged from a thread that runs an event loop is held until the end of that loop's
    current iteration, then written with every other line the loop logged meanwhile: a
    worker logs a line per call, and a write each would cost a system call each. Lines of a
    warning or worse are written at once (behind the loop's held lines, in order), as are
    lines logged outside any loop, and whatever is held is written at exit.
    """

    def __init__(self, file: TextIO) -> None:
        self._file = file
        self._lock = threading.Lock()
        # Lines waiting for their loop's iteration to end, by loop (a loop closed before it
        # ran the flush leaves its lines to flush_all, never to another loop).
        self._held: dict[asyncio.AbstractEventLoop, list[str]] = {}
        atexit.register(self.flush_all)

    def __call__(self, *args: Any) -> _LineLogger:
        """structlog's logger factory: every logger writes through this writer."""
        return _LineLogger(self)

    def hold(self, line: str) -> None:
        """Write ``line`` at the end of this loop's iteration (at once without a loop)."""
        loop = _running_loop()
        if loop is None:
            self.write_now(line)
            return
        held = self._held.get(loop)
        if held is None:
            self._held[loop] = [line]
            loop.call_soon(self._flush, loop)
        else:
            held.append(line)

    def write_now(self, line: str) -> None:
        """Write what this thread's loop holds, then ``line``, now."""
        loop = _running_loop()
        held = self._held.pop(loop, None) if loop is not None else None
        text = "\n".join(held) + "\n" + line + "\n" if held else line + "\n"
        with self._lock:
            self._file.write(text)
            self._file.flush()

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        held = self._held.pop(loop, None)
        if held:
            with self._lock:
                self._file.write("\n".join(held) + "\n")
                self._file.flush()

    def flush_all(self) -> None:
        """Write every line still held (at exit)."""
        for loop in list(self._held):
            with contextlib.suppress(ValueError, OSError):  # the file is closed already
                self._flush(loop)


class _LineLogger:
    """What structlog calls with each rendered line (``logger.info(line)``, ...)."""

    __slots__ = ("_writer",)

    def __init__(self, writer: LineWriter) -> None:
        self._writer = writer

    def msg(self, message: str) -> None:
        self._writer.hold(message)

    def urgent(self, message: str) -> None:
        self._writer.write_now(message)

    debug = info = log = msg
    warn = warning = err = error = critical = exception = fatal = failure = urgent


_running_loop: Final = asyncio.events._get_running_loop


def configure_logging(
    *,
    fmt: str | None = None,
    level: str = "info",
    pii: bool = False,
    stream: TextIO | None = None,
    cache: bool = True,
    tracing: bool = False,
) -> None:
    """Configure structlog for a worker process.

    ``fmt`` is ``json`` or ``console``; by default console when ``stream`` is a TTY.
    ``tracing`` (``TRACING=otel``) adds the current span's ``trace_id`` and ``span_id`` to
    every line (or those of the call the line is about). ``cache`` keeps each logger as
    first built, which saves work on every log call but ties it to this configuration for
    good; pass ``cache=False`` when logging may be configured again in the same process
    (short commands, tests). ``pii`` also tells :func:`pii_allowed`.
    """
    global _pii_allowed
    _pii_allowed = pii
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
            add_timestamp,
            redact_secrets,
        ]
        if not pii:
            processors.append(mask_pii)
        processors.append(escape_controls)
        processors.append(
            structlog.dev.ConsoleRenderer(
                colors=out.isatty(), exception_formatter=_console_traceback
            )
        )
        processors.append(_ScrubLine(pii=pii))
    if tracing:
        from callflow._tracing import add_trace_ids

        processors.insert(0, add_trace_ids)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=LineWriter(out),
        cache_logger_on_first_use=cache,
    )
