"""Spoken prompts: :class:`Say` (text, XML-escaped into SSML) and :class:`Ssml` (raw SSML).

Both are accepted wherever a :class:`~callflow.MediaPrompt` is (``call.play``,
``collect_digits(prompt=)``, ``record(prompt=)``, ``Answer(prefetch=)``). Graph plays only
WAV files it fetches over https, so the worker renders them with Azure AI Speech and serves
the WAV itself (:mod:`callflow.speech.media`). Values: they touch nothing; their text is
personal data and stays out of ``repr``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any, Final
from xml.sax.saxutils import escape, quoteattr

import attrs

from callflow.errors import ActionError

__all__ = ["MAX_SAY_CHARS", "MAX_SSML_BYTES", "Say", "Ssml", "SpokenPrompt"]

MAX_SAY_CHARS: Final = 5_000
"""The longest text one :class:`Say` may carry (several minutes of speech)."""
MAX_SSML_BYTES: Final = 64 * 1024
"""The largest SSML document sent to Speech, in bytes of UTF-8."""

_VOICE: Final = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8}){1,3}-[A-Za-z0-9:._-]{1,80}")
_LANGUAGE: Final = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8}){0,3}")
# Characters XML 1.0 does not allow at all (escaping cannot carry them): spoken as a space.
_NOT_XML: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")
_SSML_NS: Final = "{http://www.w3.org/2001/10/synthesis}"


def _check_text(instance: Say, attribute: Any, value: Any) -> None:
    if not isinstance(value, str):
        raise ActionError(f"Say.text must be a string, got {type(value).__name__}")
    if len(value) > MAX_SAY_CHARS:
        raise ActionError(
            f"Say.text must be at most {MAX_SAY_CHARS} characters, got {len(value)}: split "
            "it into several prompts"
        )
    if not value.strip():
        raise ActionError("Say.text must not be empty")


def _check_voice(instance: object, attribute: Any, value: object) -> None:
    if value is not None and (not isinstance(value, str) or not _VOICE.fullmatch(value)):
        raise ActionError(
            f"Say.voice must be a voice short name such as en-US-JennyNeural, got {value!r}"
        )


def _check_language(instance: object, attribute: Any, value: object) -> None:
    if value is not None and (not isinstance(value, str) or not _LANGUAGE.fullmatch(value)):
        raise ActionError(f"Say.language must be a locale such as en-US, got {value!r}")


@attrs.frozen
class Say:
    """Speak ``text`` (plain text: ``<``, ``&`` and quotes are spoken, never read as SSML).

    ``voice`` and ``language`` default to ``CALLFLOW_SPEECH_VOICE`` and
    ``CALLFLOW_SPEECH_LANGUAGE``. At most :data:`MAX_SAY_CHARS` characters; characters XML
    cannot carry (control characters) are spoken as spaces.
    """

    text: str = attrs.field(repr=False, validator=_check_text)
    voice: str | None = attrs.field(default=None, validator=_check_voice, kw_only=True)
    language: str | None = attrs.field(default=None, validator=_check_language, kw_only=True)

    def ssml(self, voice: str, language: str) -> tuple[str, str]:
        """``(voice, SSML)`` with this prompt's voice and language, or the defaults given."""
        voice = self.voice or voice
        language = self.language or language
        text = escape(_NOT_XML.sub(" ", self.text), {'"': "&quot;", "'": "&apos;"})
        return voice, (
            f"<speak version='1.0' xmlns='http://www.w3.org/2001/10/synthesis' "
            f"xml:lang={quoteattr(language)}><voice name={quoteattr(voice)}>{text}</voice></speak>"
        )


def _check_ssml(instance: Ssml, attribute: Any, value: Any) -> None:
    if not isinstance(value, str):
        raise ActionError(f"Ssml.ssml must be a string, got {type(value).__name__}")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_SSML_BYTES:
        raise ActionError(f"Ssml.ssml must be at most {MAX_SSML_BYTES} bytes, got {size}")
    try:
        root = ET.fromstring(value)
    except ET.ParseError as exc:
        raise ActionError(f"Ssml.ssml is not well-formed XML: {exc}") from None
    if root.tag != f"{_SSML_NS}speak":
        raise ActionError(
            "Ssml.ssml must be a <speak> document in the SSML namespace "
            "(xmlns='http://www.w3.org/2001/10/synthesis')"
        )
    voices = root.findall(f"{_SSML_NS}voice")
    if not voices or not all(v.get("name") for v in voices):
        raise ActionError("Ssml.ssml must name its voice: <voice name='en-US-JennyNeural'>")


@attrs.frozen
class Ssml:
    """Speak a whole SSML document (``<speak>`` with at least one ``<voice name=...>``), as
    given: for pauses, emphasis, pronunciation. At most :data:`MAX_SSML_BYTES` bytes."""

    ssml: str = attrs.field(repr=False, validator=_check_ssml)

    @property
    def voice(self) -> str:
        """The name of the document's first voice."""
        root = ET.fromstring(self.ssml)
        first = root.find(f"{_SSML_NS}voice")
        assert first is not None, "checked when built"
        return first.get("name", "")


SpokenPrompt = Say | Ssml
"""A prompt Speech renders: :class:`Say` or :class:`Ssml`."""
