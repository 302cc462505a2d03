"""The bot the durable-call tests run as worker processes: ``callflow run tests.durable_bot:bot``.

Every call is answered with a flow that remembers where it is (``{"step": "menu", "n": 1}``,
logging ``durable_bot.remembered`` once the fleet's store has it) and then waits for the caller
for a long time (``collect_digits``), so that calls stay in their flows while workers are
killed or restarted. The ``CallAdopted`` observer logs what it was given
(``durable_bot.adopted``), remembers the next step and waits for one key press, which it logs
(``durable_bot.digits``) with the worker's instance id.
"""

from __future__ import annotations

import os

import structlog

from callflow import Answer, Bot, Call, CallAdopted, CallContext, IncomingCall

__all__ = ["bot"]

log = structlog.get_logger("tests.durable_bot")

bot = Bot()
INSTANCE = os.environ.get("CALLFLOW_INSTANCE_ID", "")


@bot.incoming_call
async def decide(call: IncomingCall) -> Answer:
    """Answer every call with the menu flow."""
    return Answer(then=menu)


async def menu(call: Call) -> None:
    """Remember the step, then wait for the caller's keys (long)."""
    await call.remember({"step": "menu", "n": 1})
    log.info("durable_bot.remembered", call_id=call.call_id, instance=INSTANCE)
    digits = await call.collect_digits(1, timeout=600.0, inter_digit_timeout=600.0)
    log.info("durable_bot.digits", call_id=call.call_id, digits=digits, instance=INSTANCE)


@bot.on(CallAdopted)
async def resume(event: CallAdopted, ctx: CallContext) -> None:
    """Carry the call on where the lost worker left it."""
    log.info(
        "durable_bot.adopted",
        call_id=event.call_id,
        memo=dict(event.memo),
        reason=event.reason,
        previous_owner=event.previous_owner,
        lost_for=event.lost_for,
        instance=INSTANCE,
    )
    n = int(event.memo.get("n", 0)) + 1
    await ctx.call.remember({"step": "resumed", "n": n})
    log.info("durable_bot.collecting", call_id=event.call_id, instance=INSTANCE)
    digits = await ctx.call.collect_digits(1, timeout=600.0, inter_digit_timeout=600.0)
    log.info("durable_bot.digits", call_id=event.call_id, digits=digits, instance=INSTANCE)
