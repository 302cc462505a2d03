"""Ask a slow directory who is calling, without ever missing the deadline.

The lookup is given what is left of the call's time budget (minus a little to send the
answer); when it cannot finish in time the handler gives up and the call gets the default
decision, well before the platform's timeout.
"""

from __future__ import annotations

import anyio

from callflow import Answer, Bot, CallContext, IncomingCall

bot = Bot()

SEND_ALLOWANCE = 0.5
"""Seconds kept back from the deadline to send the answer itself."""

DIRECTORY: dict[str, float] = {}
"""caller id -> seconds the (simulated) directory takes to answer for that caller."""


async def directory_lookup(user_id: str | None) -> bool:
    """A stand-in for an HTTP call to a directory service: slow for some callers."""
    await anyio.sleep(DIRECTORY.get(user_id or "", 0.05))
    return user_id in DIRECTORY


@bot.incoming_call
async def known_callers_only(call: IncomingCall, ctx: CallContext) -> Answer | None:
    budget = ctx.remaining() - SEND_ALLOWANCE
    with anyio.move_on_after(budget) as scope:
        known = await directory_lookup(call.caller.user_id)
    if scope.cancelled_caught:
        ctx.log.warning("slow_lookup.gave_up", budget_s=round(budget, 3))
        return None
    return Answer() if known else None
