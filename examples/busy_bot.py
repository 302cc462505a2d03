"""The smallest bot: reject every call as busy.

callflow run examples.busy_bot:bot
"""

from __future__ import annotations

from callflow import Bot, IncomingCall, Reject, RejectReason

bot = Bot()


@bot.incoming_call
async def always_busy(call: IncomingCall) -> Reject:
    return Reject(RejectReason.BUSY)
