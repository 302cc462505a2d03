"""What FakeGraph does with the prompts a bot plays: it fetches them, as Graph does.

Graph fetches every prompt's ``uri`` and plays only a WAV of 16 kHz, mono, 16-bit PCM; with
anything else (an mp3, a 24 kHz WAV, a 404) the operation still completes, with nothing
played and ``completionReason`` ``unknown``. :class:`FakeMedia` judges each URI the same way,
without the internet:

1. media a test registered for the exact URI (:meth:`FakeMedia.register`) is judged by its
   bytes;
2. a URI on an origin a test mapped (:meth:`FakeMedia.serve_origin`; ``FakeGraph.serve``
   maps the origin of ``CALLBACK_URL`` to the bot it serves) is fetched from there over
   HTTP, and judged by what comes back;
3. any other URI (a CDN the fake cannot reach) is judged by its file name: a path ending in
   ``.wav`` plays, anything else does not.

Every judgement is recorded (:attr:`FakeMedia.fetches`); the words a played WAV carries in its
``ICMT`` chunk (a FakeSpeech rendering carries its text) are added to the call's
:attr:`~callflow.testing.CallHandle.said`. Runs on the test's event loop, with the fake's
client session.
"""

from __future__ import annotations

import time
from typing import Final
from urllib.parse import urlsplit

import aiohttp
import anyio
import attrs

from callflow.speech.tts import read_at_most
from callflow.speech.wav import parse_wav
from callflow.testing._runtime import Runtime

__all__ = ["FakeMedia", "MediaFetch"]

_MAX_BYTES: Final = 32 * 1024 * 1024
_FETCH_TIMEOUT: Final = 15.0


@attrs.frozen
class MediaFetch:
    """One prompt URI the fake judged: whether Graph would play it and why; ``words`` the
    text its ``ICMT`` chunk carries; ``status`` the HTTP status when it was fetched."""

    uri: str
    call_id: str | None
    plays: bool
    reason: str
    words: str | None = None
    status: int | None = None
    at: float = 0.0


def _judge_bytes(data: bytes) -> tuple[bool, str, str | None]:
    try:
        info = parse_wav(data)
    except ValueError as exc:
        return False, f"not a WAV file ({exc})", None
    if not info.plays_on_graph:
        return (
            False,
            f"a WAV of {info.sample_rate} Hz, {info.channels} channel(s), {info.bits}-bit; "
            "Graph plays only 16 kHz mono 16-bit PCM",
            None,
        )
    return True, "a 16 kHz mono 16-bit WAV", info.comment


class FakeMedia:
    """Judges the prompt URIs a bot plays (see the module)."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._registered: dict[str, bytes] = {}
        self._origins: dict[str, str] = {}
        self._fetches: list[MediaFetch] = []
        self._judged = anyio.Event()

    def register(self, uri: str, audio: bytes) -> None:
        """Judge ``uri`` by ``audio`` (what a CDN would serve for it) from now on."""
        self._registered[uri] = audio

    def serve_origin(self, origin: str, base_url: str) -> None:
        """Fetch URIs on ``origin`` (``https://bot.example.com``) from ``base_url`` instead
        (``http://127.0.0.1:PORT``: a worker, or a proxy in front of a fleet)."""
        parts = urlsplit(origin)
        self._origins[f"{parts.scheme}://{parts.netloc}".lower()] = base_url.rstrip("/")

    @property
    def fetches(self) -> tuple[MediaFetch, ...]:
        """Every prompt URI judged so far, in order."""
        return tuple(self._fetches)

    async def judge(self, uri: str, call_id: str | None = None) -> MediaFetch:
        """Judge ``uri`` as Graph would; record and return the judgement."""
        plays, reason, words, status = await self._judge(uri)
        fetch = MediaFetch(uri, call_id, plays, reason, words, status, time.monotonic())
        self._fetches.append(fetch)
        self._judged.set()
        self._judged = anyio.Event()
        return fetch

    async def wait_for(self, uri: str, *, timeout: float = 10.0) -> MediaFetch:  # noqa: ASYNC109
        """The first judgement of ``uri``, once there is one; TimeoutError after ``timeout``."""
        with anyio.fail_after(timeout):
            while True:
                for fetch in self._fetches:
                    if fetch.uri == uri:
                        return fetch
                await self._judged.wait()

    async def _judge(self, uri: str) -> tuple[bool, str, str | None, int | None]:
        if uri in self._registered:
            return (*_judge_bytes(self._registered[uri]), None)
        parts = urlsplit(uri)
        base = self._origins.get(f"{parts.scheme}://{parts.netloc}".lower())
        if base is None:
            if parts.path.lower().endswith(".wav"):
                return True, "not reachable from the fake: judged by its name (.wav)", None, None
            return (
                False,
                "not reachable from the fake, and its name does not end in .wav",
                None,
                None,
            )
        target = base + parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            async with self._runtime.session.get(
                target, timeout=aiohttp.ClientTimeout(total=_FETCH_TIMEOUT)
            ) as response:
                if response.status != 200:
                    return False, f"fetching it answered {response.status}", None, response.status
                data = await read_at_most(response.content, _MAX_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return False, f"fetching it failed ({type(exc).__name__})", None, None
        if len(data) > _MAX_BYTES:
            return False, "over 32 MB", None, 200
        return (*_judge_bytes(data), 200)
