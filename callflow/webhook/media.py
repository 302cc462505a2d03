"""The media endpoint: ``GET MEDIA_PATH/<name>.wav`` serves the spoken prompts the worker named.

Graph fetches a spoken prompt through the same front door as the notifications. The handler
answers only names of the expected shape that the fleet issued and that have not expired
(:meth:`~callflow.speech.media.SpokenMedia.fetch` checks their keyed tag), with bytes from the
worker's own cache or rendered for them; anything else gets 404. The name is one path
segment matched against a fixed pattern, never joined to a file path. At most
``max_concurrent`` fetches run at once (503 with ``Retry-After`` beyond); a prompt Speech
cannot render in time gets 503. Runs on the I/O loop, inside the webhook's aiohttp app.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

import anyio
import structlog
from aiohttp import web

from callflow.errors import SpeechError
from callflow.speech.media import NAME, SpokenMedia

__all__ = ["media_handler"]

log = structlog.get_logger(__name__)

_SUFFIX: Final = ".wav"
_HEADERS: Final = {
    "Cache-Control": "private, max-age=3600",
    "X-Content-Type-Options": "nosniff",
}


def media_handler(
    media: SpokenMedia, *, max_concurrent: int = 32
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The aiohttp handler of ``GET MEDIA_PATH/{name}`` (see the module)."""
    limiter = anyio.CapacityLimiter(max_concurrent)

    async def handle(request: web.Request) -> web.StreamResponse:
        name = request.match_info.get("name", "")
        stem = name.removesuffix(_SUFFIX)
        if not name.endswith(_SUFFIX) or NAME.fullmatch(stem) is None:
            return web.Response(status=404, text="not found")
        if limiter.borrowed_tokens >= limiter.total_tokens:
            return web.Response(status=503, text="busy", headers={"Retry-After": "1"})
        async with limiter:
            try:
                data = await media.fetch(stem)
            except (SpeechError, TimeoutError) as exc:
                log.warning("speech.media_unavailable", error=str(exc))
                return web.Response(status=503, text="unavailable", headers={"Retry-After": "1"})
        if data is None:
            return web.Response(status=404, text="not found")
        return web.Response(body=data, content_type="audio/wav", headers=_HEADERS)

    return handle
