"""Operation results: a ``deleted`` item on ``.../operations/{id}``, and operation resources
in Graph's replies.

Part of :mod:`callflow._parse`; no loop, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import attrs

from callflow._parse.fields import _canonical, _loose_result, _loose_str, _loose_text, _text
from callflow.events import (
    OperationFinished,
    ResultInfo,
)

_OPERATION_STATUSES: Final = _canonical("notStarted", "running", "completed", "failed")


def operation_kind(odata_type: Any) -> str | None:
    """``#microsoft.graph.playPromptOperation`` -> ``playPrompt``; None when not a string."""
    if not isinstance(odata_type, str) or not odata_type:
        return None
    name = odata_type.removeprefix("#")
    if name[:16].lower() == "microsoft.graph.":
        name = name[16:]
    if name[-9:].lower() == "operation" and len(name) > 9:
        name = name[:-9]
    return name or None


@attrs.frozen
class OperationFields:
    """What a Graph ``commsOperation`` resource says, read leniently (wrong types are None).

    Read from an operation notification and from the reply to an action's POST alike.
    """

    operation_id: str | None
    kind: str | None
    status: str | None
    result: ResultInfo | None
    client_context: str | None
    completion_reason: str | None
    recording_location: str | None
    recording_access_token: str | None = attrs.field(repr=False)


def read_operation(data: Any) -> OperationFields | None:
    """Read a ``commsOperation`` object; None when ``data`` is not a JSON object."""
    if not isinstance(data, Mapping):
        return None
    status = data.get("status")
    if isinstance(status, str):
        status = (
            _OPERATION_STATUSES.get(status)
            or _OPERATION_STATUSES.get(status.lower())
            or _text(status)
        )
    else:
        status = None
    return OperationFields(
        _loose_str(data, "id"),
        operation_kind(data.get("@odata.type")),
        status,
        _loose_result(data.get("resultInfo")),
        _loose_text(data, "clientContext"),
        _loose_text(data, "completionReason"),
        _loose_str(data, "recordingLocation"),
        _loose_str(data, "recordingAccessToken"),
    )


def _finished(
    call_id: str, rest: str, data: dict[str, Any], item: dict[str, Any]
) -> OperationFinished | None:
    fields = read_operation(data)
    assert fields is not None
    operation_id = rest[12:].split("/", 1)[0] or fields.operation_id
    if not operation_id:
        return None
    return OperationFinished(
        call_id,
        operation_id,
        fields.kind,
        fields.status,
        fields.result,
        fields.client_context,
        fields.completion_reason,
        fields.recording_location,
        fields.recording_access_token,
        raw=item,
    )
