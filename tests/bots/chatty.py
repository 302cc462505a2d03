"""A bot that logs who is calling (personal data the worker's logs must mask), then answers."""

from __future__ import annotations

from callflow import Answer, Bot, CallContext, IncomingCall

bot = Bot()


@bot.incoming_call
async def answer_and_log(call: IncomingCall, ctx: CallContext) -> Answer:
    """Log the caller's display name and phone number, then answer."""
    ctx.log.info(
        "chatty.caller",
        display_name=call.caller.display_name,
        phone=call.caller.phone_number,
    )
    return Answer()
