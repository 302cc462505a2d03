"""CallHandle: one call placed on a FakeGraph, what the bot did with it, and waiting for it.

A handle records, for its call, every call-control request (:class:`GraphRequest`), every
notification POSTed and the webhook's reply (:class:`WebhookReply`) and every operation
started (:class:`FakeOperation`); its waiters (:meth:`CallHandle.decision`,
:meth:`CallHandle.wait_requests`, :meth:`CallHandle.wait_delivery`) wait on an event the
fake sets at each change, and fail with a message saying what did arrive.

Runs on the test's event loop (where the :class:`~callflow.testing.FakeGraph` runs); the
only thing it reaches out to is the ``press`` it was built with, which sends key presses.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeAlias, TypeVar

import anyio

from callflow.testing._audio import wav_with_words
from callflow.testing._records import FakeOperation, GraphRequest, WebhookReply, op_matches

__all__ = ["CallHandle", "Press"]

_T = TypeVar("_T")

Press: TypeAlias = Callable[
    ["CallHandle", Sequence[str], Sequence[int] | None, int],
    Awaitable[tuple[WebhookReply, ...]],
]
"""Sends key presses for a call: ``press(call, keys, order, duplicates)``."""


class CallHandle:
    """One call placed by :meth:`FakeGraph.place_call`: what the bot did with it, and when.

    ``state`` is ``incoming`` until decided, ``established`` once answered, ``terminated``
    once rejected, redirected, hung up, ended or timed out. ``timed_out`` turns true when the
    platform timeout ended the call. ``placed_at`` and ``deadline`` are ``time.monotonic()``
    values (when the incoming-call notification was sent, and when the platform gives up).
    ``resource`` is the call resource Graph first described the call with: the incoming call's
    ``resourceData`` (None for a custom incoming body without one), or for a call the bot
    created, what it asked for and what the 201 assigned; ``GET /communications/calls/{id}``
    answers with it in the call's current state.
    The fake builds the handles; ``press`` is how :meth:`press` sends key presses.
    """

    def __init__(
        self,
        *,
        call_id: str,
        kind: str,
        webhook_url: str,
        tenant_id: str,
        policy_recording: bool,
        timeout: float,
        payload: Any,
        press: Press | None = None,
    ) -> None:
        self.call_id = call_id
        self.kind = kind
        self.webhook_url = webhook_url
        self.tenant_id = tenant_id
        self.policy_recording = policy_recording
        self.timeout = timeout
        self.payload = payload
        self.scenario_id = str(uuid.uuid4())
        self.chain_id = f"c4a1f0e2-{call_id}"
        self.state = "incoming"
        self.timed_out = False
        self.gone = False
        self.etag = 1
        self.placed_at = time.monotonic()
        self.deadline = self.placed_at + timeout
        self.subscribed_to_tones = False
        self.said: list[str] = []
        """The words of the prompts played to the call, in order (a FakeSpeech rendering
        carries its text; see :class:`~callflow.testing.FakeMedia`)."""
        self.tone_sequence = 0
        self.muted = False
        self.recording_status: str | None = None
        self.resource: dict[str, Any] | None = None
        self._requests: list[GraphRequest] = []
        self._deliveries: list[WebhookReply] = []
        self._operations: list[FakeOperation] = []
        self._changed = anyio.Event()
        self._press = press
        self._speech: list[bytes] = []
        self._spoke = anyio.Event()

    def __repr__(self) -> str:
        return (
            f"<CallHandle {self.call_id} kind={self.kind} state={self.state} "
            f"timed_out={self.timed_out} requests={len(self._requests)}>"
        )

    # -- what happened ----------------------------------------------------------------------

    @property
    def webhook_status(self) -> int:
        """The HTTP status the webhook answered the incoming-call notification with."""
        first = self._first("incoming")
        return first.status if first is not None else 0

    @property
    def webhook_body(self) -> Any:
        """The webhook's reply body to the incoming-call notification (parsed JSON or text)."""
        first = self._first("incoming")
        return first.body if first is not None else None

    @property
    def replies(self) -> tuple[WebhookReply, ...]:
        """The webhook's replies to the incoming-call notification and its duplicates."""
        return tuple(r for r in self._deliveries if r.kind in ("incoming", "duplicate"))

    @property
    def deliveries(self) -> tuple[WebhookReply, ...]:
        """Every notification POSTed for this call so far, in the order the replies came."""
        return tuple(self._deliveries)

    @property
    def requests(self) -> tuple[GraphRequest, ...]:
        """Every call-control request for this call so far, failed and injected ones included."""
        return tuple(self._requests)

    @property
    def decisions(self) -> tuple[GraphRequest, ...]:
        """Every answer, reject and redirect request for this call, whatever its status.

        Exactly-once delivery means one of them (plus the retries of injected faults).
        """
        return tuple(r for r in self._requests if r.is_decision)

    @property
    def operations(self) -> tuple[FakeOperation, ...]:
        """Every operation started for this call, in the order the actions arrived."""
        return tuple(self._operations)

    def _first(self, kind: str) -> WebhookReply | None:
        return next((r for r in self._deliveries if r.kind == kind), None)

    async def press(
        self,
        *keys: str,
        order: Sequence[int] | None = None,
        duplicates: int = 0,
    ) -> tuple[WebhookReply, ...]:
        """The caller presses ``keys`` (``"1"``, ``"#"``, ...): one ``toneInfo`` notification
        each, with increasing ``sequenceId``, POSTed to the call's webhook.

        ``order`` sends them in another order (a permutation of their indexes);
        ``duplicates=N`` sends each one N more times. Graph reports tones only after
        ``subscribeToTone``: pressing before it raises RuntimeError.
        """
        if self._press is None:
            raise RuntimeError(f"call {self.call_id} does not belong to a running FakeGraph")
        return await self._press(self, keys, order, duplicates)

    async def say_back(self, text: str, *, seconds: float = 1.0) -> None:
        """The caller says ``text``: the call's next recording holds those words.

        The recording is a WAV of ``seconds`` of sound carrying ``text`` (see
        :func:`~callflow.testing.wav_with_words`), which FakeSpeech recognises as ``text``.
        A recording running now ends at once with it (the caller spoke, then was silent);
        otherwise the next one does. Each call is one recording's worth, in order.
        """
        self._speech.append(wav_with_words(text, seconds))
        spoke, self._spoke = self._spoke, anyio.Event()
        spoke.set()

    def _take_speech(self) -> bytes | None:
        """The audio of the next recording the caller spoke into, if any (consumed)."""
        return self._speech.pop(0) if self._speech else None

    async def _speech_arrives(self) -> None:
        """Return once the caller has said something for the next recording."""
        while not self._speech:
            await self._spoke.wait()

    # -- waiting ----------------------------------------------------------------------------
    # The waiters take a timeout (ASYNC109) on purpose: a bot that never sends what a test
    # waits for must fail that test with a message saying what did arrive, not hang it.

    def _touch(self) -> None:
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    def _recorded(self, request: GraphRequest) -> None:
        self._requests.append(request)
        self._touch()

    def _delivered(self, reply: WebhookReply) -> None:
        self._deliveries.append(reply)
        self._touch()

    def _started(self, operation: FakeOperation) -> None:
        self._operations.append(operation)

    async def _wait(
        self,
        ready: Callable[[], _T | None],
        timeout: float,  # noqa: ASYNC109
        what: str,
    ) -> _T:
        try:
            with anyio.fail_after(timeout):
                while (result := ready()) is None:
                    await self._changed.wait()
                return result
        except TimeoutError:
            raise TimeoutError(
                f"call {self.call_id} ({self.kind}): no {what} within {timeout:g} s; "
                f"state={self.state}, timed_out={self.timed_out}, "
                f"webhook replied {self.webhook_status or 'nothing'}, requests so far: "
                f"{[(r.op, r.status) for r in self._requests]}"
            ) from None

    async def decision(self, timeout: float = 10.0) -> GraphRequest:  # noqa: ASYNC109
        """Return the first answer, reject or redirect for this call that the fake accepted.

        Raises TimeoutError (saying what did arrive) when none comes within ``timeout`` s.
        """
        return await self._wait(
            lambda: next((r for r in self._requests if r.is_decision and r.accepted), None),
            timeout,
            "accepted answer/reject/redirect",
        )

    async def wait_requests(
        self,
        count: int = 1,
        *,
        op: str | None = None,
        where: Callable[[GraphRequest], bool] | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> tuple[GraphRequest, ...]:
        """Return this call's requests (of ``op``, or ``"decision"``; for which ``where`` is
        true) once there are ``count``; TimeoutError after ``timeout`` seconds."""

        def ready() -> tuple[GraphRequest, ...] | None:
            found = tuple(
                r for r in self._requests if op_matches(op, r.op) and (where is None or where(r))
            )
            return found if len(found) >= count else None

        return await self._wait(ready, timeout, f"{count} {op or 'any'} request(s)")

    async def wait_deliveries(
        self,
        kind: str,
        count: int,
        *,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> tuple[WebhookReply, ...]:
        """Return the webhook's replies to notifications of ``kind`` once there are ``count``."""

        def ready() -> tuple[WebhookReply, ...] | None:
            found = tuple(r for r in self._deliveries if r.kind == kind)
            return found if len(found) >= count else None

        return await self._wait(ready, timeout, f"{count} {kind} notification(s)")

    async def wait_delivery(
        self,
        kind: str,
        *,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> WebhookReply:
        """Return the webhook's reply to the first notification of ``kind`` for this call.

        ``kind`` is a :class:`WebhookReply` kind, e.g. ``timeout`` or ``established``.
        """
        return await self._wait(lambda: self._first(kind), timeout, f"{kind} notification")
