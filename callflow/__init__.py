"""callflow: Microsoft Graph calling bots that always decide in time."""

from __future__ import annotations

from .bot import Bot
from .deadline import DecisionSink, RecordingSink
from .decisions import Answer, Decision, MediaPrompt, Redirect, Reject, RejectReason, Target
from .errors import (
    CallflowError,
    CallGoneError,
    ConfigError,
    DecisionError,
    GraphError,
    GraphResponseError,
    InboundAuthError,
    NotificationFormatError,
    RegistrationError,
    TokenError,
)
from .events import (
    CallStateChanged,
    CallTerminated,
    ChatInfo,
    Identity,
    IncomingCall,
    IncomingContext,
    JoinMeetingIdMeetingInfo,
    OrganizerMeetingInfo,
    Participant,
    ParticipantsUpdated,
    ResultInfo,
    TokenMeetingInfo,
    UnknownNotification,
)
from .routing import CallContext, Router
from .settings import Settings

__all__ = [
    "Answer",
    "Bot",
    "CallContext",
    "CallGoneError",
    "CallStateChanged",
    "CallTerminated",
    "CallflowError",
    "ChatInfo",
    "ConfigError",
    "Decision",
    "DecisionError",
    "DecisionSink",
    "GraphError",
    "GraphResponseError",
    "Identity",
    "InboundAuthError",
    "IncomingCall",
    "IncomingContext",
    "JoinMeetingIdMeetingInfo",
    "MediaPrompt",
    "NotificationFormatError",
    "OrganizerMeetingInfo",
    "Participant",
    "ParticipantsUpdated",
    "RecordingSink",
    "Redirect",
    "RegistrationError",
    "Reject",
    "RejectReason",
    "ResultInfo",
    "Router",
    "Settings",
    "Target",
    "TokenError",
    "TokenMeetingInfo",
    "UnknownNotification",
]

__version__ = "0.1.0"
