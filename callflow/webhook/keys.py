"""The platform's signing key set for inbound authentication: fetched, cached and refreshed.

Runs on the **I/O loop**, beside the webhook that asks it for keys; it touches the network
only: the OpenID configuration document and the key set (JWKS) its ``jwks_uri`` names, over
an HTTP session it owns (or is given). :class:`~callflow.webhook.auth.TokenVerifier` asks it
for the key a token names (:meth:`SigningKeys.key_for`) and, for a key id it does not know,
for a refresh (:meth:`SigningKeys.refresh_for_unknown`).

The keys are fetched at start, refreshed every ``refresh_interval`` and, at most once per
``unknown_kid_interval``, when a token names a key id that is not in the set. Only RS256
public signing keys of :data:`MIN_KEY_BITS` bits or more are kept; others are skipped with a
warning.

A failed refresh keeps the keys already fetched, is logged and counted
(``refresh_failures``), and the periodic refresh is retried after a jittered back-off
(``retry_backoff``) instead of a whole ``refresh_interval``; nothing a key endpoint answers
stops the worker.

A fetch follows at most :data:`MAX_REDIRECTS` redirects, and never one that leaves https
(nor plain http for another host than the same one or loopback); an https configuration
naming a plain-http ``jwks_uri`` is refused the same way. Every fetch failure is an
:class:`~callflow.errors.InboundAuthError` with reason ``keys_unavailable`` (status 503).
"""

from __future__ import annotations

import random
import ssl as ssl_module
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import urlsplit

import aiohttp
import anyio
import jwt
import structlog
from anyio.abc import TaskGroup
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.algorithms import RSAAlgorithm
from yarl import URL

from callflow._hosts import is_loopback
from callflow.errors import ConfigError, InboundAuthError

__all__ = [
    "ALGORITHM",
    "MAX_REDIRECTS",
    "MIN_KEY_BITS",
    "SigningKeys",
    "key_set_problems",
]

log = structlog.get_logger(__name__)

ALGORITHM: Final = "RS256"
"""The only signing algorithm accepted, for keys and for tokens."""
MIN_KEY_BITS: Final = 2048
"""Shorter RSA keys in the published set are skipped."""
MAX_REDIRECTS: Final = 3
"""Redirects followed when fetching the OpenID configuration or the key set."""
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_RSA256 = RSAAlgorithm(RSAAlgorithm.SHA256)


class _PendingRefresh:
    """One key-set fetch in flight; every caller that needs it waits on ``done``."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.error: InboundAuthError | None = None


def _keys_unavailable(message: str) -> InboundAuthError:
    return InboundAuthError("keys_unavailable", message, status=503)


def _unknown_key() -> InboundAuthError:
    return InboundAuthError(
        "unknown_key",
        "The token names a signing key (kid) that is not in the platform's key set.",
        status=403,
    )


def key_set_problems(
    *,
    openid_config_url: str,
    refresh_interval: float,
    unknown_kid_interval: float,
    fetch_timeout: float,
    retry_backoff: tuple[float, float],
) -> list[str]:
    """Say what is wrong with :class:`SigningKeys` arguments, one sentence each (none: [])."""
    problems: list[str] = []
    parts = urlsplit(openid_config_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        problems.append(f"openid_config_url {openid_config_url!r} is not an absolute http(s) URL")
    for name, value in (
        ("refresh_interval", refresh_interval),
        ("unknown_kid_interval", unknown_kid_interval),
        ("fetch_timeout", fetch_timeout),
    ):
        if not value > 0:
            problems.append(f"{name} {value!r} is not positive; expected seconds > 0")
    if not 0 < retry_backoff[0] <= retry_backoff[1]:
        problems.append(
            f"retry_backoff {retry_backoff!r} is not (min, max) seconds with 0 < min <= max"
        )
    return problems


class SigningKeys:
    """The platform's RS256 signing keys, fetched from an OpenID configuration and kept fresh.

    Use it as an async context manager: entering fetches the key set (raising
    ``InboundAuthError(reason="keys_unavailable", status=503)`` if that fails) and starts a
    background refresher owned by the key set; leaving stops it, forgets the keys and closes
    the HTTP session if the key set created it. ``clock`` (seconds since the epoch) paces the
    rate limit of refreshes for unknown key ids.
    """

    def __init__(
        self,
        *,
        openid_config_url: str,
        session: aiohttp.ClientSession | None = None,
        ssl: ssl_module.SSLContext | bool | None = None,
        refresh_interval: float = 7200.0,
        unknown_kid_interval: float = 60.0,
        fetch_timeout: float = 10.0,
        retry_backoff: tuple[float, float] = (5.0, 300.0),
        clock: Callable[[], float] = time.time,
    ) -> None:
        problems = key_set_problems(
            openid_config_url=openid_config_url,
            refresh_interval=refresh_interval,
            unknown_kid_interval=unknown_kid_interval,
            fetch_timeout=fetch_timeout,
            retry_backoff=retry_backoff,
        )
        if problems:
            raise ConfigError("SigningKeys: " + "; ".join(problems) + ".")
        self._openid_config_url = openid_config_url
        self._given_session = session
        self._ssl: ssl_module.SSLContext | bool = True if ssl is None else ssl
        self._refresh_interval = refresh_interval
        self._unknown_kid_interval = unknown_kid_interval
        self._timeout = aiohttp.ClientTimeout(total=fetch_timeout)
        self._retry_backoff = (float(retry_backoff[0]), float(retry_backoff[1]))
        self._clock = clock
        self.refresh_failures = 0
        """Key-set fetches that failed after start (periodic, or for an unknown key id)."""

        self._session: aiohttp.ClientSession | None = None
        self._task_group: TaskGroup | None = None
        self._keys: dict[str, RSAPublicKey] = {}
        self._pending: _PendingRefresh | None = None
        self._last_kid_refresh: float | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Fetch the key set and start the periodic refresher; raise if the keys are unavailable."""
        if self._session is not None:
            raise RuntimeError("SigningKeys is already started; enter it only once")
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
        """Stop the refresher, forget the keys, close an owned session."""
        task_group = self._task_group
        assert task_group is not None, "SigningKeys.__aexit__ without __aenter__"
        try:
            # The refresher never ends by itself: cancel it. The body's own exception (if any)
            # is not handed to the task group, so it propagates unchanged, not in a group.
            task_group.cancel_scope.cancel()
            await task_group.__aexit__(None, None, None)
        finally:
            self._task_group = None
            self._keys = {}
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

    # -- what the verifier asks ------------------------------------------------------------

    def key_for(self, kid: str) -> RSAPublicKey | None:
        """The current key with id ``kid``, or None when the set has none by that id."""
        return self._keys.get(kid)

    async def refresh_for_unknown(self, kid: str) -> RSAPublicKey:
        """Refresh the key set for an unknown ``kid`` and return its key.

        A refresh already in flight is joined; otherwise one is started, at most once per
        ``unknown_kid_interval``. Raises :class:`~callflow.errors.InboundAuthError`:
        ``unknown_key`` (403) when the set still has no such key (or the rate limit allows no
        refresh now), ``keys_unavailable`` (503) when the refresh failed.
        """
        if self._task_group is None:
            raise RuntimeError("SigningKeys is not started; use 'async with keys:' first")
        if self._pending is None:
            now = self._clock()
            last = self._last_kid_refresh
            if last is not None and 0 <= now - last < self._unknown_kid_interval:
                raise _unknown_key()
            self._last_kid_refresh = now
        error = await self._refresh("unknown_kid")
        key = self._keys.get(kid)
        if key is not None:
            return key
        if error is not None:
            raise _keys_unavailable(
                "The signing keys could not be fetched to check this token; try again later."
            ) from error
        raise _unknown_key()

    # -- refreshing ------------------------------------------------------------------------

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

    # -- fetching --------------------------------------------------------------------------

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
