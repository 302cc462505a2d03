"""A front desk: answer known colleagues, forbid strangers, send phone callers to the on-call.

* Teams users on the allow-list are answered (audio).
* Callers from another tenant are rejected as forbidden.
* Phone (PSTN) callers are redirected to the on-call engineer during office hours.
* Meeting invitations are joined only when organised by someone on the allow-list.
* Other Teams users of our tenant are looked up in the company directory, when there is one
  (here a stand-in that takes ``CALLFLOW_FRONT_DESK_DIRECTORY_DELAY`` seconds): a colleague
  found in time is answered; a lookup that cannot finish before the call's deadline is given
  up, and the call gets the default decision.
* Everything else gets the default decision (busy).

    CALLFLOW_FRONT_DESK_ALLOW=<user ids, comma separated> callflow run examples.front_desk:bot
"""

from __future__ import annotations

import datetime as dt
import os

import anyio

from callflow import (
    Answer,
    Bot,
    CallContext,
    IncomingCall,
    OrganizerMeetingInfo,
    Redirect,
    Reject,
    RejectReason,
    Target,
)

ALLOW = frozenset(
    filter(None, os.environ.get("CALLFLOW_FRONT_DESK_ALLOW", "").split(","))
) or frozenset({"6d5c4b3a-1111-4222-8333-944455556666", "7e6d5c4b-2222-4333-8444-a55566667777"})
ON_CALL_USER = os.environ.get("CALLFLOW_FRONT_DESK_ON_CALL", "0ncall00-0000-4000-8000-000000000001")
_start, _, _end = os.environ.get("CALLFLOW_FRONT_DESK_HOURS", "0-24").partition("-")
OFFICE_HOURS = range(int(_start), int(_end or 24))
"""Hours (UTC) in which phone callers go to the on-call user; all day unless configured."""
_delay = os.environ.get("CALLFLOW_FRONT_DESK_DIRECTORY_DELAY")
DIRECTORY_DELAY = float(_delay) if _delay else None
"""Seconds the (simulated) directory takes to answer; None: there is no directory."""
SEND_ALLOWANCE = 0.5
"""Seconds kept back from the call's deadline to send the answer itself."""

bot = Bot()


def in_office_hours(now: dt.datetime | None = None) -> bool:
    return (now or dt.datetime.now(dt.UTC)).hour in OFFICE_HOURS


@bot.incoming_call(priority=10)
async def forbid_other_tenants(call: IncomingCall, ctx: CallContext) -> Reject | None:
    """A caller whose home tenant is not ours is refused outright."""
    caller_tenant = call.caller.tenant_id
    if caller_tenant and call.tenant_id and caller_tenant != call.tenant_id:
        ctx.log.info("front_desk.foreign_tenant", caller_tenant=caller_tenant)
        return Reject(RejectReason.FORBIDDEN)
    return None


@bot.incoming_call(group=False, where=lambda call: call.caller.user_id in ALLOW)
async def answer_colleagues(call: IncomingCall) -> Answer:
    return Answer(modalities=("audio",))


@bot.incoming_call(group=False, where=lambda call: call.caller.kind == "phone")
async def route_phone_callers(call: IncomingCall) -> Redirect | None:
    if in_office_hours():
        return Redirect(Target.user(ON_CALL_USER), timeout=30)
    return None  # out of hours: the default decision (busy)


@bot.incoming_call(group=True)
async def join_trusted_meetings(call: IncomingCall) -> Answer | Reject:
    info = call.meeting_info
    organizer = info.organizer if isinstance(info, OrganizerMeetingInfo) else None
    if organizer is not None and organizer.id in ALLOW:
        return Answer(modalities=call.modalities or ("audio",))
    return Reject(RejectReason.FORBIDDEN)


async def in_directory(user_id: str | None) -> bool:
    """A stand-in for an HTTP call to the company directory: it knows every user id."""
    await anyio.sleep(DIRECTORY_DELAY or 0.0)
    return user_id is not None


@bot.incoming_call(group=False, where=lambda call: call.caller.kind == "user")
async def look_up_colleagues(call: IncomingCall, ctx: CallContext) -> Answer | None:
    """Ask the directory about a caller not on the allow-list, while the call's time lasts."""
    if DIRECTORY_DELAY is None:
        return None
    with anyio.move_on_after(ctx.remaining() - SEND_ALLOWANCE):
        return Answer(modalities=("audio",)) if await in_directory(call.caller.user_id) else None
    ctx.log.warning("front_desk.directory_too_slow")
    return None
