"""App tokens for Microsoft Graph: the :class:`TokenProvider` seam and its msal implementation.

:class:`MsalTokenProvider` runs the client-credentials flow with msal. It acquires the token at
start, keeps every known tenant's token refreshed in the background, and answers
:meth:`~MsalTokenProvider.get_token` from memory, so sending a decision never waits for the
identity provider. msal is synchronous and only ever runs in worker threads.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

import anyio
import attrs
import msal
import requests
import structlog
from anyio.abc import TaskGroup
from anyio.from_thread import BlockingPortal
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from callflow._log import redact_value
from callflow.errors import ConfigError, TokenError

__all__ = [
    "DEFAULT_AUTHORITY_URL",
    "GRAPH_SCOPE",
    "MsalTokenProvider",
    "StaticTokenProvider",
    "TokenProvider",
]

log = structlog.get_logger(__name__)

DEFAULT_AUTHORITY_URL = "https://login.microsoftonline.com"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"

# Tenant ids are GUIDs or domain names; they end up in a URL path, so nothing else is allowed.
_TENANT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,255}")
_DESCRIPTION_LIMIT = 300


@runtime_checkable
class TokenProvider(Protocol):
    """Hands out bearer tokens for calls to Graph; implementations must be thread-safe.

    ``get_token`` may be awaited from any thread's event loop (the deadline scheduler sends
    default decisions from a second loop in its own thread through the same provider).
    """

    async def get_token(self, tenant_id: str | None = None) -> str:
        """Return a bearer token for ``tenant_id`` (the provider's own tenant when ``None``)."""
        ...


class StaticTokenProvider:
    """A :class:`TokenProvider` for development and tests that always returns the given token."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ConfigError("StaticTokenProvider needs a non-empty token string, got ''")
        self._token = token

    def __repr__(self) -> str:
        return "StaticTokenProvider(token='***')"

    async def get_token(self, tenant_id: str | None = None) -> str:
        """Return the fixed token, whatever the tenant."""
        return self._token


@attrs.frozen
class _Token:
    """A token held in memory; times are on the provider's clock."""

    value: str = attrs.field(repr=False)
    expires_at: float
    refresh_at: float


@attrs.frozen
class _Failure:
    """Why a token request failed: an OAuth2 error code (or exception name) and a description."""

    code: str
    description: str


class MsalTokenProvider:
    """Client-credentials app tokens from Entra through msal, refreshed before they expire.

    Use it as an async context manager. Entering acquires the token for ``tenant_id`` (raising
    :class:`~callflow.errors.TokenError` if that fails) and starts the background refresher;
    leaving stops it. Each token is refreshed ``refresh_margin`` seconds before it expires, but
    never before half its lifetime has passed. A failed refresh is retried with jittered
    exponential backoff between ``retry_backoff[0]`` and ``retry_backoff[1]`` seconds, while the
    old token is served as long as it is valid.

    ``ca_bundle`` makes msal trust only that CA file, whatever ``REQUESTS_CA_BUNDLE`` says;
    without it msal's HTTP session behaves as requests does by default (environment honoured).
    """

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str | None = None,
        certificate_path: str | None = None,
        certificate_thumbprint: str | None = None,
        tenant_id: str = "common",
        authority_url: str = DEFAULT_AUTHORITY_URL,
        scopes: Sequence[str] = (GRAPH_SCOPE,),
        ca_bundle: str | None = None,
        refresh_margin: float = 300.0,
        retry_backoff: tuple[float, float] = (1.0, 60.0),
        http_timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        scopes = tuple(scopes)
        problems = []
        if not client_id:
            problems.append("client_id must be the app's non-empty application (client) id")
        if (client_secret is None) == (certificate_path is None):
            problems.append(
                "exactly one credential is needed: client_secret or certificate_path "
                f"(got {'both' if client_secret is not None else 'neither'})"
            )
        if not _TENANT_RE.fullmatch(tenant_id):
            problems.append(f"tenant_id must be a tenant GUID or domain name, got {tenant_id!r}")
        if not authority_url.startswith("https://"):
            problems.append(f"authority_url must be an https:// URL, got {authority_url!r}")
        if not scopes or not all(scopes):
            problems.append(f"scopes must be non-empty strings, got {scopes!r}")
        if refresh_margin < 0:
            problems.append(f"refresh_margin must be zero or more seconds, got {refresh_margin}")
        low, high = retry_backoff
        if not 0 < low <= high:
            problems.append(
                f"retry_backoff must be (min, max) with 0 < min <= max, got {retry_backoff!r}"
            )
        if http_timeout <= 0:
            problems.append(
                f"http_timeout must be a positive number of seconds, got {http_timeout}"
            )
        if problems:
            raise ConfigError("Invalid MsalTokenProvider settings: " + "; ".join(problems) + ".")

        self._client_id = client_id
        self._client_secret = client_secret
        self._certificate_path = certificate_path
        self._certificate_thumbprint = certificate_thumbprint
        self._tenant_id = tenant_id
        self._authority_url = authority_url.rstrip("/")
        self._scopes = scopes
        self._ca_bundle = ca_bundle
        self._refresh_margin = refresh_margin
        self._retry_backoff = (low, high)
        self._http_timeout = http_timeout
        self._clock = clock

        # Read by any thread without a lock (a dict lookup is atomic); written by worker threads
        # while they hold the tenant's lock.
        self._tokens: dict[str, _Token] = {}
        self._apps: dict[str, Any] = {}
        self._sessions: list[requests.Session] = []
        self._credential: str | dict[str, str] | None = None
        self._state_lock = threading.Lock()
        self._tenant_locks: dict[str, threading.Lock] = {}
        self._kept_fresh: set[str] = set()
        self._acquisitions = 0
        self._failures = 0
        self._task_group: TaskGroup | None = None
        self._portal: BlockingPortal | None = None
        self._exit_stack: AsyncExitStack | None = None

    def __repr__(self) -> str:
        return (
            f"MsalTokenProvider(client_id={self._client_id!r}, tenant_id={self._tenant_id!r}, "
            f"authority_url={self._authority_url!r})"
        )

    @property
    def acquisitions(self) -> int:
        """How many tokens msal fetched from the identity provider (not from its cache)."""
        return self._acquisitions

    @property
    def failures(self) -> int:
        """How many token acquisitions or refreshes failed."""
        return self._failures

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Acquire the token for ``tenant_id`` and start the background refresher."""
        if self._exit_stack is not None:
            raise RuntimeError("MsalTokenProvider is already running; enter it only once")
        stack = AsyncExitStack()
        self._exit_stack = stack
        try:
            stack.callback(self._close_sessions)
            self._task_group = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(self._task_group.cancel_scope.cancel)
            self._portal = await stack.enter_async_context(BlockingPortal())
            await self._acquire(self._tenant_id)
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the refresher and close msal's HTTP sessions."""
        await self._stop()

    async def _stop(self) -> None:
        stack, self._exit_stack = self._exit_stack, None
        self._portal = None
        try:
            if stack is not None:
                await stack.aclose()
        finally:
            self._task_group = None

    def _close_sessions(self) -> None:
        with self._state_lock:
            sessions, self._sessions = self._sessions, []
            self._apps.clear()
            self._tokens.clear()
            self._kept_fresh.clear()
        for session in sessions:
            session.close()

    # -- tokens ------------------------------------------------------------------------------

    async def get_token(self, tenant_id: str | None = None) -> str:
        """Return a valid token for ``tenant_id`` (the configured tenant when ``None``).

        A known tenant's token comes from memory. A new tenant's token is acquired now (callers
        for the same tenant share one request) and then kept refreshed like the others.
        """
        tenant = tenant_id or self._tenant_id
        token = self._tokens.get(tenant)
        if token is not None and self._clock() < token.expires_at:
            return token.value
        if self._portal is None:
            raise TokenError(
                "MsalTokenProvider is not running; use 'async with provider:' before get_token()"
            )
        if not _TENANT_RE.fullmatch(tenant):
            raise TokenError(f"Cannot get a token for tenant {tenant!r}: expected a GUID or domain")
        return await self._acquire(tenant)

    async def _acquire(self, tenant: str) -> str:
        # A cancelled caller does not wait for the identity provider; the token is kept anyway.
        outcome = await anyio.to_thread.run_sync(
            self._fetch_blocking, tenant, False, abandon_on_cancel=True
        )
        if isinstance(outcome, _Failure):
            log.warning(
                "graph.token_acquire_failed",
                tenant_id=tenant,
                error=outcome.code,
                error_description=outcome.description,
            )
            raise TokenError(
                f"Could not get a Graph app token for tenant {tenant!r} from "
                f"{self._authority_url}: {outcome.code} ({outcome.description}). Expected the "
                f"credentials of app {self._client_id!r} to be accepted by that tenant."
            )
        return outcome.value

    async def _keep_fresh(self, tenant: str) -> None:
        """Refresh ``tenant``'s token whenever it is due, until the provider stops.

        Nothing a refresh runs into ends this task (nor the worker that owns it): every
        failure is logged, counted and retried with backoff while the old token is served.
        """
        failed = 0
        current = self._tokens.get(tenant)
        delay = current.refresh_at - self._clock() if current is not None else 0.0
        while True:
            await anyio.sleep(max(0.0, delay))
            # Not abandoned on cancel: stopping waits for a request in flight (at most
            # http_timeout) so that no thread still uses msal after its sessions are closed.
            try:
                outcome = await anyio.to_thread.run_sync(self._fetch_blocking, tenant, True)
            except Exception as exc:
                outcome = self._failed(type(exc).__name__, str(exc))
            if isinstance(outcome, _Token):
                failed = 0
                delay = outcome.refresh_at - self._clock()
                continue
            failed += 1
            delay = self._backoff(failed)
            log.warning(
                "graph.token_refresh_failed",
                tenant_id=tenant,
                error=outcome.code,
                error_description=outcome.description,
                attempt=failed,
                retry_in=round(delay, 3),
            )

    def _backoff(self, failed: int) -> float:
        """Seconds to wait after the ``failed``-th failure in a row: doubling, jittered, capped."""
        low, high = self._retry_backoff
        base = low * 2.0 ** min(failed - 1, 60)
        return min(high, random.uniform(base, 2 * base))

    # -- worker-thread side ------------------------------------------------------------------

    def _fetch_blocking(self, tenant: str, refresh: bool) -> _Token | _Failure:
        """Get a fresh token from the identity provider unless another thread just did."""
        with self._state_lock:
            lock = self._tenant_locks.setdefault(tenant, threading.Lock())
        with lock:
            current = self._tokens.get(tenant)
            if current is not None and self._clock() < (
                current.refresh_at if refresh else current.expires_at
            ):
                return current
            started = self._clock()
            try:
                result = self._request_blocking(tenant)
            except Exception as exc:  # msal, requests and file errors all mean "no token"
                return self._failed(type(exc).__name__, str(exc))
            if "access_token" not in result:
                return self._failed(
                    str(result.get("error") or "unknown_error"),
                    str(result.get("error_description") or "no description"),
                )
            try:
                token = _token_of(result, started, self._refresh_margin)
            except ValueError as exc:
                return self._failed("invalid_token_response", str(exc))
            self._tokens[tenant] = token
            with self._state_lock:
                self._acquisitions += 1
                is_new = tenant not in self._kept_fresh
                self._kept_fresh.add(tenant)
        if is_new:
            self._start_refresher(tenant)
        return token

    def _request_blocking(self, tenant: str) -> dict[str, Any]:
        app = self._apps.get(tenant)
        if app is None:
            app = self._apps[tenant] = self._new_app(tenant)
        # msal (>= 1.23) answers acquire_token_for_client from its cache until the token is
        # five minutes from expiry, and it refuses force_refresh: drop its cached access tokens
        # so that every call here really asks the identity provider.
        cache = app.token_cache
        for entry in list(cache.search(cache.CredentialType.ACCESS_TOKEN)):
            cache.remove_at(entry)
        result: dict[str, Any] = app.acquire_token_for_client(scopes=list(self._scopes))
        return result

    def _new_app(self, tenant: str) -> Any:
        session = self._new_session()
        try:
            app = msal.ConfidentialClientApplication(
                self._client_id,
                client_credential=self._load_credential(),
                authority=f"{self._authority_url}/{tenant}",
                http_client=session,
                # msal asks login.microsoftonline.com about any other host unless told not to.
                instance_discovery=None if self._authority_url == DEFAULT_AUTHORITY_URL else False,
            )
        except BaseException:
            session.close()
            raise
        with self._state_lock:
            self._sessions.append(session)
        return app

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        if self._ca_bundle is not None:
            session.trust_env = False  # otherwise REQUESTS_CA_BUNDLE overrides verify
            session.verify = self._ca_bundle
        session.mount("https://", requests.adapters.HTTPAdapter(max_retries=1))
        session.request = functools.partial(  # type: ignore[method-assign]
            session.request, timeout=self._http_timeout
        )
        return session

    def _load_credential(self) -> str | dict[str, str]:
        if self._client_secret is not None:
            return self._client_secret
        if self._credential is None:
            assert self._certificate_path is not None
            pem = Path(self._certificate_path).read_text()
            thumbprint = self._certificate_thumbprint
            if thumbprint is None:
                certificate = x509.load_pem_x509_certificate(pem.encode())
                thumbprint = certificate.fingerprint(hashes.SHA1()).hex()
            self._credential = {"private_key": pem, "thumbprint": thumbprint}
        return self._credential

    def _failed(self, code: str, description: str) -> _Failure:
        with self._state_lock:
            self._failures += 1
        # The secret's exact value, when long enough to be told from ordinary text: a
        # placeholder such as "s" would otherwise be cut out of every word of the message.
        description = redact_value(description, self._client_secret)
        description = " ".join(description.split())[:_DESCRIPTION_LIMIT]
        return _Failure(code=code, description=description)

    def _start_refresher(self, tenant: str) -> None:
        portal, task_group = self._portal, self._task_group
        if portal is None or task_group is None:
            return  # stopping: nothing left to refresh for

        def spawn() -> None:
            # Not ``portal.call(task_group.start_soon, ...)``: since anyio 4.14 start_soon
            # returns an awaitable task handle, which the portal would wait on forever.
            task_group.start_soon(self._keep_fresh, tenant)

        # RuntimeError/CancelledError: the provider stopped while this thread was fetching.
        with contextlib.suppress(RuntimeError, concurrent.futures.CancelledError):
            portal.call(spawn)


def _token_of(result: dict[str, Any], started: float, margin: float) -> _Token:
    """The token in a successful msal result; ValueError when its fields are not usable."""
    value = result["access_token"]
    if not isinstance(value, str) or not value:
        raise ValueError("access_token is not a non-empty string")
    raw = result.get("expires_in") or 600  # msal's default, too
    try:
        lifetime = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"expires_in {str(raw)[:40]!r} is not a number of seconds") from None
    if not 0 < lifetime < 10 * 365 * 86_400:
        raise ValueError(f"expires_in {lifetime!r} is not a positive number of seconds")
    return _Token(
        value=value,
        expires_at=started + lifetime,
        refresh_at=started + max(lifetime - margin, lifetime / 2),
    )
