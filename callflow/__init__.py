"""callflow: Microsoft Graph calling bots that always decide in time.

The names a bot author uses are importable from here (the docs' "API at a glance" lists
them, and a test keeps the two in step). The testing kit is :mod:`callflow.testing`; every
error class is also in :mod:`callflow.errors`.
"""

from __future__ import annotations

from callflow.bot import Bot, RunningBot
from callflow.control.call import Call, Calls, Recording
from callflow.control.listening import Choice, Reply
from callflow.decisions import Answer, Decision, MediaPrompt, Redirect, Reject, RejectReason, Target
from callflow.errors import (
    ActionError,
    CallControlError,
    CallEndedError,
    CallflowError,
    CallGoneError,
    ConfigError,
    DecisionError,
    GraphError,
    GraphResponseError,
    MediaCancelledError,
    OperationError,
    OperationTimeoutError,
    RecordingTooLargeError,
    RegistrationError,
    SpeechError,
    TokenError,
    TransferError,
)
from callflow.events import (
    CallAdopted,
    CallStateChanged,
    CallTerminated,
    ChatInfo,
    Identity,
    IncomingCall,
    IncomingContext,
    JoinMeetingIdMeetingInfo,
    OperationFinished,
    OrganizerMeetingInfo,
    Participant,
    ParticipantsUpdated,
    ResultInfo,
    TokenMeetingInfo,
    ToneReceived,
    UnknownNotification,
)
from callflow.graph.client import GraphClient
from callflow.graph.tokens import TokenProvider
from callflow.prompts import Say, Ssml
from callflow.routing import CallContext, Router
from callflow.settings import Settings
from callflow.speech.recognition import Heard

__version__ = "0.1.0"
"""The release (the one place it is written: the build and ``callflow --version`` read it)."""

__all__ = [
    "ActionError",
    "Answer",
    "Bot",
    "Call",
    "CallAdopted",
    "CallContext",
    "CallControlError",
    "CallEndedError",
    "CallGoneError",
    "CallStateChanged",
    "CallTerminated",
    "Calls",
    "CallflowError",
    "ChatInfo",
    "Choice",
    "ConfigError",
    "Decision",
    "DecisionError",
    "GraphClient",
    "GraphError",
    "GraphResponseError",
    "Heard",
    "Identity",
    "IncomingCall",
    "IncomingContext",
    "JoinMeetingIdMeetingInfo",
    "MediaCancelledError",
    "MediaPrompt",
    "OperationError",
    "OperationFinished",
    "OperationTimeoutError",
    "OrganizerMeetingInfo",
    "Participant",
    "ParticipantsUpdated",
    "Recording",
    "RecordingTooLargeError",
    "Redirect",
    "RegistrationError",
    "Reject",
    "RejectReason",
    "Reply",
    "ResultInfo",
    "Router",
    "RunningBot",
    "Say",
    "Settings",
    "SpeechError",
    "Ssml",
    "Target",
    "TokenError",
    "TokenMeetingInfo",
    "TokenProvider",
    "ToneReceived",
    "TransferError",
    "UnknownNotification",
]

__version__ = "0.1.0"
