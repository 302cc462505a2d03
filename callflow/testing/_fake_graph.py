"""FakeGraph: the parts of Microsoft Graph a calling bot touches, served on loopback.

One :class:`FakeGraph` runs, while entered (``async with FakeGraph() as fake:``):

- an Entra-like token endpoint over TLS (:class:`~callflow.testing.TokenServer`) for msal;
- the OpenID configuration and key set of the key it signs notifications with
  (``/botframework/.well-known/openid-configuration``, plain http);
- Graph call control under ``/v1.0`` (:mod:`~callflow.testing._graph_api`): the decisions,
  keepAlive, a call's state (GET), hang-up, the actions after the answer, new calls,
  recordings.

:meth:`FakeGraph.place_call` POSTs a signed incoming-call notification to a webhook and
returns a :class:`~callflow.testing.CallHandle`; a call not decided within the platform
timeout ends (:mod:`~callflow.testing._timeouts`); follow-ups, key presses
(:meth:`CallHandle.press <callflow.testing.CallHandle.press>`) and arbitrary notifications go
out through the notifier (:mod:`~callflow.testing._notifier`). Operations, transfers and new
calls play out over time (:mod:`~callflow.testing._operations`); calls the bot creates send
their notifications to the webhook :meth:`FakeGraph.route` names for their ``callbackUri``.

Faults: :meth:`FakeGraph.fail_next` (status, ``Retry-After``, error code), ``latency``
(seconds added to every call-control reply), :meth:`FakeGraph.plan_operation` and
:meth:`FakeGraph.gone`; out-of-order, duplicate and arbitrary notifications with
:meth:`FakeGraph.send_states` and :meth:`FakeGraph.notify`.

This class is the facade: it builds the parts (state, notifier, timeout enforcer, operations
engine, HTTP API) around one :class:`~callflow.testing._runtime.Runtime`, which it starts
when entered. Everything runs on the test's event loop and listens on 127.0.0.1 on free
ports; every background task belongs to a task group inside the ``async with`` block;
waiting is done on events.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import structlog

from callflow.settings import Settings
from callflow.testing._call_handle import CallHandle
from callflow.testing._config import FakeConfig, Forward, Knobs, bot_environ, bot_settings
from callflow.testing._failures import FailureLog
from callflow.testing._graph_api import GraphApi
from callflow.testing._graph_http import GRAPH_PATH, KEYS_PATH
from callflow.testing._keys import DEFAULT_ISSUER, OPENID_CONFIG_PATH, KeyServer, SigningKey
from callflow.testing._notifier import Notifier, Signer
from callflow.testing._operations import OperationsEngine
from callflow.testing._payloads import CallerSpec, CallKind, check_kind
from callflow.testing._recorded import Recorded
from callflow.testing._records import CALLBACK_URL, DEFAULT_APP_ID, DEFAULT_TENANT_ID, WebhookReply
from callflow.testing._runtime import Runtime
from callflow.testing._state import GraphState, Plan
from callflow.testing._timeouts import PlatformTimeouts
from callflow.testing._token_server import TokenServer

if TYPE_CHECKING:
    from callflow.bot import Bot, RunningBot

__all__ = ["FakeGraph"]

log = structlog.get_logger(__name__)


class FakeGraph(Recorded):
    """A loopback stand-in for Microsoft Graph's calling APIs; see the module docstring.

    ``app_id``/``tenant_id``/``app_secret`` are the bot's identity (the token endpoint checks
    the secret). ``platform_timeout``/``recording_timeout`` are how long a placed call waits
    for a decision. ``token_lifetime`` is the lifetime of app tokens and notification tokens.
    ``signing_key`` shares a key between fakes (generating one takes tens of milliseconds).
    ``strict=True`` (the pytest plugin's default) makes a failure of a served bot's own code
    fail the test (see :meth:`serve`); :attr:`failures` lists them either way.
    """

    app_id = Forward[str]("_config")
    tenant_id = Forward[str]("_config")
    app_secret = Forward[str]("_config")
    platform_timeout = Forward[float]("_config")
    recording_timeout = Forward[float]("_config")
    token_lifetime = Forward[int]("_config")
    issuer = Forward[str]("_config")
    follow_up = Forward[bool]("_config")
    callback_url = Forward[str]("_config")

    latency = Forward[float](
        "_knobs", "Seconds added to every call-control reply (settable at any time)."
    )
    operation_duration = Forward[float](
        "_knobs", "Seconds an operation runs before its completion notification (settable)."
    )
    upper_case_ids = Forward[bool](
        "_knobs",
        "Name calls upper-case without dashes in operation and tone notification URLs, as Graph "
        "sometimes does (settable).",
    )
    recording_audio = Forward[bytes](
        "_knobs", "The bytes every recording download serves (a short silent WAV by default)."
    )

    def __init__(
        self,
        *,
        app_id: str = DEFAULT_APP_ID,
        tenant_id: str = DEFAULT_TENANT_ID,
        app_secret: str = "fake-secret",
        platform_timeout: float = 15.0,
        recording_timeout: float = 5.0,
        token_lifetime: int = 3600,
        issuer: str = DEFAULT_ISSUER,
        follow_up: bool = True,
        signing_key: SigningKey | None = None,
        callback_url: str = CALLBACK_URL,
        strict: bool = False,
    ) -> None:
        config = FakeConfig(
            app_id, tenant_id, app_secret, platform_timeout, recording_timeout,
            token_lifetime, issuer, follow_up, callback_url,
        )  # fmt: skip
        self.key = signing_key if signing_key is not None else SigningKey.generate()
        self.tokens = TokenServer(expires_in=token_lifetime, client_secret=app_secret)
        """The TLS token endpoint; its ``fail_next``/``set_delay`` inject token faults."""
        self.keys = KeyServer.for_keys(self.key, issuer=issuer)
        """The key endpoint; ``keys.failing = True`` makes it answer 500."""
        self._config = config
        self.strict = strict
        """Strict mode (settable): see :meth:`serve`."""
        self._failures = FailureLog()
        self._knobs = knobs = Knobs()
        self._runtime = runtime = Runtime()
        self._state = state = GraphState()
        self._signer = Signer(config, self.key)
        self._notifier = notifier = Notifier(config, knobs, runtime, state, self._signer)
        self._timeouts = PlatformTimeouts(notifier)
        self._operations = operations = OperationsEngine(config, knobs, runtime, state, notifier)
        self._api = GraphApi(
            config, knobs, runtime, state, notifier, operations, self.tokens, self.keys
        )
        self.media = operations.media
        """Judges the prompts bots play (:meth:`~FakeMedia.register`, ``serve_origin``)."""

    def __repr__(self) -> str:
        where = self.url if self._runtime.serving else "not running"
        calls, requests = len(self._state.calls), len(self._state.requests)
        return f"<FakeGraph {where} calls={calls} requests={requests}>"

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Start the token endpoint, the key endpoint, Graph and the timeout enforcer."""
        await self._runtime.start(
            self._api.app, servers=(self.tokens,), tasks=(self._timeouts.run,)
        )
        log.info("fake_graph.started", url=self.url, authority_url=self.tokens.authority_url)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop everything: pending follow-ups and timeouts are dropped."""
        await self._runtime.close()

    # -- addresses and wiring ---------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, where Graph and the key endpoint listen."""
        return self._runtime.url

    @property
    def graph_url(self) -> str:
        """The Graph base URL, ``http://127.0.0.1:PORT/v1.0``."""
        return self.url + GRAPH_PATH

    @property
    def openid_config_url(self) -> str:
        """The OpenID configuration naming the key set notifications are signed with."""
        return self.url + KEYS_PATH + OPENID_CONFIG_PATH

    @property
    def authority_url(self) -> str:
        """The token endpoint's base, ``https://127.0.0.1:PORT`` (msal adds the tenant)."""
        return self.tokens.authority_url

    @property
    def ca_bundle(self) -> str:
        """The PEM file of the test CA that signed the token endpoint's certificate."""
        return self.tokens.ca_bundle_path

    @property
    def token_requests(self) -> int:
        """How many token requests the token endpoint has received."""
        return self.tokens.requests

    def settings(self, **overrides: Any) -> Settings:
        """Return :class:`~callflow.Settings` wiring a bot to this fake; ``overrides`` win.

        The bot listens on 127.0.0.1 on a free port (its metrics on another free port of
        127.0.0.1: ``running.metrics_url``), trusts the fake's CA, fetches tokens
        from its token endpoint and keys from its key endpoint, accepts only the fake's
        issuer, and uses the fake's platform and recording timeouts. The safety margin stays
        at its default (3 s) unless that is not shorter than both timeouts; then it is a
        third of the shorter one.
        """
        return bot_settings(
            self._config,
            self.authority_url,
            self.ca_bundle,
            self.graph_url,
            self.openid_config_url,
            overrides,
        )

    def environ(self, **overrides: Any) -> dict[str, str]:
        """Return :meth:`settings` as ``CALLFLOW_*`` environment variables (for a subprocess)."""
        return bot_environ(self.settings(**overrides), overrides)

    @contextlib.asynccontextmanager
    async def serve(
        self, bot: Bot[Any], *, services: Any = None, strict: bool | None = None, **overrides: Any
    ) -> AsyncIterator[RunningBot]:
        """Configure ``bot`` with :meth:`settings` and serve it; yield the running bot.

        The bot fetches real tokens with msal from the TLS token endpoint and checks the
        notification tokens against the key endpoint. ``services`` (when not None) replaces
        the bot's own services (``Bot(services=...)``) for this run: hand in fakes. A bot
        serves only once: create a new one per test.

        Strict mode (``strict``, by default the fake's :attr:`strict`): when the bot's own
        code failed while it served (a handler raised or returned something that is not a
        decision, an observer, middleware, filter, flow or error hook raised), leaving the
        block raises :class:`~callflow.testing.BotCodeError` naming each failure and its
        call; if the block is ending with an exception already, they are added to it as a
        note. Every failure is in :attr:`failures` either way.
        """
        self._runtime.check()
        bot.configure(self.settings(**overrides))
        if services is not None:
            bot.services = services
        strict = self.strict if strict is None else strict
        failures = self._failures
        try:
            async with bot.serve(on_failure=failures.add) as running:
                self.media.serve_origin(bot.settings.callback_url or CALLBACK_URL, running.url)
                yield running
        except BaseException as exc:
            if strict:
                failures.note_on(exc)
            raise
        if strict:
            failures.raise_new()

    # -- tokens -----------------------------------------------------------------------------

    def sign(
        self,
        *,
        signing_key: SigningKey | None = None,
        algorithm: str = "RS256",
        header: Mapping[str, Any] | None = None,
        lifetime: float | None = None,
        now: float | None = None,
        **claims: Any,
    ) -> str:
        """Return a notification token: a JWT like Graph's, signed with the fake's key.

        ``aud`` is the app id, ``iss`` the fake's issuer, ``tid`` its tenant; ``claims``
        override or add claims (None removes one: ``sign(tid=None)``). ``signing_key``,
        ``algorithm`` (also ``"none"`` and ``"HS256"`` forgeries) and ``header`` make bad
        tokens for attack tests.
        """
        return self._signer.sign(signing_key, algorithm, header, lifetime, now, claims)

    def app_token(self) -> str:
        """Return a new bearer token that Graph accepts, without going through msal."""
        return self._api.app_token()

    # -- faults and plans -------------------------------------------------------------------

    def fail_next(
        self,
        op: str | None = None,
        status: int = 503,
        *,
        retry_after: float | None = None,
        count: int = 1,
        code: str | None = None,
        call_id: str | None = None,
    ) -> None:
        """Answer the next ``count`` matching call-control requests with ``status``.

        ``op`` is one of :data:`OPS`, ``"decision"`` (answer, reject or redirect) or None
        (any); ``call_id`` narrows it to one call. ``retry_after`` adds a ``Retry-After``
        header (seconds); ``code`` is the Graph error code (a default per status, e.g.
        ``TooManyRequests`` for 429, ``8522`` for 404). The request is still authenticated
        and recorded (``injected=True``), but the call's state does not change.
        """
        self._state.add_fault(
            op, status, retry_after=retry_after, count=count, code=code, call_id=call_id
        )

    def gone(self, call_id: str) -> None:
        """Make Graph forget ``call_id``: every later request for it gets 404/8522."""
        self._state.forget(call_id)

    def route(self, callback_uri: str, webhook_url: str) -> None:
        """Send the notifications of calls created with ``callback_uri`` to ``webhook_url``.

        Graph calls the ``callbackUri`` a new call names (https); the fake calls the webhook
        routed here instead. A ``callbackUri`` with a query string (``?instance=...``) uses
        the route of the URI without it unless it has its own.
        """
        self._state.route(callback_uri, webhook_url)

    def plan_operation(
        self,
        op: str | None = None,
        *,
        call_id: str | None = None,
        duration: float | None = None,
        code: int | None = None,
        subcode: int | None = None,
        message: str | None = None,
        completion_reason: str | None = None,
        complete: bool = True,
        immediate: bool = False,
        before_reply: bool = False,
        duplicate: int = 0,
        out_of_order: bool = False,
        count: int = 1,
    ) -> None:
        """Change what the next ``count`` matching operations do.

        ``op`` is one of :data:`ACTION_OPS` or ``create`` (None: any); ``call_id`` narrows it
        to one call. ``duration`` replaces ``operation_duration``. A ``code`` outside 2xx
        makes the operation fail with (``code``, ``subcode``, ``message``); a transfer then
        goes back to ``established`` with that resultInfo and a new call ends ``terminated``
        with it. ``completion_reason`` replaces the reason sent. ``complete=False``: it never
        ends. ``immediate=True``: the 200 itself says completed (or failed), no notification
        follows. ``before_reply=True``: the completion (a new call's states) is delivered
        before the reply to the POST is sent. ``duplicate=N``: the completion is sent N more
        times. ``out_of_order=True``: a transfer sends transferAccepted before transferring,
        a new call established before establishing.
        """
        plan = Plan(
            op, call_id, duration, code, subcode, message, completion_reason, complete,
            immediate, before_reply, duplicate, out_of_order, remaining=count,
        )  # fmt: skip
        self._state.add_plan(plan)

    # -- notifications ----------------------------------------------------------------------

    async def place_call(
        self,
        webhook_url: str,
        *,
        kind: CallKind = "p2p",
        caller: CallerSpec = None,
        call_id: str | None = None,
        tenant_id: str | None = None,
        policy_recording: bool = False,
        duplicate: int = 0,
        token: str | None = None,
        payload: Mapping[str, Any] | None = None,
        headers: Mapping[str, str | None] | None = None,
    ) -> CallHandle:
        """Ring the bot: POST a signed incoming-call notification to ``webhook_url``.

        ``kind`` is one of :data:`~callflow.testing.KINDS`; ``caller`` an
        :class:`~callflow.Identity`, a small dict (``{"kind": "user", "id": ...}``) or a raw
        identitySet. ``payload`` replaces the whole body (its call id is read from it unless
        ``call_id`` is given). ``token`` replaces the bearer token, ``headers`` add or (with
        None) remove headers. ``duplicate=N`` posts the same notification N more times. The
        platform timeout starts when the first POST goes out. Connection errors propagate
        (the call then counts as ended).
        """
        kind = check_kind(kind, stacklevel=3)
        call, body = self._notifier.open_call(
            webhook_url, kind, caller, call_id, tenant_id, policy_recording, duplicate, payload
        )
        self._timeouts.schedule(call)
        await self._notifier.ring(call, body, duplicate=duplicate, token=token, headers=headers)
        return call

    async def notify(
        self,
        webhook_url: str,
        body: Mapping[str, Any] | Sequence[Mapping[str, Any]] | bytes | str,
        *,
        token: str | None = None,
        headers: Mapping[str, str | None] | None = None,
        call_id: str | None = None,
        tenant_id: str | None = None,
    ) -> WebhookReply:
        """POST any notification to ``webhook_url``, signed, and return the webhook's reply.

        A dict is sent as the whole JSON body; a list of notification items is wrapped in a
        ``commsNotifications`` body; bytes or str are sent as they are (garbage tests).
        ``call_id`` files the reply under that placed call's deliveries. Connection errors
        propagate.
        """
        return await self._notifier.notify(
            webhook_url, body, token=token, headers=headers, call_id=call_id, tenant_id=tenant_id
        )

    async def send_states(
        self,
        webhook_url: str,
        call_id: str,
        states: Iterable[str],
        *,
        etags: Iterable[int] | None = None,
        batch: bool = False,
        token: str | None = None,
        headers: Mapping[str, str | None] | None = None,
    ) -> tuple[WebhookReply, ...]:
        """Send state notifications for ``call_id`` in the order given (one POST each).

        ``etags`` gives each one's ``@odata.etag`` (send them out of order to test stale
        updates); by default they continue the call's own counter. ``terminated`` becomes a
        ``deleted`` notification. ``batch=True`` sends all of them in one POST. The fake's
        own record of the call is not changed.
        """
        return await self._notifier.send_states(
            webhook_url, call_id, states, etags=etags, batch=batch, token=token, headers=headers
        )

    async def end_call(
        self,
        call_id: str,
        *,
        code: int | None = 200,
        subcode: int | None = 5001,
        message: str | None = "The conversation has ended.",
    ) -> WebhookReply:
        """The caller hangs up: end the placed call and POST ``deleted``/``terminated`` for it.

        Later requests for the call get 404/8522.
        """
        self._runtime.check()
        call = self.call(call_id)
        self._operations.drop(call)
        return await self._notifier.hang_up(call, code=code, subcode=subcode, message=message)
