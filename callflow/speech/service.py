"""Opening the worker's spoken-prompt service: the Speech client, its start check, the media.

:func:`open_spoken` (an async context manager, entered on the I/O loop) builds the
:class:`~callflow.speech.media.SpokenMedia` the settings describe, or yields None when no
Speech resource is set. At start it asks Speech for its voices: credentials refused or the
default voice missing stop the start with a ConfigError naming the setting; Speech out of
reach is logged and the worker starts (spoken prompts then fail with SpeechError until it
answers).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog

from callflow.errors import ConfigError, SpeechError
from callflow.settings import Settings
from callflow.speech.config import SpeechConfig, media_base_url, media_key
from callflow.speech.media import SpecStore, SpokenMedia
from callflow.speech.tts import SpeechClient

__all__ = ["open_spoken"]

log = structlog.get_logger(__name__)


@contextlib.asynccontextmanager
async def open_spoken(
    settings: Settings,
    *,
    shared: SpecStore | None = None,
    token: Callable[[], Awaitable[str]] | None = None,
    callback_url: str | None = None,
    check_timeout: float = 5.0,
) -> AsyncIterator[SpokenMedia | None]:
    """The worker's spoken prompts (see the module); ``shared`` is the fleet's spec store,
    ``token`` the Entra token source (``SPEECH_AUTH=entra``)."""
    config = SpeechConfig.from_settings(settings, token=token)
    if config is None:
        yield None
        return
    base_url = media_base_url(settings, callback_url)
    async with SpeechClient(config) as client:
        try:
            await client.check(config.voice, timeout=check_timeout)
        except SpeechError as exc:
            if exc.setting is not None:
                raise ConfigError(f"Speech check failed: {exc}") from None
            log.warning("speech.unreachable", error=str(exc), status=exc.status)
        media = SpokenMedia(
            client,
            key=media_key(settings),
            base_url=base_url,
            ttl=settings.media_ttl,
            cache_bytes=settings.media_cache_mb * 1024 * 1024,
            shared=shared,
        )
        async with media:
            log.info("speech.ready", voice=config.voice, media=base_url)
            yield media
