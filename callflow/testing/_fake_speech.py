"""FakeSpeech: Azure AI Speech's REST API for text to speech and short audio, on loopback.

One :class:`FakeSpeech` serves, while entered (``async with FakeSpeech() as speech:``), on
127.0.0.1 on a free port, the requests a bot makes to Speech, as Speech answers them:

- ``POST /cognitiveservices/v1`` (also under ``/tts``, as on a custom-domain endpoint):
  SSML in (``Content-Type: application/ssml+xml``), ``X-Microsoft-OutputFormat`` naming the
  audio format; a WAV out, 16 kHz mono 16-bit for ``riff-16khz-16bit-mono-pcm``, as long as
  the text takes to say, its ``ICMT`` chunk carrying the text. SSML that does not parse or
  lacks ``speak``/``voice``, or an unknown voice, gets 400; a wrong content type 415.
- ``GET /cognitiveservices/voices/list`` (also under ``/tts``): the voices it knows.
- ``POST /speech/recognition/conversation/cognitiveservices/v1?language=..&format=..`` (also
  under ``/stt``): a WAV in; ``{"RecognitionStatus", "DisplayText", "Offset", "Duration",
  "NBest": [{"Confidence", "Lexical", "ITN", "MaskedITN", "Display"}]}`` out. What it
  "hears" is the WAV's ``ICMT`` chunk (:func:`~callflow.testing.wav_with_words`): no chunk
  and silence is ``InitialSilenceTimeout``, no chunk and sound (or an empty one) ``NoMatch``.

Every request needs ``Ocp-Apim-Subscription-Key: <key>`` or ``Authorization: Bearer
<token>`` with a token given to :meth:`FakeSpeech.accept_token` (401 otherwise). Faults:
:meth:`FakeSpeech.refuse` answers the next requests with a status, ``latency`` delays every
answer. :attr:`FakeSpeech.requests` records what arrived. Runs on the test's event loop.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Final, Self

import anyio
import attrs
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from callflow.speech.config import STT_PATH, TTS_PATH, VOICES_PATH
from callflow.speech.wav import build_wav, parse_wav
from callflow.testing._audio import tone_pcm

__all__ = ["DEFAULT_VOICES", "FakeSpeech", "SpeechRequest"]

DEFAULT_VOICES: Final = (
    "en-US-JennyNeural",
    "en-US-GuyNeural",
    "en-GB-SoniaNeural",
    "de-DE-KatjaNeural",
)
_SSML_NS: Final = "{http://www.w3.org/2001/10/synthesis}"
_XML_LANG: Final = "{http://www.w3.org/XML/1998/namespace}lang"
_GRAPH_FORMAT: Final = "riff-16khz-16bit-mono-pcm"
_FORMATS: Final = {_GRAPH_FORMAT: 16_000, "riff-24khz-16bit-mono-pcm": 24_000}
_MAX_SSML: Final = 64 * 1024
_MAX_SECONDS: Final = 600.0
_TICKS: Final = 10_000_000


@attrs.frozen
class SpeechRequest:
    """One request FakeSpeech got: ``kind`` (``tts``, ``voices``, ``stt``), the status it
    answered, its headers and body; for ``tts`` the ``text`` spoken and the ``voice``, for
    ``stt`` the ``text`` heard; ``injected`` when :meth:`FakeSpeech.refuse` answered."""

    kind: str
    status: int
    headers: CIMultiDictProxy[str] = attrs.field(repr=False, eq=False)
    body: bytes = attrs.field(repr=False)
    text: str | None = None
    voice: str | None = None
    query: dict[str, str] = attrs.Factory(dict)
    at: float = 0.0
    injected: bool = False


def _long_name(short: str) -> str:
    locale, _, name = short.rpartition("-")
    return f"Microsoft Server Speech Text to Speech Voice ({locale}, {name})"


class FakeSpeech:
    """Azure AI Speech's TTS and short-audio STT REST API on loopback (see the module)."""

    def __init__(
        self,
        *,
        key: str = "fake-speech-key-0123456789abcdef",
        voices: Iterable[str] = DEFAULT_VOICES,
        chars_per_second: float = 14.0,
        confidence: float = 0.93,
    ) -> None:
        self.key = key
        self.voices = tuple(voices)
        self.chars_per_second = chars_per_second
        self.confidence = confidence
        self.latency = 0.0
        """Seconds added before every answer."""
        self._tokens: set[str] = set()
        self._refusals: list[tuple[int, str | None]] = []
        self._requests: list[SpeechRequest] = []
        self._arrived = anyio.Event()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    def __repr__(self) -> str:
        return f"<FakeSpeech {self.url if self._port else '(stopped)'}>"

    async def __aenter__(self) -> Self:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        for prefix in ("", "/tts"):
            app.router.add_post(prefix + TTS_PATH, self._tts)
            app.router.add_get(prefix + VOICES_PATH, self._voices)
        for prefix in ("", "/stt"):
            app.router.add_post(prefix + STT_PATH, self._stt)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        self._runner = runner
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self._port = int(runner.addresses[0][1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        runner, self._runner = self._runner, None
        self._port = None
        if runner is not None:
            await runner.cleanup()

    # -- wiring ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: the ``SPEECH_ENDPOINT`` of a bot using this fake."""
        if self._port is None:
            raise RuntimeError("FakeSpeech is not running; use 'async with FakeSpeech() as s:'")
        return f"http://127.0.0.1:{self._port}"

    def overrides(self) -> dict[str, Any]:
        """Settings overrides wiring a bot to this fake (``fake.settings(**speech.overrides())``
        or ``fake.serve(bot, **speech.overrides())``)."""
        return {"speech_endpoint": self.url, "speech_key": self.key}

    def environ(self) -> dict[str, str]:
        """The ``CALLFLOW_SPEECH_*`` variables wiring a bot process to this fake."""
        return {"CALLFLOW_SPEECH_ENDPOINT": self.url, "CALLFLOW_SPEECH_KEY": self.key}

    def accept_token(self, token: str) -> None:
        """Accept ``Authorization: Bearer <token>`` from now on (Entra authentication)."""
        self._tokens.add(token)

    def refuse(self, status: int, *, times: int = 1, retry_after: float | None = None) -> None:
        """Answer the next ``times`` requests with ``status`` (and ``Retry-After``)."""
        after = None if retry_after is None else f"{retry_after:g}"
        self._refusals.extend([(status, after)] * times)

    # -- records ---------------------------------------------------------------------------

    @property
    def requests(self) -> tuple[SpeechRequest, ...]:
        """Every request received so far, in arrival order."""
        return tuple(self._requests)

    def requests_of(self, kind: str) -> tuple[SpeechRequest, ...]:
        """The requests of one ``kind``: ``tts``, ``voices`` or ``stt``."""
        return tuple(r for r in self._requests if r.kind == kind)

    async def wait_requests(
        self,
        kind: str,
        count: int = 1,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> tuple[SpeechRequest, ...]:
        """Wait until ``count`` requests of ``kind`` arrived; TimeoutError after ``timeout``."""
        with anyio.fail_after(timeout):
            while len(self.requests_of(kind)) < count:
                await self._arrived.wait()
        return self.requests_of(kind)

    def _record(self, request: SpeechRequest) -> None:
        self._requests.append(request)
        self._arrived.set()
        self._arrived = anyio.Event()

    # -- the API ---------------------------------------------------------------------------

    async def _gate(self, request: web.Request, kind: str, body: bytes) -> web.Response | None:
        """Latency, injected refusals and authentication: an answer, or None to go on."""
        if self.latency > 0:
            await anyio.sleep(self.latency)
        headers = CIMultiDictProxy(CIMultiDict(request.headers))
        if self._refusals:
            status, after = self._refusals.pop(0)
            self._record(
                SpeechRequest(kind, status, headers, body, at=time.monotonic(), injected=True)
            )
            extra = {} if after is None else {"Retry-After": after}
            return web.Response(status=status, text="refused by the test", headers=extra)
        key = request.headers.get("Ocp-Apim-Subscription-Key")
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else None
        if key != self.key and (token is None or token not in self._tokens):
            self._record(SpeechRequest(kind, 401, headers, body, at=time.monotonic()))
            return web.json_response(
                {
                    "error": {
                        "code": "401",
                        "message": "Access denied due to invalid subscription "
                        "key or wrong API endpoint.",
                    }
                },
                status=401,
            )
        return None

    async def _voices(self, request: web.Request) -> web.StreamResponse:
        refused = await self._gate(request, "voices", b"")
        if refused is not None:
            return refused
        self._record(
            SpeechRequest(
                "voices",
                200,
                CIMultiDictProxy(CIMultiDict(request.headers)),
                b"",
                at=time.monotonic(),
            )
        )
        return web.json_response([self._voice_entry(v) for v in self.voices])

    @staticmethod
    def _voice_entry(short: str) -> dict[str, str]:
        locale = short.rsplit("-", 1)[0]
        return {
            "Name": _long_name(short),
            "DisplayName": short.rsplit("-", 1)[1].removesuffix("Neural"),
            "LocalName": short.rsplit("-", 1)[1].removesuffix("Neural"),
            "ShortName": short,
            "Gender": "Female",
            "Locale": locale,
            "LocaleName": locale,
            "SampleRateHertz": "24000",
            "VoiceType": "Neural",
            "Status": "GA",
            "WordsPerMinute": "150",
        }

    async def _tts(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        refused = await self._gate(request, "tts", body)
        if refused is not None:
            return refused
        headers = CIMultiDictProxy(CIMultiDict(request.headers))

        def answer(
            status: int, message: str, text: str | None = None, voice: str | None = None
        ) -> web.Response:
            self._record(
                SpeechRequest("tts", status, headers, body, text, voice, at=time.monotonic())
            )
            return web.Response(status=status, text=message)

        if not request.headers.get("Content-Type", "").startswith("application/ssml+xml"):
            return answer(415, "Content-Type must be application/ssml+xml")
        output = request.headers.get("X-Microsoft-OutputFormat", "")
        if output not in _FORMATS:
            return answer(400, f"unsupported X-Microsoft-OutputFormat {output!r}")
        if len(body) > _MAX_SSML:
            return answer(400, "SSML is too long")
        try:
            voice, text = self._read_ssml(body)
        except ValueError as exc:
            return answer(400, str(exc))
        seconds = min(_MAX_SECONDS, max(0.3, len(text) / self.chars_per_second))
        rate = _FORMATS[output]
        pcm = tone_pcm(seconds * rate / 16_000)
        wav = build_wav(pcm, sample_rate=rate, comment=text)
        self._record(SpeechRequest("tts", 200, headers, body, text, voice, at=time.monotonic()))
        return web.Response(body=wav, content_type="audio/x-wav")

    def _read_ssml(self, body: bytes) -> tuple[str, str]:
        try:
            root = ET.fromstring(body)
        except ET.ParseError as exc:
            raise ValueError(f"SSML is not well-formed XML: {exc}") from None
        if root.tag != f"{_SSML_NS}speak" or root.get("version") != "1.0":
            raise ValueError("SSML must be a <speak version='1.0'> in the SSML namespace")
        if not root.get(_XML_LANG):
            raise ValueError("<speak> needs xml:lang")
        voices = root.findall(f"{_SSML_NS}voice")
        if not voices:
            raise ValueError("SSML needs a <voice> element")
        known = set(self.voices) | {_long_name(v) for v in self.voices}
        for element in voices:
            name = element.get("name", "")
            if name not in known:
                raise ValueError(f"unsupported voice {name!r}")
        text = " ".join(" ".join("".join(v.itertext()).split()) for v in voices).strip()
        return voices[0].get("name", ""), text

    async def _stt(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        refused = await self._gate(request, "stt", body)
        if refused is not None:
            return refused
        headers = CIMultiDictProxy(CIMultiDict(request.headers))
        query = dict(request.query)

        def answer(status: int, payload: Any, text: str | None = None) -> web.Response:
            self._record(
                SpeechRequest("stt", status, headers, body, text, query=query, at=time.monotonic())
            )
            if isinstance(payload, str):
                return web.Response(status=status, text=payload)
            return web.json_response(payload, status=status)

        if not request.headers.get("Content-Type", "").startswith("audio/wav"):
            return answer(415, "Content-Type must be audio/wav; codecs=audio/pcm; samplerate=16000")
        if not query.get("language"):
            return answer(400, "the language query parameter is required")
        try:
            wav = parse_wav(body)
        except ValueError as exc:
            return answer(400, f"audio is not a WAV file: {exc}")
        if (wav.sample_rate, wav.channels, wav.bits) != (16_000, 1, 16):
            return answer(400, "audio must be 16 kHz, mono, 16-bit PCM")
        duration = int(wav.seconds * _TICKS)
        words = wav.comment
        if words is None and wav.silent:
            return answer(
                200,
                {"RecognitionStatus": "InitialSilenceTimeout", "Offset": duration, "Duration": 0},
            )
        if not words:
            return answer(200, {"RecognitionStatus": "NoMatch", "Offset": 0, "Duration": duration})
        lexical = " ".join(
            "".join(c for c in w if c.isalnum() or c == "'") for w in words.lower().split()
        )
        display = words[0].upper() + words[1:]
        if display[-1] not in ".?!":
            display += "."
        result: dict[str, Any] = {
            "RecognitionStatus": "Success",
            "DisplayText": display,
            "Offset": int(0.1 * _TICKS),
            "Duration": max(0, duration - int(0.1 * _TICKS)),
        }
        if query.get("format", "simple").lower() == "detailed":
            result["NBest"] = [
                {
                    "Confidence": self.confidence,
                    "Lexical": lexical,
                    "ITN": lexical,
                    "MaskedITN": lexical,
                    "Display": display,
                }
            ]
        return answer(200, result, words)
