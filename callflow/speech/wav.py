"""The WAV format Graph plays: 16 kHz, mono, 16-bit PCM in a RIFF container.

:func:`parse_wav` reads a RIFF/WAVE file's format and data (and an ``INFO``/``ICMT``
comment, if any) and raises ValueError for anything else; :func:`build_wav` writes one.
Pure functions on bytes, usable from any loop or thread.
"""

from __future__ import annotations

import struct
from typing import Final

import attrs

__all__ = ["GRAPH_FORMAT", "WavInfo", "build_wav", "parse_wav"]

GRAPH_FORMAT: Final = (16_000, 1, 16)
"""(sample rate, channels, bits per sample) of the only WAV Graph plays."""

_PCM: Final = 1
_EXTENSIBLE: Final = 0xFFFE


@attrs.frozen
class WavInfo:
    """What a WAV file holds: its format, its PCM data, and its ``ICMT`` comment if any."""

    sample_rate: int
    channels: int
    bits: int
    audio_format: int
    data: bytes = attrs.field(repr=False)
    comment: str | None = None

    @property
    def seconds(self) -> float:
        """How long the audio lasts."""
        frame = self.channels * self.bits // 8
        return len(self.data) / (frame * self.sample_rate) if frame and self.sample_rate else 0.0

    @property
    def plays_on_graph(self) -> bool:
        """True for 16 kHz, mono, 16-bit PCM: the only WAV Graph plays."""
        return (
            self.audio_format in (_PCM, _EXTENSIBLE)
            and (
                self.sample_rate,
                self.channels,
                self.bits,
            )
            == GRAPH_FORMAT
        )

    @property
    def silent(self) -> bool:
        """True when every sample is (nearly) zero."""
        if self.bits != 16 or not self.data:
            return not any(self.data)
        count = len(self.data) // 2
        samples = struct.unpack(f"<{count}h", self.data[: count * 2])
        return max((abs(s) for s in samples), default=0) < 64


def parse_wav(data: bytes) -> WavInfo:
    """Read a RIFF/WAVE file; raise ValueError saying what is wrong when it is not one."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    fmt: tuple[int, int, int, int] | None = None
    pcm: bytes | None = None
    comment: str | None = None
    pos = 12
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        (size,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        body = data[pos + 8 : pos + 8 + size]
        if len(body) < size:
            raise ValueError(f"chunk {chunk_id!r} is cut short")
        if chunk_id == b"fmt ":
            if size < 16:
                raise ValueError("fmt chunk is too short")
            audio_format, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            fmt = (audio_format, channels, rate, bits)
        elif chunk_id == b"data":
            pcm = body
        elif chunk_id == b"LIST" and body[:4] == b"INFO":
            comment = _info_comment(body[4:]) or comment
        pos += 8 + size + (size & 1)
    if fmt is None:
        raise ValueError("no fmt chunk")
    if pcm is None:
        raise ValueError("no data chunk")
    audio_format, channels, rate, bits = fmt
    return WavInfo(rate, channels, bits, audio_format, pcm, comment)


def _info_comment(body: bytes) -> str | None:
    pos = 0
    while pos + 8 <= len(body):
        sub_id = body[pos : pos + 4]
        (size,) = struct.unpack("<I", body[pos + 4 : pos + 8])
        if sub_id == b"ICMT":
            return body[pos + 8 : pos + 8 + size].rstrip(b"\0").decode("utf-8", "replace")
        pos += 8 + size + (size & 1)
    return None


def build_wav(
    pcm: bytes,
    *,
    sample_rate: int = 16_000,
    channels: int = 1,
    bits: int = 16,
    comment: str | None = None,
) -> bytes:
    """A RIFF/WAVE file of PCM ``pcm``, with ``comment`` as an ``INFO``/``ICMT`` chunk."""
    frame = channels * bits // 8
    fmt = struct.pack("<HHIIHH", _PCM, channels, sample_rate, sample_rate * frame, frame, bits)
    chunks = [b"fmt " + struct.pack("<I", len(fmt)) + fmt]
    if comment is not None:
        text = comment.encode() + b"\0"
        info = b"ICMT" + struct.pack("<I", len(text)) + text + (b"\0" if len(text) & 1 else b"")
        chunks.append(b"LIST" + struct.pack("<I", 4 + len(info)) + b"INFO" + info)
    pad = b"\0" if len(pcm) & 1 else b""
    chunks.append(b"data" + struct.pack("<I", len(pcm)) + pcm + pad)
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body
