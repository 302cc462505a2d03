"""FakeGraph's call control after the answer: body checks, operations, tones, routing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import pytest

from callflow import MediaPrompt
from callflow.actions import PlayPrompt
from callflow.testing import CALLBACK_URL, SigningKey
from tests.control_rig import Rig, running_rig

pytestmark = pytest.mark.anyio

GUARD = 10.0
PROMPT = {"@odata.type": "#microsoft.graph.mediaPrompt", "mediaInfo": {"uri": "https://x/a.wav"}}
USER = {
    "@odata.type": "#microsoft.graph.invitationParticipantInfo",
    "identity": {"@odata.type": "#microsoft.graph.identitySet", "user": {"id": "u-1"}},
}


@pytest.fixture
async def rig(callflow_signing_key: SigningKey) -> AsyncIterator[Rig]:
    """A running call-control rig."""
    async with running_rig(callflow_signing_key) as running:
        yield running


async def post(rig: Rig, path: str, body: Any) -> tuple[int, Any, dict[str, str]]:
    """POST a JSON body to the fake's Graph with a valid token."""
    headers = {"Authorization": f"Bearer {rig.fake.app_token()}"}
    async with aiohttp.ClientSession() as session, session.post(
        rig.fake.graph_url + path, data=json.dumps(body), headers={
            **headers, "Content-Type": "application/json"}
    ) as response:  # fmt: skip
        raw = await response.read()
        return response.status, json.loads(raw) if raw else None, dict(response.headers)


@pytest.mark.parametrize(
    ("action", "body", "fragment"),
    [
        ("playPrompt", {"prompts": []}, "non-empty array"),
        ("playPrompt", {"prompts": [{"mediaInfo": {"uri": "https://x"}}]}, "mediaPrompt"),
        ("playPrompt", {"prompts": [{**PROMPT, "mediaInfo": {"uri": "http://x"}}]}, "https"),
        ("playPrompt", {"prompts": [PROMPT], "clientContext": "x" * 300}, "256"),
        ("playPrompt", {"prompts": [PROMPT], "loop": True}, "'loop' does not exist"),
        ("recordResponse", {"maxRecordDurationInSeconds": 0}, "1 to 120"),
        ("recordResponse", {"stopTones": ["pound"]}, "stopTones"),
        ("recordResponse", {"playBeep": "yes"}, "true or false"),
        ("recordResponse", {"prompts": [PROMPT, PROMPT]}, "at most 1"),
        ("sendDtmfTones", {"tones": ["1"]}, "tone0-tone9"),
        ("sendDtmfTones", {"tones": ["tone1"], "delayBetweenTonesMs": -5}, ">= 0"),
        ("updateRecordingStatus", {"status": "on"}, "notRecording"),
        ("mute", {"reason": "x"}, "'reason' does not exist"),
        ("transfer", {}, "transferTarget is required"),
        ("transfer", {"transferTarget": {"identity": {}}}, "identity with an id"),
        ("participants/invite", {"participants": []}, "1 to 5"),
    ],
)
async def test_action_bodies_are_checked(
    rig: Rig, action: str, body: dict[str, Any], fragment: str
) -> None:
    """A malformed action body gets 400 with a Graph error naming the problem."""
    handle, _ = await rig.answered_call()
    status, reply, _ = await post(rig, f"/communications/calls/{handle.call_id}/{action}", body)
    assert status == 400
    assert reply["error"]["code"] == "BadRequest"
    assert fragment in reply["error"]["message"]
    assert not handle.operations


async def test_actions_need_an_established_call(rig: Rig) -> None:
    """An action on a call that was not answered gets 400."""
    handle = await rig.fake.place_call(rig.webhook_url)
    path = f"/communications/calls/{handle.call_id}/playPrompt"
    status, reply, _ = await post(rig, path, {"prompts": [PROMPT]})
    assert status == 400
    assert "expected an established call" in reply["error"]["message"]


async def test_operation_reply_has_location_and_running_status(rig: Rig) -> None:
    """An accepted playPrompt answers 200 with a running operation and its Location."""
    handle, _ = await rig.answered_call()
    path = f"/communications/calls/{handle.call_id}/playPrompt"
    status, reply, headers = await post(rig, path, {"prompts": [PROMPT], "clientContext": "c-1"})
    assert status == 200
    assert reply["@odata.type"] == "#microsoft.graph.playPromptOperation"
    assert (reply["status"], reply["clientContext"]) == ("running", "c-1")
    assert headers["Location"].endswith(f"/calls/{handle.call_id}/operations/{reply['id']}")
    with anyio.fail_after(GUARD):
        (delivery,) = await handle.wait_deliveries("operation", 1)
    item = delivery.sent["value"][0]
    assert item["changeType"] == "deleted"
    assert item["resourceData"]["status"] == "completed"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"callbackUri": CALLBACK_URL}, "mediaConfig"),
        ({"callbackUri": "http://x", "targets": [USER]}, "https URL"),
        (
            {
                "callbackUri": CALLBACK_URL,
                "mediaConfig": {"@odata.type": "#microsoft.graph.serviceHostedMediaConfig"},
                "requestedModalities": ["audio"],
            },
            "expected targets",
        ),
        (
            {
                "callbackUri": "https://unrouted.invalid/x",
                "mediaConfig": {"@odata.type": "#microsoft.graph.serviceHostedMediaConfig"},
                "requestedModalities": ["audio"],
                "targets": [USER],
            },
            "fake.route",
        ),
        (
            {
                "callbackUri": CALLBACK_URL,
                "mediaConfig": {"@odata.type": "#microsoft.graph.serviceHostedMediaConfig"},
                "requestedModalities": ["audio"],
                "chatInfo": {"threadId": "19:x"},
                "meetingInfo": {"@odata.type": "#microsoft.graph.nope"},
            },
            "meetingInfo",
        ),
    ],
)
async def test_create_bodies_are_checked(rig: Rig, body: dict[str, Any], fragment: str) -> None:
    """A malformed or unroutable new call gets 400 naming the problem."""
    status, reply, _ = await post(rig, "/communications/calls", body)
    assert status == 400
    assert fragment in reply["error"]["message"]


async def test_keys_need_a_tone_subscription(rig: Rig) -> None:
    """press() refuses before subscribeToTone, and names unknown keys."""
    handle, _ = await rig.answered_call()
    with pytest.raises(RuntimeError, match="subscribeToTone"):
        await handle.press("1")
    with pytest.raises(ValueError, match="unknown key"):
        await handle.press("x")
    with anyio.fail_after(GUARD):
        await rig.graph.subscribe_to_tone(handle.call_id)
    with pytest.raises(ValueError, match="permutation"):
        await handle.press("1", "2", order=(0, 0))
    replies = await handle.press("1", "#", duplicates=1)
    assert [r.sent["value"][0]["resourceData"]["toneInfo"]["tone"] for r in replies] == [
        "tone1", "tone1", "pound", "pound"]  # fmt: skip


async def test_cancel_fails_running_media_and_hang_up_drops_them(rig: Rig) -> None:
    """cancelMediaProcessing fails running prompts with 8508; a hang-up drops the rest."""
    handle, _ = await rig.answered_call()
    rig.fake.plan_operation("playPrompt", complete=False, count=2)
    request = PlayPrompt(MediaPrompt("https://x/a.wav"))
    with anyio.fail_after(GUARD):
        first = await rig.graph.run_action(handle.call_id, request.action, request.to_graph)
        cancel = await rig.graph.cancel_media_processing(handle.call_id)
        assert (first.status, cancel.status) == ("running", "completed")
        (delivery,) = await handle.wait_deliveries("operation", 1)
        data = delivery.sent["value"][0]["resourceData"]
        assert (data["status"], data["resultInfo"]["subcode"]) == ("failed", 8508)
        await rig.graph.run_action(handle.call_id, request.action, request.to_graph)
        await rig.graph.hang_up(handle.call_id)
    assert [op.status for op in handle.operations] == ["failed", "completed", "dropped"]
