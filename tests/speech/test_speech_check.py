"""``callflow check`` with a Speech resource: reachable, key accepted, voice offered."""

from __future__ import annotations

import io

import pytest

from callflow.check import run_checks
from callflow.testing import FakeGraph, FakeSpeech

pytestmark = pytest.mark.anyio


async def _check(environ: dict[str, str]) -> tuple[int, list[str]]:
    out = io.StringIO()
    code = await run_checks(environ, out)
    return code, out.getvalue().splitlines()


async def test_check_reports_speech(fake_graph: FakeGraph) -> None:
    """A good key and voice pass; a wrong key names CALLFLOW_SPEECH_KEY; a voice the
    resource lacks names CALLFLOW_SPEECH_VOICE; a Speech nobody answers says unreachable."""
    async with FakeSpeech() as speech:
        base = {**fake_graph.environ(), **speech.environ()}
        code, lines = await _check(base)
        assert code == 0, lines
        assert lines[-2] == (
            f"[ok  ] Speech at {speech.url}/tts/cognitiveservices/voices/list: voice "
            "en-US-JennyNeural offered, credentials accepted"
        )
        code, lines = await _check({**base, "CALLFLOW_SPEECH_KEY": "wrong"})
        assert code == 1 and lines[-2].startswith("[FAIL] Speech at ")
        assert "CALLFLOW_SPEECH_KEY" in lines[-2] and "401" in lines[-2]
        code, lines = await _check({**base, "CALLFLOW_SPEECH_VOICE": "en-US-NobodyNeural"})
        assert code == 1 and "CALLFLOW_SPEECH_VOICE" in lines[-2]
        url = speech.url
    code, lines = await _check({**base, "CALLFLOW_SPEECH_ENDPOINT": url})
    assert code == 1 and "not reachable" in lines[-2]
