"""Test audio: WAV files that carry the words a fake "hears" in them.

The convention FakeSpeech and FakeGraph share: a WAV's spoken text travels in a RIFF
``LIST``/``INFO`` chunk with id ``ICMT``. :func:`wav_with_words` writes one (a quiet tone of
the given length, so it is not silence); :func:`words_in` reads it back. FakeSpeech's
recognition answers with those words (no chunk and silence: ``InitialSilenceTimeout``; no
chunk and sound: ``NoMatch``), and the WAVs its synthesis returns carry the text spoken.

Pure functions on bytes, usable from any loop.
"""

from __future__ import annotations

import math
import struct
from typing import Final

from callflow.speech.wav import build_wav, parse_wav

__all__ = ["tone_pcm", "wav_with_words", "words_in"]

_RATE: Final = 16_000
_PERIOD: Final = struct.pack(
    "<40h", *(int(3000 * math.sin(2 * math.pi * i / 40)) for i in range(40))
)  # 400 Hz at 16 kHz


def tone_pcm(seconds: float) -> bytes:
    """``seconds`` of a quiet 400 Hz tone: 16 kHz, mono, 16-bit PCM."""
    frames = max(0, int(_RATE * seconds))
    whole, rest = divmod(frames, 40)
    return _PERIOD * whole + _PERIOD[: rest * 2]


def wav_with_words(text: str, seconds: float = 1.0) -> bytes:
    """A 16 kHz mono 16-bit WAV of ``seconds`` of sound whose ``ICMT`` chunk says ``text``:
    what FakeSpeech recognises in it (``""``: sound without words, ``NoMatch``)."""
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}")
    return build_wav(tone_pcm(seconds), comment=text)


def words_in(data: bytes) -> str | None:
    """The words a WAV carries in its ``ICMT`` chunk; None when it has none (or is not a
    WAV)."""
    try:
        return parse_wav(data).comment
    except ValueError:
        return None
