"""Spoken prompts served by the worker: names, the cache, rendering, sharing in a fleet.

:class:`SpokenMedia` turns a :class:`~callflow.Say` or :class:`~callflow.Ssml` into the
:class:`~callflow.MediaPrompt` Graph fetches: ``<media base>/<name>.wav``. A name is
``<digest>-<expiry>-<tag>``: the digest is keyed (HMAC) over the output format and the SSML
(which names the voice), so the same phrase gets the same digest but nobody without the key
can tell what a name says; the expiry is rounded up to a whole ``MEDIA_TTL`` (the same phrase
keeps its URL for a while, which lets Graph cache it) and the tag (HMAC over digest and expiry)
makes the name one the fleet issued. :meth:`SpokenMedia.fetch` answers only such names, before
they expire, and only with bytes of its own cache: nothing of the request reaches a path.

Rendering: :meth:`~SpokenMedia.prepare` renders before a prompt is played (so a refused voice
fails the play and nothing is sent to Graph); :meth:`~SpokenMedia.issue` names a prompt at once
and renders it in the background (``Answer(prefetch=...)``: the answer is never held up). One
render per digest at a time; the rendered WAVs are kept in a bounded LRU cache. In a fleet the
spec (voice and SSML) goes to the store, and a worker asked for a name it did not issue reads
the spec (checking its digest) and renders it itself.

Runs on the I/O loop (enter it there): the media endpoint, the Call's operations and the
decision sink all call in on that loop.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Final, Protocol, Self

import anyio
import attrs
import structlog
from anyio.abc import TaskGroup

from callflow.actions import PlayPrompt, RecordResponse
from callflow.decisions import Answer, MediaPrompt, Prompt
from callflow.errors import SpeechError
from callflow.prompts import Say, Ssml
from callflow.settings import PREFIX
from callflow.speech.tts import GRAPH_OUTPUT, SpeechClient

__all__ = ["NAME", "SpecStore", "SpokenMedia", "SpokenSink", "rendered"]

log = structlog.get_logger(__name__)

NAME: Final = re.compile(r"([0-9a-f]{32})-([0-9a-f]{1,12})-([0-9a-f]{32})")
"""What a rendered prompt's name looks like (without ``.wav``)."""
_MAX_SPECS: Final = 10_000
_MAX_SSML_KEPT: Final = 1024 * 1024
"""The least the texts of spoken prompts may take (characters), whatever the cache's size."""
_SPEC_WAITS: Final = (0.05, 0.1, 0.2, 0.4, 0.8)
"""Pauses while a spec another worker issued is not in the store yet (it is written right
after the answer that names it is sent)."""
_BACKGROUND_RENDERS: Final = 8
_Request = Any  # an action: PlayPrompt and RecordResponse carry prompts


class SpecStore(Protocol):
    """Where a fleet's workers share what a prompt says (the fleet's Redis store)."""

    async def put(self, digest: str, spec: str, ttl: float) -> None:
        """Keep ``spec`` under ``digest`` for ``ttl`` seconds (best effort)."""

    async def get(self, digest: str) -> str | None:
        """The spec kept under ``digest``; None when there is none (or the store fails)."""


@attrs.frozen
class _Spec:
    voice: str
    ssml: str

    @property
    def size(self) -> int:
        """Roughly what it takes in memory: its characters."""
        return len(self.voice) + len(self.ssml)

    def dump(self) -> str:
        return json.dumps({"voice": self.voice, "ssml": self.ssml}, separators=(",", ":"))

    @classmethod
    def load(cls, text: str) -> _Spec | None:
        try:
            value = json.loads(text)
            return cls(str(value["voice"]), str(value["ssml"]))
        except (ValueError, KeyError, TypeError):
            return None


class _Render:
    __slots__ = ("data", "done", "error")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.data: bytes | None = None
        self.error: SpeechError | None = None


class SpokenMedia:
    """Names, renders, caches and serves spoken prompts (see the module)."""

    def __init__(
        self,
        client: SpeechClient,
        *,
        key: bytes,
        base_url: str,
        ttl: float = 3600.0,
        cache_bytes: int = 64 * 1024 * 1024,
        shared: SpecStore | None = None,
        render_timeout: float = 15.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.ttl = ttl
        self.cache_bytes = cache_bytes
        self.shared = shared
        self.render_timeout = render_timeout
        self.renders = 0
        """Prompts rendered by this worker (requests to Speech that succeeded)."""
        self._key = key
        self._now = wall_clock
        self._specs: OrderedDict[str, _Spec] = OrderedDict()
        self._spec_bytes = 0
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cached = 0
        self._rendering: dict[str, _Render] = {}
        self._tg: TaskGroup | None = None
        self._limiter = anyio.CapacityLimiter(_BACKGROUND_RENDERS)

    async def __aenter__(self) -> Self:
        self._tg = await anyio.create_task_group().__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tg, self._tg = self._tg, None
        if tg is not None:
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)

    # -- names -----------------------------------------------------------------------------

    def _spec(self, prompt: Say | Ssml) -> _Spec:
        config = self.client.config
        if isinstance(prompt, Say):
            voice, ssml = prompt.ssml(config.voice, config.language)
        else:
            voice, ssml = prompt.voice, prompt.ssml
        known = self.client.voices_known
        if known is not None and voice not in known:
            raise SpeechError(
                f"the Speech resource has no voice {voice!r} (Say(voice=...) or "
                f"{PREFIX}SPEECH_VOICE)",
                setting=f"{PREFIX}SPEECH_VOICE",
            )
        return _Spec(voice, ssml)

    def _digest(self, spec: _Spec) -> str:
        message = f"{GRAPH_OUTPUT}\0{spec.ssml}".encode("utf-8", "surrogatepass")
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:32]

    def _tag(self, digest: str, expiry: int) -> str:
        return hmac.new(self._key, f"{digest}-{expiry:x}".encode(), hashlib.sha256).hexdigest()[:32]

    def _name(self, digest: str) -> str:
        expiry = int((self._now() // self.ttl + 2) * self.ttl)  # MEDIA_TTL need not be whole
        return f"{digest}-{expiry:x}-{self._tag(digest, expiry)}"

    def issue(self, prompt: Say | Ssml) -> tuple[MediaPrompt, str]:
        """The MediaPrompt serving ``prompt`` and its digest, at once (no I/O); the spec is
        kept locally. SpeechError for a voice the resource does not offer."""
        spec = self._spec(prompt)
        digest = self._digest(spec)
        self._remember(digest, spec)
        uri = f"{self.base_url}/{self._name(digest)}.wav"
        return MediaPrompt(uri, resource_id=digest), digest

    def _remember(self, digest: str, spec: _Spec) -> None:
        """Remember what ``digest`` says, the least recently issued forgotten first: at most
        :data:`_MAX_SPECS` texts, and at most a quarter of the cache's bytes (the newest is
        always kept, so that it can be rendered)."""
        specs = self._specs
        old = specs.pop(digest, None)
        if old is not None:
            self._spec_bytes -= old.size
        specs[digest] = spec
        self._spec_bytes += spec.size
        budget = max(self.cache_bytes // 4, _MAX_SSML_KEPT)
        while len(specs) > 1 and (len(specs) > _MAX_SPECS or self._spec_bytes > budget):
            self._spec_bytes -= specs.popitem(last=False)[1].size

    # -- rendering -------------------------------------------------------------------------

    async def prepare(self, prompt: Prompt, deadline: float) -> MediaPrompt:
        """``prompt`` ready to play: a spoken one rendered (and shared) before ``deadline``
        (an ``anyio.current_time()``); a MediaPrompt as it is. Raises SpeechError."""
        if isinstance(prompt, MediaPrompt):
            return prompt
        media, digest = self.issue(prompt)
        spec = self._specs[digest]
        await self._render(digest, spec, deadline)
        if self.shared is not None:
            await self.shared.put(digest, spec.dump(), self.ttl * 2)
        return media

    def in_background(self, digests: Iterable[str]) -> None:
        """Render and share ``digests`` (issued just now) in the background."""
        if self._tg is None:
            return
        for digest in digests:
            self._tg.start_soon(self._background, digest)

    async def _background(self, digest: str) -> None:
        spec = self._specs.get(digest)
        if spec is None:
            return
        if self.shared is not None:
            await self.shared.put(digest, spec.dump(), self.ttl * 2)
        async with self._limiter:
            try:
                await self._render(digest, spec, anyio.current_time() + self.render_timeout)
            except SpeechError as exc:
                log.warning("speech.prefetch_failed", error=str(exc), status=exc.status)
            except Exception as exc:  # raised, it would end the media's task group (and worker)
                log.error("speech.prefetch_failed", error=f"{type(exc).__name__}: {exc}")

    async def _render(self, digest: str, spec: _Spec, deadline: float) -> bytes:
        data = self._cache.get(digest)
        if data is not None:
            self._cache.move_to_end(digest)
            return data
        running = self._rendering.get(digest)
        if running is None:
            running = self._rendering[digest] = _Render()
            try:
                running.data = await self.client.synthesize(spec.ssml, deadline=deadline)
                self.renders += 1
                self._keep(digest, running.data)
            except SpeechError as exc:
                running.error = exc
                raise
            finally:
                del self._rendering[digest]
                running.done.set()
            return running.data
        with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
            await running.done.wait()
        if not running.done.is_set():  # the render goes on for its owner; this caller's time is up
            raise SpeechError("Speech did not render the prompt in time", status=None)
        if running.data is None:
            raise running.error or SpeechError("the prompt could not be rendered")
        return running.data

    def _keep(self, digest: str, data: bytes) -> None:
        if len(data) > self.cache_bytes:
            return
        self._cache[digest] = data
        self._cached += len(data)
        while self._cached > self.cache_bytes:
            _, dropped = self._cache.popitem(last=False)
            self._cached -= len(dropped)

    @property
    def cached_bytes(self) -> int:
        """Bytes of rendered prompts kept now (at most ``cache_bytes``)."""
        return self._cached

    # -- serving ---------------------------------------------------------------------------

    def _valid(self, name: str) -> str | None:
        """The digest of ``name`` when the fleet issued it and it has not expired."""
        match = NAME.fullmatch(name)
        if match is None:
            return None
        digest, expiry_hex, tag = match.groups()
        expiry = int(expiry_hex, 16)
        if not hmac.compare_digest(tag, self._tag(digest, expiry)) or expiry <= self._now():
            return None
        return digest

    async def fetch(self, name: str) -> bytes | None:
        """The WAV of ``name`` (without ``.wav``); None for a name not issued, expired, or
        whose spec is nowhere (404). Raises SpeechError when it cannot be rendered (503)."""
        digest = self._valid(name)
        if digest is None:
            return None
        data = self._cache.get(digest)
        if data is not None:
            self._cache.move_to_end(digest)
            return data
        spec = self._specs.get(digest) or await self._shared_spec(digest)
        if spec is None:
            return None
        return await self._render(digest, spec, anyio.current_time() + self.render_timeout)

    async def _shared_spec(self, digest: str) -> _Spec | None:
        if self.shared is None:
            return None
        for pause in (*_SPEC_WAITS, None):
            text = await self.shared.get(digest)
            spec = None if text is None else _Spec.load(text)
            if spec is not None:
                if not hmac.compare_digest(self._digest(spec), digest):
                    log.error("speech.spec_mismatch", digest=digest)
                    return None
                self._remember(digest, spec)
                return spec
            if pause is not None:
                await anyio.sleep(pause)
        return None


class _Sink(Protocol):
    async def deliver(self, call: Any, decision: Any, deadline: float) -> Any: ...


class SpokenSink:
    """The decision sink around ``inner`` (only with a Speech resource): an answer's spoken
    prefetch prompts are named at once (no I/O), the answer is sent, and only then are they
    rendered, in the background. A spoken prompt that cannot be named (an unknown voice) is
    left out of the prefetch: the answer itself never waits for Speech nor fails because of
    it. Without a Speech resource there is no such sink: the answer's JSON leaves spoken
    prompts out (and says so in the log)."""

    def __init__(self, inner: _Sink, media: SpokenMedia) -> None:
        self.inner = inner
        self.media = media

    async def deliver(self, call: Any, decision: Any, deadline: float) -> Any:
        if not isinstance(decision, Answer) or not any(
            isinstance(p, Say | Ssml) for p in decision.prefetch
        ):
            return await self.inner.deliver(call, decision, deadline)
        prompts: list[MediaPrompt] = []
        digests: list[str] = []
        for prompt in decision.prefetch:
            if isinstance(prompt, MediaPrompt):
                prompts.append(prompt)
                continue
            try:
                media, digest = self.media.issue(prompt)
            except SpeechError as exc:
                log.warning("speech.prefetch_skipped", reason=str(exc))
                continue
            prompts.append(media)
            digests.append(digest)
        delivered = await self.inner.deliver(
            call, attrs.evolve(decision, prefetch=tuple(prompts)), deadline
        )
        self.media.in_background(digests)
        return delivered


async def rendered(
    media: SpokenMedia | None, request: _Request, timeout: float | None
) -> tuple[_Request, float | None]:
    """``request`` with its spoken prompts rendered and replaced by their MediaPrompts, and
    the part of ``timeout`` left for the request itself. Rendering gets the whole timeout
    (at most ``render_timeout``); SpeechError when a prompt cannot be rendered in it (nothing
    was sent to Graph then), or when no Speech resource is configured."""
    if isinstance(request, PlayPrompt):
        prompts: tuple[Prompt, ...] = request.prompts
    elif isinstance(request, RecordResponse) and request.prompt is not None:
        prompts = (request.prompt,)
    else:
        return request, timeout
    if all(isinstance(p, MediaPrompt) for p in prompts):
        return request, timeout
    if media is None:
        raise SpeechError(
            f"a Say or Ssml prompt needs a Speech resource: set {PREFIX}SPEECH_REGION (or "
            f"{PREFIX}SPEECH_ENDPOINT) and {PREFIX}SPEECH_KEY",
            setting=f"{PREFIX}SPEECH_REGION",
        )
    started = anyio.current_time()
    budget = media.render_timeout if timeout is None else min(timeout, media.render_timeout)
    deadline = started + budget
    ready: list[MediaPrompt] = []
    for prompt in prompts:  # in order: the first one plays first, and is cached first
        ready.append(await media.prepare(prompt, deadline))
    left = None if timeout is None else max(0.001, timeout - (anyio.current_time() - started))
    if isinstance(request, PlayPrompt):
        return attrs.evolve(request, prompts=tuple(ready)), left
    return attrs.evolve(request, prompt=ready[0]), left
