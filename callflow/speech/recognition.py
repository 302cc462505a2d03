"""Speech to text for short audio: one WAV in, what the caller said out (:class:`Heard`).

Runs on the I/O loop (where :meth:`Call.listen <callflow.control.call.Call.listen>` and
:meth:`Call.ask <callflow.control.call.Call.ask>` recognise a recording) and touches only the
Speech resource's recognition endpoint, through one :class:`aiohttp.ClientSession` it owns:

    POST {stt}/speech/recognition/conversation/cognitiveservices/v1?language=en-US&format=detailed
    Content-Type: audio/wav; codecs=audio/pcm; samplerate=16000
    Accept: application/json
    Ocp-Apim-Subscription-Key: <key>   (or Authorization: Bearer <Entra token>)

The answer is ``{"RecognitionStatus", "DisplayText", "Offset", "Duration", "NBest": [{
"Confidence", "Lexical", "ITN", "MaskedITN", "Display"}]}``; ``Offset`` and ``Duration`` count
100-nanosecond ticks. The service takes at most 60 s of audio (longer audio is refused here,
before anything is sent) and answers only final results.

Failures are typed and bounded: silence (``InitialSilenceTimeout``), noise
(``BabbleTimeout``) and speech that matched no words (``NoMatch``) are a :class:`Heard` with an
empty text and that status, not an error. A Speech resource that cannot be reached, times out,
throttles (429) or fails (5xx, or the status ``Error``) is asked again, after ``Retry-After`` or
a short backoff, only while the operation's time lasts; then :class:`~callflow.errors.SpeechError`
is raised within that time. A 401 or 403 is not retried: its error names the setting to fix.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import ssl
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Final, Self

import aiohttp
import attrs
import structlog

from callflow.errors import SpeechError
from callflow.speech.config import STT_PATH, SpeechConfig
from callflow.speech.wav import parse_wav

__all__ = [
    "MAX_AUDIO_SECONDS",
    "NO_SPEECH",
    "STT_PATH",
    "Alternative",
    "Heard",
    "Recognizer",
    "silence",
    "words_of",
]

log = structlog.get_logger(__name__)

MAX_AUDIO_SECONDS: Final = 60.0
"""The longest audio the short-audio endpoint recognises."""
NO_SPEECH: Final = frozenset({"NoMatch", "InitialSilenceTimeout", "BabbleTimeout"})
"""Recognition statuses that mean "nothing understood": a :class:`Heard` with no text."""
_RETRY_STATUSES: Final = frozenset({408, 429, 500, 502, 503, 504})
_REPLY_LIMIT: Final = 256 * 1024
_TICKS_PER_SECOND: Final = 10_000_000
_BACKOFF: Final = (0.1, 2.0)
_SEND_ALLOWANCE: Final = 0.05
_WORD: Final = re.compile(r"[\w']+")


@attrs.frozen
class Alternative:
    """One reading of the audio (an ``NBest`` entry): ``text`` as displayed, ``lexical``
    as spoken (no punctuation, numbers in words), ``confidence`` from 0 to 1."""

    text: str
    lexical: str = ""
    confidence: float | None = None


@attrs.frozen
class Heard:
    """What the caller said, as Speech recognised it.

    ``status`` is Speech's ``RecognitionStatus``: ``Success`` (``text`` holds the words),
    ``NoMatch`` (speech, but no words recognised), ``InitialSilenceTimeout`` (only silence;
    also when Graph recorded nothing), ``BabbleTimeout`` (only noise). ``text`` is the best
    reading ("" unless ``Success``), ``confidence`` its confidence (0 to 1, None when Speech
    gave none); ``alternatives`` every reading, best first; ``offset`` and ``duration`` where
    the speech is in the recording, in seconds.
    """

    text: str
    status: str
    confidence: float | None = None
    alternatives: tuple[Alternative, ...] = ()
    offset: float = 0.0
    duration: float = 0.0

    @property
    def understood(self) -> bool:
        """True when words were recognised (``status`` is ``Success`` and ``text`` is not
        empty)."""
        return self.status == "Success" and bool(self.text)

    @property
    def words(self) -> tuple[str, ...]:
        """The words of ``text``, lower-case, without punctuation."""
        return words_of(self.text)


def words_of(text: str) -> tuple[str, ...]:
    """``"Sales, please."`` -> ``("sales", "please")``."""
    return tuple(_WORD.findall(text.lower()))


def silence(status: str = "InitialSilenceTimeout") -> Heard:
    """What is heard of a recording with nothing in it."""
    return Heard("", status)


def _audio_format(audio: bytes) -> tuple[float, int]:
    """How long a PCM WAV lasts; :class:`SpeechError` (nothing sent) for anything else."""
    try:
        info = parse_wav(audio)
    except ValueError as exc:
        raise SpeechError(
            f"the audio to recognise is not a WAV file ({exc}; {len(audio)} bytes); expected "
            "RIFF/WAVE, mono 16-bit PCM at 16 kHz. Nothing was sent."
        ) from None
    if info.audio_format not in (1, 0xFFFE):
        raise SpeechError("the WAV file to recognise is not PCM. Nothing was sent.")
    return info.seconds, info.sample_rate


class Recognizer:
    """Recognises short recordings with a Speech resource; see the module docstring.

    ``config`` says where the recognition endpoint is (``config.stt_url``), how requests are
    authenticated (``config.headers()``), which setting a 401 asks to fix, the default
    language and the TLS context. ``session`` is an open session to use instead of one of
    its own. Enter it (``async with``) on the loop that will use it (the I/O loop).
    """

    def __init__(
        self,
        config: SpeechConfig,
        *,
        session: aiohttp.ClientSession | None = None,
        attempt_timeout: float = 20.0,
    ) -> None:
        self.config = config
        self.url = config.stt_url
        self.language = config.language
        self._ssl: ssl.SSLContext | bool = config.ssl if config.ssl is not None else True
        self._session = session
        self._owns_session = session is None
        self._attempt_timeout = attempt_timeout

    async def __aenter__(self) -> Self:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self._ssl, limit=32)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout()
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        session, self._session = self._session, None
        if session is not None and self._owns_session:
            await session.close()

    async def recognize(
        self,
        audio: bytes,
        *,
        language: str | None = None,
        timeout: float = 15.0,
        profanity: str | None = None,
    ) -> Heard:
        """Recognise ``audio`` (a PCM WAV of at most 60 s) spoken in ``language`` (default:
        the config's, ``CALLFLOW_SPEECH_LANGUAGE``).

        Returns a :class:`Heard` (with an empty text for silence, noise or no match); raises
        :class:`SpeechError` within ``timeout`` seconds when Speech cannot be reached or
        refuses, and at once (nothing sent) for audio that is not a WAV of at most 60 s.
        """
        session = self._session
        if session is None:
            raise SpeechError("the Recognizer is not open; expected `async with Recognizer(...)`")
        seconds, rate = _audio_format(audio)
        if seconds > MAX_AUDIO_SECONDS:
            raise SpeechError(
                f"the audio to recognise lasts {seconds:.1f} s; Speech's short-audio "
                f"recognition takes at most {MAX_AUDIO_SECONDS:g} s. Nothing was sent."
            )
        language = language or self.language
        params = {"language": language, "format": "detailed"}
        if profanity is not None:
            params["profanity"] = profanity
        content_type = f"audio/wav; codecs=audio/pcm; samplerate={rate}"
        deadline = time.monotonic() + timeout
        attempt = 0
        problem = "no attempt was made"
        while True:
            attempt += 1
            left = deadline - time.monotonic()
            if left <= _SEND_ALLOWANCE:
                raise SpeechError(
                    f"speech recognition did not succeed within {timeout:g} s "
                    f"({attempt - 1} attempt(s); last: {problem})"
                )
            retry_after: float | None = None
            try:
                async with asyncio.timeout(min(left, self._attempt_timeout)):
                    headers = {
                        **await self.config.headers(),
                        "Content-Type": content_type,
                        "Accept": "application/json",
                    }
                    async with session.post(
                        self.url, params=params, data=audio, headers=headers, ssl=self._ssl
                    ) as response:
                        status = response.status
                        raw = await response.content.read(_REPLY_LIMIT)
                        retry_after = _retry_after(response.headers.get("Retry-After"))
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if isinstance(exc, TimeoutError):
                    problem = "no answer in time"
            else:
                if status == 200:
                    heard = _parse(raw)
                    if heard is not None:
                        log.debug("speech.recognized", status=heard.status, attempt=attempt)
                        return heard
                    problem = "Speech answered RecognitionStatus Error"
                elif status in (401, 403):
                    raise SpeechError(
                        self._refused(status, raw), status=status, setting=self.config.auth_setting
                    )
                elif status not in _RETRY_STATUSES:
                    raise SpeechError(
                        f"Speech refused the recognition request: {status} {_snippet(raw)} "
                        f"(language {language!r}); check CALLFLOW_SPEECH_LANGUAGE and the audio",
                        status=status,
                    )
                else:
                    problem = f"Speech answered {status}"
            log.info("speech.retry", attempt=attempt, problem=problem)
            wait = retry_after if retry_after is not None else _backoff(attempt)
            if time.monotonic() + wait + _SEND_ALLOWANCE >= deadline:
                raise SpeechError(
                    f"speech recognition did not succeed within {timeout:g} s "
                    f"({attempt} attempt(s); last: {problem})"
                )
            await asyncio.sleep(wait)

    def _refused(self, status: int, raw: bytes) -> str:
        if status == 401:
            return (
                f"Speech refused the credentials (401 {_snippet(raw)}); check "
                f"{self.config.auth_setting} (the Speech resource's key, or with Entra auth its "
                "role assignment) and that the region or endpoint is that resource's"
            )
        return (
            f"Speech forbade the request (403 {_snippet(raw)}); check "
            f"{self.config.auth_setting} and that the Speech resource allows this caller "
            "(network rules, quota, region)"
        )


def _parse(raw: bytes) -> Heard | None:
    """The :class:`Heard` of a 200 reply; None for ``RecognitionStatus`` ``Error`` (retried)."""
    try:
        body: Any = json.loads(raw)
    except ValueError:
        raise SpeechError(f"Speech answered 200 without JSON: {_snippet(raw)}") from None
    if not isinstance(body, dict):
        raise SpeechError(f"Speech answered 200 with {_snippet(raw)}; expected a JSON object")
    status = str(body.get("RecognitionStatus") or "")
    if status == "Error":
        return None
    offset = _seconds(body.get("Offset"))
    duration = _seconds(body.get("Duration"))
    if status in NO_SPEECH:
        return Heard("", status, offset=offset, duration=duration)
    if status != "Success":
        raise SpeechError(f"Speech answered RecognitionStatus {status[:60]!r}")
    alternatives = tuple(_alternative(entry) for entry in body.get("NBest") or () if entry)
    text = body.get("DisplayText")
    if not isinstance(text, str):
        text = alternatives[0].text if alternatives else ""
    confidence = alternatives[0].confidence if alternatives else None
    return Heard(text, status, confidence, alternatives, offset, duration)


def _alternative(entry: Any) -> Alternative:
    if not isinstance(entry, Mapping):
        return Alternative("")
    confidence = entry.get("Confidence")
    return Alternative(
        str(entry.get("Display") or entry.get("ITN") or entry.get("Lexical") or ""),
        str(entry.get("Lexical") or ""),
        float(confidence) if isinstance(confidence, int | float) else None,
    )


def _seconds(ticks: Any) -> float:
    return ticks / _TICKS_PER_SECOND if isinstance(ticks, int | float) else 0.0


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(0.0, seconds)


def _backoff(attempt: int) -> float:
    low, high = _BACKOFF
    return random.uniform(low, min(high, low * 2**attempt))


def _snippet(raw: bytes) -> str:
    text = raw[:200].decode("utf-8", "replace").strip()
    return repr(text) if text else "(no body)"
