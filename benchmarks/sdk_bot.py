"""The msgraph-sdk way: an aiohttp webhook that rejects calls through msgraph-sdk-python.

``json.loads`` the notification, reply 202, and from a spawned task call
``graph_client.communications.calls.by_call_id(id).reject.post(RejectPostRequestBody(
reason=RejectReason.Busy))``. The SDK is built the documented way (``GraphRequestAdapter``
with its default httpx client and middleware), with two changes so that it talks to the stub
and not to Microsoft: a bearer-token authentication provider that returns a static token
(no azure-identity, no network), and ``request_adapter.base_url`` set to the stub.

Run: ``python -m benchmarks.sdk_bot --port P --graph-url URL [--loop uvloop]``.
"""

from __future__ import annotations

import sys
from typing import Any

import httpx
from kiota_abstractions.authentication import (
    AccessTokenProvider,
    AllowedHostsValidator,
    BaseBearerTokenAuthenticationProvider,
)
from msgraph.generated.communications.calls.item.reject.reject_post_request_body import (
    RejectPostRequestBody,
)
from msgraph.generated.models.reject_reason import RejectReason
from msgraph.graph_request_adapter import GraphRequestAdapter
from msgraph.graph_request_adapter import options as DEFAULT_OPTIONS
from msgraph.graph_service_client import GraphServiceClient
from msgraph_core import GraphClientFactory  # type: ignore[import-untyped]

from benchmarks._common import baseline_main, serve_baseline


class StaticAccessTokenProvider(AccessTokenProvider):
    """Hands the SDK a fixed app token for the stub's host only."""

    def __init__(self, token: str, host: str) -> None:
        self._token = token
        self._hosts = AllowedHostsValidator([host])

    async def get_authorization_token(
        self,
        uri: str,
        additional_authentication_context: dict[str, Any] = {},  # noqa: B006 - the ABC's signature
    ) -> str:
        """The fixed token (none for a host that is not the stub)."""
        return self._token if self._hosts.is_url_host_valid(uri) else ""

    def get_allowed_hosts_validator(self) -> AllowedHostsValidator:
        """The stub's host."""
        return self._hosts


def make_client(graph_url: str) -> tuple[GraphServiceClient, httpx.AsyncClient]:
    """A GraphServiceClient aimed at ``graph_url`` with a static token, and its httpx client.

    The httpx client is the one ``GraphRequestAdapter`` builds by default (same factory, same
    middleware options); it is made here only so that it can be closed at exit.
    """
    host = graph_url.split("://", 1)[1].split("/", 1)[0].split(":", 1)[0]
    auth = BaseBearerTokenAuthenticationProvider(StaticAccessTokenProvider("bench-app-token", host))
    http = GraphClientFactory.create_with_default_middleware(options=DEFAULT_OPTIONS)
    adapter = GraphRequestAdapter(auth, client=http)
    adapter.base_url = graph_url.rstrip("/")
    return GraphServiceClient(request_adapter=adapter), http


async def serve(port: int, graph_url: str) -> None:
    """Serve the webhook until SIGTERM."""
    client, http = make_client(graph_url)

    async def decide(call_id: str) -> None:
        body = RejectPostRequestBody(reason=RejectReason.Busy)
        try:
            await client.communications.calls.by_call_id(call_id).reject.post(body)
        except Exception as exc:  # the SDK raises APIError, httpx errors, ...
            print(f"sdk_bot: reject {call_id} failed: {exc!r}", file=sys.stderr, flush=True)

    async def close() -> None:
        await http.aclose()

    await serve_baseline(port, decide, close)


def main() -> None:
    """Parse the arguments and serve."""
    baseline_main(__doc__ or "", serve)


if __name__ == "__main__":
    main()
