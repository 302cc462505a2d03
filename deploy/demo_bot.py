"""The bot the fleet demo runs on every worker: ``callflow run deploy.demo_bot:bot``.

A stand-in for your bot, small enough to read at a glance. Runs on the app loop of each
worker and touches only its calls. Every call is answered; the flow remembers where the caller
is (``call.remember``: in fleet mode the memo goes to Redis with the call), logs
``demo.waiting`` and waits for one key. A worker that adopts the call from a stopped or lost
worker (``CallAdopted``) logs ``demo.adopted`` and waits for the key in its turn. Whoever holds
the call when the key comes logs ``demo.key`` and hangs up: a call that ends that way was never
lost.
"""

from __future__ import annotations

import os

import structlog

from callflow import Answer, Bot, Call, CallAdopted, CallContext, IncomingCall

__all__ = ["bot"]

log = structlog.get_logger("deploy.demo_bot")
bot = Bot()
INSTANCE = os.environ.get("CALLFLOW_INSTANCE_ID", "")
KEY_TIMEOUT = 120.0


@bot.incoming_call
async def answer(call: IncomingCall) -> Answer:
    """Answer every call, then wait for the caller's key."""
    return Answer(then=menu)


async def menu(call: Call) -> None:
    """Remember the step, then wait for one key."""
    await call.remember({"step": "menu"})
    await wait_for_key(call)


@bot.on(CallAdopted)
async def resume(event: CallAdopted, ctx: CallContext) -> None:
    """Carry on a call another worker held: wait for the key from here."""
    log.info(
        "demo.adopted",
        call_id=event.call_id,
        reason=event.reason,
        previous_owner=event.previous_owner,
        memo=dict(event.memo),
        instance=INSTANCE,
    )
    await wait_for_key(ctx.call)


async def wait_for_key(call: Call) -> None:
    log.info("demo.waiting", call_id=call.call_id, instance=INSTANCE)
    digits = await call.collect_digits(1, timeout=KEY_TIMEOUT, inter_digit_timeout=KEY_TIMEOUT)
    log.info("demo.key", call_id=call.call_id, digits=digits, instance=INSTANCE)
    await call.hang_up()
