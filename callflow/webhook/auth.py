"""Inbound authentication: verify the bearer token Graph sends with every notification.

Runs on the **I/O loop**, inside the webhook's request handling
(:mod:`callflow.webhook.handler`); it does no I/O of its own: the keys come from the
:class:`~callflow.webhook.keys.SigningKeys` it is built with, which fetches and refreshes
them (an unknown key id asks it for a refresh).

Graph signs each notification's ``Authorization: Bearer <JWT>`` with RS256. The keys come
from an OpenID configuration document (its ``jwks_uri``); they are fetched at start, refreshed
every ``refresh_interval`` and, at most once per ``unknown_kid_interval``, when a token names a
key id that is not in the set (see :mod:`callflow.webhook.keys`).

:class:`TokenVerifier` checks a token against a key set it is given;
:class:`InboundAuthenticator` builds both from one set of arguments (what the worker uses).

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
import re
import ssl as ssl_module
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, Protocol, Self

import aiohttp
import attrs
import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.utils import base64url_decode

from callflow.errors import ConfigError, InboundAuthError
from callflow.webhook.keys import ALGORITHM, SigningKeys, key_set_problems

__all__ = [
    "REASONS",
    "TENANT_ID_CLAIM",
    "Caller",
    "InboundAuthenticator",
    "KeySet",
    "TokenVerifier",
]

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

MAX_TOKEN_LENGTH: Final = 16_384
_COMPACT_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
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


class KeySet(Protocol):
    """What a :class:`TokenVerifier` asks of its signing keys (:class:`SigningKeys`)."""

    async def __aenter__(self) -> Any:
        """Load the keys and keep them fresh; raise ``keys_unavailable`` if they cannot be."""

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Any:
        """Stop keeping the keys fresh and forget them."""

    def key_for(self, kid: str) -> RSAPublicKey | None:
        """The current key with id ``kid``, or None."""

    async def refresh_for_unknown(self, kid: str) -> RSAPublicKey:
        """Refresh for an unknown ``kid`` (rate limited) and return its key, or raise
        ``unknown_key`` (403) or ``keys_unavailable`` (503)."""


def _reject(reason: str, message: str) -> InboundAuthError:
    status = 401 if reason in ("missing", "malformed") else 403
    return InboundAuthError(reason, message, status=status)


def _numeric(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _normalise_issuer(issuer: str) -> str:
    return issuer.rstrip("/")


def _verifier_problems(
    *,
    app_id: str,
    issuers: Sequence[str],
    allowed_tenants: Collection[str] | None,
    leeway: float,
    cache_size: int,
) -> list[str]:
    problems: list[str] = []
    if not app_id:
        problems.append("app_id is empty; expected the bot's application id")
    if isinstance(issuers, str) or not issuers or not all(issuers):
        problems.append(
            f"issuers {issuers!r} is not a non-empty sequence of non-empty issuer strings"
        )
    if allowed_tenants is not None and (isinstance(allowed_tenants, str) or not allowed_tenants):
        problems.append(
            f"allowed_tenants {allowed_tenants!r} is not a non-empty collection of tenant "
            "ids; pass None to accept every tenant"
        )
    if leeway < 0:
        problems.append(f"leeway {leeway!r} is negative; expected seconds >= 0")
    if cache_size < 0:
        problems.append(f"cache_size {cache_size!r} is negative; expected >= 0 (0 disables)")
    return problems


class TokenVerifier:
    """Checks the bearer tokens of inbound notifications against the key set it is given.

    Use it as an async context manager: entering enters the key set (which fetches the keys,
    raising ``InboundAuthError(reason="keys_unavailable", status=503)`` if that fails);
    leaving leaves it and forgets cached tokens. :meth:`authenticate` returns a
    :class:`Caller` or raises :class:`~callflow.errors.InboundAuthError`.

    Verified tokens are remembered (up to ``cache_size``, oldest evicted first) until they
    expire, so a token Graph reuses costs a dictionary lookup; its expiry and the tenant
    allow-list are still checked every time. ``clock`` (seconds since the epoch) is used for
    every time check.
    """

    def __init__(
        self,
        keys: KeySet,
        *,
        app_id: str,
        issuers: Sequence[str],
        allowed_tenants: Collection[str] | None = None,
        leeway: float = 60.0,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        problems = _verifier_problems(
            app_id=app_id,
            issuers=issuers,
            allowed_tenants=allowed_tenants,
            leeway=leeway,
            cache_size=cache_size,
        )
        if problems:
            raise ConfigError(f"{type(self).__name__}: " + "; ".join(problems) + ".")
        self._keys = keys
        self._app_id = app_id
        self._issuers = frozenset(_normalise_issuer(issuer) for issuer in issuers)
        self._allowed_tenants = (
            None
            if allowed_tenants is None
            else frozenset(tenant.lower() for tenant in allowed_tenants)
        )
        self._leeway = leeway
        self._cache_size = cache_size
        self._clock = clock
        self._started = False
        self._cache: dict[str, Caller] = {}

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Enter the key set (fetching the keys); raise if the keys are unavailable."""
        if self._started:
            raise RuntimeError(f"{type(self).__name__} is already started; enter it only once")
        await self._keys.__aenter__()
        self._started = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Leave the key set (stopping its refresher) and forget cached tokens."""
        try:
            await self._keys.__aexit__(exc_type, exc, tb)
        finally:
            self._started = False
            self._cache.clear()

    @property
    def ready(self) -> bool:
        """True while started with a key set loaded."""
        return self._started

    # -- authentication --------------------------------------------------------------------

    async def authenticate(self, authorization: str | None) -> Caller:
        """Verify an ``Authorization`` header value and return the verified caller.

        Raises :class:`~callflow.errors.InboundAuthError` (status 401, 403 or 503, see the
        module docstring) when the token is not acceptable.
        """
        if not self._started:
            raise RuntimeError(
                f"{type(self).__name__} is not started; use 'async with authenticator:' first"
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
        key = self._keys.key_for(kid)
        if key is None:
            key = await self._keys.refresh_for_unknown(kid)
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


class InboundAuthenticator(TokenVerifier):
    """A :class:`TokenVerifier` with its own :class:`~callflow.webhook.keys.SigningKeys`,
    both built from one set of arguments.

    Use it as an async context manager: entering fetches the key set (raising
    ``InboundAuthError(reason="keys_unavailable", status=503)`` if that fails) and starts a
    background refresher owned by the key set; leaving stops it and closes the HTTP session
    if the key set created it. Every invalid argument is named in one
    :class:`~callflow.errors.ConfigError`, before anything is built.
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
        problems = _verifier_problems(
            app_id=app_id,
            issuers=issuers,
            allowed_tenants=allowed_tenants,
            leeway=leeway,
            cache_size=cache_size,
        ) + key_set_problems(
            openid_config_url=openid_config_url,
            refresh_interval=refresh_interval,
            unknown_kid_interval=unknown_kid_interval,
            fetch_timeout=fetch_timeout,
            retry_backoff=retry_backoff,
        )
        if problems:
            raise ConfigError("InboundAuthenticator: " + "; ".join(problems) + ".")
        signing_keys = SigningKeys(
            openid_config_url=openid_config_url,
            session=session,
            ssl=ssl,
            refresh_interval=refresh_interval,
            unknown_kid_interval=unknown_kid_interval,
            fetch_timeout=fetch_timeout,
            retry_backoff=retry_backoff,
            clock=clock,
        )
        super().__init__(
            signing_keys,
            app_id=app_id,
            issuers=issuers,
            allowed_tenants=allowed_tenants,
            leeway=leeway,
            cache_size=cache_size,
            clock=clock,
        )
        self._signing_keys = signing_keys

    @property
    def key_ids(self) -> frozenset[str]:
        """The key ids (``kid``) of the current key set."""
        return self._signing_keys.key_ids

    @property
    def refresh_failures(self) -> int:
        """Key-set fetches that failed after start (periodic, or for an unknown key id)."""
        return self._signing_keys.refresh_failures
