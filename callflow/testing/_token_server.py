"""An Entra-like OAuth2 token endpoint over TLS on loopback, for tests that run real msal.

msal, given an authority ``https://127.0.0.1:PORT/{tenant}`` and ``instance_discovery=False``,
first reads ``GET /{tenant}/v2.0/.well-known/openid-configuration`` and then posts the
client-credentials grant to the ``token_endpoint`` named there,
``POST /{tenant}/oauth2/v2.0/token``. :class:`TokenServer` serves exactly these two routes.
"""

from __future__ import annotations

import secrets
import shutil
import ssl
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

import anyio
from aiohttp import web

try:
    import trustme
except ImportError as exc:  # the testing kit is an extra: say how to get it
    raise ImportError(
        "callflow.testing needs the trustme package (FakeGraph serves its token endpoint over "
        "TLS): pip install 'callflow-graph[testing]'"
    ) from exc

__all__ = ["TokenServer"]

_HOST = "127.0.0.1"


class TokenServer:
    """An Entra-like token endpoint on ``https://127.0.0.1:PORT`` with a certificate from a test CA.

    Use it as an async context manager; while it runs, :attr:`authority_url` is the base to give
    msal (append ``/{tenant}``) and :attr:`ca_bundle_path` is a PEM file of the CA to trust.

    msal throttles failed token requests by itself: an exact HTTP 400 answer is replayed from its
    cache for 60 s, and 429/5xx answers for the ``Retry-After`` seconds (5 s without the header).
    Pass ``retry_after=0`` to :meth:`fail_next` when a test needs msal's next attempt to reach
    the server.
    """

    def __init__(
        self,
        *,
        ca: trustme.CA | None = None,
        expires_in: int = 3600,
        client_secret: str | None = None,
    ) -> None:
        if expires_in <= 0:
            raise ValueError(f"expires_in must be a positive number of seconds, got {expires_in}")
        self.ca = ca if ca is not None else trustme.CA()
        self.expires_in = expires_in
        self._client_secret = client_secret
        self.requests = 0
        self.requests_by_tenant: dict[str, int] = {}
        self.discovery_requests = 0
        self.last_form: Mapping[str, str] = {}
        self.last_tenant: str | None = None
        self.issued: tuple[str, ...] = ()
        self._failures: list[tuple[int, str, int | None]] = []
        self._delay = 0.0
        self._canned: list[dict[str, object]] = []
        self._changed = anyio.Event()
        self._runner: web.AppRunner | None = None
        self._tempdir: str | None = None
        self._port: int | None = None

    # -- public API --------------------------------------------------------------------------

    @property
    def authority_url(self) -> str:
        """The base URL of the running server, ``https://127.0.0.1:PORT`` (no tenant, no slash)."""
        if self._port is None:
            raise RuntimeError("TokenServer is not running; use 'async with TokenServer():' first")
        return f"https://{_HOST}:{self._port}"

    @property
    def ca_bundle_path(self) -> str:
        """The path of a PEM file of the test CA certificate (removed when the server stops)."""
        if self._tempdir is None:
            raise RuntimeError("TokenServer is not running; use 'async with TokenServer():' first")
        return str(Path(self._tempdir) / "ca.pem")

    def fail_next(
        self,
        n: int,
        status: int = 400,
        error: str = "invalid_client",
        *,
        retry_after: int | None = None,
    ) -> None:
        """Answer the next ``n`` token requests with an OAuth2 error ``error`` and HTTP ``status``.

        ``retry_after`` adds a ``Retry-After`` header (seconds) to those answers.
        """
        if n < 0:
            raise ValueError(f"n must be zero or more token requests to fail, got {n}")
        if not 400 <= status <= 599:
            raise ValueError(f"status must be an HTTP error status (400-599), got {status}")
        self._failures.extend([(status, error, retry_after)] * n)

    def stop_failing(self) -> None:
        """Forget the failures and canned answers still queued: answer normally again."""
        self._failures.clear()
        self._canned.clear()

    def answer_next(self, n: int, body: Mapping[str, object]) -> None:
        """Answer the next ``n`` token requests with HTTP 200 and the JSON ``body`` as it is
        (a token response the client should refuse, say ``{"expires_in": -5, ...}``)."""
        if n < 0:
            raise ValueError(f"n must be zero or more token requests to answer, got {n}")
        self._canned.extend([dict(body)] * n)

    def set_delay(self, seconds: float) -> None:
        """Delay every later token answer by ``seconds`` (0 for no delay)."""
        if seconds < 0:
            raise ValueError(f"the delay must be zero or more seconds, got {seconds}")
        self._delay = seconds

    async def wait_for_requests(self, n: int, *, tenant: str | None = None) -> None:
        """Return once at least ``n`` token requests arrived (in all, or for ``tenant``).

        Wrap it in ``anyio.fail_after``: it waits as long as it takes.
        """
        while (self.requests if tenant is None else self.requests_by_tenant.get(tenant, 0)) < n:
            await self._changed.wait()

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Write the CA file, then start listening on a free loopback port."""
        self._tempdir = tempfile.mkdtemp(prefix="callflow-token-server-")
        try:
            self.ca.cert_pem.write_to_path(self.ca_bundle_path)
            ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ca.issue_cert(_HOST, "localhost").configure_cert(ssl_context)
            app = web.Application()
            app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", self._discovery)
            app.router.add_post("/{tenant}/oauth2/v2.0/token", self._token)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, _HOST, 0, ssl_context=ssl_context)
            await site.start()
            self._port = int(self._runner.addresses[0][1])
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server and remove the CA file."""
        await self._close()

    async def _close(self) -> None:
        runner, self._runner = self._runner, None
        tempdir, self._tempdir = self._tempdir, None
        self._port = None
        try:
            if runner is not None:
                await runner.cleanup()
        finally:
            if tempdir is not None:
                shutil.rmtree(tempdir, ignore_errors=True)

    # -- handlers ----------------------------------------------------------------------------

    async def _discovery(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        base = f"{self.authority_url}/{tenant}"
        self.discovery_requests += 1
        return web.json_response(
            {
                "issuer": f"{base}/v2.0",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "response_types_supported": ["code", "id_token", "code id_token", "token"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "tenant_region_scope": None,
            }
        )

    async def _token(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        form = {key: str(value) for key, value in (await request.post()).items()}
        self.requests += 1
        self.requests_by_tenant[tenant] = self.requests_by_tenant.get(tenant, 0) + 1
        self.last_form = form
        self.last_tenant = tenant
        self._changed.set()
        self._changed = anyio.Event()
        if self._delay:
            await anyio.sleep(self._delay)
        if self._failures:
            status, error, retry_after = self._failures.pop(0)
            headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
            return _error(status, error, "The test token server was told to fail.", headers)
        if self._canned:
            return web.json_response(self._canned.pop(0))
        if form.get("grant_type") != "client_credentials":
            return _error(
                400,
                "unsupported_grant_type",
                f"Expected grant_type=client_credentials, got {form.get('grant_type')!r}.",
            )
        if self._client_secret is not None and form.get("client_secret") != self._client_secret:
            return _error(401, "invalid_client", "Invalid client secret provided.")
        token = f"token-{tenant}-{self.requests}-{secrets.token_hex(8)}"
        self.issued = (*self.issued, token)
        return web.json_response(
            {"token_type": "Bearer", "expires_in": self.expires_in, "access_token": token}
        )


def _error(
    status: int, error: str, description: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"error": error, "error_description": description, "error_codes": [7000215]},
        status=status,
        headers=headers,
    )
