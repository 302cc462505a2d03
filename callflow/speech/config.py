"""Where Azure AI Speech is and how to call it; where rendered prompts are served.

:meth:`SpeechConfig.from_settings` builds the REST URLs (a region's hosts, or a custom-domain
endpoint's ``/tts`` and ``/stt`` paths) and the headers every request carries (the resource
key, or an Entra bearer token of the app itself). :func:`media_base_url` and
:func:`media_key` say where the worker serves rendered prompts and what their names are
keyed with. Values and pure functions, used on the I/O loop; they touch nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Final
from urllib.parse import urlsplit

import attrs

from callflow.errors import ConfigError, SpeechError
from callflow.settings import PREFIX, Settings

__all__ = [
    "SPEECH_SCOPE",
    "HeadersProvider",
    "SpeechConfig",
    "media_base_url",
    "media_key",
]

SPEECH_SCOPE: Final = "https://cognitiveservices.azure.com/.default"
"""The scope of the Entra token Speech accepts (``SPEECH_AUTH=entra``)."""

TTS_PATH: Final = "/cognitiveservices/v1"
VOICES_PATH: Final = "/cognitiveservices/voices/list"
STT_PATH: Final = "/speech/recognition/conversation/cognitiveservices/v1"

HeadersProvider = Callable[[], Awaitable[Mapping[str, str]]]
"""Returns the authentication headers of one request to Speech (awaited before each)."""

_MEDIA_KEY_LABEL: Final = b"callflow media names v1"


def _key_headers(key: str) -> HeadersProvider:
    headers = {"Ocp-Apim-Subscription-Key": key}

    async def provide() -> Mapping[str, str]:
        return headers

    return provide


def _bearer_headers(token: Callable[[], Awaitable[str]]) -> HeadersProvider:
    async def provide() -> Mapping[str, str]:
        try:
            value = await token()
        except Exception as exc:  # TokenError: the identity provider refused or is down
            raise SpeechError(
                f"no Entra token for Speech ({PREFIX}SPEECH_AUTH=entra): {exc}",
                setting=f"{PREFIX}SPEECH_AUTH",
            ) from exc
        return {"Authorization": f"Bearer {value}"}

    return provide


@attrs.frozen
class SpeechConfig:
    """How to reach Azure AI Speech.

    ``tts_url`` renders SSML (``POST``), ``voices_url`` lists the voices (``GET``),
    ``stt_url`` recognises short audio (``POST ?language=..&format=detailed``); ``headers``
    provides each request's authentication headers. ``voice`` and ``language`` are the
    defaults; ``auth_setting`` is the setting a 401 tells the operator to fix; ``ssl`` the
    TLS context of the requests (None: the system's CAs).
    """

    tts_url: str
    stt_url: str
    voices_url: str
    headers: HeadersProvider = attrs.field(repr=False, eq=False)
    voice: str = "en-US-JennyNeural"
    language: str = "en-US"
    auth_setting: str = f"{PREFIX}SPEECH_KEY"
    ssl: ssl.SSLContext | None = attrs.field(default=None, repr=False, eq=False)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, token: Callable[[], Awaitable[str]] | None = None
    ) -> SpeechConfig | None:
        """The config ``settings`` describe; None when no Speech resource is set.

        With ``SPEECH_AUTH=entra``, ``token`` returns a bearer token for
        :data:`SPEECH_SCOPE` (the worker passes its msal provider's); ConfigError without it.
        """
        if not settings.speech_configured:
            return None
        if settings.speech_endpoint:
            base = settings.speech_endpoint.rstrip("/")
            tts, voices = f"{base}/tts{TTS_PATH}", f"{base}/tts{VOICES_PATH}"
            stt = f"{base}/stt{STT_PATH}"
        else:
            region = settings.speech_region
            tts = f"https://{region}.tts.speech.microsoft.com{TTS_PATH}"
            voices = f"https://{region}.tts.speech.microsoft.com{VOICES_PATH}"
            stt = f"https://{region}.stt.speech.microsoft.com{STT_PATH}"
        if settings.speech_auth == "entra":
            if token is None:
                raise ConfigError(
                    f"{PREFIX}SPEECH_AUTH: entra needs a token provider for {SPEECH_SCOPE}"
                )
            headers, setting = _bearer_headers(token), f"{PREFIX}SPEECH_AUTH"
        else:
            if not settings.speech_key:
                raise ConfigError(f"{PREFIX}SPEECH_KEY: required with {PREFIX}SPEECH_AUTH=key")
            headers, setting = _key_headers(settings.speech_key), f"{PREFIX}SPEECH_KEY"
        return cls(
            tts,
            stt,
            voices,
            headers,
            settings.speech_voice,
            settings.speech_language,
            setting,
            settings.client_ssl_context(),
        )


def media_base_url(settings: Settings, callback_url: str | None = None) -> str:
    """The URL rendered prompts are served under: the origin of ``callback_url`` (default
    ``CALLBACK_URL``) followed by ``MEDIA_PATH``; ConfigError when there is no callback URL."""
    url = callback_url or settings.callback_url
    if not url:
        raise ConfigError(
            f"{PREFIX}CALLBACK_URL: required to serve spoken prompts (they are served at "
            f"its origin + {PREFIX}MEDIA_PATH)"
        )
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{settings.media_path.rstrip('/')}"


def media_key(settings: Settings) -> bytes:
    """The key names of rendered prompts are made with: from ``MEDIA_SECRET``, else derived
    from ``FLEET_SECRET`` (the same on every worker), else random (one process only)."""
    secret = settings.media_secret or settings.fleet_secret
    if not secret:
        return os.urandom(32)
    return hmac.new(secret.encode(), _MEDIA_KEY_LABEL, hashlib.sha256).digest()
