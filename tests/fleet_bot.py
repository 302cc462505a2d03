"""The bot the fleet tests run as worker processes: ``python -m callflow run tests.fleet_bot:bot``.

The caller's user id picks the behaviour: ``slow...`` hangs (logging ``fleet_bot.slow_call``
first), so the call gets the default decision at its deadline, or from a survivor if this
worker dies; ``reject...`` is rejected (forbidden); ``ivr...`` is answered with a flow that
plays three prompts in a row, each awaited until Graph reports it played (logging
``fleet_bot.played``); everyone else is answered at once.
"""

from __future__ import annotations

import anyio
import structlog

from callflow import (
    Answer,
    Bot,
    Call,
    CallStateChanged,
    IncomingCall,
    MediaPrompt,
    Reject,
    RejectReason,
)

__all__ = ["bot"]

log = structlog.get_logger("tests.fleet_bot")

bot = Bot()


@bot.incoming_call
async def decide(call: IncomingCall) -> Answer | Reject:
    """Answer, reject or hang, by caller id."""
    user = call.caller.user_id or ""
    if user.startswith("slow"):
        log.info("fleet_bot.slow_call", call_id=call.call_id)
        await anyio.sleep_forever()
    if user.startswith("reject"):
        return Reject(RejectReason.FORBIDDEN)
    if user.startswith("ivr"):
        return Answer(then=play_three)
    return Answer()


async def play_three(call: Call) -> None:
    """Play three prompts one after the other; each result may reach any worker."""
    for n in range(3):
        await call.play(MediaPrompt(f"https://cdn.example.com/prompt-{n}.wav"), timeout=10.0)
    log.info("fleet_bot.played", call_id=call.call_id, prompts=3)


@bot.on(CallStateChanged)
async def observe(event: CallStateChanged) -> None:
    """Log every state update this worker's observers see."""
    log.info("fleet_bot.state", call_id=event.call_id, state=event.state, etag=event.etag)
