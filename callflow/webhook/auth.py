"""Inbound authentication: verify the bearer token Graph sends with every notification.

Graph signs each notification's ``Authorization: Bearer <JWT>`` with RS256. The keys come
from an OpenID configuration document (its ``jwks_uri``); they are fetched at start, refreshed
every ``refresh_interval`` and, at most once per ``unknown_kid_interval``, when a token names a
key id that is not in the set.

A failed refresh keeps the keys already fetched, is logged and counted
(``refresh_failures``), and the periodic refresh is retried after a jittered back-off
(``retry_backoff``) instead of a whole ``refresh_interval``; nothing a key endpoint answers
stops the worker.

Every rejection is an :class:`~callflow.errors.InboundAuthError` whose ``reason`` is one of
:data:`REASONS` (a constant slug for metrics) and whose ``status`` is the HTTP status to reply:

- 401: ``missing`` (no or empty header, or no token after ``Bearer``) and ``malformed`` (not the
  Bearer scheme, not a compact JWT, or a header or payload that does not decode);
- 403: ``bad_algorithm``, ``unknown_key``, ``bad_signature``, ``bad_audience``, ``bad_issuer``,
  ``expired`` (also: no usable ``exp``), ``not_yet_valid``, ``no_tenant``,
  ``tenant_not_allowed``;
- 503: ``keys_unavailable``: the key set could not be fetched (at start, or while looking for
  an unknown key id); the platform may try again later.

The ``message`` is a plain sentence safe to put in the response body; it never contains the
token.
"""

from __future__ import annotations

import json
import random
import re
import ssl as ssl_module
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import urlsplit

import aiohttp
import anyio
import attrs
import jwt
import structlog
from anyio.abc import TaskGroup
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.algorithms import RSAAlgorithm
from jwt.utils import base64url_decode
from yarl import URL

from callflow._hosts import is_loopback
from callflow.errors import ConfigError, InboundAuthError

__all__ = ["REASONS", "TENANT_ID_CLAIM", "Caller", "InboundAuthenticator"]

log = structlog.get_logger(__name__)

REASONS: Final = (
    "missing",
    "malformed",
    "bad_algorithm",
    "unknown_key",
    "bad_signature",
    "bad_audience",
    "bad_issuer",
    "expired",
    "not_yet_valid",
    "no_tenant",
    "tenant_not_allowed",
    "keys_unavailable",
)
"""Every ``reason`` an :class:`InboundAuthError` from this module can carry."""

TENANT_ID_CLAIM: Final = "http://schemas.microsoft.com/identity/claims/tenantid"
"""The long claim name some token stacks use instead of ``tid``."""

ALGORITHM: Final = "RS256"
MIN_KEY_BITS: Final = 2048
MAX_TOKEN_LENGTH: Final = 16_384
MAX_REDIRECTS: Final = 3
"""Redirects followed when fetching the OpenID configuration or the key set."""
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_COMPACT_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_RSA256 = RSAAlgorithm(RSAAlgorithm.SHA256)
_DECODE_OPTIONS: Final[jwt.types.Options] = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
    "require": [],
}


@attrs.frozen
class Caller:
    """What a verified notification token says about its sender."""

    tenant_id: str
    app_id: str | None
    issuer: str
    expires_at: float


class _PendingRefresh:
    """One key-set fetch in flight; every caller that needs it waits on ``done``."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.error: InboundAuthError | None = None


def _reject(reason: str, message: str) -> InboundAuthError:
    status = 401 if reason in ("missing", "malformed") else 403
    return InboundAuthError(reason, message, status=status)


def _keys_unavailable(message: str) -> InboundAuthError:
    return InboundAuthError("keys_unavailable", message, status=503)


def _numeric(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _normalise_issuer(issuer: str) -> str:
    return issuer.rstrip("/")


class InboundAuthenticator:
    """Checks the bearer tokens of inbound notifications against the platform's signing keys.

    Use it as an async context manager: entering fetches the key set (raising
    ``InboundAuthError(reason="keys_unavailable", status=503)`` if that fails) and starts a
    background refresher owned by the authenticator; leaving stops it and closes the HTTP
    session if the authenticator created it. :meth:`authenticate` returns a :class:`Caller` or
    raises :class:`~callflow.errors.InboundAuthError`.

    Verified tokens are remembered (up to ``cache_size``, oldest evicted first) until they
    expire, so a token Graph reuses costs a dictionary lookup; its expiry and the tenant
    allow-list are still checked every time. ``clock`` (seconds since the epoch) is used for
    every time check and for the unknown-key rate limit.
    """

    def __init__(
        self,
        *,
        app_id: str,
        openid_config_url: str,
        issuers: Sequence[str],
        allowed_tenants: Collection[str] | None = None,
        session: aiohttp.ClientSession | None = None,
        ssl: ssl_module.SSLContext | bool | None = None,
        leeway: float = 60.0,
        refresh_interval: float = 7200.0,
        unknown_kid_interval: float = 60.0,
        cache_size: int = 10_000,
        fetch_timeout: float = 10.0,
        retry_backoff: tuple[float, float] = (5.0, 300.0),
        clock: Callable[[], float] = time.time,
    ) -> None:
        problems: list[str] = []
        if not app_id:
            problems.append("app_id is empty; expected the bot's application id")
        scheme = urlsplit(openid_config_url).scheme
        if scheme not in ("http", "https") or not urlsplit(openid_config_url).hostname:
            problems.append(
                f"openid_config_url {openid_config_url!r} is not an absolute http(s) URL"
            )
        if isinstance(issuers, str) or not issuers or not all(issuers):
            problems.append(
                f"issuers {issuers!r} is not a non-empty sequence of non-empty issuer strings"
            )
        if allowed_tenants is not None and (
            isinstance(allowed_tenants, str) or not allowed_tenants
        ):
            problems.append(
                f"allowed_tenants {allowed_tenants!r} is not a non-empty collection of tenant "
                "ids; pass None to accept every tenant"
            )
        if leeway < 0:
            problems.append(f"leeway {leeway!r} is negative; expected seconds >= 0")
        for name, value in (
            ("refresh_interval", refresh_interval),
            ("unknown_kid_interval", unknown_kid_interval),
            ("fetch_timeout", fetch_timeout),
        ):
            if not value > 0:
                problems.append(f"{name} {value!r} is not positive; expected seconds > 0")
        if cache_size < 0:
            problems.append(f"cache_size {cache_size!r} is negative; expected >= 0 (0 disables)")
        if not 0 < retry_backoff[0] <= retry_backoff[1]:
            problems.append(
                f"retry_backoff {retry_backoff!r} is not (min, max) seconds with 0 < min <= max"
            )
        if problems:
            raise ConfigError("InboundAuthenticator: " + "; ".join(problems) + ".")

        self._app_id = app_id
        self._openid_config_url = openid_config_url
        self._issuers = frozenset(_normalise_issuer(issuer) for issuer in issuers)
        self._allowed_tenants = (
            None
            if allowed_tenants is None
            else frozenset(tenant.lower() for tenant in allowed_tenants)
        )
        self._given_session = session
        self._ssl: ssl_module.SSLContext | bool = True if ssl is None else ssl
        self._leeway = leeway
        self._refresh_interval = refresh_interval
        self._unknown_kid_interval = unknown_kid_interval
        self._cache_size = cache_size
        self._timeout = aiohttp.ClientTimeout(total=fetch_timeout)
        self._retry_backoff = (float(retry_backoff[0]), float(retry_backoff[1]))
        self._clock = clock
        self.refresh_failures = 0
        """Key-set fetches that failed after start (periodic, or for an unknown key id)."""

        self._session: aiohttp.ClientSession | None = None
        self._task_group: TaskGroup | None = None
        self._keys: dict[str, RSAPublicKey] = {}
        self._cache: dict[str, Caller] = {}
        self._pending: _PendingRefresh | None = None
        self._last_kid_refresh: float | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Fetch the key set and start the periodic refresher; raise if the keys are unavailable."""
        if self._session is not None:
            raise RuntimeError("InboundAuthenticator is already started; enter it only once")
        session = self._given_session or aiohttp.ClientSession()
        self._session = session
        try:
            keys = await self._fetch_keys()
        except BaseException:
            await self._close_session()
            raise
        self._install_keys(keys, trigger="start")
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        task_group.start_soon(self._refresh_periodically)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the refresher, forget keys and cached tokens, close an owned session."""
        task_group = self._task_group
        assert task_group is not None, "InboundAuthenticator.__aexit__ without __aenter__"
        try:
            # The refresher never ends by itself: cancel it. The body's own exception (if any)
            # is not handed to the task group, so it propagates unchanged, not in a group.
            task_group.cancel_scope.cancel()
            await task_group.__aexit__(None, None, None)
        finally:
            self._task_group = None
            self._keys = {}
            self._cache.clear()
            with anyio.CancelScope(shield=True):
                await self._close_session()

    async def _close_session(self) -> None:
        session, self._session = self._session, None
        if session is not None and self._given_session is None:
            await session.close()

    @property
    def ready(self) -> bool:
        """True while started with a key set loaded."""
        return self._task_group is not None

    @property
    def key_ids(self) -> frozenset[str]:
        """The key ids (``kid``) of the current key set."""
        return frozenset(self._keys)

    # -- authentication --------------------------------------------------------------------

    async def authenticate(self, authorization: str | None) -> Caller:
        """Verify an ``Authorization`` header value and return the verified caller.

        Raises :class:`~callflow.errors.InboundAuthError` (status 401, 403 or 503, see the
        module docstring) when the token is not acceptable.
        """
        if self._task_group is None:
            raise RuntimeError(
                "InboundAuthenticator is not started; use 'async with authenticator:' first"
            )
        token = self._bearer_token(authorization)
        now = self._clock()
        caller = self._cache.get(token)
        if caller is None:
            caller = await self._verify(token, now)
            if self._cache_size:
                if len(self._cache) >= self._cache_size:
                    del self._cache[next(iter(self._cache))]
                self._cache[token] = caller
        elif now >= caller.expires_at + self._leeway:
            self._cache.pop(token, None)
            raise _reject("expired", "The bearer token has expired; expected a current token.")
        if (
            self._allowed_tenants is not None
            and caller.tenant_id.lower() not in self._allowed_tenants
        ):
            raise _reject(
                "tenant_not_allowed",
                "The token's tenant is not allowed to call this bot; expected one of the "
                "configured tenants.",
            )
        return caller

    @staticmethod
    def _bearer_token(authorization: str | None) -> str:
        if authorization is None or not authorization.strip():
            raise _reject(
                "missing", "The Authorization header is missing; expected 'Bearer <token>'."
            )
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise _reject(
                "malformed",
                "The Authorization header does not use the Bearer scheme; expected "
                "'Bearer <token>'.",
            )
        token = token.strip()
        if not token:
            raise _reject(
                "missing", "The Authorization header has no token; expected 'Bearer <token>'."
            )
        return token

    async def _verify(self, token: str, now: float) -> Caller:
        if len(token) > MAX_TOKEN_LENGTH or not _COMPACT_JWT.fullmatch(token):
            raise _reject(
                "malformed",
                "The bearer token is not a JWT; expected three base64url segments "
                "separated by dots.",
            )
        # Only alg and kid are read here, to pick the key; jwt.decode below validates the
        # whole header again. (jwt.get_unverified_header would cost more than the RSA check.)
        header: object
        try:
            header = json.loads(base64url_decode(token[: token.index(".")]))
        except ValueError:  # bad base64 length, bad UTF-8 or bad JSON
            header = None
        if not isinstance(header, dict) or not isinstance(header.get("kid", ""), str):
            raise _reject(
                "malformed",
                "The bearer token's header does not decode to a JSON object with a string kid.",
            )
        if header.get("alg") != ALGORITHM:
            raise _reject(
                "bad_algorithm",
                f"The token is not signed with an accepted algorithm; expected {ALGORITHM}.",
            )
        kid = header.get("kid")
        if not kid:
            raise _reject("unknown_key", "The token names no signing key (kid); expected one.")
        key = self._keys.get(kid)
        if key is None:
            key = await self._key_after_refresh(kid)
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key=key, algorithms=[ALGORITHM], options=_DECODE_OPTIONS
            )
        except jwt.InvalidSignatureError as exc:
            raise _reject(
                "bad_signature",
                "The token's signature does not verify with the key it names; expected a "
                "token signed by the platform.",
            ) from exc
        except jwt.PyJWTError as exc:
            raise _reject(
                "malformed",
                "The bearer token does not decode; expected a JWS with a JSON object payload.",
            ) from exc
        return self._check_claims(claims, now)

    def _check_claims(self, claims: Mapping[str, Any], now: float) -> Caller:
        audience = claims.get("aud")
        if not (
            audience == self._app_id or (isinstance(audience, list) and self._app_id in audience)
        ):
            raise _reject(
                "bad_audience", "The token's audience (aud) is not this bot's application id."
            )
        issuer = claims.get("iss")
        if not isinstance(issuer, str) or _normalise_issuer(issuer) not in self._issuers:
            raise _reject("bad_issuer", "The token's issuer (iss) is not an accepted issuer.")
        expires_at = _numeric(claims.get("exp"))
        if expires_at is None:
            raise _reject("expired", "The token has no numeric expiry time (exp); expected one.")
        if now >= expires_at + self._leeway:
            raise _reject("expired", "The bearer token has expired; expected a current token.")
        for name in ("nbf", "iat"):
            if name not in claims:
                continue
            value = _numeric(claims[name])
            if value is None:
                raise _reject(
                    "not_yet_valid", f"The token's {name} claim is not a number; expected one."
                )
            if value > now + self._leeway:
                raise _reject(
                    "not_yet_valid",
                    f"The token is not valid yet ({name} is in the future); expected a "
                    "current token.",
                )
        tenant_id = claims.get("tid") or claims.get(TENANT_ID_CLAIM)
        if not isinstance(tenant_id, str) or not tenant_id:
            raise _reject(
                "no_tenant", "The token names no tenant (tid); expected the caller's tenant id."
            )
        app_id = claims.get("appid") or claims.get("azp")
        return Caller(
            tenant_id=tenant_id,
            app_id=app_id if isinstance(app_id, str) and app_id else None,
            issuer=issuer,
            expires_at=expires_at,
        )

    # -- keys ------------------------------------------------------------------------------

    async def _key_after_refresh(self, kid: str) -> RSAPublicKey:
        """Refresh the key set for an unknown ``kid`` (rate limited, shared) and look again."""
        if self._pending is None:
            now = self._clock()
            last = self._last_kid_refresh
            if last is not None and 0 <= now - last < self._unknown_kid_interval:
                raise self._unknown_key()
            self._last_kid_refresh = now
        error = await self._refresh("unknown_kid")
        key = self._keys.get(kid)
        if key is not None:
            return key
        if error is not None:
            raise _keys_unavailable(
                "The signing keys could not be fetched to check this token; try again later."
            ) from error
        raise self._unknown_key()

    @staticmethod
    def _unknown_key() -> InboundAuthError:
        return _reject(
            "unknown_key",
            "The token names a signing key (kid) that is not in the platform's key set.",
        )

    async def _refresh(self, trigger: str) -> InboundAuthError | None:
        """Refresh the key set, joining a fetch already in flight; return its error, if any."""
        pending = self._pending
        if pending is None:
            assert self._task_group is not None
            pending = self._pending = _PendingRefresh()
            self._task_group.start_soon(self._run_refresh, pending, trigger)
        await pending.done.wait()
        return pending.error

    async def _run_refresh(self, pending: _PendingRefresh, trigger: str) -> None:
        try:
            keys = await self._fetch_keys()
        except InboundAuthError as exc:
            pending.error = exc
            self.refresh_failures += 1
            log.warning("inbound_auth.keys_refresh_failed", trigger=trigger, error=exc.message)
        except Exception as exc:  # a refresh never stops the worker: the old keys stay
            pending.error = _keys_unavailable(
                f"The signing keys could not be fetched ({type(exc).__name__}); try again later."
            )
            self.refresh_failures += 1
            log.warning(
                "inbound_auth.keys_refresh_failed",
                trigger=trigger,
                error=f"{type(exc).__name__}: {exc}"[:300],
            )
        else:
            self._install_keys(keys, trigger=trigger)
        finally:
            self._pending = None
            pending.done.set()

    async def _refresh_periodically(self) -> None:
        failed = 0
        while True:
            delay = self._refresh_interval
            if failed:  # retry sooner, backing off, while the endpoint fails
                low, high = self._retry_backoff
                base = min(high, low * 2.0 ** min(failed - 1, 30))
                delay = min(delay, random.uniform(base / 2, base))
            await anyio.sleep(delay)
            error = await self._refresh("periodic")
            failed = failed + 1 if error is not None else 0

    def _install_keys(self, keys: dict[str, RSAPublicKey], *, trigger: str) -> None:
        self._keys = keys
        if keys:
            log.info("inbound_auth.keys_refreshed", trigger=trigger, key_ids=sorted(keys))
        else:
            log.warning("inbound_auth.keys_empty", trigger=trigger)

    async def _fetch_keys(self) -> dict[str, RSAPublicKey]:
        """Fetch the OpenID configuration, then the key set it names, and parse the keys."""
        config_url = self._openid_config_url
        config = await self._get_json(config_url, "OpenID configuration")
        jwks_uri = config.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri:
            raise _keys_unavailable(
                f"The OpenID configuration at {config_url} has no jwks_uri; expected the URL "
                "of the signing key set."
            )
        parts = urlsplit(jwks_uri)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _keys_unavailable(
                f"The OpenID configuration at {config_url} names jwks_uri {jwks_uri!r}; "
                "expected an absolute http(s) URL."
            )
        if _downgrade(config_url, jwks_uri):
            raise _keys_unavailable(
                f"The OpenID configuration at {config_url} names a plain-http jwks_uri "
                f"{jwks_uri!r}; expected https."
            )
        body = await self._get_json(jwks_uri, "signing key set")
        entries = body.get("keys")
        if not isinstance(entries, list):
            raise _keys_unavailable(
                f"The signing key set at {jwks_uri} has no 'keys' list; expected a JWK set."
            )
        keys: dict[str, RSAPublicKey] = {}
        for entry in entries:
            parsed = _parse_key(entry)
            if parsed is not None:
                keys[parsed[0]] = parsed[1]
        return keys

    async def _get_json(self, url: str, what: str) -> dict[str, Any]:
        """GET a JSON object, following at most :data:`MAX_REDIRECTS` redirects, none of which
        may leave https (or plain http for another host than loopback or the same one)."""
        assert self._session is not None
        where = url
        try:
            for _ in range(MAX_REDIRECTS + 1):
                async with self._session.get(
                    where, ssl=self._ssl, timeout=self._timeout, allow_redirects=False
                ) as response:
                    if response.status in _REDIRECTS and "Location" in response.headers:
                        target = str(URL(where).join(URL(response.headers["Location"])))
                        if _downgrade(where, target):
                            raise _keys_unavailable(
                                f"Fetching the {what} from {url} was redirected from {where} "
                                f"to {target}, which is not https; expected https throughout."
                            )
                        where = target
                        continue
                    if response.status != 200:
                        raise _keys_unavailable(
                            f"Fetching the {what} from {url} answered HTTP {response.status}; "
                            "expected 200 with a JSON object."
                        )
                    data = await response.json(content_type=None)
                    break
            else:
                raise _keys_unavailable(
                    f"Fetching the {what} from {url} was redirected more than {MAX_REDIRECTS} "
                    "times; expected the document."
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _keys_unavailable(
                f"Could not fetch the {what} from {url} ({type(exc).__name__}: {exc}); "
                "expected the endpoint to answer."
            ) from exc
        except (ValueError, RecursionError) as exc:
            raise _keys_unavailable(
                f"The {what} at {url} is not JSON; expected a JSON object."
            ) from exc
        if not isinstance(data, dict):
            raise _keys_unavailable(f"The {what} at {url} is not a JSON object; expected one.")
        return data


def _downgrade(source: str, target: str) -> bool:
    """True when going from ``source`` to ``target`` leaves https, or moves plain http to
    another host that is not loopback."""
    before, after = urlsplit(source), urlsplit(target)
    if after.scheme == "https":
        return False
    if after.scheme != "http" or before.scheme == "https":
        return True
    return after.hostname != before.hostname and not is_loopback(after.hostname)


def _parse_key(entry: object) -> tuple[str, RSAPublicKey] | None:
    """Return ``(kid, public key)`` for a usable RS256 signing JWK, or None (logged) to skip."""
    if not isinstance(entry, dict):
        log.warning("inbound_auth.key_skipped", kid=None, why="not a JSON object")
        return None
    kid = entry.get("kid")
    if not isinstance(kid, str) or not kid:
        log.warning("inbound_auth.key_skipped", kid=None, why="no kid")
        return None
    if entry.get("kty") != "RSA":
        why = "not an RSA key"
    elif entry.get("use", "sig") != "sig":
        why = "not a signing key"
    elif entry.get("alg", ALGORITHM) != ALGORITHM:
        why = f"not an {ALGORITHM} key"
    else:
        try:
            key = _RSA256.from_jwk(entry)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            why = "invalid RSA parameters"
        else:
            if not isinstance(key, RSAPublicKey):
                why = "not a public key"
            elif key.key_size < MIN_KEY_BITS:
                why = f"shorter than {MIN_KEY_BITS} bits"
            else:
                return kid, key
    log.warning("inbound_auth.key_skipped", kid=kid, why=why)
    return None
