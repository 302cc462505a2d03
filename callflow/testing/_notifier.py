"""The notifications a FakeGraph POSTs to a bot's webhook, signed like Graph's.

:class:`Signer` makes the notification tokens (JWTs like Graph's, signed with the fake's
key; one per tenant, reused until close to its expiry). :class:`Notifier` builds and POSTs
every notification: the incoming call of :meth:`FakeGraph.place_call
<callflow.testing.FakeGraph.place_call>` (and its duplicates), key presses
(:meth:`CallHandle.press <callflow.testing.CallHandle.press>`, once the bot subscribed to
tones), the follow-ups of a decision (with ``follow_up=True``, the default, an accepted answer
is followed by an ``updated``/``established`` notification and a reject, redirect or hang-up
by a ``deleted``/``terminated`` one), the caller hanging up, and the arbitrary, out-of-order
and duplicate ones of :meth:`FakeGraph.send_states <callflow.testing.FakeGraph.send_states>`
and :meth:`FakeGraph.notify <callflow.testing.FakeGraph.notify>`. Each goes to the webhook
the call was placed on, or, once the bot decided with a ``callbackUri`` that names another
(a routed one, or one with a fleet worker's ``?instance=`` query), to that one. Every reply
is recorded on its call as a :class:`~callflow.testing.WebhookReply`.

Runs on the test's event loop (where the fake runs): POSTs go out through the runtime's
client session; background deliveries are tasks of its task group, at most 64 in flight.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

import aiohttp
import structlog
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from callflow.testing._call_handle import CallHandle
from callflow.testing._config import FakeConfig, Knobs
from callflow.testing._keys import SigningKey, graph_claims
from callflow.testing._payloads import (
    GRAPH_TONES,
    KINDS,
    CallerSpec,
    call_state,
    call_terminated,
    envelope,
    incoming_call,
    tone,
)
from callflow.testing._records import WebhookReply, decode_body
from callflow.testing._runtime import Runtime
from callflow.testing._state import GraphState

__all__ = ["Notifier", "Signer"]

log = structlog.get_logger(__name__)

_LARGE_BODY: Final = 512 * 1024
_TOKEN_REUSE_MARGIN: Final = 300.0
_ENDED_BY_APP: Final = {
    "reject": "The call was rejected by the application.",
    "redirect": "The call was redirected by the application.",
    "delete": "The call was ended by the application.",
}


class Signer:
    """Signs notification tokens for one fake's app, tenant and issuer."""

    def __init__(self, config: FakeConfig, key: SigningKey) -> None:
        self._config = config
        self._key = key
        self._cached: dict[str, tuple[str, float]] = {}

    def sign(
        self,
        signing_key: SigningKey | None = None,
        algorithm: str = "RS256",
        header: Mapping[str, Any] | None = None,
        lifetime: float | None = None,
        now: float | None = None,
        claims: Mapping[str, Any] | None = None,
    ) -> str:
        """A notification token; see :meth:`FakeGraph.sign <callflow.testing.FakeGraph.sign>`."""
        config = self._config
        values = graph_claims(
            app_id=config.app_id,
            tenant_id=config.tenant_id,
            issuer=config.issuer,
            lifetime=config.token_lifetime if lifetime is None else lifetime,
            now=now,
            **(claims or {}),
        )
        key = self._key if signing_key is None else signing_key
        return key.sign(values, headers=header, algorithm=algorithm)

    def token_for(self, tenant_id: str) -> str:
        """The token notifications for ``tenant_id`` carry, reused until near its expiry."""
        now = time.time()
        cached = self._cached.get(tenant_id)
        if cached is not None and cached[1] - now > _TOKEN_REUSE_MARGIN:
            return cached[0]
        token = self.sign(now=now, claims={"tid": tenant_id})
        self._cached[tenant_id] = (token, now + self._config.token_lifetime)
        return token


class Notifier:
    """Builds and POSTs the fake's notifications, and records the webhook's replies."""

    def __init__(
        self,
        config: FakeConfig,
        knobs: Knobs,
        runtime: Runtime,
        state: GraphState,
        signer: Signer,
    ) -> None:
        self._config = config
        self._knobs = knobs
        self._runtime = runtime
        self._state = state
        self._signer = signer

    # -- placed calls -----------------------------------------------------------------------

    def open_call(
        self,
        webhook_url: str,
        kind: str,
        caller: CallerSpec,
        call_id: str | None,
        tenant_id: str | None,
        policy_recording: bool,
        duplicate: int,
        payload: Mapping[str, Any] | None,
    ) -> tuple[CallHandle, Any]:
        """Check a ``place_call``, build its handle and incoming-call body, know the call."""
        self._runtime.check()
        if kind not in KINDS:
            raise ValueError(f"unknown call kind {kind!r}; expected one of {', '.join(KINDS)}")
        if duplicate < 0:
            raise ValueError(f"duplicate must be zero or more extra deliveries, got {duplicate}")
        if call_id is None:
            call_id = _call_id_of(payload) if payload is not None else str(uuid.uuid4())
        if call_id in self._state.calls:
            raise ValueError(f"call {call_id!r} was already placed; expected a new call id")
        config = self._config
        tenant = tenant_id or config.tenant_id
        recording = policy_recording or kind == "policy_recording"
        if payload is not None:
            body: Any = payload
            recording = recording or _has_bot_data(payload)
        else:
            body = incoming_call(
                kind=kind,
                call_id=call_id,
                tenant_id=tenant,
                bot_app_id=config.app_id,
                callback_uri=config.callback_url,
                caller=caller,
                policy_recording=recording,
                call_chain_id=f"c4a1f0e2-{call_id}",
            )
        call = CallHandle(
            call_id=call_id,
            kind=kind,
            webhook_url=webhook_url,
            tenant_id=tenant,
            policy_recording=recording,
            timeout=config.recording_timeout if recording else config.platform_timeout,
            payload=body,
            press=self.press,
        )
        call.resource = _resource_of(body)
        self._state.add_call(call)
        return call, body

    async def ring(
        self,
        call: CallHandle,
        body: Any,
        *,
        duplicate: int,
        token: str | None,
        headers: Mapping[str, str | None] | None,
    ) -> None:
        """POST the incoming call, then its ``duplicate`` copies; the call ends on an error."""
        try:
            for attempt in range(duplicate + 1):
                await self.post(
                    call.webhook_url,
                    body,
                    kind="duplicate" if attempt else "incoming",
                    call=call,
                    token=token,
                    headers=headers,
                )
        except BaseException:
            call.state = "terminated"
            call._touch()
            raise

    async def press(
        self,
        call: CallHandle,
        keys: Sequence[str],
        order: Sequence[int] | None,
        duplicates: int,
    ) -> tuple[WebhookReply, ...]:
        """Send key presses; see :meth:`CallHandle.press <callflow.testing.CallHandle.press>`."""
        self._runtime.check()
        for key in keys:
            if key not in GRAPH_TONES:
                raise ValueError(f"unknown key {key!r}; expected one of {', '.join(GRAPH_TONES)}")
        if not call.subscribed_to_tones:
            raise RuntimeError(
                f"call {call.call_id} did not subscribe to tones (subscribeToTone): Graph "
                "would not report these key presses"
            )
        if call.state != "established":
            raise RuntimeError(
                f"call {call.call_id} is {call.state}; keys need an established call"
            )
        indexes = list(range(len(keys))) if order is None else list(order)
        if sorted(indexes) != list(range(len(keys))):
            raise ValueError(f"order must be a permutation of 0..{len(keys) - 1}, got {order!r}")
        if duplicates < 0:
            raise ValueError(f"duplicates must be zero or more, got {duplicates}")
        items = []
        for key in keys:
            call.tone_sequence += 1
            call.etag += 1
            url_id = self._knobs.url_id(call.call_id)
            items.append(tone(url_id, call.tone_sequence, key, etag=call.etag))
        replies = []
        for index in indexes:
            for _ in range(1 + duplicates):
                replies.append(
                    await self.post(
                        call.webhook_url, envelope(items[index]), kind="tone", call=call
                    )
                )
        return tuple(replies)

    async def hang_up(
        self, call: CallHandle, *, code: int | None, subcode: int | None, message: str | None
    ) -> WebhookReply:
        """The caller hangs up: the call ends, and ``deleted``/``terminated`` is POSTed."""
        call.state = "terminated"
        call.etag += 1
        call._touch()
        body = envelope(
            call_terminated(
                call.call_id, code=code, subcode=subcode, message=message, etag=call.etag
            )
        )
        return await self.post(call.webhook_url, body, kind="terminated", call=call)

    # -- arbitrary notifications ------------------------------------------------------------

    async def notify(
        self,
        webhook_url: str,
        body: Mapping[str, Any] | Sequence[Mapping[str, Any]] | bytes | str,
        *,
        token: str | None,
        headers: Mapping[str, str | None] | None,
        call_id: str | None,
        tenant_id: str | None,
    ) -> WebhookReply:
        """POST any notification; see :meth:`FakeGraph.notify`."""
        self._runtime.check()
        call = self._state.calls.get(call_id) if call_id is not None else None
        return await self.post(
            webhook_url,
            body,
            kind="custom",
            call=call,
            token=token,
            headers=headers,
            tenant_id=tenant_id,
        )

    async def send_states(
        self,
        webhook_url: str,
        call_id: str,
        states: Iterable[str],
        *,
        etags: Iterable[int] | None,
        batch: bool,
        token: str | None,
        headers: Mapping[str, str | None] | None,
    ) -> tuple[WebhookReply, ...]:
        """POST state notifications in the order given; see :meth:`FakeGraph.send_states`."""
        self._runtime.check()
        states = tuple(states)
        call = self._state.calls.get(call_id)
        if etags is None:
            start = call.etag if call is not None else 0
            tags = tuple(range(start + 1, start + 1 + len(states)))
            if call is not None:
                call.etag += len(states)
        else:
            tags = tuple(etags)
            if len(tags) != len(states):
                raise ValueError(
                    f"got {len(states)} states and {len(tags)} etags; expected one etag per state"
                )
        items = [
            call_terminated(call_id, etag=tag)
            if state == "terminated"
            else call_state(call_id, state, etag=tag)
            for state, tag in zip(states, tags, strict=True)
        ]
        tenant = call.tenant_id if call is not None else None
        bodies = [envelope(*items)] if batch else [envelope(i) for i in items]
        replies = []
        for body in bodies:
            replies.append(
                await self.post(
                    webhook_url,
                    body,
                    kind="state",
                    call=call,
                    token=token,
                    headers=headers,
                    tenant_id=tenant,
                )
            )
        return tuple(replies)

    # -- where a call's notifications go, and the follow-ups of a decision ------------------

    def pin(self, call: CallHandle, callback_uri: object) -> None:
        """Graph sends the rest of a call to the callbackUri of its decision: a routed one
        to its webhook, one with a query (``?instance=ID`` of a fleet worker) to the same
        webhook with that query, the way a load balancer in front of the fleet receives it."""
        if not isinstance(callback_uri, str):
            return
        routed = self._state.routed(callback_uri)
        query = URL(callback_uri).query_string
        base = routed or call.webhook_url
        if routed is None and not query:
            return
        call.webhook_url = str(URL(base).with_query(query)) if query else base

    def follow_established(self, call: CallHandle) -> Callable[[], None] | None:
        """What follows an accepted answer: ``established``, once the reply is sent."""
        if not self._config.follow_up:
            return None
        call.etag += 1
        body = envelope(call_state(call.call_id, "established", etag=call.etag))
        return lambda: self.spawn_delivery(call, "established", body)

    def follow_terminated(self, call: CallHandle, op: str) -> Callable[[], None] | None:
        """What follows a reject, redirect or hang-up: ``terminated``, once the reply is sent."""
        if not self._config.follow_up:
            return None
        call.etag += 1
        body = envelope(
            call_terminated(
                call.call_id, code=200, subcode=0, message=_ENDED_BY_APP[op], etag=call.etag
            )
        )
        return lambda: self.spawn_delivery(call, "terminated", body)

    # -- delivering -------------------------------------------------------------------------

    def spawn_delivery(self, call: CallHandle, kind: str, body: dict[str, Any]) -> None:
        """Deliver ``body`` in the background (dropped once the fake is closing)."""
        self._runtime.spawn(self.deliver_quietly, call, kind, body)

    async def deliver_quietly(self, call: CallHandle, kind: str, body: dict[str, Any]) -> None:
        """Deliver ``body``; a connection error is recorded as the reply, not raised."""
        async with self._runtime.limiter:
            await self.post(call.webhook_url, body, kind=kind, call=call, quiet=True)

    async def post(
        self,
        url: str,
        body: Any,
        *,
        kind: str,
        call: CallHandle | None,
        token: str | None = None,
        headers: Mapping[str, str | None] | None = None,
        tenant_id: str | None = None,
        quiet: bool = False,
    ) -> WebhookReply:
        """POST one notification, signed, and record the webhook's reply on ``call``."""
        session = self._runtime.session
        if isinstance(body, bytes):
            data = body
        elif isinstance(body, str):
            data = body.encode()
        elif isinstance(body, Mapping):
            data = json.dumps(body).encode()
        else:
            data = json.dumps(envelope(*body)).encode()
        tenant = tenant_id or (call.tenant_id if call is not None else self._config.tenant_id)
        bearer = token if token is not None else self._signer.token_for(tenant)
        sent: dict[str, str | None] = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {bearer}",
            "Client-Request-Id": str(uuid.uuid4()),
            "Scenario-Id": call.scenario_id if call is not None else str(uuid.uuid4()),
            "X-Microsoft-Skype-Message-ID": str(uuid.uuid4()),
        }
        if call is not None:
            sent["X-Microsoft-Skype-Chain-ID"] = call.chain_id
        lowered = {name.lower(): name for name in sent}
        for name, value in (headers or {}).items():
            sent.pop(lowered.get(name.lower(), name), None)
            sent[name] = value
        final = {name: value for name, value in sent.items() if value is not None}
        skip = () if any(n.lower() == "content-type" for n in final) else ("Content-Type",)
        try:
            # aiohttp warns about large raw bytes bodies (they are written in one go).
            payload = io.BytesIO(data) if len(data) > _LARGE_BODY else data
            async with session.post(
                url, data=payload, headers=final, skip_auto_headers=skip
            ) as response:
                raw = await response.read()
                reply = WebhookReply(
                    kind,
                    response.status,
                    decode_body(raw),
                    CIMultiDictProxy(CIMultiDict(response.headers)),
                    time.monotonic(),
                    body,
                )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            if not quiet:
                raise
            log.warning(
                "fake_graph.delivery_failed",
                kind=kind,
                call_id=call.call_id if call is not None else None,
                error=f"{type(exc).__name__}: {exc}",
            )
            reply = WebhookReply(
                kind,
                0,
                None,
                CIMultiDictProxy(CIMultiDict()),
                time.monotonic(),
                body,
                f"{type(exc).__name__}: {exc}",
            )
        if call is not None:
            call._delivered(reply)
        return reply


def _call_id_of(payload: Mapping[str, Any]) -> str:
    """The call id of a custom incoming-call body: ``resourceData.id`` or the resource URL."""
    items = payload.get("value")
    item = items[0] if isinstance(items, list) and items and isinstance(items[0], dict) else {}
    data = item.get("resourceData")
    if isinstance(data, dict) and isinstance(data.get("id"), str) and data["id"]:
        return str(data["id"])
    url = item.get("resourceUrl")
    if isinstance(url, str) and "/calls/" in url:
        tail = url.split("/calls/", 1)[1].split("/", 1)[0]
        if tail:
            return tail
    raise ValueError(
        "cannot tell the call id of this payload; expected value[0].resourceData.id or a "
        "resourceUrl '/communications/calls/{id}', or pass call_id="
    )


def _resource_of(body: Any) -> dict[str, Any] | None:
    """The call resource an incoming-call body describes (``value[0].resourceData``), if any."""
    items = body.get("value") if isinstance(body, Mapping) else None
    item = items[0] if isinstance(items, list) and items else None
    data = item.get("resourceData") if isinstance(item, Mapping) else None
    return dict(data) if isinstance(data, Mapping) else None


def _has_bot_data(payload: Mapping[str, Any]) -> bool:
    items = payload.get("value")
    if not isinstance(items, list):
        return False
    for item in items:
        data = item.get("resourceData") if isinstance(item, dict) else None
        meta = data.get("applicationMetadata") if isinstance(data, dict) else None
        if isinstance(meta, dict) and meta.get("botData") is not None:
            return True
    return False
