"""The Speech REST client for text to speech: rendering SSML, listing voices, the start check.

:class:`SpeechClient` holds one aiohttp session (enter it on the I/O loop that uses it).
:meth:`~SpeechClient.synthesize` posts SSML and returns the WAV Graph plays (16 kHz mono
16-bit), retrying a refused or failed request (429, 5xx, no answer) only while the caller's
deadline leaves time; a refusal that a retry cannot fix (400, 401, 403) raises
:class:`~callflow.errors.SpeechError` at once, a 401 naming the setting to fix.
:meth:`~SpeechClient.check` is the start-up and ``callflow check`` probe: reachable, key
accepted, voice exists.
"""

from __future__ import annotations

import random
from types import TracebackType
from typing import Any, Final, Self

import aiohttp
import anyio
import structlog

from callflow.errors import SpeechError
from callflow.settings import PREFIX
from callflow.speech.config import SpeechConfig
from callflow.speech.wav import parse_wav

__all__ = ["GRAPH_OUTPUT", "MAX_AUDIO_BYTES", "SpeechClient", "read_at_most"]

log = structlog.get_logger(__name__)

GRAPH_OUTPUT: Final = "riff-16khz-16bit-mono-pcm"
"""The output format asked for: exactly what Graph plays."""
MAX_AUDIO_BYTES: Final = 20 * 1024 * 1024
"""The largest rendered prompt accepted (10 minutes of 16 kHz 16-bit mono is 19.2 MB)."""
_RETRIED: Final = frozenset({408, 429, 500, 502, 503, 504})
_BACKOFF: Final = (0.1, 2.0)
_USER_AGENT: Final = "callflow"


class SpeechClient:
    """Text to speech over Speech's REST API (see the module); one per worker."""

    def __init__(self, config: SpeechConfig, *, max_audio_bytes: int = MAX_AUDIO_BYTES) -> None:
        self.config = config
        self.max_audio_bytes = max_audio_bytes
        self.voices_known: frozenset[str] | None = None
        """The voices the last :meth:`voices` listed (short and long names); None before."""
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        connector = aiohttp.TCPConnector(limit=64, ssl=self.config.ssl or True)
        self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("SpeechClient is not open; use 'async with SpeechClient(...)'")
        return self._session

    async def synthesize(self, ssml: str, *, deadline: float) -> bytes:
        """Render ``ssml``; return the WAV. ``deadline`` is an ``anyio.current_time()``: no
        request (or retry) runs past it. Raises SpeechError."""
        body = ssml.encode("utf-8")
        attempt = 0
        last = "no attempt made"
        while True:
            left = deadline - anyio.current_time()
            if left <= 0:
                raise SpeechError(f"Speech did not render the prompt in time ({last})", status=None)
            attempt += 1
            try:
                headers = {
                    **(await self.config.headers()),
                    "Content-Type": "application/ssml+xml",
                    "X-Microsoft-OutputFormat": GRAPH_OUTPUT,
                    "User-Agent": _USER_AGENT,
                }
                status, retry_after, data = await self._post(body, headers, left)
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = f"attempt {attempt}: {type(exc).__name__}"
                await self._pause(attempt, None, deadline)
                continue
            if status == 200:
                return self._checked(data)
            last = f"attempt {attempt}: HTTP {status}"
            if status in (401, 403):
                raise SpeechError(
                    f"Speech refused the credentials ({status}): check {self.config.auth_setting}",
                    status=status,
                    setting=self.config.auth_setting,
                )
            if status not in _RETRIED:
                detail = data[:300].decode("utf-8", "replace").strip()
                raise SpeechError(
                    f"Speech refused the prompt ({status}): {detail or 'no detail'}; check the "
                    f"voice (Say(voice=...) or {PREFIX}SPEECH_VOICE) and the SSML",
                    status=status,
                    setting=f"{PREFIX}SPEECH_VOICE" if status == 400 else None,
                )
            await self._pause(attempt, retry_after, deadline)

    async def _post(
        self, body: bytes, headers: dict[str, str], left: float
    ) -> tuple[int, float | None, bytes]:
        timeout = aiohttp.ClientTimeout(total=left)
        async with self.session.post(
            self.config.tts_url, data=body, headers=headers, timeout=timeout
        ) as response:
            retry_after = _seconds(response.headers.get("Retry-After"))
            if response.status != 200:
                return response.status, retry_after, await response.content.read(4096)
            size = response.content_length
            if size is not None and size > self.max_audio_bytes:
                raise SpeechError(
                    f"Speech sent a prompt of {size} bytes (limit {self.max_audio_bytes})"
                )
            data = await read_at_most(response.content, self.max_audio_bytes + 1)
            if len(data) > self.max_audio_bytes:
                raise SpeechError(f"Speech sent a prompt over {self.max_audio_bytes} bytes")
            return 200, None, data

    def _checked(self, data: bytes) -> bytes:
        try:
            info = parse_wav(data)
        except ValueError as exc:
            raise SpeechError(f"Speech sent audio that is not a WAV file: {exc}") from None
        if not info.plays_on_graph:
            raise SpeechError(
                f"Speech sent a WAV of {info.sample_rate} Hz, {info.channels} channel(s), "
                f"{info.bits}-bit: Graph plays only 16 kHz mono 16-bit"
            )
        return data

    @staticmethod
    async def _pause(attempt: int, retry_after: float | None, deadline: float) -> None:
        low, high = _BACKOFF
        wait = retry_after if retry_after is not None else min(high, low * 2 ** (attempt - 1))
        wait = wait * (0.5 + random.random() / 2) if retry_after is None else wait
        left = deadline - anyio.current_time()
        if wait >= left:
            # No time for another attempt: say so now rather than at the deadline.
            raise SpeechError(
                f"Speech failed and no time is left to retry (attempt {attempt})", status=None
            )
        await anyio.sleep(wait)

    async def voices(self, *, timeout: float = 5.0) -> frozenset[str]:
        """The voices the resource offers (short and long names); raises SpeechError."""
        try:
            headers = {**(await self.config.headers()), "User-Agent": _USER_AGENT}
            async with self.session.get(
                self.config.voices_url,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                if response.status in (401, 403):
                    raise SpeechError(
                        f"Speech refused the credentials ({response.status}): check "
                        f"{self.config.auth_setting}",
                        status=response.status,
                        setting=self.config.auth_setting,
                    )
                if response.status != 200:
                    raise SpeechError(
                        f"Speech answered {response.status} to the voice list",
                        status=response.status,
                    )
                listed: Any = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise SpeechError(
                f"Speech is not reachable at {self.config.voices_url} ({type(exc).__name__})"
            ) from None
        names: set[str] = set()
        for voice in listed if isinstance(listed, list) else ():
            if isinstance(voice, dict):
                names.update(str(voice[k]) for k in ("ShortName", "Name") if k in voice)
        self.voices_known = frozenset(names)
        return self.voices_known

    async def check(self, voice: str, *, timeout: float = 5.0) -> None:
        """Raise SpeechError unless Speech answers, accepts the credentials and offers
        ``voice`` (the setting to fix is named)."""
        names = await self.voices(timeout=timeout)
        if voice not in names:
            raise SpeechError(
                f"{PREFIX}SPEECH_VOICE: the Speech resource has no voice {voice!r}",
                status=None,
                setting=f"{PREFIX}SPEECH_VOICE",
            )


async def read_at_most(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """The body's bytes until its end, or the first ``limit`` of them."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await stream.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds <= 3600 else None
