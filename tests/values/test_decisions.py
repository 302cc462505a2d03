"""Tests for callflow.decisions: validation, and the Graph bodies decisions render."""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from callflow import decisions
from callflow.decisions import (
    Answer,
    Decision,
    MediaPrompt,
    Redirect,
    Reject,
    RejectReason,
    Target,
    is_decision,
)
from callflow.errors import DecisionError

CALLBACK = "https://bot.contoso.com/api/calls"
OTHER_CALLBACK = "https://bot.contoso.com/api/calls/24701998-1a73-4d42-8085-bf46ed0ae039"
USER_1 = "98da8a1a-1b87-452c-a713-65d3f10b1253"
USER_2 = "bf5aae9a-d11d-47a8-93b1-782504c9c3f3"
TENANT = "632899f8-2ea1-4604-8413-27bd2892079f"


def bad(value: object) -> Any:
    """Pass a deliberately ill-typed value past the type checker."""
    return value


# --- bodies against Graph's documented examples --------------------------------------------

ANSWER_SERVICE_HOSTED = """
{
  "callbackUri": "https://bot.contoso.com/api/calls",
  "mediaConfig": {
    "@odata.type": "#microsoft.graph.serviceHostedMediaConfig",
    "preFetchMedia": [
      {
        "uri": "https://cdn.contoso.com/beep.wav",
        "resourceId": "1D6DE2D4-CD51-4309-8DAA-70768651088E"
      },
      {
        "uri": "https://cdn.contoso.com/cool.wav",
        "resourceId": "1D6DE2D4-CD51-4309-8DAA-70768651088F"
      }
    ]
  },
  "acceptedModalities": ["audio"]
}
"""

ANSWER_APP_HOSTED = """
{
  "callbackUri": "https://bot.contoso.com/api/calls",
  "mediaConfig": {
    "@odata.type": "#microsoft.graph.appHostedMediaConfig",
    "blob": "<Media Session Configuration Blob>"
  },
  "acceptedModalities": ["audio"],
  "callOptions": {
    "@odata.type": "#microsoft.graph.incomingCallOptions",
    "isContentSharingNotificationEnabled": true
  },
  "participantCapacity": 200
}
"""

REDIRECT_ONE_USER = """
{
  "targets": [
    {
      "@odata.type": "#microsoft.graph.invitationParticipantInfo",
      "identity": {
        "@odata.type": "#microsoft.graph.identitySet",
        "user": {
          "@odata.type": "#microsoft.graph.identity",
          "id": "98da8a1a-1b87-452c-a713-65d3f10b1253",
          "displayName": "test user"
        }
      }
    }
  ],
  "timeout": 30,
  "callbackUri": "https://bot.contoso.com/api/calls/24701998-1a73-4d42-8085-bf46ed0ae039"
}
"""

REDIRECT_SIMULRING = """
{
  "targets": [
    {
      "@odata.type": "#microsoft.graph.invitationParticipantInfo",
      "identity": {
        "@odata.type": "#microsoft.graph.identitySet",
        "user": {
          "@odata.type": "#microsoft.graph.identity",
          "id": "98da8a1a-1b87-452c-a713-65d3f10b1253",
          "displayName": "test user",
          "tenantId": "632899f8-2ea1-4604-8413-27bd2892079f"
        }
      }
    },
    {
      "@odata.type": "#microsoft.graph.invitationParticipantInfo",
      "identity": {
        "@odata.type": "#microsoft.graph.identitySet",
        "user": {
          "@odata.type": "#microsoft.graph.identity",
          "id": "bf5aae9a-d11d-47a8-93b1-782504c9c3f3"
        }
      }
    },
    {
      "@odata.type": "#microsoft.graph.invitationParticipantInfo",
      "identity": {
        "@odata.type": "#microsoft.graph.identitySet",
        "phone": {
          "@odata.type": "#microsoft.graph.identity",
          "id": "+12345678901"
        }
      }
    },
    {
      "@odata.type": "#microsoft.graph.invitationParticipantInfo",
      "identity": {
        "@odata.type": "#microsoft.graph.identitySet",
        "applicationInstance": {
          "@odata.type": "#microsoft.graph.identity",
          "id": "7629bdce-046c-4903-86b4-a8f718277e1a",
          "displayName": "PstnAppInstance"
        }
      }
    },
    {
      "@odata.type": "#microsoft.graph.invitationParticipantInfo",
      "identity": {
        "@odata.type": "#microsoft.graph.identitySet",
        "application": {
          "@odata.type": "#microsoft.graph.identity",
          "id": "22bfd41f-550e-477d-8789-f6f7bd2a5e8b",
          "displayName": "test bot 2"
        }
      }
    }
  ],
  "callbackUri": "https://bot.contoso.com/api/calls"
}
"""


def test_answer_service_hosted_with_prefetch_matches_graph_example() -> None:
    """An answer with service-hosted media and two prefetched prompts renders Graph's example."""
    answer = Answer(
        prefetch=[
            MediaPrompt("https://cdn.contoso.com/beep.wav", "1D6DE2D4-CD51-4309-8DAA-70768651088E"),
            MediaPrompt(
                "https://cdn.contoso.com/cool.wav",
                resource_id="1D6DE2D4-CD51-4309-8DAA-70768651088F",
            ),
        ],
        callback_uri=CALLBACK,
    )
    body = answer.to_graph()
    assert body == json.loads(ANSWER_SERVICE_HOSTED)
    assert list(body) == ["callbackUri", "mediaConfig", "acceptedModalities"]


def test_answer_app_hosted_matches_graph_example() -> None:
    """An app-hosted answer with call options and capacity renders Graph's example, in order."""
    answer = Answer(
        media="app",
        blob="<Media Session Configuration Blob>",
        participant_capacity=200,
        is_content_sharing_notification_enabled=True,
    )
    body = answer.to_graph(CALLBACK)
    assert body == json.loads(ANSWER_APP_HOSTED)
    assert list(body) == [
        "callbackUri",
        "mediaConfig",
        "acceptedModalities",
        "callOptions",
        "participantCapacity",
    ]


def test_answer_call_options_render_only_the_ones_set() -> None:
    """callOptions carries exactly the options that were set, including False."""
    body = Answer(hide_bot_after_escalation=False).to_graph(CALLBACK)
    assert body["callOptions"] == {
        "@odata.type": "#microsoft.graph.incomingCallOptions",
        "hideBotAfterEscalation": False,
    }
    both = Answer(
        hide_bot_after_escalation=True, is_content_sharing_notification_enabled=False
    ).to_graph(CALLBACK)
    assert both["callOptions"] == {
        "@odata.type": "#microsoft.graph.incomingCallOptions",
        "hideBotAfterEscalation": True,
        "isContentSharingNotificationEnabled": False,
    }


def test_media_prompt_without_resource_id_omits_it() -> None:
    """A prompt without a resource id renders only its uri."""
    body = Answer(prefetch=MediaPrompt("https://cdn.contoso.com/beep.wav")).to_graph(CALLBACK)
    assert body["mediaConfig"]["preFetchMedia"] == [{"uri": "https://cdn.contoso.com/beep.wav"}]


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        (RejectReason.BUSY, '{"reason": "busy"}'),
        (RejectReason.NONE, '{"reason": "none"}'),
        (RejectReason.FORBIDDEN, '{"reason": "forbidden"}'),
    ],
)
def test_reject_matches_graph_examples(reason: RejectReason, expected: str) -> None:
    """Each reject reason renders Graph's lowercase body with no callbackUri."""
    assert Reject(reason).to_graph() == json.loads(expected)


def test_reject_with_callback_uri() -> None:
    """A reject sends its callbackUri after the reason."""
    body = Reject(RejectReason.FORBIDDEN, callback_uri=CALLBACK).to_graph()
    assert body == {"reason": "forbidden", "callbackUri": CALLBACK}
    assert list(body) == ["reason", "callbackUri"]


def test_redirect_one_user_with_timeout_matches_graph_example() -> None:
    """A redirect to one user with a timeout renders the targets, timeout and callbackUri."""
    redirect = Redirect(
        Target.user(USER_1, display_name="test user"), timeout=30, callback_uri=OTHER_CALLBACK
    )
    body = redirect.to_graph(CALLBACK)
    assert body == json.loads(REDIRECT_ONE_USER)
    assert list(body) == ["targets", "timeout", "callbackUri"]


def test_redirect_to_several_targets_including_a_phone_matches_graph_example() -> None:
    """A simultaneous-ring redirect renders every kind of target in the order given."""
    redirect = Redirect(
        [
            Target.user(USER_1, display_name="test user", tenant_id=TENANT),
            Target.user(USER_2),
            Target.phone("+12345678901"),
            Target.application_instance(
                "7629bdce-046c-4903-86b4-a8f718277e1a", display_name="PstnAppInstance"
            ),
            Target.application("22bfd41f-550e-477d-8789-f6f7bd2a5e8b", display_name="test bot 2"),
        ]
    )
    assert redirect.to_graph(CALLBACK) == json.loads(REDIRECT_SIMULRING)


def test_guest_target_renders_guest_identity() -> None:
    """A guest target, built directly, renders under the identitySet's guest member."""
    body = Target("guest", "g-1", display_name="Visitor").to_graph()
    assert body["identity"]["guest"] == {
        "@odata.type": "#microsoft.graph.identity",
        "id": "g-1",
        "displayName": "Visitor",
    }


def test_redirect_without_timeout_or_callback_renders_only_targets() -> None:
    """A redirect leaves out timeout and callbackUri when neither is set."""
    assert list(Redirect(Target.user(USER_1)).to_graph()) == ["targets"]


def test_to_graph_returns_a_fresh_body_each_time() -> None:
    """Changing a rendered body does not change the next one."""
    answer = Answer(prefetch=[MediaPrompt("https://cdn.contoso.com/a.wav")])
    first = answer.to_graph(CALLBACK)
    first["mediaConfig"]["preFetchMedia"].clear()
    first["acceptedModalities"].append("video")
    assert answer.to_graph(CALLBACK) == {
        "callbackUri": CALLBACK,
        "mediaConfig": {
            "@odata.type": "#microsoft.graph.serviceHostedMediaConfig",
            "preFetchMedia": [{"uri": "https://cdn.contoso.com/a.wav"}],
        },
        "acceptedModalities": ["audio"],
    }


# --- defaults and callback URIs ------------------------------------------------------------


def test_reject_defaults_to_busy() -> None:
    """Reject() is a busy reject without a callback URI."""
    assert Reject() == Reject(RejectReason.BUSY)
    assert Reject().reason is RejectReason.BUSY
    assert Reject().callback_uri is None


def test_answer_defaults_to_audio_with_service_hosted_media() -> None:
    """Answer() accepts audio with service-hosted media and no optional keys."""
    answer = Answer()
    assert answer.modalities == ("audio",)
    assert answer.media == "service"
    assert answer.to_graph(CALLBACK) == {
        "callbackUri": CALLBACK,
        "mediaConfig": {"@odata.type": "#microsoft.graph.serviceHostedMediaConfig"},
        "acceptedModalities": ["audio"],
    }


def test_kind_tags() -> None:
    """Each decision class carries its constant kind tag."""
    assert (Answer.kind, Reject.kind, Redirect.kind) == ("answer", "reject", "redirect")
    assert Reject().kind == "reject"


@pytest.mark.parametrize(
    "decision",
    [Answer(callback_uri=OTHER_CALLBACK), Reject(callback_uri=OTHER_CALLBACK)],
)
def test_own_callback_uri_beats_the_default(decision: Decision) -> None:
    """A decision's own callback_uri wins over the default passed to to_graph."""
    assert decision.to_graph(CALLBACK)["callbackUri"] == OTHER_CALLBACK


@pytest.mark.parametrize(
    "decision",
    [Answer(), Reject(), Redirect(Target.user(USER_1))],
    ids=["answer", "reject", "redirect"],
)
def test_default_callback_uri_is_used_when_the_decision_has_none(decision: Decision) -> None:
    """Without its own callback_uri a decision sends the default one."""
    assert decision.to_graph(CALLBACK)["callbackUri"] == CALLBACK


@pytest.mark.parametrize("decision", [Reject(), Redirect(Target.user(USER_1))])
def test_reject_and_redirect_omit_callback_uri_when_none_is_known(decision: Decision) -> None:
    """Reject and Redirect leave callbackUri out when neither URI is set."""
    assert "callbackUri" not in decision.to_graph()
    assert "callbackUri" not in decision.to_graph(None)


def test_answer_without_any_callback_uri_fails_to_render() -> None:
    """Answer().to_graph() without a callback URI raises, saying Graph requires one."""
    with pytest.raises(DecisionError, match=r"Answer needs a callbackUri \(Graph requires one\)"):
        Answer().to_graph()


@pytest.mark.parametrize("decision", [Answer(), Reject(), Redirect(Target.user(USER_1))])
def test_non_https_default_callback_uri_is_refused(decision: Decision) -> None:
    """A default callback URI that is not https raises instead of being sent."""
    with pytest.raises(
        DecisionError, match=r"^default_callback_uri must be an https URL, got 'http://x/cb'$"
    ):
        decision.to_graph("http://x/cb")


def test_default_callback_uri_scheme_is_case_insensitive() -> None:
    """An upper-case HTTPS scheme on the default callback URI is accepted."""
    assert Reject().to_graph("HTTPS://X/cb") == {"reason": "busy", "callbackUri": "HTTPS://X/cb"}


# --- validation ----------------------------------------------------------------------------

MODALITIES = "audio, video, videoBasedScreenSharing, data"
KINDS = "user, phone, application, applicationInstance, guest"
USER = Target.user(USER_1)

INVALID: list[tuple[str, Callable[[], object], str]] = [
    # RejectReason / Reject
    (
        "reason",
        lambda: Reject("maybe"),
        "Reject.reason must be one of none, busy, forbidden, got 'maybe'",
    ),
    (
        "reason-type",
        lambda: Reject(bad(3)),
        "Reject.reason must be one of none, busy, forbidden, got 3",
    ),
    (
        "parse",
        lambda: RejectReason.parse("nope"),
        "RejectReason must be one of none, busy, forbidden, got 'nope'",
    ),
    (
        "parse-type",
        lambda: RejectReason.parse(bad(None)),
        "RejectReason must be one of none, busy, forbidden, got None",
    ),
    (
        "reject-callback",
        lambda: Reject(callback_uri="http://x"),
        "Reject.callback_uri must be an https URL, got 'http://x'",
    ),
    # callback URIs of every shape
    (
        "callback-http",
        lambda: Answer(callback_uri="http://x"),
        "Answer.callback_uri must be an https URL, got 'http://x'",
    ),
    (
        "callback-nohost",
        lambda: Answer(callback_uri="https://"),
        "Answer.callback_uri must be an https URL, got 'https://'",
    ),
    (
        "callback-space",
        lambda: Answer(callback_uri="https://x/a b"),
        "Answer.callback_uri must be an https URL, got 'https://x/a b'",
    ),
    (
        "callback-ipv6",
        lambda: Answer(callback_uri="https://[::1/cb"),
        "Answer.callback_uri must be an https URL, got 'https://[::1/cb'",
    ),
    (
        "callback-type",
        lambda: Answer(callback_uri=bad(b"https://x")),
        "Answer.callback_uri must be an https URL, got b'https://x'",
    ),
    (
        "callback-empty",
        lambda: Redirect(USER, callback_uri=""),
        "Redirect.callback_uri must be an https URL, got ''",
    ),
    # Answer.modalities
    (
        "modality",
        lambda: Answer(modalities=["smell"]),
        f"Answer.modalities must be one of {MODALITIES}, got 'smell'",
    ),
    (
        "modality-item-type",
        lambda: Answer(modalities=bad([1])),
        f"Answer.modalities must be one of {MODALITIES}, got 1",
    ),
    (
        "modality-empty",
        lambda: Answer(modalities=[]),
        f"Answer.modalities must not be empty: give one or more of {MODALITIES}",
    ),
    (
        "modality-repeat",
        lambda: Answer(modalities=["audio", "Audio"]),
        "Answer.modalities must not repeat a modality, got 'audio' twice in ('audio', 'audio')",
    ),
    (
        "modality-type",
        lambda: Answer(modalities=bad(5)),
        f"Answer.modalities must be a modality ({MODALITIES}) or a sequence of them, got 5",
    ),
    (
        "modality-bytes",
        lambda: Answer(modalities=bad(b"audio")),
        f"Answer.modalities must be a modality ({MODALITIES}) or a sequence of them, got b'audio'",
    ),
    (
        "modality-dict",
        lambda: Answer(modalities={"audio": 1}),
        f"Answer.modalities must be a modality ({MODALITIES}) or a sequence of them, "
        "got {'audio': 1}",
    ),
    # Answer.prefetch and media
    (
        "prefetch-item",
        lambda: Answer(prefetch=bad(["https://x/a.wav"])),
        "Answer.prefetch must contain only MediaPrompt, Say or Ssml values, got 'https://x/a.wav'",
    ),
    (
        "prefetch-type",
        lambda: Answer(prefetch=bad("https://x/a.wav")),
        "Answer.prefetch must be a MediaPrompt, Say or Ssml or a sequence of them, got "
        "'https://x/a.wav'",
    ),
    (
        "media",
        lambda: Answer(media=bad("cloud")),
        "Answer.media must be one of service, app, got 'cloud'",
    ),
    (
        "app-no-blob",
        lambda: Answer(media="app"),
        "Answer.blob is required when media='app': give the media session configuration blob, "
        "or use media='service'",
    ),
    (
        "app-prefetch",
        lambda: Answer(media="app", blob="b", prefetch=MediaPrompt("https://x/a.wav")),
        "Answer.prefetch must be empty when media='app' (prompts are prefetched only for "
        "service-hosted media), got 1 prompt(s)",
    ),
    (
        "service-blob",
        lambda: Answer(blob="b"),
        "Answer.blob is only for media='app'; with media='service' it must be None",
    ),
    (
        "blob-empty",
        lambda: Answer(media="app", blob=""),
        "Answer.blob must be a non-empty string, got ''",
    ),
    # Answer.participant_capacity and call options
    (
        "capacity-zero",
        lambda: Answer(participant_capacity=0),
        "Answer.participant_capacity must be an integer from 1 to 2147483647 or None, got 0",
    ),
    (
        "capacity-big",
        lambda: Answer(participant_capacity=2**31),
        "Answer.participant_capacity must be an integer from 1 to 2147483647 or None, "
        "got 2147483648",
    ),
    (
        "capacity-bool",
        lambda: Answer(participant_capacity=True),
        "Answer.participant_capacity must be an integer from 1 to 2147483647 or None, got True",
    ),
    (
        "capacity-float",
        lambda: Answer(participant_capacity=bad(2.0)),
        "Answer.participant_capacity must be an integer from 1 to 2147483647 or None, got 2.0",
    ),
    (
        "hide-bot",
        lambda: Answer(hide_bot_after_escalation=bad("yes")),
        "Answer.hide_bot_after_escalation must be True, False or None, got 'yes'",
    ),
    (
        "sharing",
        lambda: Answer(is_content_sharing_notification_enabled=bad(1)),
        "Answer.is_content_sharing_notification_enabled must be True, False or None, got 1",
    ),
    # MediaPrompt
    (
        "prompt-uri",
        lambda: MediaPrompt("http://x/a.wav"),
        "MediaPrompt.uri must be an https URL, got 'http://x/a.wav'",
    ),
    (
        "prompt-uri-none",
        lambda: MediaPrompt(bad(None)),
        "MediaPrompt.uri must be an https URL, got None",
    ),
    (
        "prompt-resource",
        lambda: MediaPrompt("https://x/a.wav", ""),
        "MediaPrompt.resource_id must be a non-empty string, got ''",
    ),
    # Target
    (
        "target-kind",
        lambda: Target("robot", "r"),
        f"Target.kind must be one of {KINDS}, got 'robot'",
    ),
    (
        "target-kind-type",
        lambda: Target(bad(None), "r"),
        f"Target.kind must be one of {KINDS}, got None",
    ),
    ("target-id", lambda: Target.user(""), "Target.id must be a non-empty string, got ''"),
    (
        "target-id-type",
        lambda: Target.application(bad(42)),
        "Target.id must be a non-empty string, got 42",
    ),
    (
        "target-name",
        lambda: Target.user("u", display_name=""),
        "Target.display_name must be a non-empty string, got ''",
    ),
    (
        "target-tenant",
        lambda: Target.user("u", tenant_id=bad(7)),
        "Target.tenant_id must be a non-empty string, got 7",
    ),
    (
        "phone-format",
        lambda: Target.phone("+1 425-555-0100"),
        "Target.id of a phone target must be an E.164 number ('+' then 7 to 15 digits, "
        "the first not 0), got '+N NNN-NNN-NNNN' (digits shown as N)",
    ),
    ("phone-plus", lambda: Target.phone("14255550100"), "got 'NNNNNNNNNNN' (digits shown as N)"),
    ("phone-short", lambda: Target.phone("+123456"), "got '+NNNNNN'"),
    ("phone-long", lambda: Target.phone("+1234567890123456"), "got '+NNNNNNNNNNNNNNNN'"),
    ("phone-zero", lambda: Target.phone("+04255550100"), "got '+NNNNNNNNNNN'"),
    ("phone-newline", lambda: Target.phone("+14255550100\n"), "got '+NNNNNNNNNNN\\n'"),
    ("phone-unicode-digits", lambda: Target("phone", "+١٢٣٤٥٦٧٨"), "got '+NNNNNNNN'"),
    # Redirect
    ("targets-empty", lambda: Redirect([]), "Redirect.targets must hold 1 to 25 targets, got 0"),
    (
        "targets-many",
        lambda: Redirect([Target.user(f"u{i}") for i in range(26)]),
        "Redirect.targets must hold 1 to 25 targets, got 26",
    ),
    (
        "targets-item",
        lambda: Redirect(bad([USER, "u2"])),
        "Redirect.targets must contain only Target values, got 'u2'",
    ),
    (
        "targets-type",
        lambda: Redirect(bad("u1")),
        "Redirect.targets must be a Target or a sequence of them, got 'u1'",
    ),
    (
        "targets-none",
        lambda: Redirect(bad(None)),
        "Redirect.targets must be a Target or a sequence of them, got None",
    ),
    (
        "targets-repeat",
        lambda: Redirect(
            [USER, Target.phone("+14255550100"), Target.user(USER_1, display_name="x")]
        ),
        "Redirect.targets must not repeat a target, got the same user target at positions 0 and 2",
    ),
    (
        "timeout-low",
        lambda: Redirect(USER, timeout=5),
        "Redirect.timeout must be between 15 and 90 seconds, got 5",
    ),
    (
        "timeout-high",
        lambda: Redirect(USER, timeout=91),
        "Redirect.timeout must be between 15 and 90 seconds, got 91",
    ),
    (
        "timeout-float",
        lambda: Redirect(USER, timeout=bad(30.0)),
        "Redirect.timeout must be between 15 and 90 seconds, got 30.0",
    ),
    (
        "timeout-bool",
        lambda: Redirect(USER, timeout=True),
        "Redirect.timeout must be between 15 and 90 seconds, got True",
    ),
]


@pytest.mark.parametrize(
    ("build", "message"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_fields_raise_decision_error_naming_field_and_allowed_values(
    build: Callable[[], object], message: str
) -> None:
    """Every invalid field raises DecisionError naming the field and what is allowed."""
    with pytest.raises(DecisionError) as caught:
        build()
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_phone_error_does_not_leak_the_number() -> None:
    """A malformed phone number's digits do not appear in the error message."""
    with pytest.raises(DecisionError) as caught:
        Target.phone("+1 425-555-0100")
    assert not re.search(r"[0-9]{3}", str(caught.value).split("got")[1])


@pytest.mark.parametrize(
    ("build", "check"),
    [
        (lambda: Redirect(USER, timeout=15), lambda d: d.timeout == 15),
        (lambda: Redirect(USER, timeout=90), lambda d: d.timeout == 90),
        (
            lambda: Redirect([Target.user(f"u{i}") for i in range(25)]),
            lambda d: len(d.targets) == 25,
        ),
        (lambda: Answer(participant_capacity=1), lambda d: d.participant_capacity == 1),
        (
            lambda: Answer(participant_capacity=2**31 - 1),
            lambda d: d.participant_capacity == 2**31 - 1,
        ),
        (lambda: Target.phone("+1234567"), lambda d: d.id == "+1234567"),
        (lambda: Target.phone("+123456789012345"), lambda d: d.id == "+123456789012345"),
        (
            lambda: Answer(callback_uri="HTTPS://Bot.Contoso.com:8443/cb?x=1"),
            lambda d: d.callback_uri.startswith("HTTPS"),
        ),
        (
            lambda: Answer(modalities=["audio", "video", "videoBasedScreenSharing", "data"]),
            lambda d: len(d.modalities) == 4,
        ),
        (
            lambda: Redirect([Target.user("same"), Target.application("same")]),
            lambda d: len(d.targets) == 2,
        ),
    ],
)
def test_boundary_values_are_accepted(
    build: Callable[[], Any], check: Callable[[Any], bool]
) -> None:
    """Values at the edge of each allowed range construct successfully."""
    assert check(build())


# --- casing and conversion -----------------------------------------------------------------


@pytest.mark.parametrize("text", ["busy", "Busy", "BUSY", "bUsY"])
def test_reject_reason_parses_any_casing(text: str) -> None:
    """RejectReason.parse, RejectReason() and Reject() accept a reason in any casing."""
    assert RejectReason.parse(text) is RejectReason.BUSY
    assert RejectReason(text) is RejectReason.BUSY
    assert Reject(text).reason is RejectReason.BUSY


def test_reject_reason_accepts_members_and_sends_lowercase() -> None:
    """Parsing a member returns it, and Reject("Forbidden") sends "forbidden"."""
    assert RejectReason.parse(RejectReason.NONE) is RejectReason.NONE
    assert Reject("Forbidden").to_graph() == {"reason": "forbidden"}
    assert str(RejectReason.FORBIDDEN) == "forbidden"


def test_reject_reason_constructor_refuses_non_strings() -> None:
    """RejectReason() given a non-string raises the standard enum ValueError."""
    with pytest.raises(ValueError, match="is not a valid RejectReason"):
        RejectReason(bad(1))


def test_modalities_accept_any_casing_and_render_camel_case() -> None:
    """Modalities in any casing are stored and sent in Graph's camelCase."""
    answer = Answer(modalities=["AUDIO", "videobasedscreensharing", "Video", "DATA"])
    assert answer.modalities == ("audio", "videoBasedScreenSharing", "video", "data")
    assert answer.to_graph(CALLBACK)["acceptedModalities"] == [
        "audio",
        "videoBasedScreenSharing",
        "video",
        "data",
    ]


def test_target_kind_accepts_any_casing() -> None:
    """A target kind in any casing becomes Graph's camelCase identitySet member."""
    target = Target("APPLICATIONINSTANCE", "a-1")
    assert target.kind == "applicationInstance"
    assert "applicationInstance" in target.to_graph()["identity"]
    assert Target("Phone", "+14255550100") == Target.phone("+14255550100")


def test_sequences_become_tuples() -> None:
    """Lists, generators and lone items given for sequence fields are stored as tuples."""
    prompt = MediaPrompt("https://cdn.contoso.com/a.wav")
    answer = Answer(modalities=["audio", "video"], prefetch=[prompt])
    assert answer.modalities == ("audio", "video")
    assert answer.prefetch == (prompt,)
    assert Answer(modalities="Video").modalities == ("video",)
    assert Answer(prefetch=prompt).prefetch == (prompt,)
    assert Answer(modalities=(m for m in ["audio"])).modalities == ("audio",)
    assert Redirect([USER]).targets == (USER,)
    assert Redirect(USER).targets == (USER,)
    assert Redirect(iter([USER])).targets == (USER,)
    assert Answer(modalities=["audio"]) == Answer()


# --- immutability, equality, evolve --------------------------------------------------------

ALL_VALUES: list[Any] = [
    Answer(),
    Reject(),
    Redirect(USER),
    USER,
    MediaPrompt("https://cdn.contoso.com/a.wav"),
]


@pytest.mark.parametrize("value", ALL_VALUES, ids=lambda v: type(v).__name__)
def test_values_are_frozen(value: Any) -> None:
    """Assigning to any field of a decision or its parts raises FrozenInstanceError."""
    name = attrs.fields(type(value))[0].name
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        setattr(value, name, None)


@pytest.mark.parametrize("value", ALL_VALUES, ids=lambda v: type(v).__name__)
def test_values_are_hashable_and_compare_by_value(value: Any) -> None:
    """Equal values built twice are equal and hash alike."""
    twin = attrs.evolve(value)
    assert twin == value
    assert hash(twin) == hash(value)
    assert len({value, twin}) == 1


def test_decisions_work_as_dict_keys() -> None:
    """Decisions with sequence fields are hashable, so they can key a dict."""
    counts = {
        Answer(modalities=["audio", "video"]): 1,
        Redirect([USER, Target.phone("+1234567")]): 2,
    }
    assert counts[Answer(modalities=("audio", "video"))] == 1


@pytest.mark.parametrize(
    ("value", "changes", "message"),
    [
        (Reject(), {"reason": "maybe"}, "Reject.reason must be one of none, busy, forbidden"),
        (
            Redirect(USER),
            {"timeout": 5},
            "Redirect.timeout must be between 15 and 90 seconds, got 5",
        ),
        (Redirect(USER), {"targets": []}, "Redirect.targets must hold 1 to 25 targets, got 0"),
        (Answer(), {"media": "app"}, "Answer.blob is required when media='app'"),
        (Answer(), {"callback_uri": "http://x"}, "Answer.callback_uri must be an https URL"),
        (USER, {"kind": "phone"}, "Target.id of a phone target must be an E.164 number"),
    ],
)
def test_evolve_still_validates(value: Any, changes: dict[str, Any], message: str) -> None:
    """attrs.evolve runs the same converters and validators as construction."""
    with pytest.raises(DecisionError, match=re.escape(message)):
        attrs.evolve(value, **changes)


def test_evolve_converts_like_construction() -> None:
    """attrs.evolve converts strings and lists exactly as construction does."""
    assert attrs.evolve(Reject(), reason="Forbidden").reason is RejectReason.FORBIDDEN
    assert attrs.evolve(Answer(), modalities=["VIDEO"]).modalities == ("video",)
    assert attrs.evolve(Redirect(USER), targets=[USER, Target.user(USER_2)]).targets[1].id == USER_2


def test_repr_hides_personal_data_and_blob() -> None:
    """repr leaves out a target's display name and an answer's media blob."""
    assert "Alice" not in repr(Redirect(Target.user(USER_1, display_name="Alice")))
    assert "SECRETBLOB" not in repr(Answer(media="app", blob="SECRETBLOB"))


# --- is_decision and the public surface ----------------------------------------------------


def test_is_decision() -> None:
    """is_decision is true for the three decision kinds only."""
    assert all(is_decision(d) for d in (Answer(), Reject(), Redirect(USER)))
    assert not any(is_decision(v) for v in (None, "busy", RejectReason.BUSY, USER, Reject))


def test_all_names_exist_and_are_documented() -> None:
    """Every name in __all__ exists, and every public class, method and function has a docstring."""
    assert len(decisions.__all__) == len(set(decisions.__all__))
    for name in decisions.__all__:
        value = getattr(decisions, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__doc__, name
        if inspect.isclass(value):
            for attr in vars(value):
                member = getattr(value, attr)
                if not attr.startswith("_") and inspect.isroutine(member):
                    assert member.__doc__, f"{name}.{attr}"


# --- properties ----------------------------------------------------------------------------

T = TypeVar("T")


def mostly(valid: st.SearchStrategy[T], invalid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Draw from ``valid`` nine times in ten, else from ``invalid``."""
    return st.sampled_from(range(10)).flatmap(lambda i: invalid if i == 9 else valid)


texts = st.text(min_size=1, max_size=12)
maybe_texts = st.none() | texts
bad_texts = st.sampled_from(["", 0, b"x"])
https_urls = st.sampled_from([CALLBACK, "HTTPS://h/é?q=1#f"]) | texts.filter(
    lambda t: not any(c.isspace() for c in t)
).map(lambda t: "https://h/" + t)
bad_urls = st.sampled_from(["http://x/cb", "https://", "https://[::1/cb", "", "https://h/a b"])
callbacks = mostly(st.none() | https_urls, bad_urls)
e164 = st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True)

target_specs = mostly(
    st.fixed_dictionaries(
        {
            "kind": st.sampled_from(
                ["user", "User", "application", "applicationInstance", "GUEST"]
            ),
            "id": texts,
            "display_name": maybe_texts,
            "tenant_id": maybe_texts,
        }
    )
    | st.builds(lambda n: {"kind": "phone", "id": n}, e164),
    st.fixed_dictionaries(
        {"kind": st.sampled_from(["robot", "phone", "user"]), "id": bad_texts | texts}
    ),
)


@st.composite
def answer_specs(draw: st.DrawFn) -> dict[str, Any]:
    """Keyword arguments for Answer, nearly always valid."""
    media = draw(mostly(st.sampled_from(["service", "app"]), st.just("cloud")))
    prompts = st.lists(
        st.tuples(mostly(https_urls, bad_urls), mostly(maybe_texts, bad_texts)), max_size=3
    )
    return {
        "modalities": draw(
            mostly(
                st.lists(
                    st.sampled_from(["audio", "Audio", "VIDEO", "videoBasedScreenSharing", "data"]),
                    min_size=1,
                    max_size=4,
                    unique_by=str.lower,
                ),
                st.sampled_from([[], ["smell"], ["audio", "AUDIO"]]),
            )
        ),
        "prefetch": draw(mostly(st.just([]), prompts) if media == "app" else prompts),
        "callback_uri": draw(callbacks),
        "media": media,
        "blob": draw(mostly(texts if media == "app" else st.none(), maybe_texts)),
        "participant_capacity": draw(
            mostly(st.none() | st.integers(1, 2**31 - 1), st.sampled_from([0, -1, 2**31]))
        ),
        "hide_bot_after_escalation": draw(mostly(st.none() | st.booleans(), st.just(1))),
        "is_content_sharing_notification_enabled": draw(st.none() | st.booleans()),
    }


reject_specs = st.fixed_dictionaries(
    {
        "reason": mostly(
            st.sampled_from(RejectReason) | st.sampled_from(["none", "Busy", "FORBIDDEN"]),
            st.just("maybe"),
        ),
        "callback_uri": callbacks,
    }
)
redirect_specs = st.fixed_dictionaries(
    {
        "targets": mostly(
            st.lists(
                target_specs,
                min_size=1,
                max_size=4,
                unique_by=lambda t: (str(t["kind"]).lower(), t["id"]),
            ),
            st.just([]),
        ),
        "timeout": mostly(st.none() | st.integers(15, 90), st.integers(0, 120)),
        "callback_uri": callbacks,
    }
)


def _build(kind: str, spec: dict[str, Any]) -> Decision:
    if kind == "answer":
        prompts = [MediaPrompt(uri, rid) for uri, rid in spec["prefetch"]]
        return Answer(**{**spec, "prefetch": prompts})
    if kind == "reject":
        return Reject(**spec)
    return Redirect(**{**spec, "targets": [Target(**t) for t in spec["targets"]]})


decision_specs = (
    st.tuples(st.just("answer"), answer_specs())
    | st.tuples(st.just("reject"), reject_specs)
    | st.tuples(st.just("redirect"), redirect_specs)
)


@given(decision_specs, st.none() | st.just(CALLBACK))
def test_every_constructible_decision_renders_json_that_round_trips(
    case: tuple[str, dict[str, Any]], default: str | None
) -> None:
    """Any decision that constructs renders a body that survives json.dumps/loads unchanged."""
    try:
        decision = _build(*case)
    except DecisionError:
        event("refused")
        return  # invalid input is refused with DecisionError and nothing else
    event(f"built {type(decision).__name__}")
    assert is_decision(decision)
    assert attrs.evolve(decision) == decision
    if isinstance(decision, Answer) and decision.callback_uri is None and default is None:
        with pytest.raises(DecisionError, match="Answer needs a callbackUri"):
            decision.to_graph(default)
        return
    body = decision.to_graph(default)
    assert json.loads(json.dumps(body)) == body
    assert body == decision.to_graph(default)


@given(st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True))
def test_every_e164_number_is_a_valid_phone_target(number: str) -> None:
    """Every '+' number of 7 to 15 digits not starting with 0 is a valid phone target."""
    assert Target.phone(number).to_graph()["identity"]["phone"]["id"] == number
