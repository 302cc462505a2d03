"""The values the Graph client returns: a request's outcome, an operation, a created call,
a call's current state.

Frozen values, no I/O: built on the loop that sent the request (the I/O loop) and safe to hand
to any other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from callflow.events import ResultInfo

__all__ = ["CallStatus", "CreatedCall", "GraphResult", "Operation"]


@attrs.frozen
class GraphResult:
    """The outcome of a successful request to Graph.

    ``status`` is the HTTP status (404 for a hang-up of a call already gone), ``attempts`` how
    many requests it took, ``request_id`` Graph's ``request-id`` response header, and
    ``client_request_id`` the ``Client-Request-Id`` of the attempt that succeeded.
    """

    status: int
    attempts: int
    request_id: str | None
    client_request_id: str


@attrs.frozen
class Operation:
    """A call-control operation as Graph's reply to the action's POST described it.

    ``status`` is ``notStarted``/``running`` (the result follows as a notification),
    ``completed`` or ``failed`` (no notification follows), or None when Graph did not say.
    ``operation_id`` comes from the body or the ``Location`` header. ``client_context`` is
    the one sent with the request.
    """

    call_id: str
    kind: str
    client_context: str
    operation_id: str | None
    status: str | None
    result: ResultInfo | None
    completion_reason: str | None
    location: str | None
    request: GraphResult
    recording_location: str | None = None
    recording_access_token: str | None = attrs.field(default=None, repr=False)

    @property
    def finished(self) -> bool:
        """True when the reply already says completed or failed: no notification follows."""
        return self.status in ("completed", "failed")


@attrs.frozen
class CreatedCall:
    """A call Graph created for ``POST /communications/calls`` (201), usually establishing.

    ``call_id`` is in canonical form; ``tenant_id`` is the tenant the call belongs to: the
    one Graph's reply names, else the one the app token that created it was issued for.
    """

    call_id: str
    state: str | None
    my_participant_id: str | None
    call_chain_id: str | None
    location: str | None
    request: GraphResult
    tenant_id: str | None = None


@attrs.frozen
class CallStatus:
    """A call as Graph described it to ``GET /communications/calls/{id}``: it still exists.

    ``call_id`` is the id asked about, in canonical form (see
    :func:`~callflow.events.canonical_call_id`); ``state`` is Graph's call state
    (``incoming``, ``establishing``, ``established``, ``hold``, ``transferring``,
    ``transferAccepted``, ``redirecting``, ``terminating``, ``terminated``, or a newer one);
    ``tenant_id`` is the reply's ``tenantId``, None when it names none. A call Graph no longer
    knows has no status: :meth:`~callflow.graph.client.GraphClient.get_call` raises
    :class:`~callflow.errors.CallGoneError` for it.
    """

    call_id: str
    state: str
    tenant_id: str | None
    request: GraphResult

    @property
    def ended(self) -> bool:
        """True when Graph says ``terminated``: the call is over, nobody should take it over."""
        return self.state == "terminated"
