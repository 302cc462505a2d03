"""Tests for inbound JWT validation (callflow.webhook.auth), the signing key set
(callflow.webhook.keys) and the signing-key test kit."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anyio
import attrs
import jwt
import pytest
import structlog.testing
import trustme
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.algorithms import RSAAlgorithm
from jwt.utils import base64url_encode

import callflow.testing._keys as keys_module
import callflow.webhook.auth as jwt_module
import callflow.webhook.keys as signing_keys_module
from callflow.errors import ConfigError, InboundAuthError
from callflow.testing._keys import (
    KEY_SERVER,
    KeyServer,
    SigningKey,
    graph_claims,
    jwks,
    key_server_app,
)
from callflow.webhook.auth import (
    REASONS,
    TENANT_ID_CLAIM,
    Caller,
    InboundAuthenticator,
    TokenVerifier,
)
from callflow.webhook.keys import SigningKeys

APP_ID = "11111111-2222-3333-4444-555555555555"
TENANT = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
OTHER_TENANT = "99999999-8888-7777-6666-555555555555"
BOT_FRAMEWORK = "https://api.botframework.com"
GRAPH = "https://graph.microsoft.com"
ISSUERS = (BOT_FRAMEWORK, GRAPH + "/")
START = 1_700_000_000.0


@attrs.frozen
class Keys:
    """The RSA keys shared by every test in this module."""

    a: SigningKey
    b: SigningKey
    rogue: SigningKey


@attrs.define
class FakeClock:
    """A settable wall clock for the authenticator."""

    now: float = START

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def keys() -> Keys:
    """Generate the RSA keys once for the module (each costs tens of milliseconds)."""
    return Keys(
        a=SigningKey.generate("key-a"),
        b=SigningKey.generate("key-b"),
        rogue=SigningKey.generate("key-rogue"),
    )


@pytest.fixture
def clock() -> FakeClock:
    """A clock standing at START."""
    return FakeClock()


@pytest.fixture
async def server(keys: Keys) -> AsyncIterator[KeyServer]:
    """A key server on loopback serving key A."""
    async with KeyServer.for_keys(keys.a) as key_server:
        yield key_server


def make_auth(server: KeyServer, clock: FakeClock, **kwargs: Any) -> InboundAuthenticator:
    """Build an authenticator for APP_ID against ``server``."""
    return InboundAuthenticator(
        app_id=APP_ID,
        openid_config_url=server.openid_config_url,
        issuers=ISSUERS,
        clock=clock,
        **kwargs,
    )


@pytest.fixture
async def auth(server: KeyServer, clock: FakeClock) -> AsyncIterator[InboundAuthenticator]:
    """A started authenticator with default settings."""
    async with make_auth(server, clock) as authenticator:
        yield authenticator


def bearer(
    key: SigningKey,
    clock: FakeClock,
    *,
    headers: dict[str, Any] | None = None,
    algorithm: str = "RS256",
    **claims: Any,
) -> str:
    """Return 'Bearer <token>' for a Graph-like token signed by ``key`` at ``clock.now``."""
    token = key.sign(
        graph_claims(app_id=APP_ID, tenant_id=TENANT, now=clock.now, **claims),
        headers=headers,
        algorithm=algorithm,
    )
    return f"Bearer {token}"


async def rejected(auth: TokenVerifier, authorization: str | None) -> InboundAuthError:
    """Authenticate, expect a rejection, check the message hides the token, return the error."""
    with pytest.raises(InboundAuthError) as info:
        await auth.authenticate(authorization)
    error = info.value
    assert error.reason in REASONS
    token = (authorization or "").strip().partition(" ")[2].strip()
    for secret in (token, *token.split(".")):
        if len(secret) >= 8:
            assert secret not in error.message
            assert secret not in str(error)
    return error


def b64(value: object) -> str:
    """base64url of the JSON of ``value``."""
    return base64url_encode(json.dumps(value).encode()).decode()


@asynccontextmanager
async def serve(
    app: web.Application, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1 on a free port and yield its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context).start()
        host, port = runner.addresses[0][:2]
        yield f"{'https' if ssl_context else 'http'}://{host}:{port}"
    finally:
        await runner.cleanup()


def raw_app(config: Callable[[str], str], key_set: str, key_status: int = 200) -> web.Application:
    """An app whose /config body is ``config(base URL)`` and whose /keys body is ``key_set``."""

    async def config_handler(request: web.Request) -> web.Response:
        base = f"{request.scheme}://{request.host}"
        return web.Response(text=config(base), content_type="application/json")

    async def keys_handler(request: web.Request) -> web.Response:
        return web.Response(text=key_set, status=key_status, content_type="application/json")

    app = web.Application()
    app.router.add_get("/config", config_handler)
    app.router.add_get("/keys", keys_handler)
    return app


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A test certificate authority."""
    return trustme.CA()


@pytest.fixture(scope="module")
def tls(ca: trustme.CA) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A (server, client) pair of TLS contexts for 127.0.0.1 trusting the test CA."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    return server_context, client_context


# -- the happy path ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_valid_token_is_accepted(
    auth: InboundAuthenticator, keys: Keys, clock: FakeClock
) -> None:
    """A token signed by a published key with the right claims yields its tenant and issuer."""
    caller = await auth.authenticate(bearer(keys.a, clock))
    assert caller == Caller(
        tenant_id=TENANT, app_id=None, issuer=BOT_FRAMEWORK, expires_at=START + 3600
    )
    assert auth.ready
    assert auth.key_ids == frozenset({"key-a"})


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({"appid": "caller-app"}, "caller-app"),
        ({"azp": "caller-azp"}, "caller-azp"),
        ({"appid": ""}, None),
        ({"appid": 7}, None),
    ],
)
async def test_caller_app_id_comes_from_appid_or_azp(
    auth: InboundAuthenticator,
    keys: Keys,
    clock: FakeClock,
    claims: dict[str, Any],
    expected: str | None,
) -> None:
    """The caller's app id is the appid (or azp) claim when it is a non-empty string."""
    caller = await auth.authenticate(bearer(keys.a, clock, **claims))
    assert caller.app_id == expected


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("issuer", "expected"),
    [
        (BOT_FRAMEWORK, BOT_FRAMEWORK),
        (BOT_FRAMEWORK + "/", BOT_FRAMEWORK + "/"),
        (GRAPH, GRAPH),
        (GRAPH + "/", GRAPH + "/"),
    ],
)
async def test_trailing_slash_on_issuer_is_ignored(
    auth: InboundAuthenticator, keys: Keys, clock: FakeClock, issuer: str, expected: str
) -> None:
    """An issuer matches with or without a trailing slash on the token or configured side."""
    caller = await auth.authenticate(bearer(keys.a, clock, issuer=issuer))
    assert caller.issuer == expected


@pytest.mark.anyio
async def test_tenant_uri_claim_is_accepted(
    auth: InboundAuthenticator, keys: Keys, clock: FakeClock
) -> None:
    """A token carrying the tenant in the long tenantid URI claim instead of tid is accepted."""
    long_claim: dict[str, Any] = {TENANT_ID_CLAIM: TENANT}
    caller = await auth.authenticate(bearer(keys.a, clock, tid=None, **long_claim))
    assert caller.tenant_id == TENANT


@pytest.mark.anyio
@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda k, c: bearer(k.a, c, aud=["other", APP_ID]), id="aud-list"),
        pytest.param(lambda k, c: bearer(k.a, c, nbf=int(c.now) + 50), id="nbf-within-leeway"),
        pytest.param(lambda k, c: bearer(k.a, c, iat=int(c.now) + 50), id="iat-within-leeway"),
        pytest.param(lambda k, c: bearer(k.a, c, exp=int(c.now) - 50), id="exp-within-leeway"),
        pytest.param(lambda k, c: bearer(k.a, c, nbf=None, iat=None), id="no-nbf-no-iat"),
        pytest.param(
            lambda k, c: "bearer  " + bearer(k.a, c).split()[1] + " ", id="scheme-case-spaces"
        ),
    ],
)
async def test_acceptable_variants(
    auth: InboundAuthenticator,
    keys: Keys,
    clock: FakeClock,
    build: Callable[[Keys, FakeClock], str],
) -> None:
    """Audience lists, clock skew within the leeway and scheme case and spacing are accepted."""
    caller = await auth.authenticate(build(keys, clock))
    assert caller.tenant_id == TENANT


# -- every way to be rejected --------------------------------------------------------------


def _signed_garbage_payload(keys: Keys, clock: FakeClock) -> str:
    """A correctly signed JWS whose payload is not JSON."""
    token = jwt.api_jws.PyJWS().encode(
        b"not json", keys.a.private_key, algorithm="RS256", headers={"kid": keys.a.kid}
    )
    return f"Bearer {token}"


def _tampered(keys: Keys, clock: FakeClock) -> str:
    """A valid token whose payload was swapped for another tenant's."""
    header, _, signature = bearer(keys.a, clock).split()[1].split(".")
    forged = b64(graph_claims(app_id=APP_ID, tenant_id=OTHER_TENANT, now=clock.now))
    return f"Bearer {header}.{forged}.{signature}"


BAD: list[Any] = [
    # 401: the header itself
    pytest.param(lambda k, c: None, 401, "missing", id="no-header"),
    pytest.param(lambda k, c: "", 401, "missing", id="empty-header"),
    pytest.param(lambda k, c: "   ", 401, "missing", id="blank-header"),
    pytest.param(lambda k, c: "Bearer", 401, "missing", id="bearer-without-token"),
    pytest.param(lambda k, c: "Bearer    ", 401, "missing", id="bearer-blank-token"),
    pytest.param(lambda k, c: "Basic dXNlcjpwYXNzd29yZA==", 401, "malformed", id="basic"),
    pytest.param(lambda k, c: bearer(k.a, c).split()[1], 401, "malformed", id="no-scheme"),
    pytest.param(lambda k, c: "Bearer abcdefgh.ijklmnop", 401, "malformed", id="two-segments"),
    pytest.param(lambda k, c: "Bearer aaaa.bbbb.cccc.dddd", 401, "malformed", id="four-segments"),
    pytest.param(lambda k, c: "Bearer aa!a.bbbb.cccc", 401, "malformed", id="not-base64url"),
    pytest.param(lambda k, c: "Bearer aa==.bbbb.cccc", 401, "malformed", id="padding"),
    pytest.param(
        lambda k, c: "Bearer " + "a" * 20_000 + ".bbbb.cccc", 401, "malformed", id="too-long"
    ),
    pytest.param(
        lambda k, c: f"Bearer {base64url_encode(b'not json').decode()}.e30.c2ln",
        401,
        "malformed",
        id="header-not-json",
    ),
    pytest.param(
        lambda k, c: f"Bearer {b64([1, 2])}.e30.c2ln", 401, "malformed", id="header-not-object"
    ),
    pytest.param(
        lambda k, c: bearer(k.a, c, headers={"kid": 7}), 401, "malformed", id="kid-not-string"
    ),
    pytest.param(
        lambda k, c: bearer(k.a, c).rsplit(".", 1)[0] + ".abcde",
        401,
        "malformed",
        id="signature-not-base64",
    ),
    pytest.param(_signed_garbage_payload, 401, "malformed", id="payload-not-json"),
    # 403: algorithm attacks
    pytest.param(lambda k, c: bearer(k.a, c, algorithm="none"), 403, "bad_algorithm", id="none"),
    pytest.param(
        lambda k, c: bearer(k.a, c, algorithm="HS256"), 403, "bad_algorithm", id="hs256-pubkey"
    ),
    pytest.param(lambda k, c: bearer(k.a, c, algorithm="RS512"), 403, "bad_algorithm", id="rs512"),
    pytest.param(
        lambda k, c: bearer(k.a, c, headers={"alg": None}), 403, "bad_algorithm", id="no-alg"
    ),
    # 403: keys and signatures
    pytest.param(
        lambda k, c: bearer(k.a, c, headers={"kid": None}), 403, "unknown_key", id="no-kid"
    ),
    pytest.param(lambda k, c: bearer(k.rogue, c), 403, "unknown_key", id="unknown-kid"),
    pytest.param(
        lambda k, c: bearer(k.rogue, c, headers={"kid": "key-a"}),
        403,
        "bad_signature",
        id="wrong-key",
    ),
    pytest.param(_tampered, 403, "bad_signature", id="tampered-payload"),
    pytest.param(
        lambda k, c: bearer(k.a, c, headers={"b64": False}),
        401,
        "malformed",
        id="b64-false-not-critical",
    ),
    pytest.param(
        lambda k, c: bearer(k.a, c, headers={"b64": False, "crit": ["b64"]}),
        401,
        "malformed",
        id="b64-false-detached",
    ),
    pytest.param(
        lambda k, c: bearer(k.a, c, headers={"crit": ["exp"]}),
        401,
        "malformed",
        id="unsupported-crit",
    ),
    # 403: claims
    pytest.param(lambda k, c: bearer(k.a, c, aud="someone-else"), 403, "bad_audience", id="aud"),
    pytest.param(lambda k, c: bearer(k.a, c, aud=None), 403, "bad_audience", id="no-aud"),
    pytest.param(
        lambda k, c: bearer(k.a, c, aud=["someone-else"]), 403, "bad_audience", id="aud-list"
    ),
    pytest.param(
        lambda k, c: bearer(k.a, c, issuer="https://evil.example"), 403, "bad_issuer", id="iss"
    ),
    pytest.param(lambda k, c: bearer(k.a, c, iss=None), 403, "bad_issuer", id="no-iss"),
    pytest.param(lambda k, c: bearer(k.a, c, iss=42), 403, "bad_issuer", id="iss-not-string"),
    pytest.param(
        lambda k, c: bearer(k.a, c, issuer=BOT_FRAMEWORK + "/x"), 403, "bad_issuer", id="iss-path"
    ),
    pytest.param(lambda k, c: bearer(k.a, c, exp=int(c.now) - 61), 403, "expired", id="expired"),
    pytest.param(lambda k, c: bearer(k.a, c, exp=None), 403, "expired", id="no-exp"),
    pytest.param(lambda k, c: bearer(k.a, c, exp="later"), 403, "expired", id="exp-string"),
    pytest.param(lambda k, c: bearer(k.a, c, exp=True), 403, "expired", id="exp-bool"),
    pytest.param(
        lambda k, c: bearer(k.a, c, nbf=int(c.now) + 61), 403, "not_yet_valid", id="nbf-future"
    ),
    pytest.param(
        lambda k, c: bearer(k.a, c, iat=int(c.now) + 61), 403, "not_yet_valid", id="iat-future"
    ),
    pytest.param(
        lambda k, c: bearer(k.a, c, nbf="soon"), 403, "not_yet_valid", id="nbf-not-number"
    ),
    pytest.param(lambda k, c: bearer(k.a, c, tid=None), 403, "no_tenant", id="no-tid"),
    pytest.param(lambda k, c: bearer(k.a, c, tid=""), 403, "no_tenant", id="empty-tid"),
    pytest.param(lambda k, c: bearer(k.a, c, tid=5), 403, "no_tenant", id="tid-not-string"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("build", "status", "reason"), BAD)
async def test_bad_tokens_are_rejected(
    auth: InboundAuthenticator,
    keys: Keys,
    clock: FakeClock,
    build: Callable[[Keys, FakeClock], str | None],
    status: int,
    reason: str,
) -> None:
    """Each kind of bad header or token is rejected with its status and reason, token unechoed."""
    error = await rejected(auth, build(keys, clock))
    assert (error.status, error.reason) == (status, reason)
    assert error.message.endswith(".")


@pytest.mark.anyio
async def test_hs256_forgery_is_a_real_hmac_of_the_public_key(keys: Keys, clock: FakeClock) -> None:
    """The HS256 forgery is exactly what a naive verifier keyed with the public PEM would accept."""
    token = bearer(keys.a, clock, algorithm="HS256").split()[1]
    algorithm = jwt.algorithms.HMACAlgorithm(jwt.algorithms.HMACAlgorithm.SHA256)
    signing_input, _, signature = token.rpartition(".")
    assert algorithm.verify(
        signing_input.encode(), keys.a.public_pem(), jwt.utils.base64url_decode(signature)
    )


@pytest.mark.anyio
async def test_tenant_allow_list(server: KeyServer, keys: Keys, clock: FakeClock) -> None:
    """Only listed tenants (compared case-insensitively) pass, also on the cached path."""
    async with make_auth(server, clock, allowed_tenants=(TENANT.upper(),)) as auth:
        assert (await auth.authenticate(bearer(keys.a, clock))).tenant_id == TENANT
        outsider = bearer(keys.a, clock, tid=OTHER_TENANT)
        for _ in range(2):
            error = await rejected(auth, outsider)
            assert (error.status, error.reason) == (403, "tenant_not_allowed")


# -- key refresh ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_unknown_kid_triggers_one_refresh_then_rotated_key_is_accepted(
    server: KeyServer, auth: InboundAuthenticator, keys: Keys, clock: FakeClock
) -> None:
    """A token naming a new key makes exactly one key-set fetch shared by concurrent callers."""
    assert server.jwks_requests == 1
    server.set_keys(keys.a, keys.b)
    callers: list[Caller] = []

    async def call(index: int) -> None:
        callers.append(await auth.authenticate(bearer(keys.b, clock, jti=str(index))))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for index in range(5):
                tg.start_soon(call, index)
    assert len(callers) == 5
    assert server.jwks_requests == 2
    assert auth.key_ids == frozenset({"key-a", "key-b"})


@pytest.mark.anyio
async def test_unknown_kid_refresh_is_rate_limited(
    server: KeyServer, auth: InboundAuthenticator, keys: Keys, clock: FakeClock
) -> None:
    """A second unknown kid within the interval does not refetch; after the interval it does."""
    assert (await rejected(auth, bearer(keys.rogue, clock))).reason == "unknown_key"
    assert server.jwks_requests == 2
    clock.now += 30
    assert (await rejected(auth, bearer(keys.rogue, clock, jti="2"))).reason == "unknown_key"
    assert server.jwks_requests == 2
    clock.now += 31
    server.set_keys(keys.a, keys.rogue)
    assert (await auth.authenticate(bearer(keys.rogue, clock, jti="3"))).tenant_id == TENANT
    assert server.jwks_requests == 3


@pytest.mark.anyio
async def test_clock_going_backwards_does_not_block_refresh(
    server: KeyServer, auth: InboundAuthenticator, keys: Keys, clock: FakeClock
) -> None:
    """If the wall clock steps back, an unknown kid may refresh again instead of waiting."""
    await rejected(auth, bearer(keys.rogue, clock))
    clock.now -= 600
    await rejected(auth, bearer(keys.rogue, clock))
    assert server.jwks_requests == 3


@pytest.mark.anyio
async def test_failed_unknown_kid_refresh_is_unavailable_and_keeps_keys(
    server: KeyServer, auth: InboundAuthenticator, keys: Keys, clock: FakeClock
) -> None:
    """When the refresh for an unknown kid fails the caller gets 503 and the old keys stay."""
    server.failing = True
    with structlog.testing.capture_logs() as logs:
        error = await rejected(auth, bearer(keys.rogue, clock))
    assert (error.status, error.reason) == (503, "keys_unavailable")
    assert auth.key_ids == frozenset({"key-a"})
    assert [entry["trigger"] for entry in logs] == ["unknown_kid"]
    assert logs[0]["event"] == "inbound_auth.keys_refresh_failed"
    assert logs[0]["log_level"] == "warning"
    server.failing = False
    assert (await auth.authenticate(bearer(keys.a, clock))).tenant_id == TENANT


@pytest.mark.anyio
async def test_periodic_refresh_picks_up_new_keys(
    server: KeyServer, keys: Keys, clock: FakeClock
) -> None:
    """With a short refresh interval the key set is fetched again and new keys are used."""
    async with make_auth(server, clock, refresh_interval=0.01) as auth:
        server.set_keys(keys.b)
        with anyio.fail_after(5):
            await server.wait_for_jwks_requests(3)
        assert auth.key_ids == frozenset({"key-b"})
        assert (await auth.authenticate(bearer(keys.b, clock))).tenant_id == TENANT


@pytest.mark.anyio
async def test_failed_periodic_refresh_keeps_old_keys_and_retries(
    server: KeyServer, keys: Keys, clock: FakeClock
) -> None:
    """A failing periodic refresh logs a warning, keeps the keys and succeeds on a later tick."""
    async with make_auth(server, clock, refresh_interval=0.01) as auth:
        with structlog.testing.capture_logs() as logs:
            server.failing = True
            with anyio.fail_after(5):
                await server.wait_until(lambda s: s.config_requests >= 3)
            assert auth.key_ids == frozenset({"key-a"})
            assert (await auth.authenticate(bearer(keys.a, clock))).tenant_id == TENANT
            server.set_keys(keys.a, keys.b)
            server.failing = False
            with anyio.fail_after(5):
                await server.wait_until(lambda s: s.jwks_requests >= 3)
        assert auth.key_ids == frozenset({"key-a", "key-b"})
    failures = [e for e in logs if e["event"] == "inbound_auth.keys_refresh_failed"]
    assert failures
    assert {e["trigger"] for e in failures} == {"periodic"}
    assert all("HTTP 500" in e["error"] for e in failures)


class KeySetServer:
    """A key endpoint whose key-set body is any text, set between requests."""

    def __init__(self, body: str) -> None:
        self.body = body
        self.requests = 0
        self.changed = anyio.Event()

    def app(self) -> web.Application:
        """The configuration at /config, the key set at /keys."""

        async def config_handler(request: web.Request) -> web.Response:
            return web.json_response({"jwks_uri": f"http://{request.host}/keys"})

        async def keys_handler(request: web.Request) -> web.Response:
            self.requests += 1
            self.changed.set()
            self.changed = anyio.Event()
            return web.Response(text=self.body, content_type="application/json")

        app = web.Application()
        app.router.add_get("/config", config_handler)
        app.router.add_get("/keys", keys_handler)
        return app

    async def wait_for(self, count: int) -> None:
        """Wait until ``count`` key-set requests arrived."""
        while self.requests < count:
            await self.changed.wait()


@pytest.mark.anyio
async def test_a_key_set_nested_too_deeply_does_not_stop_the_refresher(
    keys: Keys, clock: FakeClock
) -> None:
    """A key endpoint that answers a periodic refresh with JSON nested 100 000 levels deep:
    the refresh fails (logged and counted in refresh_failures), tokens signed with the keys
    already fetched are still accepted, and a later refresh installs the endpoint's next set."""
    server = KeySetServer(json.dumps(jwks(keys.a)))
    async with serve(server.app()) as base:
        auth = InboundAuthenticator(
            app_id=APP_ID,
            openid_config_url=base + "/config",
            issuers=ISSUERS,
            clock=clock,
            refresh_interval=0.05,
            retry_backoff=(0.05, 0.1),
        )
        with structlog.testing.capture_logs() as logs:
            async with auth:
                server.body = "[" * 100_000 + "]" * 100_000
                with anyio.fail_after(10):
                    await server.wait_for(3)
                assert auth.refresh_failures >= 1
                assert (await auth.authenticate(bearer(keys.a, clock))).tenant_id == TENANT
                server.body = json.dumps(jwks(keys.a, keys.b))
                with anyio.fail_after(10):
                    while auth.key_ids != frozenset({"key-a", "key-b"}):
                        await server.wait_for(server.requests + 1)
                assert (await auth.authenticate(bearer(keys.b, clock))).tenant_id == TENANT
    failed = [e for e in logs if e["event"] == "inbound_auth.keys_refresh_failed"]
    assert failed and all("not JSON" in e["error"] for e in failed)


@pytest.mark.anyio
@pytest.mark.parametrize("hop", ["config", "keys"])
async def test_a_redirect_from_https_to_plain_http_is_refused(
    keys: Keys, clock: FakeClock, tls: tuple[ssl.SSLContext, ssl.SSLContext], hop: str
) -> None:
    """An https OpenID configuration (or key set) that redirects to plain http is not
    followed: the keys are unavailable, with a message naming both URLs."""
    server_context, client_context = tls
    async with KeyServer.for_keys(keys.a) as plain:
        plain_config = plain.openid_config_url
        plain_keys = plain_config.rsplit("/.well-known", 1)[0] + "/keys"

        async def config(request: web.Request) -> web.Response:
            if hop == "config":
                raise web.HTTPFound(plain_config)
            return web.json_response({"jwks_uri": f"https://{request.host}/keys"})

        async def key_set(request: web.Request) -> web.Response:
            raise web.HTTPTemporaryRedirect(plain_keys)

        app = web.Application()
        app.router.add_get("/config", config)
        app.router.add_get("/keys", key_set)
        async with serve(app, server_context) as base:
            auth = InboundAuthenticator(
                app_id=APP_ID, openid_config_url=base + "/config", issuers=ISSUERS,
                ssl=client_context, clock=clock,
            )  # fmt: skip
            with pytest.raises(InboundAuthError) as info:
                await auth.__aenter__()
    assert info.value.reason == "keys_unavailable"
    assert "which is not https; expected https throughout" in info.value.message
    assert plain.config_requests + plain.jwks_requests == 0


@pytest.mark.anyio
async def test_redirects_within_https_are_followed_a_few_times(
    keys: Keys, clock: FakeClock, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    """An https configuration redirecting to another https path is followed; a redirect
    loop is given up after a few hops with a clear message."""
    server_context, client_context = tls
    async with KeyServer.for_keys(keys.a, ssl_context=server_context) as secure:

        async def moved(request: web.Request) -> web.Response:
            raise web.HTTPMovedPermanently(secure.openid_config_url)

        async def loop(request: web.Request) -> web.Response:
            raise web.HTTPFound("/loop")

        app = web.Application()
        app.router.add_get("/moved", moved)
        app.router.add_get("/loop", loop)
        async with serve(app, server_context) as base:
            async with InboundAuthenticator(
                app_id=APP_ID, openid_config_url=base + "/moved", issuers=ISSUERS,
                ssl=client_context, clock=clock,
            ) as auth:  # fmt: skip
                assert auth.key_ids == frozenset({"key-a"})
            looping = InboundAuthenticator(
                app_id=APP_ID, openid_config_url=base + "/loop", issuers=ISSUERS,
                ssl=client_context, clock=clock,
            )  # fmt: skip
            with pytest.raises(InboundAuthError, match="redirected more than 3 times"):
                await looping.__aenter__()


# -- the verified-token cache --------------------------------------------------------------


@pytest.mark.anyio
async def test_cached_token_skips_verification_until_it_expires(
    server: KeyServer, auth: InboundAuthenticator, keys: Keys, clock: FakeClock
) -> None:
    """A verified token is accepted from the cache even with no keys left, until its exp."""
    token = bearer(keys.a, clock, lifetime=600)
    first = await auth.authenticate(token)
    server.set_keys()
    await rejected(auth, bearer(keys.rogue, clock))  # forces a refresh to the empty set
    assert auth.key_ids == frozenset()
    clock.now += 600 + 59
    assert await auth.authenticate(token) == first
    fresh = await rejected(auth, bearer(keys.a, clock))
    assert fresh.reason == "unknown_key"
    clock.now += 1
    error = await rejected(auth, token)
    assert (error.status, error.reason) == (403, "expired")


@pytest.mark.anyio
async def test_cache_is_bounded_and_evicts_oldest(
    server: KeyServer, keys: Keys, clock: FakeClock
) -> None:
    """With room for one token, a second token evicts the first, which then needs the keys."""
    async with make_auth(server, clock, cache_size=1) as auth:
        first, second = bearer(keys.a, clock, jti="1"), bearer(keys.a, clock, jti="2")
        await auth.authenticate(first)
        await auth.authenticate(second)
        server.set_keys()
        await rejected(auth, bearer(keys.rogue, clock))
        assert (await auth.authenticate(second)).tenant_id == TENANT
        assert (await rejected(auth, first)).reason == "unknown_key"


@pytest.mark.anyio
async def test_cache_size_zero_disables_cache(
    server: KeyServer, keys: Keys, clock: FakeClock
) -> None:
    """With cache_size=0 every authenticate verifies the token against the current keys."""
    async with make_auth(server, clock, cache_size=0) as auth:
        token = bearer(keys.a, clock)
        await auth.authenticate(token)
        server.set_keys()
        await rejected(auth, bearer(keys.rogue, clock))
        assert (await rejected(auth, token)).reason == "unknown_key"


# -- fetching the keys ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_key_endpoint_down_at_start_is_a_clear_error(
    server: KeyServer, clock: FakeClock
) -> None:
    """If the key endpoint answers 500 at start, entering raises keys_unavailable naming it."""
    server.failing = True
    auth = make_auth(server, clock)
    with pytest.raises(InboundAuthError) as info:
        await auth.__aenter__()
    assert (info.value.status, info.value.reason) == (503, "keys_unavailable")
    assert server.openid_config_url in info.value.message
    assert "HTTP 500" in info.value.message
    assert not auth.ready


@pytest.mark.anyio
async def test_key_endpoint_unreachable_at_start(clock: FakeClock) -> None:
    """If nothing listens at the configuration URL, entering raises keys_unavailable."""
    async with KeyServer.for_keys() as gone:
        url = gone.openid_config_url
    auth = InboundAuthenticator(app_id=APP_ID, openid_config_url=url, issuers=ISSUERS)
    with pytest.raises(InboundAuthError) as info:
        async with auth:
            pass  # pragma: no cover
    assert info.value.reason == "keys_unavailable"
    assert "Could not fetch the OpenID configuration" in info.value.message


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("config", "key_set", "status", "fragment"),
    [
        (lambda base: "<html>", "{}", 200, "OpenID configuration at"),
        (lambda base: "[1]", "{}", 200, "not a JSON object"),
        (lambda base: "{}", "{}", 200, "has no jwks_uri"),
        (lambda base: json.dumps({"jwks_uri": 5}), "{}", 200, "has no jwks_uri"),
        (lambda base: json.dumps({"jwks_uri": "/keys"}), "{}", 200, "absolute http(s) URL"),
        (lambda base: json.dumps({"jwks_uri": "ftp://x/k"}), "{}", 200, "absolute http(s) URL"),
        (lambda base: json.dumps({"jwks_uri": base + "/keys"}), "{}", 200, "no 'keys' list"),
        (lambda base: json.dumps({"jwks_uri": base + "/keys"}), "not json", 200, "is not JSON"),
        (lambda base: json.dumps({"jwks_uri": base + "/keys"}), "{}", 404, "HTTP 404"),
    ],
)
async def test_bad_key_documents_are_clear_errors(
    config: Callable[[str], str], key_set: str, status: int, fragment: str
) -> None:
    """A configuration or key set of the wrong shape fails the start with a message saying so."""
    async with serve(raw_app(config, key_set, status)) as base:
        auth = InboundAuthenticator(
            app_id=APP_ID, openid_config_url=base + "/config", issuers=ISSUERS
        )
        with pytest.raises(InboundAuthError) as info:
            await auth.__aenter__()
    assert (info.value.status, info.value.reason) == (503, "keys_unavailable")
    assert fragment in info.value.message


@pytest.mark.anyio
async def test_unusable_keys_are_skipped(keys: Keys, clock: FakeClock) -> None:
    """Keys that are not public RS256 signing keys of 2048+ bits are skipped with a warning."""
    weak = SigningKey.generate("weak", key_size=1024)
    private_jwk = RSAAlgorithm.to_jwk(keys.b.private_key, as_dict=True) | {"kid": "private"}
    junk: list[Any] = [
        "not a key",
        {"kty": "RSA"},
        {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AA", "y": "AA"},
        keys.b.jwk() | {"kid": "enc", "use": "enc"},
        keys.b.jwk() | {"kid": "rs512", "alg": "RS512"},
        {"kty": "RSA", "kid": "garbage", "n": "!!", "e": "AQAB"},
        private_jwk,
        weak.jwk(),
    ]
    key_server = KeyServer(lambda: {"keys": [*junk, keys.a.jwk()]})
    with structlog.testing.capture_logs() as logs:
        async with key_server, make_auth(key_server, clock) as auth:
            assert auth.key_ids == frozenset({"key-a"})
    skipped = [e for e in logs if e["event"] == "inbound_auth.key_skipped"]
    assert [e["kid"] for e in skipped] == [
        None,
        None,
        "ec",
        "enc",
        "rs512",
        "garbage",
        "private",
        "weak",
    ]
    assert all(e["log_level"] == "warning" for e in skipped)


@pytest.mark.anyio
async def test_empty_key_set_is_installed_with_a_warning(clock: FakeClock) -> None:
    """An empty published key set is used as published (every token then fails) and logged."""
    with structlog.testing.capture_logs() as logs:
        async with KeyServer.for_keys() as key_server, make_auth(key_server, clock) as auth:
            assert auth.ready
            assert auth.key_ids == frozenset()
    assert [e["event"] for e in logs] == ["inbound_auth.keys_empty"]


@pytest.mark.anyio
async def test_keys_over_tls_with_a_given_session(
    keys: Keys, clock: FakeClock, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    """Keys fetched over https with a caller's session and TLS context; the session stays open."""
    server_context, client_context = tls
    async with (
        KeyServer.for_keys(keys.a, ssl_context=server_context) as key_server,
        aiohttp.ClientSession() as session,
    ):
        assert key_server.openid_config_url.startswith("https://127.0.0.1:")
        async with make_auth(key_server, clock, session=session, ssl=client_context) as auth:
            assert (await auth.authenticate(bearer(keys.a, clock))).tenant_id == TENANT
        assert not session.closed
        assert not auth.ready
        assert auth.key_ids == frozenset()


@pytest.mark.anyio
async def test_https_configuration_must_not_point_at_http_keys(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """An https configuration naming a plain-http jwks_uri is refused."""
    server_context, client_context = tls
    app = raw_app(lambda base: json.dumps({"jwks_uri": "http://127.0.0.1:1/keys"}), "{}")
    async with serve(app, server_context) as base:
        auth = InboundAuthenticator(
            app_id=APP_ID, openid_config_url=base + "/config", issuers=ISSUERS, ssl=client_context
        )
        with pytest.raises(InboundAuthError) as info:
            await auth.__aenter__()
    assert "expected https" in info.value.message


# -- configuration and lifecycle -----------------------------------------------------------


def test_bad_settings_are_all_named() -> None:
    """Every invalid constructor argument is named in one ConfigError."""
    with pytest.raises(ConfigError) as info:
        InboundAuthenticator(
            app_id="",
            openid_config_url="not a url",
            issuers=(),
            allowed_tenants=(),
            leeway=-1,
            refresh_interval=0,
            unknown_kid_interval=-5,
            fetch_timeout=0,
            cache_size=-1,
        )
    message = str(info.value)
    for name in (
        "app_id",
        "openid_config_url",
        "issuers",
        "allowed_tenants",
        "leeway",
        "refresh_interval",
        "unknown_kid_interval",
        "fetch_timeout",
        "cache_size",
    ):
        assert name in message


@pytest.mark.parametrize(
    "kwargs",
    [
        {"issuers": BOT_FRAMEWORK},
        {"issuers": (BOT_FRAMEWORK, "")},
        {"allowed_tenants": TENANT},
        {"openid_config_url": "https:///path-only"},
    ],
)
def test_string_instead_of_collection_is_refused(kwargs: dict[str, Any]) -> None:
    """A bare string where a collection is expected, or an empty entry, is a ConfigError."""
    settings: dict[str, Any] = {
        "app_id": APP_ID,
        "openid_config_url": "https://example.test/config",
        "issuers": ISSUERS,
    } | kwargs
    with pytest.raises(ConfigError):
        InboundAuthenticator(**settings)


@pytest.mark.anyio
async def test_authenticate_before_start_is_an_error(server: KeyServer, clock: FakeClock) -> None:
    """Authenticating outside 'async with' is a programming error."""
    auth = make_auth(server, clock)
    with pytest.raises(RuntimeError, match="not started"):
        await auth.authenticate("Bearer a.b.c")
    assert not auth.ready


@pytest.mark.anyio
async def test_entering_twice_is_an_error(auth: InboundAuthenticator) -> None:
    """A started authenticator cannot be entered again."""
    with pytest.raises(RuntimeError, match="already started"):
        await auth.__aenter__()


@pytest.mark.anyio
async def test_exit_stops_the_refresher_and_forgets_keys(
    server: KeyServer, keys: Keys, clock: FakeClock
) -> None:
    """Leaving the context stops the background refresh and clears keys and cached tokens."""
    auth = make_auth(server, clock, refresh_interval=0.01)
    async with auth:
        with anyio.fail_after(5):
            await server.wait_for_jwks_requests(2)
    assert not auth.ready
    assert auth.key_ids == frozenset()
    with pytest.raises(RuntimeError):
        await auth.authenticate(bearer(keys.a, clock))


@pytest.mark.anyio
async def test_errors_in_the_body_propagate(server: KeyServer, clock: FakeClock) -> None:
    """An exception raised inside 'async with' propagates unchanged through the exit."""
    with pytest.raises(KeyError, match="boom"):
        async with make_auth(server, clock):
            raise KeyError("boom")


@pytest.mark.anyio
async def test_outer_cancellation_exits_cleanly(server: KeyServer, clock: FakeClock) -> None:
    """Cancelling the body from an outer scope stops the authenticator and closes its session."""
    auth = make_auth(server, clock, refresh_interval=0.01)
    with anyio.CancelScope() as scope:
        async with auth:
            with anyio.fail_after(5):
                await server.wait_for_jwks_requests(2)
            scope.cancel()
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert not auth.ready


# -- the verifier and its key set, apart ---------------------------------------------------


class MemoryKeys:
    """A key set held in memory, for a TokenVerifier without HTTP: ``published`` keys become
    ``current`` when the verifier asks for a refresh."""

    def __init__(self, *keys: SigningKey) -> None:
        self.current = {key.kid: key.private_key.public_key() for key in keys}
        self.published = dict(self.current)
        self.refreshes: list[str] = []
        self.entered = self.exited = 0

    async def __aenter__(self) -> MemoryKeys:
        self.entered += 1
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.exited += 1

    def key_for(self, kid: str) -> RSAPublicKey | None:
        return self.current.get(kid)

    async def refresh_for_unknown(self, kid: str) -> RSAPublicKey:
        self.refreshes.append(kid)
        self.current = dict(self.published)
        if kid not in self.current:
            raise InboundAuthError("unknown_key", "No such key.", status=403)
        return self.current[kid]


@pytest.mark.anyio
async def test_a_verifier_checks_tokens_with_the_key_set_it_is_built_with(
    keys: Keys, clock: FakeClock
) -> None:
    """A TokenVerifier enters and leaves the key set it is given, takes keys from it and asks
    it to refresh for a key id it does not know; it fetches nothing itself."""
    memory = MemoryKeys(keys.a)
    verifier = TokenVerifier(memory, app_id=APP_ID, issuers=ISSUERS, clock=clock)
    with pytest.raises(RuntimeError, match="TokenVerifier is not started"):
        await verifier.authenticate(bearer(keys.a, clock))
    async with verifier:
        assert (verifier.ready, memory.entered) == (True, 1)
        assert (await verifier.authenticate(bearer(keys.a, clock))).tenant_id == TENANT
        assert memory.refreshes == []
        assert (await rejected(verifier, bearer(keys.rogue, clock))).reason == "unknown_key"
        memory.published[keys.rogue.kid] = keys.rogue.private_key.public_key()
        assert (await verifier.authenticate(bearer(keys.rogue, clock))).tenant_id == TENANT
        assert memory.refreshes == ["key-rogue", "key-rogue"]
    assert (verifier.ready, memory.exited) == (False, 1)
    with pytest.raises(RuntimeError, match="not started"):
        await verifier.authenticate(bearer(keys.a, clock))


@pytest.mark.anyio
async def test_signing_keys_serve_keys_and_refresh_for_an_unknown_id(
    server: KeyServer, keys: Keys, clock: FakeClock
) -> None:
    """SigningKeys alone: entered once, the key a kid names, a refresh that finds a rotated
    key, the rate limit that refuses a second refresh at once, and a failed refresh that keeps
    the keys."""
    signing = SigningKeys(openid_config_url=server.openid_config_url, clock=clock)
    async with signing:
        with pytest.raises(RuntimeError, match="already started"):
            await signing.__aenter__()
        key_a = signing.key_for("key-a")
        assert isinstance(key_a, RSAPublicKey)
        assert key_a.public_numbers() == keys.a.private_key.public_key().public_numbers()
        assert signing.key_for("key-b") is None
        server.set_keys(keys.a, keys.b)
        key_b = await signing.refresh_for_unknown("key-b")
        assert key_b.public_numbers() == keys.b.private_key.public_key().public_numbers()
        assert (signing.key_ids, server.jwks_requests) == (frozenset({"key-a", "key-b"}), 2)
        with pytest.raises(InboundAuthError) as limited:
            await signing.refresh_for_unknown("key-c")
        assert (limited.value.status, limited.value.reason) == (403, "unknown_key")
        assert server.jwks_requests == 2
        clock.now += 61
        server.failing = True
        with pytest.raises(InboundAuthError) as failed:
            await signing.refresh_for_unknown("key-c")
        assert (failed.value.status, failed.value.reason) == (503, "keys_unavailable")
        assert signing.refresh_failures == 1
        assert signing.key_for("key-a") is not None
    assert (signing.ready, signing.key_ids) == (False, frozenset())
    with pytest.raises(RuntimeError, match="not started"):
        await signing.refresh_for_unknown("key-a")


def test_the_verifier_and_the_key_set_each_name_their_bad_settings() -> None:
    """Each part refuses its own invalid arguments in one ConfigError naming them all."""
    with pytest.raises(ConfigError) as verifier_error:
        TokenVerifier(
            MemoryKeys(), app_id="", issuers=(), allowed_tenants=(), leeway=-1, cache_size=-1
        )
    assert str(verifier_error.value).startswith("TokenVerifier: ")
    for name in ("app_id", "issuers", "allowed_tenants", "leeway", "cache_size"):
        assert name in str(verifier_error.value)
    with pytest.raises(ConfigError) as keys_error:
        SigningKeys(
            openid_config_url="not a url",
            refresh_interval=0,
            unknown_kid_interval=0,
            fetch_timeout=0,
            retry_backoff=(0.0, 1.0),
        )
    assert str(keys_error.value).startswith("SigningKeys: ")
    for name in (
        "openid_config_url",
        "refresh_interval",
        "unknown_kid_interval",
        "fetch_timeout",
        "retry_backoff",
    ):
        assert name in str(keys_error.value)


# -- the test kit --------------------------------------------------------------------------


def test_graph_claims_shape() -> None:
    """graph_claims sets aud, iss, tid and whole-second times; extras override or remove."""
    claims = graph_claims(app_id=APP_ID, tenant_id=TENANT, now=START + 0.7, lifetime=10)
    assert claims == {
        "aud": APP_ID,
        "iss": BOT_FRAMEWORK,
        "iat": int(START),
        "nbf": int(START),
        "exp": int(START) + 10,
        "tid": TENANT,
    }
    assert "nbf" not in graph_claims(app_id=APP_ID, tenant_id=TENANT, nbf=None)
    assert graph_claims(app_id=APP_ID, tenant_id=TENANT, appid="x")["appid"] == "x"


def test_signing_key_jwk_and_sign(keys: Keys) -> None:
    """A key's JWK verifies its RS256 tokens; sign rejects unknown algorithms."""
    jwk = keys.a.jwk()
    assert {name: jwk[name] for name in ("kty", "use", "kid", "alg")} == {
        "kty": "RSA",
        "use": "sig",
        "kid": "key-a",
        "alg": "RS256",
    }
    assert jwks(keys.a, keys.b) == {"keys": [keys.a.jwk(), keys.b.jwk()]}
    token = keys.a.sign({"x": 1}, headers={"typ": None, "extra": "h"})
    assert jwt.get_unverified_header(token) == {"alg": "RS256", "kid": "key-a", "extra": "h"}
    public = jwt.PyJWK(jwk).key
    assert jwt.decode(token, key=public, algorithms=["RS256"]) == {"x": 1}
    assert "key-a" in repr(keys.a)
    with pytest.raises(ValueError, match="unknown"):
        keys.a.sign({}, algorithm="XX999")


@pytest.mark.anyio
async def test_key_server_app_mounts_as_sub_app(keys: Keys, clock: FakeClock) -> None:
    """key_server_app works mounted under a prefix; its jwks_uri includes the prefix."""
    parent = web.Application()
    child = key_server_app(lambda: jwks(keys.a))
    state = child[KEY_SERVER]
    parent.add_subapp("/auth", child)
    async with serve(parent) as base:
        url = base + "/auth/.well-known/openid-configuration"
        auth = InboundAuthenticator(
            app_id=APP_ID, openid_config_url=url, issuers=ISSUERS, clock=clock
        )
        async with auth:
            assert (await auth.authenticate(bearer(keys.a, clock))).tenant_id == TENANT
    assert (state.config_requests, state.jwks_requests) == (1, 1)


@pytest.mark.anyio
async def test_key_server_lifecycle_errors() -> None:
    """A KeyServer has no URL before it runs and cannot run twice at once."""
    key_server = KeyServer.for_keys()
    with pytest.raises(RuntimeError, match="not running"):
        _ = key_server.openid_config_url
    async with key_server:
        with pytest.raises(RuntimeError, match="already running"):
            await key_server.__aenter__()
    await key_server.__aexit__(None, None, None)


@pytest.mark.parametrize("module", [jwt_module, signing_keys_module, keys_module])
def test_all_names_exist(module: Any) -> None:
    """Every name a module lists in __all__ exists."""
    for name in module.__all__:
        assert hasattr(module, name), name
