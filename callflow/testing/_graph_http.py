"""Graph on the wire: its paths, the ids on every reply, its error bodies.

:func:`graph_error` builds Graph's error reply (``{"error": {"code", "message",
"innerError"}}`` with the request ids and date), :func:`reply_ids` the ``request-id`` header
every reply carries (and the ``client-request-id`` echoed back), :func:`recorded_headers` a
request's headers as a :class:`~callflow.testing.GraphRequest` keeps them. :class:`Outcome`
is what the fake decided to answer a call-control request with, and what to deliver around
that reply.

Plain functions and values: they run on the test's event loop, inside the fake's aiohttp
handlers, and touch only the request they are given.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Final

import attrs
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

__all__ = [
    "CALL_NOT_FOUND",
    "GRAPH_PATH",
    "KEYS_PATH",
    "Outcome",
    "graph_error",
    "recorded_headers",
    "reply_ids",
]

GRAPH_PATH: Final = "/v1.0"
KEYS_PATH: Final = "/botframework"
CALL_NOT_FOUND: Final = "8522"
"""Graph's error code for a call it does not know (never placed, ended, or gone)."""


@attrs.frozen
class Outcome:
    """How the fake answers one call-control request.

    ``before`` is awaited after the request is recorded and before the reply is sent (a
    completion planned ``before_reply``); ``after`` starts what follows the reply (follow-up
    notifications, an operation running its course) once the reply's latency has passed.
    """

    response: web.Response
    after: Callable[[], None] | None = None
    before: Callable[[], Awaitable[None]] | None = None


def recorded_headers(request: web.Request) -> CIMultiDictProxy[str]:
    """A copy of the request's headers, as a recorded request keeps them."""
    return CIMultiDictProxy(CIMultiDict(request.headers))


def reply_ids(request: web.Request) -> dict[str, str]:
    """A new ``request-id``, and the request's ``client-request-id`` echoed back."""
    headers = {"request-id": str(uuid.uuid4())}
    client_request_id = request.headers.get("client-request-id")
    if client_request_id:
        headers["client-request-id"] = client_request_id
    return headers


def graph_error(
    request: web.Request,
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """Graph's error reply: ``{"error": {"code", "message", "innerError": {...}}}``."""
    ids = reply_ids(request)
    inner: dict[str, str] = {
        "request-id": ids["request-id"],
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if "client-request-id" in ids:
        inner["client-request-id"] = ids["client-request-id"]
    ids.update(headers or {})
    return web.json_response(
        {"error": {"code": code, "message": message, "innerError": inner}},
        status=status,
        headers=ids,
    )
