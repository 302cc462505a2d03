"""Outbound Microsoft Graph: app tokens and the calling API client.

:mod:`~callflow.graph.tokens` hands out app tokens, :mod:`~callflow.graph.client` is the
calling API (each request built and each reply read there), :mod:`~callflow.graph.transport`
sends every request (retries, deadlines, bounded bodies, the session) and
:mod:`~callflow.graph.results` holds the values the client returns. The package itself
exports :class:`~callflow.graph.results.CallStatus` (what ``GraphClient.get_call`` returns,
for code that checks whether a call is still alive); the rest is imported from its module.
"""

from callflow.graph.results import CallStatus

__all__ = ["CallStatus"]
