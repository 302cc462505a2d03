"""Join meetings organised inside the bot's own tenant; reject every other invitation.

Peer-to-peer calls are not this bot's business: they get the default decision.

    CALLFLOW_TENANT_ID=<your tenant> callflow run examples.meeting_policy:bot
"""

from __future__ import annotations

from callflow import (
    Answer,
    Bot,
    IncomingCall,
    OrganizerMeetingInfo,
    Reject,
    RejectReason,
)

bot = Bot()


def organised_in_own_tenant(call: IncomingCall) -> bool:
    info = call.meeting_info
    if not isinstance(info, OrganizerMeetingInfo) or info.organizer is None:
        return False
    return info.organizer.tenant_id is not None and info.organizer.tenant_id == call.tenant_id


@bot.incoming_call(group=True, where=organised_in_own_tenant)
async def join(call: IncomingCall) -> Answer:
    return Answer(modalities=call.modalities or ("audio",))


@bot.incoming_call(group=True)
async def decline(call: IncomingCall) -> Reject:
    return Reject(RejectReason.FORBIDDEN)
