"""App tokens: real msal against the real TLS TokenServer on loopback."""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import jwt
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from structlog.testing import capture_logs

from callflow.errors import ConfigError, TokenError
from callflow.graph.tokens import (
    GRAPH_SCOPE,
    MsalTokenProvider,
    StaticTokenProvider,
    TokenProvider,
)
from callflow.testing._token_server import TokenServer

CLIENT_ID = "11111111-2222-3333-4444-555555555555"
SECRET = "s3cret-Value~never-logged"
TENANT = "tenant-a"
OTHER_TENANT = "tenant-b"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """One test CA for the whole module (creating keys is the slow part)."""
    return trustme.CA()


@pytest.fixture
async def server(ca: trustme.CA) -> AsyncIterator[TokenServer]:
    """A running token server that checks the client secret."""
    async with TokenServer(ca=ca, client_secret=SECRET) as running:
        yield running


def make_provider(server: TokenServer, **overrides: Any) -> MsalTokenProvider:
    """Return a provider for ``server`` with the test app's settings and ``overrides``."""
    settings: dict[str, Any] = {
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
        "tenant_id": TENANT,
        "authority_url": server.authority_url,
        "ca_bundle": server.ca_bundle_path,
    }
    settings.update(overrides)
    return MsalTokenProvider(**settings)


@pytest.mark.anyio
async def test_token_is_acquired_at_start(server: TokenServer) -> None:
    """Entering the provider fetches exactly one token with the app's client id and scope."""
    async with make_provider(server) as provider:
        assert server.requests == 1
        assert server.discovery_requests == 1
        assert server.last_tenant == TENANT
        assert server.last_form["client_id"] == CLIENT_ID
        assert server.last_form["scope"] == GRAPH_SCOPE
        assert server.last_form["grant_type"] == "client_credentials"
        assert provider.acquisitions == 1
        assert provider.failures == 0
        assert await provider.get_token() == server.issued[0]
        assert await provider.get_token(TENANT) == server.issued[0]


@pytest.mark.anyio
async def test_repeated_get_token_makes_no_request(server: TokenServer) -> None:
    """A hundred get_token calls are answered from memory without another token request."""
    async with make_provider(server) as provider:
        tokens = {await provider.get_token() for _ in range(100)}
    assert tokens == {server.issued[0]}
    assert server.requests == 1
    assert provider.acquisitions == 1


@pytest.mark.anyio
async def test_wrong_secret_fails_at_start_without_leaking_it(server: TokenServer) -> None:
    """A rejected secret raises TokenError at start, naming tenant and error but not the secret."""
    wrong = "wrong-Secret~value"
    provider = make_provider(server, client_secret=wrong)
    with capture_logs() as logs, pytest.raises(TokenError) as caught:
        await provider.__aenter__()
    message = str(caught.value)
    assert TENANT in message
    assert "invalid_client" in message
    assert wrong not in message
    assert SECRET not in message
    assert [entry["event"] for entry in logs] == ["graph.token_acquire_failed"]
    assert wrong not in repr(logs)
    assert provider.failures == 1
    assert provider.acquisitions == 0
    with pytest.raises(TokenError, match="not running"):
        await provider.get_token()


@pytest.mark.anyio
async def test_a_short_wrong_secret_leaves_the_error_message_whole(server: TokenServer) -> None:
    """A placeholder secret of one letter is not cut out of the words of the error: the
    message reads as the identity provider wrote it."""
    provider = make_provider(server, client_secret="s")
    with capture_logs() as logs, pytest.raises(TokenError) as caught:
        await provider.__aenter__()
    assert "Invalid client secret provided." in str(caught.value)
    (failed,) = logs
    assert failed["error_description"] == "Invalid client secret provided."


@pytest.mark.anyio
async def test_other_tenant_is_acquired_once_on_demand(server: TokenServer) -> None:
    """Concurrent first calls for a new tenant share one token request, later calls none."""
    async with make_provider(server) as provider:
        server.set_delay(0.2)
        results: list[str] = []

        async def fetch() -> None:
            results.append(await provider.get_token(OTHER_TENANT))

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(fetch)
        server.set_delay(0)
        assert len(set(results)) == 1
        assert results[0] != await provider.get_token()
        assert await provider.get_token(OTHER_TENANT) == results[0]
    assert server.requests_by_tenant == {TENANT: 1, OTHER_TENANT: 1}
    assert provider.acquisitions == 2


@pytest.mark.anyio
async def test_background_refresh_obtains_new_tokens(ca: trustme.CA) -> None:
    """Every known tenant's token is replaced by a new one before it expires."""
    async with (
        TokenServer(ca=ca, client_secret=SECRET, expires_in=1) as server,
        make_provider(server, refresh_margin=0.9) as provider,
    ):
        first = await provider.get_token()
        first_other = await provider.get_token(OTHER_TENANT)
        # A tenant's third request is sent only after its second token has been stored.
        with anyio.fail_after(5):
            await server.wait_for_requests(3, tenant=TENANT)
            await server.wait_for_requests(3, tenant=OTHER_TENANT)
        assert await provider.get_token() not in (first, first_other)
        assert await provider.get_token(OTHER_TENANT) not in (first, first_other)
        assert provider.acquisitions >= 4


@pytest.mark.anyio
async def test_failed_refresh_is_retried_and_old_token_served(ca: trustme.CA) -> None:
    """A failed refresh is logged and retried with backoff while the old token is served."""
    async with TokenServer(ca=ca, client_secret=SECRET, expires_in=2) as server:
        provider = make_provider(server, refresh_margin=1.0, retry_backoff=(0.05, 0.1))
        with capture_logs() as logs:
            async with provider:
                first = await provider.get_token()
                # msal raises for a 5xx and returns the error body for a 429; Retry-After: 0
                # stops msal's own throttling from replaying the error to the retry.
                server.fail_next(1, status=503, error="temporarily_unavailable", retry_after=0)
                server.fail_next(1, status=429, error="temporarily_unavailable", retry_after=0)
                with anyio.fail_after(5):
                    await server.wait_for_requests(2)
                assert await provider.get_token() == first
                with anyio.fail_after(5):
                    await server.wait_for_requests(4)
                assert provider.failures == 2
    failed = [entry for entry in logs if entry["event"] == "graph.token_refresh_failed"]
    assert [entry["attempt"] for entry in failed] == [1, 2]
    assert [entry["error"] for entry in failed] == ["MsalServiceError", "temporarily_unavailable"]
    assert "503" in failed[0]["error_description"]
    assert all(entry["tenant_id"] == TENANT for entry in failed)
    assert all(0.05 <= entry["retry_in"] <= 0.1 for entry in failed)
    assert all(entry["log_level"] == "warning" for entry in failed)
    assert SECRET not in repr(logs)
    assert not any(token in repr(logs) for token in server.issued)


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_refresh_answered_with_a_nonsense_token_is_a_failure_like_any_other(
    ca: trustme.CA,
) -> None:
    """A refresh answered 200 with ``expires_in: -5``, then with an empty token, is refused:
    logged, counted, retried with backoff while the old token is served, until a good
    answer comes; the refresher keeps running."""
    async with TokenServer(ca=ca, client_secret=SECRET, expires_in=3) as server:
        provider = make_provider(server, refresh_margin=2.0, retry_backoff=(0.1, 0.2))
        with capture_logs() as logs:
            async with provider:
                first = await provider.get_token()
                server.answer_next(
                    1, {"token_type": "Bearer", "access_token": "x", "expires_in": -5}
                )
                server.answer_next(
                    1, {"token_type": "Bearer", "access_token": "", "expires_in": 60}
                )
                with anyio.fail_after(5):
                    await server.wait_for_requests(3)
                assert await provider.get_token() == first
                with anyio.fail_after(5):
                    await server.wait_for_requests(4)
                    while await provider.get_token() == first:
                        await server.wait_for_requests(server.requests + 1)
                assert await provider.get_token() in server.issued[1:]  # a later, good one
                assert provider.failures == 2
    failed = [entry for entry in logs if entry["event"] == "graph.token_refresh_failed"]
    assert [entry["error"] for entry in failed] == ["invalid_token_response"] * 2
    assert "expires_in -5.0 is not a positive number" in failed[0]["error_description"]


@pytest.mark.anyio
async def test_expired_token_is_fetched_again_on_demand(server: TokenServer) -> None:
    """Once a token has expired, get_token fetches a new one and reports a failure plainly."""
    now = [1000.0]
    async with make_provider(server, clock=lambda: now[0]) as provider:
        first = await provider.get_token()
        now[0] += 3601
        server.fail_next(1, status=401, error="invalid_client")
        with pytest.raises(TokenError, match=r"tenant 'tenant-a'.*invalid_client"):
            await provider.get_token()
        second = await provider.get_token()
        assert second != first
        assert await provider.get_token() == second
    assert server.requests == 3
    assert (provider.acquisitions, provider.failures) == (2, 1)


@pytest.mark.anyio
async def test_ca_bundle_ignores_requests_ca_bundle_env(
    server: TokenServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With ca_bundle set, a bogus REQUESTS_CA_BUNDLE in the environment changes nothing."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "missing.pem"))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(tmp_path / "missing.pem"))
    async with make_provider(server) as provider:
        assert await provider.get_token() == server.issued[0]


@pytest.mark.anyio
async def test_without_ca_bundle_the_environment_decides(
    server: TokenServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ca_bundle, REQUESTS_CA_BUNDLE is honoured and an untrusted server is refused."""
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", server.ca_bundle_path)
    async with make_provider(server, ca_bundle=None) as provider:
        assert await provider.get_token() == server.issued[0]
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    with pytest.raises(TokenError, match="SSLError") as caught:
        async with make_provider(server, ca_bundle=None):
            pass  # pragma: no cover - entering fails
    assert SECRET not in str(caught.value)


@pytest.mark.anyio
async def test_get_token_from_another_threads_event_loop(ca: trustme.CA) -> None:
    """A second thread's own event loop gets cached and new tenants' tokens, kept fresh."""
    async with (
        TokenServer(ca=ca, client_secret=SECRET, expires_in=1) as server,
        make_provider(server, refresh_margin=0.9) as provider,
    ):

        def in_other_loop(tenant: str | None) -> str:
            return asyncio.run(provider.get_token(tenant))

        first = await provider.get_token()
        assert await anyio.to_thread.run_sync(in_other_loop, None) in server.issued
        other = await anyio.to_thread.run_sync(in_other_loop, OTHER_TENANT)
        assert other not in (first, await provider.get_token())
        assert server.requests_by_tenant[OTHER_TENANT] == 1
        # The other loop is gone by now: the owner's loop keeps that tenant refreshed.
        with anyio.fail_after(5):
            await server.wait_for_requests(2, tenant=OTHER_TENANT)


@pytest.mark.anyio
@pytest.mark.parametrize("give_thumbprint", [False, True])
async def test_certificate_credential(
    ca: trustme.CA, tmp_path: Path, give_thumbprint: bool
) -> None:
    """A certificate signs a client assertion whose x5t is the certificate's SHA-1 thumbprint."""
    leaf = ca.issue_cert("bot.example", key_type=trustme.KeyType.RSA)
    pem_path = tmp_path / "bot.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(pem_path))
    certificate = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    sha1 = certificate.fingerprint(hashes.SHA1())
    async with TokenServer(ca=ca) as server:
        provider = make_provider(
            server,
            client_secret=None,
            certificate_path=str(pem_path),
            certificate_thumbprint=sha1.hex() if give_thumbprint else None,
        )
        async with provider:
            assert await provider.get_token() == server.issued[0]
            form = server.last_form
            assert await provider.get_token(OTHER_TENANT) == server.issued[1]
    assert "client_secret" not in form
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    header = jwt.get_unverified_header(form["client_assertion"])
    assert header["x5t"].rstrip("=") == base64.urlsafe_b64encode(sha1).decode().rstrip("=")


@pytest.mark.anyio
async def test_unreadable_certificate_is_a_token_error(server: TokenServer, tmp_path: Path) -> None:
    """A certificate file that cannot be read fails the start with TokenError."""
    provider = make_provider(
        server, client_secret=None, certificate_path=str(tmp_path / "missing.pem")
    )
    with pytest.raises(TokenError, match="FileNotFoundError"):
        await provider.__aenter__()


@pytest.mark.anyio
async def test_bad_tenant_and_double_entry_are_refused(server: TokenServer) -> None:
    """A tenant id that is not a GUID or domain is refused, and so is entering twice."""
    async with make_provider(server) as provider:
        with pytest.raises(TokenError, match="expected a GUID or domain"):
            await provider.get_token("../evil")
        with pytest.raises(RuntimeError, match="already running"):
            await provider.__aenter__()
    assert server.requests == 1
    await provider.__aexit__(None, None, None)  # leaving twice is harmless
    assert "tenant-a" in repr(provider)
    assert SECRET not in repr(provider)


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"client_id": ""}, "client_id"),
        ({"client_secret": None}, "got neither"),
        ({"certificate_path": "bot.pem"}, "got both"),
        ({"tenant_id": "a/b"}, "tenant_id"),
        ({"authority_url": "http://login.example"}, "https://"),
        ({"scopes": ()}, "scopes"),
        ({"refresh_margin": -1.0}, "refresh_margin"),
        ({"retry_backoff": (2.0, 1.0)}, "retry_backoff"),
        ({"http_timeout": 0.0}, "http_timeout"),
    ],
)
def test_invalid_settings_are_named(overrides: dict[str, Any], complaint: str) -> None:
    """Each invalid setting raises ConfigError naming what was wrong."""
    settings: dict[str, Any] = {"client_id": CLIENT_ID, "client_secret": SECRET}
    settings.update(overrides)
    with pytest.raises(ConfigError, match=complaint) as caught:
        MsalTokenProvider(**settings)
    assert SECRET not in str(caught.value)


@pytest.mark.anyio
async def test_static_provider_returns_its_token() -> None:
    """StaticTokenProvider returns the given token for any tenant and hides it in its repr."""
    provider = StaticTokenProvider("dev-token")
    assert isinstance(provider, TokenProvider)
    assert await provider.get_token() == "dev-token"
    assert await provider.get_token("other") == "dev-token"
    assert "dev-token" not in repr(provider)
    with pytest.raises(ConfigError):
        StaticTokenProvider("")


@pytest.mark.anyio
async def test_token_server_checks_its_inputs(ca: trustme.CA) -> None:
    """The token server refuses other grant types and bad test settings, and needs starting."""
    server = TokenServer(ca=ca)
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.authority_url
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.ca_bundle_path
    with pytest.raises(ValueError, match="expires_in"):
        TokenServer(expires_in=0)
    with pytest.raises(ValueError, match="n must be"):
        server.fail_next(-1)
    with pytest.raises(ValueError, match="HTTP error status"):
        server.fail_next(1, status=200)
    with pytest.raises(ValueError, match="delay"):
        server.set_delay(-1)
    async with server:
        context = ssl.create_default_context(cafile=server.ca_bundle_path)
        async with aiohttp.ClientSession() as session:
            url = f"{server.authority_url}/{TENANT}/oauth2/v2.0/token"
            async with session.post(url, data={"grant_type": "password"}, ssl=context) as reply:
                assert reply.status == 400
                assert (await reply.json())["error"] == "unsupported_grant_type"
        bundle = anyio.Path(server.ca_bundle_path)
        assert await bundle.exists()
    assert not await bundle.exists()
    await server.__aexit__(None, None, None)  # stopping twice is harmless


class BrokenCA(trustme.CA):
    """A CA that cannot issue certificates, to make a server start fail."""

    def issue_cert(self, *identities: str, **options: Any) -> trustme.LeafCert:
        """Fail like a broken certificate setup would."""
        raise RuntimeError("no certificates today")


@pytest.mark.anyio
async def test_token_server_cleans_up_after_a_failed_start() -> None:
    """A server whose start fails removes its CA file and is left not running."""
    server = TokenServer(ca=BrokenCA())
    with pytest.raises(RuntimeError, match="no certificates today"):
        await server.__aenter__()
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.ca_bundle_path
