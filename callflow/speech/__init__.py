"""Azure AI Speech for Graph bots: spoken prompts (text to speech) and recognition.

:mod:`~callflow.speech.config` turns the settings into a :class:`SpeechConfig` (the REST
URLs and how requests are authenticated) and says where rendered prompts are served;
:mod:`~callflow.speech.wav` reads and writes the one WAV format Graph plays (16 kHz, mono,
16-bit PCM); :mod:`~callflow.speech.tts` is the text-to-speech client,
:mod:`~callflow.speech.media` names, renders, caches and serves spoken prompts (and the
decision sink that renders an answer's spoken prefetch after sending it), and
:mod:`~callflow.speech.service` opens all that for a worker. The clients and the media run on
the I/O loop; this module only re-exports values.
"""

from __future__ import annotations

from callflow.speech.config import (
    SPEECH_SCOPE,
    HeadersProvider,
    SpeechConfig,
    media_base_url,
    media_key,
)
from callflow.speech.wav import WavInfo, build_wav, parse_wav

__all__ = [
    "SPEECH_SCOPE",
    "HeadersProvider",
    "SpeechConfig",
    "WavInfo",
    "build_wav",
    "media_base_url",
    "media_key",
    "parse_wav",
]
