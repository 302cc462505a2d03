"""A bot that tempts its logs to leak: ``python -m callflow run tests.leaky_bot:bot``.

Its handler keeps a caller's number and a bearer token in local variables, logs the number
under keys that are masked, and raises for callers whose number ends in 0 (the traceback is
logged); everyone else is answered. The token comes from ``LEAKY_TOKEN``.
"""

from __future__ import annotations

import os

from callflow import Answer, Bot, CallContext, IncomingCall

__all__ = ["bot"]

bot = Bot()


@bot.incoming_call
async def route(call: IncomingCall, ctx: CallContext) -> Answer:
    """Answer, or fail for numbers ending in 0, with secrets in the frame's locals."""
    number = call.caller.phone_number or ""
    lookup = {"Authorization": "Bearer " + os.environ.get("LEAKY_TOKEN", ""), "number": number}
    ctx.log.info("leaky.routing", phone=number, caller_name=call.caller.display_name)
    if number.endswith("0"):
        raise LookupError(f"no directory entry ({len(lookup)} fields sent)")
    return Answer()
