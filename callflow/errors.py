"""The exception hierarchy: everything callflow raises derives from :class:`CallflowError`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from callflow.events import ResultInfo

__all__ = [
    "ActionError",
    "CallControlError",
    "CallEndedError",
    "CallGoneError",
    "CallflowError",
    "ConfigError",
    "DecisionError",
    "GraphError",
    "GraphResponseError",
    "InboundAuthError",
    "MediaCancelledError",
    "NotificationFormatError",
    "OperationError",
    "OperationTimeoutError",
    "RecordingTooLargeError",
    "NotificationLimitError",
    "RegistrationError",
    "SpeechError",
    "TokenError",
    "TransferError",
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


class ActionError(CallflowError, ValueError):
    """Raised when a call-control request has invalid fields; the message names the field."""


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


class RecordingTooLargeError(GraphError):
    """Raised when a recording to download is larger than the limit the caller set."""


class CallControlError(CallflowError):
    """Raised when a call-control operation (play, record, transfer, ...) cannot be done."""


class OperationError(CallControlError):
    """Raised when Graph reports that a call-control operation failed.

    ``kind`` names the operation (``playPrompt``, ``record``, ``transfer``, ...); ``result``
    is Graph's ``resultInfo`` (code, subcode, message) when it sent one; ``status`` and
    ``completion_reason`` are as Graph reported them.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        call_id: str,
        result: ResultInfo | None = None,
        status: str | None = None,
        completion_reason: str | None = None,
        operation_id: str | None = None,
        client_context: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.call_id = call_id
        self.result = result
        self.status = status
        self.completion_reason = completion_reason
        self.operation_id = operation_id
        self.client_context = client_context


class MediaCancelledError(OperationError):
    """Raised when a prompt or recording was cancelled (Graph's 400/8508) before it finished."""


class TransferError(OperationError):
    """Raised when a transfer failed and the call went back to ``established``."""


class OperationTimeoutError(OperationError, TimeoutError):
    """Raised when a call-control operation did not finish within its timeout."""


class CallEndedError(CallControlError):
    """Raised when the call ended before (or while) an operation on it could finish.

    ``result`` is the call's terminating ``resultInfo`` when Graph sent one.
    """

    def __init__(self, message: str, *, call_id: str, result: ResultInfo | None = None) -> None:
        super().__init__(message)
        self.call_id = call_id
        self.result = result


class SpeechError(CallControlError):
    """Raised when Azure AI Speech cannot render a prompt or recognise speech in time.

    ``status`` is the HTTP status Speech answered (None when it could not be reached or did
    not answer in time); ``setting`` names the setting to fix when the cause is
    configuration (a 401 names ``CALLFLOW_SPEECH_KEY`` or ``CALLFLOW_SPEECH_AUTH``, an unknown
    voice ``CALLFLOW_SPEECH_VOICE``), else None.
    """

    def __init__(self, message: str, *, status: int | None = None, setting: str | None = None):
        super().__init__(message)
        self.status = status
        self.setting = setting
