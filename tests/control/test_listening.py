"""call.listen() and call.ask() end to end: GraphClient -> FakeGraph over HTTP -> webhook ->
registry, the recording downloaded from the fake and recognised by FakeSpeech over HTTP."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping

import anyio
import pytest

from callflow import MediaPrompt
from callflow.control.listening import Choice, Menu
from callflow.errors import ActionError, CallEndedError, SpeechError
from callflow.speech.config import STT_PATH, SpeechConfig
from callflow.speech.recognition import Alternative, Heard, Recognizer
from callflow.testing import CallHandle, FakeSpeech, SigningKey
from tests.control_rig import Rig, running_rig

pytestmark = pytest.mark.anyio

GUARD = 10.0
QUESTION = MediaPrompt("https://cdn.example.com/how-can-i-help.wav", "question")
MENU = {
    "sales": Choice(key="1", words=["sales", "buy something"]),
    "support": Choice(key="2", words=["support", "help"]),
}


def speech_config(speech: FakeSpeech, key: str | None = None) -> SpeechConfig:
    async def headers() -> Mapping[str, str]:
        return {"Ocp-Apim-Subscription-Key": key or speech.key}

    return SpeechConfig(
        tts_url=speech.url + "/tts", stt_url=speech.url + STT_PATH,
        voices_url=speech.url + "/voices", headers=headers,
    )  # fmt: skip


@contextlib.asynccontextmanager
async def listening_rig(
    key: SigningKey, *, operation_duration: float = 5.0, speech_key: str | None = None
) -> AsyncIterator[tuple[Rig, FakeSpeech]]:
    """A call-control rig whose recordings last ``operation_duration`` s unless the caller
    speaks, recognised by a FakeSpeech."""
    async with (
        running_rig(key, operation_duration=operation_duration) as rig,
        FakeSpeech() as speech,
        Recognizer(speech_config(speech, speech_key)) as recognizer,
    ):
        rig.control.recognizer = recognizer
        yield rig, speech


@pytest.fixture
async def both(callflow_signing_key: SigningKey) -> AsyncIterator[tuple[Rig, FakeSpeech]]:
    async with listening_rig(callflow_signing_key) as running:
        yield running


async def recording_started(handle: CallHandle, count: int = 1) -> None:
    await handle.wait_requests(count, op="recordResponse", timeout=GUARD)


# --- listen ---------------------------------------------------------------------------------


async def test_listen_returns_what_the_caller_said(both: tuple[Rig, FakeSpeech]) -> None:
    rig, speech = both
    handle, call = await rig.answered_call()
    await handle.say_back("book an appointment")
    with anyio.fail_after(GUARD):
        heard = await call.listen(prompt=QUESTION, language="en-GB")
    assert heard.understood and heard.words == ("book", "an", "appointment")
    assert [r.op for r in handle.requests][-2:] == ["recordResponse", "recording"]
    record = handle.requests[-2].body
    assert record["prompts"][0]["mediaInfo"]["resourceId"] == "question"
    assert record["bargeInAllowed"] is True
    assert record["playBeep"] is False
    assert record["maxRecordDurationInSeconds"] == 10
    assert record["maxSilenceTimeoutInSeconds"] == 2
    (stt,) = speech.requests_of("stt")
    assert stt.query["language"] == "en-GB"


async def test_speech_while_recording_ends_the_recording_at_once(
    both: tuple[Rig, FakeSpeech],
) -> None:
    """The recording runs (5 s in this rig) until the caller says something."""
    rig, _ = both
    handle, call = await rig.answered_call()
    heard: list[Heard] = []
    done = anyio.Event()
    async with anyio.create_task_group() as tg:

        async def listen() -> None:
            heard.append(await call.listen())
            done.set()

        tg.start_soon(listen)
        await recording_started(handle)
        with anyio.fail_after(2.0):  # well before the 5 s the recording would last
            await handle.say_back("yes please")
            await done.wait()
    assert heard[0].text.lower().startswith("yes please")


async def test_silence_is_heard_as_nothing_not_an_error(
    callflow_signing_key: SigningKey,
) -> None:
    async with listening_rig(callflow_signing_key, operation_duration=0.05) as (rig, speech):
        _, call = await rig.answered_call()
        heard = await call.listen()  # the fake's recording is silent
        assert (heard.text, heard.status, heard.understood) == ("", "InitialSilenceTimeout", False)
        rig.fake.plan_operation("recordResponse", completion_reason="initialSilenceTimeout")
        heard = await call.listen()
        assert heard.status == "InitialSilenceTimeout"
        assert len(speech.requests_of("stt")) == 1  # Graph heard nothing: Speech not asked


async def test_a_refused_key_is_a_speech_error_naming_the_setting(
    callflow_signing_key: SigningKey,
) -> None:
    async with listening_rig(callflow_signing_key, operation_duration=0.05, speech_key="wrong") as (
        rig,
        _,
    ):
        handle, call = await rig.answered_call()
        await handle.say_back("sales")
        with pytest.raises(SpeechError, match="CALLFLOW_SPEECH_KEY"):
            await call.listen()


async def test_listen_without_a_speech_resource_says_what_to_set(
    callflow_signing_key: SigningKey,
) -> None:
    async with running_rig(callflow_signing_key) as rig:
        handle, call = await rig.answered_call()
        await handle.say_back("sales")
        with pytest.raises(SpeechError, match="CALLFLOW_SPEECH_REGION"):
            await call.listen()
        with pytest.raises(SpeechError, match="CALLFLOW_SPEECH_REGION"):
            await call.ask(None, choices={"sales": Choice(key="1", words=["sales"])})
        # Raised before anything is sent: the caller is not recorded for nothing.
        assert not [r for r in handle.requests if r.op in ("recordResponse", "subscribeToTone")]


async def test_listen_checks_its_arguments_before_sending(both: tuple[Rig, FakeSpeech]) -> None:
    rig, _ = both
    handle, call = await rig.answered_call()
    sent = len(handle.requests)
    with pytest.raises(ActionError, match="max_duration must be 1 to 60"):
        await call.listen(max_duration=90)
    with pytest.raises(ActionError, match="recognition_timeout"):
        await call.listen(recognition_timeout=0)
    assert len(handle.requests) == sent


async def test_listen_on_a_call_that_ended_raises_call_ended(both: tuple[Rig, FakeSpeech]) -> None:
    rig, _ = both
    handle, call = await rig.answered_call()
    async with anyio.create_task_group() as tg:
        errors: list[BaseException] = []

        async def listen() -> None:
            try:
                await call.listen()
            except CallEndedError as exc:
                errors.append(exc)

        tg.start_soon(listen)
        await recording_started(handle)
        await rig.fake.end_call(handle.call_id)
    assert len(errors) == 1


# --- ask: one question, a key or a word -----------------------------------------------------


async def test_ask_understands_a_spoken_word(both: tuple[Rig, FakeSpeech]) -> None:
    rig, _ = both
    handle, call = await rig.answered_call()
    await handle.say_back("Sales, please.")
    with anyio.fail_after(GUARD):
        reply = await call.ask(QUESTION, choices=MENU)
    assert (reply.choice, reply.via, reply.key, reply.matched) == ("sales", "speech", None, True)
    assert reply.heard is not None and reply.heard.understood
    record = next(r.body for r in handle.requests if r.op == "recordResponse")
    assert sorted(record["stopTones"]) == ["1", "2"]
    assert "cancelMediaProcessing" not in [r.op for r in handle.requests]


async def test_ask_understands_a_key_which_cancels_the_recording(
    both: tuple[Rig, FakeSpeech],
) -> None:
    rig, speech = both
    handle, call = await rig.answered_call()
    async with anyio.create_task_group() as tg:
        replies = []

        async def ask() -> None:
            replies.append(await call.ask(QUESTION, choices=MENU))

        tg.start_soon(ask)
        await recording_started(handle)
        await handle.wait_requests(op="subscribeToTone", timeout=GUARD)
        with anyio.fail_after(2.0):  # well before the 5 s the recording would last
            await handle.press("1")
            await handle.wait_requests(op="cancelMediaProcessing", timeout=GUARD)
    (reply,) = replies
    assert (reply.choice, reply.via, reply.key, reply.heard) == ("sales", "key", "1", None)
    (record,) = [o for o in handle.operations if o.op == "recordResponse"]
    assert (record.status, record.completion_reason) == ("failed", "operationCanceled")
    assert speech.requests_of("stt") == ()  # nothing to recognise


async def test_one_ask_takes_either_a_key_or_a_word(callflow_signing_key: SigningKey) -> None:
    """The done-when: "sales" or "1" in one ask(), both ways, on two calls."""
    async with listening_rig(callflow_signing_key) as (rig, _):
        spoken, _call = await rig.answered_call()
        keyed, call2 = await rig.answered_call()
        await spoken.say_back("sales")
        results: dict[str, str | None] = {}
        async with anyio.create_task_group() as tg:

            async def ask(name: str, call: object) -> None:
                reply = await call.ask(QUESTION, choices=MENU)  # type: ignore[attr-defined]
                results[name] = f"{reply.choice}/{reply.via}"

            tg.start_soon(ask, "spoken", _call)
            tg.start_soon(ask, "keyed", call2)
            await keyed.wait_requests(op="subscribeToTone", timeout=GUARD)
            await recording_started(keyed)
            await keyed.press("1")
    assert results == {"spoken": "sales/speech", "keyed": "sales/key"}


async def test_ask_with_no_match_asks_again_with_the_retry_prompt(
    both: tuple[Rig, FakeSpeech],
) -> None:
    rig, _ = both
    handle, call = await rig.answered_call()
    again = MediaPrompt("https://cdn.example.com/say-sales-or-support.wav", "again")
    await handle.say_back("the weather")
    await handle.say_back("support")
    with anyio.fail_after(GUARD):
        reply = await call.ask(QUESTION, choices=MENU, attempts=3, retry_prompt=again)
    assert (reply.choice, reply.via, reply.attempts) == ("support", "speech", 2)
    records = [r.body for r in handle.requests if r.op == "recordResponse"]
    assert [b["prompts"][0]["mediaInfo"]["resourceId"] for b in records] == ["question", "again"]


async def test_ask_that_never_matches_says_what_came(callflow_signing_key: SigningKey) -> None:
    async with listening_rig(callflow_signing_key, operation_duration=0.05) as (rig, _):
        handle, call = await rig.answered_call()
        reply = await call.ask(QUESTION, choices=MENU, attempts=2)  # silence twice
        assert (reply.choice, reply.via, reply.attempts, reply.matched) == (None, None, 2, False)
        assert reply.heard is not None and reply.heard.status == "InitialSilenceTimeout"
        await handle.say_back("something else entirely")
        reply = await call.ask(QUESTION, choices=MENU)
        assert (reply.choice, reply.via) == (None, "speech")
        assert reply.heard is not None and reply.heard.understood


async def test_a_wrong_key_is_no_match(both: tuple[Rig, FakeSpeech]) -> None:
    rig, _ = both
    handle, call = await rig.answered_call()
    async with anyio.create_task_group() as tg:
        replies = []

        async def ask() -> None:
            replies.append(await call.ask(QUESTION, choices=MENU))

        tg.start_soon(ask)
        await handle.wait_requests(op="subscribeToTone", timeout=GUARD)
        await recording_started(handle)
        await handle.press("9")
    assert (replies[0].choice, replies[0].via, replies[0].key) == (None, "key", "9")


async def test_ask_without_digits_only_listens(both: tuple[Rig, FakeSpeech]) -> None:
    rig, _ = both
    handle, call = await rig.answered_call()
    await handle.say_back("one")
    reply = await call.ask(QUESTION, choices=MENU, digits=False)
    assert (reply.choice, reply.via) == ("sales", "speech")  # the key, said
    assert "subscribeToTone" not in [r.op for r in handle.requests]


# --- the menu -------------------------------------------------------------------------------


def heard(text: str, *others: str) -> Heard:
    return Heard(text, "Success", 0.9, tuple(Alternative(o, o.lower()) for o in others))


def test_words_match_whole_words_and_phrases_case_and_punctuation_aside() -> None:
    menu = Menu.of(MENU)
    assert menu.by_speech(heard("SALES!")) == "sales"
    assert menu.by_speech(heard("I'd like to buy something.")) == "sales"
    assert menu.by_speech(heard("I need help")) == "support"
    assert menu.by_speech(heard("salesforce")) is None  # not a whole word
    assert menu.by_speech(heard("buy")) is None  # half a phrase
    assert menu.by_speech(heard("support, not sales")) == "support"  # the first said wins
    assert menu.by_speech(heard("two")) == "support"
    assert menu.by_speech(heard("2")) == "support"
    assert menu.by_speech(heard("sails", "sales")) == "sales"  # a next reading
    assert menu.by_key("1") == "sales" and menu.by_key("9") is None
    assert menu.keys == ("1", "2")


def test_a_menu_is_checked() -> None:
    with pytest.raises(ActionError, match="non-empty mapping"):
        Menu.of({})
    with pytest.raises(ActionError, match="share the key '1'"):
        Menu.of({"a": Choice(key="1"), "b": Choice(key="1")})
    with pytest.raises(ActionError, match="share the phrase 'help'"):
        Menu.of({"a": Choice(words=["help"]), "b": Choice(words=["Help!"])})
    with pytest.raises(ActionError, match="neither a key nor words"):
        Menu.of({"a": Choice()})
    with pytest.raises(ActionError, match=r"Choice\.key"):
        Choice(key="12")
    with pytest.raises(ActionError, match=r"Choice\.words"):
        Choice(words=["..."])
    assert Menu.of({"yes": "1"}).by_key("1") == "yes"
