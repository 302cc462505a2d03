"""Listening to the caller: ``call.listen()`` (what was said) and ``call.ask()`` (a menu
answered with a key or a word).

Runs on the app loop, inside :meth:`Call.listen <callflow.control.call.Call.listen>` and
:meth:`Call.ask <callflow.control.call.Call.ask>`, and is made only of operations the call
already has: a ``recordResponse`` with silence detection (:meth:`Call.record
<callflow.control.call.Call.record>`), the bounded download of the recording, and one
short-audio recognition (:class:`~callflow.speech.recognition.Recognizer`, on the I/O loop).
:func:`ask` races the recording against a key press (:meth:`Call.collect_digits
<callflow.control.call.Call.collect_digits>`): the first to arrive wins, and a key cancels
the recording in Graph. It touches nothing else: the call is reached through the
:class:`Listener` it is given.

Values: :class:`Choice` (a menu entry: its key and its words), :class:`Reply` (which entry
matched, and how), :class:`Menu` (the checked entries, and the matching of keys and words).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final, Protocol

import anyio
import attrs

from callflow.errors import ActionError, CallControlError
from callflow.events import TONES
from callflow.speech.recognition import Heard, silence, words_of

__all__ = [
    "DEFAULT_LISTEN_BYTES",
    "Choice",
    "Listener",
    "Menu",
    "Reply",
    "ask",
    "listen",
]

DEFAULT_LISTEN_BYTES: Final = 4 * 1024 * 1024
"""Bytes a recording to recognise may have (60 s of 16 kHz 16-bit mono is ~1.9 MB)."""
STOP_TONE_GRACE: Final = 2.0
"""Seconds :func:`ask` waits for the key of a recording Graph stopped at a stop tone."""
_SPOKEN_DIGITS: Final = {
    "0": ("zero", "oh"),
    "1": ("one",),
    "2": ("two",),
    "3": ("three",),
    "4": ("four",),
    "5": ("five",),
    "6": ("six",),
    "7": ("seven",),
    "8": ("eight",),
    "9": ("nine",),
    "*": ("star",),
    "#": ("pound", "hash"),
}


class RecordingLike(Protocol):
    """What :func:`listen` reads of a :class:`~callflow.control.call.Recording`."""

    @property
    def location(self) -> str | None: ...

    @property
    def completion_reason(self) -> str | None: ...

    async def download(
        self,
        *,
        max_bytes: int = ...,
        timeout: float | None = ...,  # noqa: ASYNC109 - Recording.download's signature
    ) -> bytes: ...


class Listener(Protocol):
    """The operations of a call that listening is made of (a :class:`Call` has them)."""

    async def record(
        self,
        *,
        prompt: Any = None,
        barge_in_allowed: bool = False,
        initial_silence_timeout: int = 5,
        max_silence_timeout: int = 5,
        max_duration: int = 60,
        play_beep: bool = True,
        stop_tones: str | Iterable[str] = ("#",),
        timeout: float | None = None,  # noqa: ASYNC109 - Call.record's signature
    ) -> RecordingLike: ...

    async def collect_digits(
        self,
        max_digits: int,
        *,
        timeout: float = 10.0,  # noqa: ASYNC109 - Call.collect_digits's signature
        inter_digit_timeout: float = 3.0,
        stop_tones: str | Iterable[str] = ("#",),
        prompt: Any = None,
        prompt_timeout: float | None = 120.0,
    ) -> str: ...


Recognize = Callable[[bytes, str | None, float], Awaitable[Heard]]
"""``await recognize(audio, language, timeout)``: one recognition, on the I/O loop."""


@attrs.frozen
class RecordSpec:
    """How one utterance is recorded (see :meth:`Call.listen
    <callflow.control.call.Call.listen>`); ``max_duration`` is at most 60 s."""

    prompt: Any = None
    initial_silence_timeout: int = 5
    max_silence_timeout: int = 2
    max_duration: int = 10
    play_beep: bool = False
    barge_in_allowed: bool = True
    stop_tones: tuple[str, ...] = ("#",)
    timeout: float | None = None

    def __attrs_post_init__(self) -> None:
        if (
            not isinstance(self.max_duration, int)
            or isinstance(self.max_duration, bool)
            or not 1 <= self.max_duration <= 60
        ):
            raise ActionError(
                f"max_duration must be 1 to 60 whole seconds (Speech recognises at most 60 s "
                f"of audio), got {self.max_duration!r}"
            )


# --- listen ----------------------------------------------------------------------------------


async def listen(
    call: Listener,
    recognize: Recognize,
    spec: RecordSpec,
    *,
    language: str | None,
    recognition_timeout: float,
) -> Heard:
    """Record one utterance, download it and recognise it (see ``Call.listen``)."""
    recording = await _record(call, spec)
    return await _recognise(recording, recognize, language, recognition_timeout)


async def _record(call: Listener, spec: RecordSpec) -> RecordingLike:
    return await call.record(
        prompt=spec.prompt,
        barge_in_allowed=spec.barge_in_allowed,
        initial_silence_timeout=spec.initial_silence_timeout,
        max_silence_timeout=spec.max_silence_timeout,
        max_duration=spec.max_duration,
        play_beep=spec.play_beep,
        stop_tones=spec.stop_tones,
        timeout=spec.timeout,
    )


async def _recognise(
    recording: RecordingLike, recognize: Recognize, language: str | None, budget: float
) -> Heard:
    """What was said in ``recording``: silence (nothing sent to Speech) when Graph heard
    none or kept nothing; else the download and one recognition, within ``budget`` s."""
    if recording.location is None or recording.completion_reason == "initialSilenceTimeout":
        return silence()
    began = anyio.current_time()
    audio = await recording.download(max_bytes=DEFAULT_LISTEN_BYTES, timeout=budget)
    left = max(0.05, budget - (anyio.current_time() - began))
    return await recognize(audio, language, left)


# --- ask -------------------------------------------------------------------------------------


def _phrases(value: str | Iterable[str]) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else tuple(value)
    phrases: list[str] = []
    for item in items:
        if not isinstance(item, str) or not words_of(item):
            raise ActionError(f"Choice.words must be words (non-empty text), got {item!r}")
        phrases.append(" ".join(words_of(item)))
    return tuple(phrases)


def _check_key(instance: Choice, attribute: Any, value: str | None) -> None:
    if value is not None and value not in TONES:
        raise ActionError(f"Choice.key must be one key of {', '.join(TONES)}, got {value!r}")


@attrs.frozen
class Choice:
    """One entry of a menu for :meth:`Call.ask <callflow.control.call.Call.ask>`: the key
    that picks it (``"1"``) and the words or phrases that do (``["sales", "buy something"]``).

    Words match whole words of what the caller said, case and punctuation aside; a phrase
    matches its words in a row. The key is also matched when it is said ("one", "1").
    """

    key: str | None = attrs.field(default=None, validator=_check_key)
    words: tuple[str, ...] = attrs.field(default=(), converter=_phrases)


@attrs.frozen
class Reply:
    """How the caller answered :meth:`Call.ask <callflow.control.call.Call.ask>`.

    ``choice`` is the name of the entry that matched, None when none did. ``via`` says what
    arrived first: ``"key"`` (``key`` is the key pressed), ``"speech"`` (``heard`` is what
    was recognised) or None (nothing: silence, or no recording). ``attempts`` counts the
    times the question was asked. A key or speech that matched no entry is a Reply with
    ``choice`` None and ``via`` set: say what the caller can answer, and ask again.
    """

    choice: str | None
    via: str | None = None
    key: str | None = None
    heard: Heard | None = None
    attempts: int = 1

    @property
    def matched(self) -> bool:
        """True when an entry matched."""
        return self.choice is not None


@attrs.frozen
class Menu:
    """The checked entries of a menu, and the matching of keys and words to them."""

    entries: tuple[tuple[str, Choice], ...]

    @classmethod
    def of(cls, choices: Mapping[str, Choice | str]) -> Menu:
        """Check ``choices`` (name -> :class:`Choice`, or a key as a shortcut): at least
        one, names that are text, no key or phrase used by two entries."""
        if not isinstance(choices, Mapping) or not choices:
            raise ActionError("choices must be a non-empty mapping of name -> Choice")
        entries: list[tuple[str, Choice]] = []
        keys: dict[str, str] = {}
        phrases: dict[str, str] = {}
        for name, choice in choices.items():
            if not isinstance(name, str) or not name:
                raise ActionError(f"choice names must be non-empty text, got {name!r}")
            if isinstance(choice, str):
                choice = Choice(key=choice)
            if not isinstance(choice, Choice):
                raise ActionError(f"choices[{name!r}] must be a Choice, got {choice!r}")
            if choice.key is None and not choice.words:
                raise ActionError(f"choices[{name!r}] has neither a key nor words")
            for owner, taken, what in ((keys, (choice.key,), "key"), (phrases, choice.words, "")):
                for item in taken:
                    if item is None:
                        continue
                    if item in owner and owner[item] != name:
                        raise ActionError(
                            f"choices {owner[item]!r} and {name!r} share the "
                            f"{what or 'phrase'} {item!r}"
                        )
                    owner[item] = name
            entries.append((name, choice))
        return cls(tuple(entries))

    @property
    def keys(self) -> tuple[str, ...]:
        """The keys that pick an entry."""
        return tuple(c.key for _, c in self.entries if c.key is not None)

    def by_key(self, key: str) -> str | None:
        """The entry ``key`` picks, if any."""
        return next((name for name, c in self.entries if c.key == key), None)

    def by_speech(self, heard: Heard) -> str | None:
        """The entry what was ``heard`` names: the earliest phrase (or spoken key) in the
        best reading, else in the next readings; None when none is there."""
        readings = [heard.text, *(a.text for a in heard.alternatives)]
        readings += [a.lexical for a in heard.alternatives]
        for reading in readings:
            said = words_of(reading)
            best: tuple[int, str] | None = None
            for name, choice in self.entries:
                for phrase in _spoken(choice):
                    at = _find(said, tuple(phrase.split()))
                    if at is not None and (best is None or at < best[0]):
                        best = (at, name)
            if best is not None:
                return best[1]
        return None


def _spoken(choice: Choice) -> tuple[str, ...]:
    if choice.key is None:
        return choice.words
    return (*choice.words, *words_of(choice.key), *_SPOKEN_DIGITS.get(choice.key, ()))


def _find(said: tuple[str, ...], phrase: tuple[str, ...]) -> int | None:
    if not phrase:
        return None
    for at in range(len(said) - len(phrase) + 1):
        if said[at : at + len(phrase)] == phrase:
            return at
    return None


async def ask(
    call: Listener,
    recognize: Recognize,
    menu: Menu,
    spec: RecordSpec,
    *,
    digits: bool,
    language: str | None,
    recognition_timeout: float,
    attempts: int,
    retry_prompt: Any,
) -> Reply:
    """Ask until an entry matches or ``attempts`` ran out (see ``Call.ask``)."""
    reply = Reply(None)
    for attempt in range(1, attempts + 1):
        if attempt > 1 and retry_prompt is not None:
            spec = attrs.evolve(spec, prompt=retry_prompt)
        reply = await _ask_once(call, recognize, menu, spec, digits, language, recognition_timeout)
        reply = attrs.evolve(reply, attempts=attempt)
        if reply.matched:
            break
    return reply


async def _ask_once(
    call: Listener,
    recognize: Recognize,
    menu: Menu,
    spec: RecordSpec,
    digits: bool,
    language: str | None,
    recognition_timeout: float,
) -> Reply:
    """One question: record while waiting for a key; the first to come wins."""
    if not digits:
        heard = await listen(
            call, recognize, spec, language=language, recognition_timeout=recognition_timeout
        )
        return _spoken_reply(menu, heard)
    race = _Race()
    # The key wait outlives the recording by a little: a key that stopped it (a stop tone)
    # is reported after it.
    key_timeout = _record_timeout(spec) + STOP_TONE_GRACE

    async def recording() -> None:
        try:
            with race.record_scope:
                race.recording = await _record(call, spec)
        except Exception as exc:  # kept, raised below: not wrapped in an ExceptionGroup
            race.error = exc
        finally:
            race.recorded.set()

    async def key() -> None:
        try:
            with race.key_scope:
                race.key = await call.collect_digits(
                    1, timeout=key_timeout, inter_digit_timeout=key_timeout, stop_tones=()
                )
        except Exception as exc:
            race.error = race.error or exc
        finally:
            race.keyed.set()
            if race.key or race.error is not None:
                race.record_scope.cancel()  # a key cancels the recording (in Graph too)

    async with anyio.create_task_group() as tg:
        tg.start_soon(key)
        tg.start_soon(recording)
        await race.recorded.wait()
        if race.recording is not None and race.recording.completion_reason == "stopToneDetected":
            with anyio.move_on_after(STOP_TONE_GRACE):
                await race.keyed.wait()  # Graph stopped at a key: take the key
        race.key_scope.cancel()  # else the recording ended first: speech wins
    if race.key:
        return Reply(menu.by_key(race.key), "key", key=race.key)
    if race.error is not None:
        raise race.error
    if race.recording is None:
        raise CallControlError("ask: the recording ended without a result")
    heard = await _recognise(race.recording, recognize, language, recognition_timeout)
    return _spoken_reply(menu, heard)


def _spoken_reply(menu: Menu, heard: Heard) -> Reply:
    if not heard.understood:
        return Reply(None, None, heard=heard)
    return Reply(menu.by_speech(heard), "speech", heard=heard)


def _record_timeout(spec: RecordSpec) -> float:
    if spec.timeout is not None:
        return spec.timeout
    return float(spec.initial_silence_timeout + spec.max_duration + 30 + (60 if spec.prompt else 0))


class _Race:
    """A key wait and a recording run side by side; what each brought."""

    __slots__ = ("error", "key", "key_scope", "keyed", "record_scope", "recorded", "recording")

    def __init__(self) -> None:
        self.key_scope = anyio.CancelScope()
        self.record_scope = anyio.CancelScope()
        self.recorded = anyio.Event()
        self.keyed = anyio.Event()
        self.key: str | None = None
        self.recording: RecordingLike | None = None
        self.error: Exception | None = None
