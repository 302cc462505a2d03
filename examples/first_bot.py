"""The tutorial's first bot (and the README's): answer VIPs, send phone callers to the on-call
engineer, turn meeting invitations down; every other call gets the default decision (busy).

    callflow run examples.first_bot:bot
"""

from __future__ import annotations

from callflow import Answer, Bot, CallContext, IncomingCall, Redirect, Reject, RejectReason, Target

bot = Bot()  # settings come from CALLFLOW_* environment variables when it starts

VIPS = {"6d5c4b3a-1111-4222-8333-944455556666"}
ON_CALL = "0e0e0e0e-5555-4555-8555-000000000555"


@bot.incoming_call(group=False, where=lambda call: call.caller.user_id in VIPS)
async def vips(call: IncomingCall) -> Answer:
    return Answer(modalities=("audio",))


@bot.incoming_call(group=False, where=lambda call: call.caller.kind == "phone")
async def phones(call: IncomingCall, ctx: CallContext) -> Redirect:
    ctx.log.info("routing phone caller", seconds_left=ctx.remaining())
    return Redirect(Target.user(ON_CALL), timeout=30)


@bot.incoming_call(group=True)
async def meetings(call: IncomingCall) -> Reject:
    return Reject(RejectReason.FORBIDDEN)
