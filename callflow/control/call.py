"""The :class:`Call` handle: one ``await`` per call-control operation.

A bot holds a :class:`Call` for a call it answered or created, and awaits what it wants done::

    await call.play(MediaPrompt("https://cdn.example.com/menu.wav"))
    choice = await call.collect_digits(1, timeout=10)
    if choice == "1":
        await call.transfer(Target.user(SALES))
    else:
        recording = await call.record(max_duration=60)
        audio = await recording.download()
    await call.hang_up()

Each method returns when Graph's operation completed, raises an
:class:`~callflow.errors.OperationError` carrying Graph's ``resultInfo`` when it failed,
:class:`~callflow.errors.OperationTimeoutError` when it did not finish in time and
:class:`~callflow.errors.CallEndedError` when the call ended first. Cancelling the awaiting
task cancels the operation (a prompt or recording is stopped in Graph).

Each step the bot awaits logs one line of the call's story when it ends (see
:mod:`callflow.control.story`).

Threads: the Graph client and the notifications live on the I/O loop, bot code on the app
loop. A :class:`Call` never touches them itself: every method hands a function to its
:class:`IoPort`, which runs it on the I/O loop and brings the result back. All the waiting
(the operation's result, the caller's key presses) happens inside that function, on the I/O
side. :class:`SameLoopPort` is the port for a single loop (tests, simple embeddings). The one
exception is :attr:`Call.state` (and :attr:`Call.ended`): a snapshot of what the I/O side
last recorded, read without a hop.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import attrs

from callflow._log import pii_allowed
from callflow.actions import (
    Invite,
    JoinMeeting,
    OutgoingCall,
    PlayPrompt,
    RecordResponse,
    SendTones,
    Transfer,
    UpdateRecordingStatus,
    prompt_names,
)
from callflow.control import listening
from callflow.control.listening import Choice, Menu, RecordSpec, Reply
from callflow.control.memory import encode_memo
from callflow.control.story import Step
from callflow.decisions import MediaPrompt, Prompt, Target
from callflow.errors import ActionError, CallControlError, SpeechError
from callflow.events import TONES, ResultInfo, canonical_call_id
from callflow.prompts import Say

if TYPE_CHECKING:
    from callflow.control.control import CallControl
    from callflow.speech.recognition import Heard

__all__ = ["Call", "Calls", "IoPort", "Recording", "SameLoopPort"]

T = TypeVar("T")

DEFAULT_MAX_RECORDING = 16 * 1024 * 1024
"""Bytes a recording download may have unless told otherwise (2 minutes of WAV is ~4 MB)."""


class IoPort(Protocol):
    """Runs work on the I/O loop for code on another loop.

    ``await port.run(fn)`` runs ``fn()`` on the loop that owns the Graph client and the
    notifications, and returns its result (or raises its exception) in the caller's loop.
    Cancelling the caller cancels ``fn``.
    """

    async def run(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn()`` on the I/O loop and return its result to the calling loop."""
        ...


class SameLoopPort:
    """The :class:`IoPort` of a program with one loop: ``run(fn)`` is ``await fn()``."""

    async def run(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn()`` right here."""
        return await fn()


def _check_timeout(name: str, value: float | None, *, optional: bool = True) -> None:
    if value is None and optional:
        return
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not value > 0
        or not math.isfinite(value)
    ):
        raise ActionError(f"{name} must be a number of seconds > 0, got {value!r}")


@attrs.frozen
class Recording:
    """What :meth:`Call.record` recorded: where Graph keeps it, and how to fetch it.

    ``completion_reason`` says why recording stopped (``stopToneDetected``,
    ``maxRecordDurationReached``, ``initialSilenceTimeout``, ``maxSilenceTimeout``); after
    ``initialSilenceTimeout`` there may be no ``location``. Graph discards recordings soon
    after the call ends: download promptly. ``access_token`` is a secret (not in ``repr``).
    """

    call_id: str
    operation_id: str
    location: str | None
    access_token: str | None = attrs.field(repr=False)
    completion_reason: str | None
    result: ResultInfo | None
    _fetch: Callable[[str, str, int, float | None], Awaitable[bytes]] = attrs.field(
        repr=False, eq=False, alias="fetch"
    )

    async def download(
        self, *, max_bytes: int = DEFAULT_MAX_RECORDING, timeout: float | None = 30.0
    ) -> bytes:
        """Fetch the recording's bytes (``GET location`` with the access token).

        Raises :class:`~callflow.errors.CallControlError` when there is nothing to fetch,
        :class:`~callflow.errors.RecordingTooLargeError` past ``max_bytes`` (counted after
        decompression), and :class:`~callflow.errors.GraphError` when the download fails, or
        is refused because the location is not an https URL on a host of
        ``CALLFLOW_RECORDING_HOSTS`` (nothing is sent then).
        """
        _check_timeout("timeout", timeout)
        if self.location is None or self.access_token is None:
            raise CallControlError(
                f"call {self.call_id}: the recording has no location to download "
                f"(completionReason {self.completion_reason})"
            )
        return await self._fetch(self.location, self.access_token, max_bytes, timeout)


class Call:
    """A call the bot holds (answered or created): play, record, collect digits, transfer...

    A bot gets its handles from callflow, never by building one: ``ctx.call`` in a handler
    or observer, the argument of an ``Answer(then=...)`` flow, ``bot.calls.get(call_id)``
    and ``await bot.calls.create(...)``. ``call_id`` is Graph's id; ``tenant_id`` picks the
    app token; ``services`` is what the bot was given as ``Bot(services=...)``. Operations
    on one call may run concurrently, except one digit collection and one transfer at a time.
    """

    __slots__ = ("_control", "_port", "_services", "call_id", "tenant_id")

    call_id: str
    tenant_id: str | None
    _control: CallControl
    _port: IoPort
    _services: Any

    def __new__(cls) -> Call:
        raise TypeError(
            "a Call handle comes from callflow: ctx.call, the argument of Answer(then=...), "
            "bot.calls.get(call_id) or await bot.calls.create(...)"
        )

    @classmethod
    def _open(
        cls,
        call_id: str,
        control: CallControl,
        port: IoPort,
        tenant_id: str | None = None,
        services: Any = None,
    ) -> Call:
        """The handle of ``call_id``, reaching ``control`` (the I/O loop's) through ``port``."""
        self = object.__new__(cls)
        self.call_id = canonical_call_id(call_id)
        self.tenant_id = tenant_id
        self._control = control
        self._port = port
        self._services = services
        return self

    @property
    def services(self) -> Any:
        """The bot's own services (``Bot(services=...)``; None when it was given none)."""
        return self._services

    def __repr__(self) -> str:
        return f"<Call {self.call_id}>"

    @property
    def state(self) -> str | None:
        """The last state Graph reported for the call: ``"establishing"``,
        ``"established"``, ``"transferring"``, ``"transferAccepted"``, ..., ``"terminated"``
        (also once the bot hung up); None before Graph reported any (or once the bot forgot
        the call, long after it ended).

        A snapshot, read at once from any loop: the next notification may change it.
        """
        return self._control.registry.state_of(self.call_id)[0]

    @property
    def ended(self) -> bool:
        """True once the call is over (Graph terminated it, or the bot hung up); operations
        on it then raise :class:`~callflow.errors.CallEndedError` at once. A snapshot, like
        :attr:`state`."""
        return self._control.registry.state_of(self.call_id)[1]

    async def established(self, *, timeout: float | None = 30.0) -> None:
        """Return once Graph reported the call established (at once if it was already).

        Media operations need an established call: a flow given to ``Answer(then=...)`` is
        started only after this. Raises :class:`~callflow.errors.CallEndedError` when the
        call ended first and :class:`~callflow.errors.OperationTimeoutError` after
        ``timeout`` seconds.
        """
        _check_timeout("timeout", timeout)
        control, call_id = self._control, self.call_id
        await self._port.run(lambda: control.wait_established(call_id, timeout))

    async def remember(self, memo: Mapping[str, Any]) -> None:
        """Remember ``memo`` as where this call's flow is, for whoever carries the call on.

        ``memo`` is a JSON object (a mapping with string keys and JSON values) of at most
        4 KiB serialised; anything else raises :class:`~callflow.errors.ActionError` before
        anything is kept. Each call replaces the previous memo. In fleet mode the memo is
        written to the fleet's store before this returns (within a couple of seconds; a
        store in trouble gets it once it answers again): when this worker is lost or stops,
        the worker that adopts the call gets the last memo in ``CallAdopted.memo``. A lone
        worker keeps it in the process. Raises :class:`~callflow.errors.CallEndedError`
        once the call ended.
        """
        text = encode_memo(memo)
        control, call_id, tenant = self._control, self.call_id, self.tenant_id
        await self._port.run(lambda: control.remember(call_id, tenant, text))

    async def play(
        self, prompts: Prompt | Iterable[Prompt], *, timeout: float | None = 120.0
    ) -> None:
        """Play one prompt or several in a row; return once they were played.

        A :class:`~callflow.Say` or :class:`~callflow.Ssml` prompt is rendered first (within
        ``timeout``) and served by the worker; when Speech cannot render it,
        :class:`~callflow.errors.SpeechError` is raised and nothing is played.

        A prompt that Graph reports ``completed`` without ``completedSuccessfully`` (it
        played nothing) raises :class:`~callflow.errors.OperationError`; one stopped by
        :meth:`cancel_media` raises :class:`~callflow.errors.MediaCancelledError`.
        """
        request = PlayPrompt(prompts)
        _check_timeout("timeout", timeout)
        control, call_id, tenant = self._control, self.call_id, self.tenant_id
        with Step("call.prompt_played", call_id, tenant, prompts=prompt_names(request.prompts)):
            await self._port.run(lambda: control.act(call_id, tenant, request, timeout))

    async def say(
        self,
        text: str,
        *,
        voice: str | None = None,
        language: str | None = None,
        timeout: float | None = 120.0,
    ) -> None:
        """Say ``text`` to the caller; return once it was played.

        ``play(Say(text, voice=..., language=...))``: the text is spoken as written (never
        read as SSML; for SSML use :class:`~callflow.Ssml`), rendered by Azure AI Speech once
        and cached. Raises :class:`~callflow.errors.ActionError` for an empty text or one over
        5,000 characters (before anything is sent), :class:`~callflow.errors.SpeechError`
        when Speech cannot render it within ``timeout`` (nothing is played then), and like
        :meth:`play` otherwise.
        """
        await self.play(Say(text, voice=voice, language=language), timeout=timeout)

    async def record(
        self,
        *,
        prompt: Prompt | None = None,
        barge_in_allowed: bool = False,
        initial_silence_timeout: int = 5,
        max_silence_timeout: int = 5,
        max_duration: int = 60,
        play_beep: bool = True,
        stop_tones: str | Iterable[str] = ("#",),
        timeout: float | None = None,
    ) -> Recording:
        """Record the caller (optionally after ``prompt``); return the :class:`Recording`.

        Recording stops at a stop tone, after ``max_silence_timeout`` s of silence, after
        ``max_duration`` s, or when nothing is said for ``initial_silence_timeout`` s (each
        1 to 120). ``timeout`` defaults to the longest the recording can take plus 30 s.
        """
        request = RecordResponse(
            prompt,
            barge_in_allowed,
            initial_silence_timeout,
            max_silence_timeout,
            max_duration,
            play_beep,
            stop_tones,
        )
        if timeout is None:
            timeout = float(initial_silence_timeout + max_duration + 30 + (60 if prompt else 0))
        _check_timeout("timeout", timeout)
        control, call_id, tenant = self._control, self.call_id, self.tenant_id
        names = prompt_names(() if prompt is None else (prompt,))
        with Step("call.recorded", call_id, tenant, prompts=names) as step:
            finished = await self._port.run(lambda: control.act(call_id, tenant, request, timeout))
            step.fields["completion_reason"] = finished.completion_reason
            step.fields["has_recording"] = finished.recording_location is not None
        port = self._port

        async def fetch(location: str, token: str, max_bytes: int, limit: float | None) -> bytes:
            with Step("call.recording_downloaded", call_id, tenant) as step:
                audio = await port.run(
                    lambda: control.download(location, token, call_id, max_bytes, limit)
                )
                step.fields["bytes"] = len(audio)
            return audio

        return Recording(
            call_id,
            finished.operation_id,
            finished.recording_location,
            finished.recording_access_token,
            finished.completion_reason,
            finished.result,
            fetch,
        )

    async def listen(
        self,
        *,
        prompt: Prompt | None = None,
        language: str | None = None,
        max_duration: int = 10,
        initial_silence_timeout: int = 5,
        max_silence_timeout: int = 2,
        play_beep: bool = False,
        stop_tones: str | Iterable[str] = ("#",),
        timeout: float | None = None,
        recognition_timeout: float = 15.0,
    ) -> Heard:
        """Record what the caller says (after ``prompt``) and return it recognised.

        One ``recordResponse`` (the caller may speak over the prompt; recording stops after
        ``max_silence_timeout`` s of silence, at ``max_duration`` s, at most 60, or at a stop
        tone), the download, and one recognition in ``language`` (default
        ``CALLFLOW_SPEECH_LANGUAGE``). Silence, noise or words not recognised give a
        :class:`~callflow.speech.recognition.Heard` with an empty ``text`` and Speech's status
        (``InitialSilenceTimeout``, ``BabbleTimeout``, ``NoMatch``). ``timeout`` bounds the
        recording (as in :meth:`record`), ``recognition_timeout`` the download and the
        recognition: a Speech resource that cannot be reached or refuses raises
        :class:`~callflow.errors.SpeechError` within it.
        """
        spec = RecordSpec(
            prompt, initial_silence_timeout, max_silence_timeout, max_duration, play_beep,
            True, _stop_tones(stop_tones), timeout,
        )  # fmt: skip
        _check_timeout("recognition_timeout", recognition_timeout, optional=False)
        return await listening.listen(
            self, _recognizer(self._control, self._port), spec, language=language,
            recognition_timeout=recognition_timeout,
        )  # fmt: skip

    async def ask(
        self,
        prompt: Prompt | None,
        *,
        choices: Mapping[str, Choice | str],
        digits: bool = True,
        language: str | None = None,
        attempts: int = 1,
        retry_prompt: Prompt | None = None,
        max_duration: int = 5,
        initial_silence_timeout: int = 5,
        max_silence_timeout: int = 1,
        timeout: float | None = None,
        recognition_timeout: float = 15.0,
    ) -> Reply:
        """Ask a question answered with a key or a word; return the :class:`Reply`.

        ``choices`` names each entry: ``{"sales": Choice(key="1", words=["sales", "buy"])}``.
        The prompt plays and the caller is recorded (as in :meth:`listen`) while keys are
        watched (``digits``): the first answer wins. A key stops the prompt and cancels the
        recording; otherwise what was said is recognised and matched against the entries'
        words (and spoken keys: "one"). No match (a wrong key, other words, silence) asks
        again, up to ``attempts`` times, with ``retry_prompt`` if given; the last
        :class:`Reply` has ``choice`` None then, and says what came (``via``, ``key``,
        ``heard``).
        """
        menu = Menu.of(choices)
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
            raise ActionError(f"attempts must be an integer >= 1, got {attempts!r}")
        spec = RecordSpec(
            prompt, initial_silence_timeout, max_silence_timeout, max_duration, False, True,
            menu.keys if digits else ("#",), timeout,
        )  # fmt: skip
        _check_timeout("recognition_timeout", recognition_timeout, optional=False)
        return await listening.ask(
            self, _recognizer(self._control, self._port), menu, spec, digits=bool(digits),
            language=language, recognition_timeout=recognition_timeout, attempts=attempts,
            retry_prompt=retry_prompt,
        )  # fmt: skip

    async def collect_digits(
        self,
        max_digits: int,
        *,
        timeout: float = 10.0,
        inter_digit_timeout: float = 3.0,
        stop_tones: str | Iterable[str] = ("#",),
        prompt: Prompt | Iterable[Prompt] | None = None,
        prompt_timeout: float | None = 120.0,
    ) -> str:
        """Collect up to ``max_digits`` key presses and return them (``"1234"``).

        Collection ends at the ``max_digits``-th key, at a ``stop_tones`` key (not returned),
        ``inter_digit_timeout`` s after a key with no next one, or ``timeout`` s after it
        began; it returns the keys pressed so far ("" when none). With ``prompt``, the
        prompt plays first and the clock starts when it ends; the first key stops it
        (barge-in). Keys pressed before the call (after an earlier collection) count: they
        wait in the call's buffer, in ``sequenceId`` order, each once. The first collection
        subscribes the call to tones (``subscribeToTone``).
        """
        if not isinstance(max_digits, int) or isinstance(max_digits, bool) or max_digits < 1:
            raise ActionError(f"max_digits must be an integer >= 1, got {max_digits!r}")
        _check_timeout("timeout", timeout, optional=False)
        _check_timeout("inter_digit_timeout", inter_digit_timeout, optional=False)
        _check_timeout("prompt_timeout", prompt_timeout)
        stops = _stop_tones(stop_tones)
        request = None if prompt is None else PlayPrompt(prompt)
        control, call_id, tenant = self._control, self.call_id, self.tenant_id
        names = () if request is None else prompt_names(request.prompts)
        with Step("call.digits_collected", call_id, tenant, prompts=names) as step:
            entry = await self._port.run(
                lambda: control.collect_digits(
                    call_id,
                    tenant,
                    max_digits=max_digits,
                    timeout=timeout,
                    inter_digit_timeout=inter_digit_timeout,
                    stop_tones=stops,
                    prompt=request,
                    prompt_timeout=prompt_timeout,
                )
            )
            # What was typed (a PIN, an account number) only when personal data may be logged.
            step.fields.update(keys=len(entry.digits), ended=entry.ended, barged_in=entry.barged_in)
            if pii_allowed():
                step.fields["digits"] = entry.digits
        return entry.digits

    async def subscribe_tones(self, *, timeout: float | None = 30.0) -> None:
        """Ask Graph to report the caller's key presses (``subscribeToTone``, once per call).

        Each key then reaches ``@bot.on(ToneReceived)`` observers (and
        :meth:`collect_digits`, which subscribes by itself).
        """
        _check_timeout("timeout", timeout)
        control, call_id, tenant = self._control, self.call_id, self.tenant_id
        await self._port.run(lambda: control.subscribe_tones(call_id, tenant, timeout))

    async def send_tones(
        self,
        tones: str | Iterable[str],
        *,
        delay_between_tones_ms: int | None = None,
        timeout: float | None = 30.0,
    ) -> None:
        """Send DTMF tones into the call (``"123#"``); return once Graph sent them."""
        request = SendTones(tones, delay_between_tones_ms)
        _check_timeout("timeout", timeout)
        control, call_id, tenant = self._control, self.call_id, self.tenant_id
        await self._port.run(lambda: control.act(call_id, tenant, request, timeout))

    async def transfer(
        self,
        target: Target,
        *,
        transferee: Target | None = None,
        replaces_call_id: str | None = None,
        timeout: float | None = 60.0,
    ) -> None:
        """Transfer the call to ``target``; return once it was transferred (the call ends).

        Raises :class:`~callflow.errors.TransferError` with Graph's ``resultInfo`` when the
        transfer failed and the call is back to ``established`` (it stays usable).
        """
        request = Transfer(target, transferee, replaces_call_id)
        _check_timeout("timeout", timeout)
        control, call_id, tenant = self._control, self.call_id, self.tenant_id
        with Step("call.transferred", call_id, tenant, target=f"{target.kind}:{target.id}"):
            await self._port.run(lambda: control.transfer(call_id, tenant, request, timeout))

    async def invite(
        self, participants: Target | Iterable[Target], *, timeout: float | None = 60.0
    ) -> None:
        """Invite 1 to 5 participants into this group call; return once Graph invited them."""
        request = Invite(participants)
        _check_timeout("timeout", timeout)
        control, call_id, tenant = self._control, self.call_id, self.tenant_id
        await self._port.run(lambda: control.act(call_id, tenant, request, timeout))

    async def mute(self, *, timeout: float | None = 30.0) -> None:
        """Mute the bot in this call."""
        await self._simple("mute", timeout)

    async def unmute(self, *, timeout: float | None = 30.0) -> None:
        """Unmute the bot in this call."""
        await self._simple("unmute", timeout)

    async def cancel_media(self, *, timeout: float | None = 30.0) -> None:
        """Stop every prompt and recording of the call (their awaiters get MediaCancelledError)."""
        await self._simple("cancelMediaProcessing", timeout)

    async def update_recording_status(self, status: str, *, timeout: float | None = 30.0) -> None:
        """Tell Graph whether the bot records: ``recording``, ``notRecording`` or ``failed``."""
        request = UpdateRecordingStatus(status)
        _check_timeout("timeout", timeout)
        control, call_id, tenant = self._control, self.call_id, self.tenant_id
        await self._port.run(lambda: control.act(call_id, tenant, request, timeout))

    async def hang_up(self, *, timeout: float | None = 30.0) -> None:
        """Hang up the bot's leg of the call; waiting operations get CallEndedError."""
        _check_timeout("timeout", timeout)
        control, call_id, tenant = self._control, self.call_id, self.tenant_id
        await self._port.run(lambda: control.hang_up(call_id, tenant, timeout))

    async def _simple(self, kind: str, timeout: float | None) -> None:
        _check_timeout("timeout", timeout)
        control, call_id, tenant = self._control, self.call_id, self.tenant_id
        await self._port.run(lambda: control.simple(call_id, tenant, kind, timeout))


def _recognizer(control: CallControl, port: IoPort) -> listening.Recognize:
    """Recognition for ``listen``/``ask``: on the I/O loop, through the worker's Speech.
    SpeechError at once (before the caller is recorded) without a Speech resource."""
    recognizer = control.recognizer  # set once at start, before the bot serves
    if recognizer is None:
        raise SpeechError(
            "listening needs a Speech resource: set CALLFLOW_SPEECH_REGION (or "
            "CALLFLOW_SPEECH_ENDPOINT) and CALLFLOW_SPEECH_KEY",
            setting="CALLFLOW_SPEECH_REGION",
        )

    async def recognize(audio: bytes, language: str | None, timeout: float) -> Heard:
        return await port.run(
            lambda: recognizer.recognize(audio, language=language, timeout=timeout)
        )

    return recognize


def _stop_tones(value: str | Iterable[str]) -> tuple[str, ...]:
    tones = (value,) if isinstance(value, str) and value in TONES else tuple(value)
    for tone in tones:
        if tone not in TONES:
            raise ActionError(f"stop_tones must hold tones from {', '.join(TONES)}, got {tone!r}")
    return tones


class Calls:
    """Places new calls and hands out :class:`Call` handles: ``bot.calls`` (once the bot
    serves)."""

    _control: CallControl
    _port: IoPort
    _services: Any

    def __new__(cls) -> Calls:
        raise TypeError("the calls of a bot are bot.calls (once it serves): not built by hand")

    @classmethod
    def _open(cls, control: CallControl, port: IoPort, services: Any = None) -> Calls:
        """Calls reaching ``control`` (the I/O loop's) through ``port``; ``services`` (the
        bot's own) go with every handle."""
        self = object.__new__(cls)
        self._control = control
        self._port = port
        self._services = services
        return self

    def get(self, call_id: str, *, tenant_id: str | None = None) -> Call:
        """The handle of a call the bot already holds (one it answered or created).

        ``call_id`` may be spelled any way Graph spells it; ``tenant_id`` defaults to the
        tenant the call is bound to.
        """
        call_id = canonical_call_id(call_id)
        if tenant_id is None:
            tenant_id = self._control.book.tenant_of(call_id)
        return Call._open(call_id, self._control, self._port, tenant_id, self._services)

    async def create(
        self,
        targets: Target | Iterable[Target],
        *,
        source: Target | None = None,
        modalities: str | Iterable[str] = ("audio",),
        prefetch: MediaPrompt | Iterable[MediaPrompt] = (),
        callback_uri: str | None = None,
        tenant_id: str | None = None,
        timeout: float | None = 60.0,
    ) -> Call:
        """Call ``targets`` and return the :class:`Call` once it is established.

        A phone target needs ``source``, the bot's application instance with a number.
        Raises :class:`~callflow.errors.CallEndedError` (with Graph's ``resultInfo``) when
        the call ended before it was established, and OperationTimeoutError (after hanging
        it up) when ``timeout`` ran out.
        """
        request = OutgoingCall(
            targets,
            source,
            modalities,
            prefetch,
            callback_uri,
            tenant_id,
        )
        return await self._establish(request, tenant_id, timeout)

    async def join(
        self,
        join_web_url: str,
        *,
        modalities: str | Iterable[str] = ("audio",),
        prefetch: MediaPrompt | Iterable[MediaPrompt] = (),
        callback_uri: str | None = None,
        timeout: float | None = 60.0,
    ) -> Call:
        """Join the Teams meeting of ``join_web_url``; return the :class:`Call` once in.

        Raises :class:`~callflow.errors.ActionError` when the link is not a Teams join link,
        and like :meth:`create` otherwise.
        """
        request = JoinMeeting(
            join_web_url,
            modalities,
            prefetch,
            callback_uri,
        )
        return await self._establish(request, request.meeting.tenant_id, timeout)

    async def _establish(
        self, request: OutgoingCall | JoinMeeting, tenant_id: str | None, timeout: float | None
    ) -> Call:
        _check_timeout("timeout", timeout)
        control = self._control
        created = await self._port.run(lambda: control.create(request, timeout))
        tenant = created.tenant_id or tenant_id
        return Call._open(created.call_id, control, self._port, tenant, self._services)
