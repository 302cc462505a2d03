"""The exception hierarchy: everything callflow raises derives from :class:`CallflowError`."""

from __future__ import annotations

__all__ = [
    "CallGoneError",
    "CallflowError",
    "ConfigError",
    "DecisionError",
    "GraphError",
    "GraphResponseError",
    "InboundAuthError",
    "NotificationFormatError",
    "NotificationLimitError",
    "RegistrationError",
    "TokenError",
]


class CallflowError(Exception):
    """Raised for any error that callflow itself reports; the root of the hierarchy."""


class ConfigError(CallflowError, ValueError):
    """Raised when settings are missing or invalid; the message names every bad setting."""


class NotificationFormatError(CallflowError, ValueError):
    """Raised when a notification body is not a Graph commsNotifications payload."""


class NotificationLimitError(NotificationFormatError):
    """Raised when a notification body is over a size limit (too many notifications in it);
    ``limit`` is the limit that was exceeded."""

    def __init__(self, message: str, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


class DecisionError(CallflowError, ValueError):
    """Raised when a decision has invalid fields; the message names the field and allowed values."""


class RegistrationError(CallflowError, RuntimeError):
    """Raised when a handler is registered wrongly, or after the bot has started."""


class InboundAuthError(CallflowError):
    """Raised when a notification's bearer token is missing, malformed or invalid."""

    def __init__(self, reason: str, message: str, *, status: int = 403) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status = status


class TokenError(CallflowError):
    """Raised when an app token for Graph cannot be acquired."""


class GraphError(CallflowError):
    """Raised when a request to Graph fails (network, timeout, or an error response)."""


class GraphResponseError(GraphError):
    """Raised when Graph answers a request with a non-2xx status."""

    def __init__(
        self, status: int, code: str | None, message: str, request_id: str | None = None
    ) -> None:
        super().__init__(f"Graph answered {status} ({code or 'no code'}): {message}")
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id


class CallGoneError(GraphResponseError):
    """Raised when Graph says the call no longer exists (404 or error code 8522)."""
