"""FakeSpeech speaks Speech's REST contract over HTTP: synthesis, voices, recognition."""

from __future__ import annotations

import aiohttp
import pytest

from callflow.speech import parse_wav
from callflow.testing import FakeSpeech, wav_with_words, words_in
from callflow.testing._config import silent_wav

pytestmark = pytest.mark.anyio

SSML = (
    "<speak version='1.0' xmlns='http://www.w3.org/2001/10/synthesis' xml:lang='en-US'>"
    "<voice name='{voice}'>{text}</voice></speak>"
)
TTS = {
    "Content-Type": "application/ssml+xml",
    "X-Microsoft-OutputFormat": "riff-16khz-16bit-mono-pcm",
    "User-Agent": "test",
}


async def _tts(speech: FakeSpeech, body: str, **headers: str) -> aiohttp.ClientResponse:
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            speech.url + "/cognitiveservices/v1",
            data=body.encode(),
            headers={**TTS, "Ocp-Apim-Subscription-Key": speech.key, **headers},
        )
        await response.read()
        return response


async def test_synthesis_returns_a_graph_wav_as_long_as_the_text() -> None:
    """A longer text renders longer audio, 16 kHz mono 16-bit, carrying the text."""
    async with FakeSpeech() as speech:
        short = await _tts(speech, SSML.format(voice="en-US-JennyNeural", text="Hi"))
        long = await _tts(
            speech,
            SSML.format(voice="en-US-JennyNeural", text="Your appointment is on Tuesday at 10"),
        )
        assert short.status == long.status == 200
        a, b = parse_wav(await short.read()), parse_wav(await long.read())
        assert a.plays_on_graph and b.plays_on_graph
        assert b.seconds > a.seconds * 3
        assert b.comment == "Your appointment is on Tuesday at 10"
        assert [r.voice for r in speech.requests_of("tts")] == ["en-US-JennyNeural"] * 2


async def test_bad_ssml_unknown_voice_wrong_key_and_content_type_are_refused() -> None:
    """Invalid SSML and an unknown voice get 400, a wrong key 401, a wrong type 415."""
    async with FakeSpeech() as speech:
        assert (await _tts(speech, "<speak>unclosed")).status == 400
        assert (await _tts(speech, SSML.format(voice="xx-XX-NobodyNeural", text="a"))).status == 400
        ok = SSML.format(voice="en-US-JennyNeural", text="a")
        assert (await _tts(speech, ok, **{"Ocp-Apim-Subscription-Key": "wrong"})).status == 401
        assert (await _tts(speech, ok, **{"Content-Type": "text/plain"})).status == 415
        speech.accept_token("tok")
        bearer = {"Ocp-Apim-Subscription-Key": "", "Authorization": "Bearer tok"}
        assert (await _tts(speech, ok, **bearer)).status == 200
        assert [r.status for r in speech.requests_of("tts")] == [400, 400, 401, 415, 200]


async def test_refusals_and_voice_list() -> None:
    """refuse() answers the next requests with a status; the voice list names the voices."""
    async with FakeSpeech() as speech, aiohttp.ClientSession() as session:
        speech.refuse(503, times=2, retry_after=1)
        url = speech.url + "/tts/cognitiveservices/voices/list"
        headers = {"Ocp-Apim-Subscription-Key": speech.key}
        first = await session.get(url, headers=headers)
        assert first.status == 503 and first.headers["Retry-After"] == "1"
        assert (await session.get(url, headers=headers)).status == 503
        listed = await (await session.get(url, headers=headers)).json()
        assert "en-US-JennyNeural" in {v["ShortName"] for v in listed}
        assert [r.injected for r in speech.requests_of("voices")] == [True, True, False]


async def _stt(speech: FakeSpeech, audio: bytes, query: str = "?language=en-US&format=detailed"):
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            speech.url + "/stt/speech/recognition/conversation/cognitiveservices/v1" + query,
            data=audio,
            headers={
                "Content-Type": "audio/wav; codecs=audio/pcm; samplerate=16000",
                "Ocp-Apim-Subscription-Key": speech.key,
            },
        )
        return response.status, (await response.json() if response.status == 200 else None)


async def test_recognition_hears_the_words_in_the_wav() -> None:
    """The ICMT words come back as DisplayText and NBest; silence and wordless sound do not."""
    async with FakeSpeech() as speech:
        status, heard = await _stt(speech, wav_with_words("book an appointment", 1.5))
        assert status == 200
        assert heard["RecognitionStatus"] == "Success"
        assert heard["DisplayText"] == "Book an appointment."
        assert heard["NBest"][0]["Lexical"] == "book an appointment"
        assert 0 < heard["NBest"][0]["Confidence"] <= 1
        assert heard["Duration"] > 0
        assert (await _stt(speech, silent_wav(1.0)))[1]["RecognitionStatus"] == (
            "InitialSilenceTimeout"
        )
        assert (await _stt(speech, wav_with_words("", 1.0)))[1]["RecognitionStatus"] == "NoMatch"
        assert (await _stt(speech, wav_with_words("x"), "?format=detailed"))[0] == 400
        assert words_in(wav_with_words("sales")) == "sales"
        assert words_in(b"not a wav") is None
