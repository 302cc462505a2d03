"""An IVR: a menu, then sales, a voicemail or a PIN-protected line, each step one ``await``.

Every one-to-one call is answered; once it is established ``ivr(call)`` runs:

* The menu plays ("press 1 for sales, 2 to leave a voicemail, 3 to enter your PIN") and the
  bot waits for one key. A key pressed during the menu stops it. No key, or a wrong one: the
  menu plays once more, then the bot says goodbye and hangs up.
* 1: the call is transferred to the sales agent (``CALLFLOW_IVR_SALES``). When the transfer
  fails the call comes back: the bot apologises and takes a voicemail instead.
* 2: the caller's message is recorded (``#`` ends it), downloaded at once (Graph discards
  recordings soon after the call) and handed to :func:`save_voicemail`, which keeps it in
  :data:`VOICEMAILS`; replace it to store voicemails elsewhere.
* 3: the caller types a PIN ending with ``#`` (``CALLFLOW_IVR_PIN``); two attempts.
* A caller who hangs up ends the flow wherever it is: the operation being awaited raises
  :class:`~callflow.CallEndedError`. When Graph refuses or fails a step (``GraphError``,
  ``OperationError``) the bot hangs up rather than leave the caller in silence.
* In a fleet, each step is remembered (``call.remember``): when the worker running the call
  stops or is lost, the worker that adopts the call apologises and carries on from the
  step the caller was at (:func:`resume`), the PIN attempts already used included.

Prompts are WAV files (mono, 16-bit, 16 kHz) under ``CALLFLOW_IVR_PROMPTS``, an https URL.

    CALLFLOW_IVR_SALES=<user id> CALLFLOW_IVR_PIN=<digits> callflow run examples.ivr:bot
"""

from __future__ import annotations

import hmac
import os
from typing import NamedTuple

import structlog

from callflow import (
    Answer,
    Bot,
    Call,
    CallAdopted,
    CallContext,
    CallEndedError,
    GraphError,
    IncomingCall,
    MediaPrompt,
    OperationError,
    Target,
    TransferError,
)

SALES_AGENT = os.environ.get("CALLFLOW_IVR_SALES", "5a1e5a1e-0000-4000-8000-000000000001")
PIN = os.environ.get("CALLFLOW_IVR_PIN", "2468")
PROMPTS = os.environ.get("CALLFLOW_IVR_PROMPTS", "https://cdn.example.com/ivr").rstrip("/")
KEY_TIMEOUT = float(os.environ.get("CALLFLOW_IVR_KEY_TIMEOUT", "8"))
"""Seconds the caller has to press a key once a prompt has played."""
MENU_TRIES = 2
PIN_TRIES = 2
MENU = {"1": "sales", "2": "voicemail", "3": "pin"}

log = structlog.get_logger(__name__)
bot = Bot()


class Voicemail(NamedTuple):
    call_id: str
    audio: bytes


VOICEMAILS: list[Voicemail] = []
"""The voicemails :func:`save_voicemail` kept (in memory, in this example)."""


async def save_voicemail(call_id: str, audio: bytes) -> None:
    """Keep a voicemail: a real bot would upload it to storage or e-mail it to someone."""
    VOICEMAILS.append(Voicemail(call_id, audio))


def prompt(name: str) -> MediaPrompt:
    return MediaPrompt(f"{PROMPTS}/{name}.wav", name)


@bot.incoming_call(group=False)
async def answer(call: IncomingCall) -> Answer:
    """Answer, let Graph fetch the menu ahead of time, and run the IVR once established."""
    return Answer(modalities=("audio",), prefetch=(prompt("menu"),), then=ivr)


async def ivr(call: Call) -> None:
    """The whole call: the menu, then sales, a voicemail or the PIN line."""
    await carry_on(call, "menu")


@bot.on(CallAdopted)
async def resume(event: CallAdopted, ctx: CallContext) -> None:
    """This worker took the call over from one that stopped or was lost (fleet mode):
    apologise, then carry on from the step the caller was at."""
    step = str(event.memo.get("step", "menu"))
    tries = int(event.memo.get("pin_tries", 0))
    log.info("ivr.resumed", call_id=event.call_id, step=step, reason=event.reason)
    call = ctx.call
    try:
        await call.play(prompt("sorry-where-were-we"))
    except CallEndedError:
        return
    await carry_on(call, step, pin_tries=tries)


async def carry_on(call: Call, step: str, *, pin_tries: int = 0) -> None:
    """Run the call from ``step``: the menu, then sales, a voicemail or the PIN line."""
    try:
        choice = await menu(call) if step == "menu" else step
        await call.remember({"step": choice})
        if choice == "sales" and await transfer_to_sales(call):
            return  # the agent has the call now
        if choice in ("sales", "voicemail"):
            await take_voicemail(call)
        elif choice == "pin" and not await check_pin(call, pin_tries):
            log.info("ivr.pin_refused", call_id=call.call_id)
        await call.play(prompt("goodbye"))
        await call.hang_up()
    except CallEndedError:
        log.info("ivr.caller_hung_up", call_id=call.call_id)
    except (OperationError, GraphError) as exc:  # Graph refused or failed a step
        log.warning("ivr.failed", call_id=call.call_id, error=str(exc))
        await call.hang_up()


async def menu(call: Call) -> str:
    """Play the menu until the caller picks an entry; "" when no valid key came twice."""
    for _ in range(MENU_TRIES):
        key = await call.collect_digits(1, prompt=prompt("menu"), timeout=KEY_TIMEOUT)
        if key in MENU:
            return MENU[key]
    return ""


async def transfer_to_sales(call: Call) -> bool:
    """Hand the call to the sales agent; False when that failed and the caller is still here."""
    try:
        await call.transfer(Target.user(SALES_AGENT))
    except TransferError as exc:
        # The agent did not answer: ordinary telephony, not something to alert anyone about.
        log.info("ivr.transfer_failed", call_id=call.call_id, result=str(exc.result))
        await call.play(prompt("sales-unavailable"))
        return False
    return True


async def take_voicemail(call: Call) -> None:
    """Record a message after the beep (``#`` ends it) and save it right away."""
    recording = await call.record(prompt=prompt("leave-a-message"), max_duration=60)
    if recording.location is None:  # the caller said nothing
        return
    await save_voicemail(call.call_id, await recording.download())
    await call.play(prompt("message-saved"))


async def check_pin(call: Call, used: int = 0) -> bool:
    """Collect a PIN ending with ``#``; True once the caller typed the right one (``used``
    attempts were made before this worker had the call)."""
    for attempt in range(used, PIN_TRIES):
        await call.remember({"step": "pin", "pin_tries": attempt})
        typed = await call.collect_digits(
            len(PIN) + 1, prompt=prompt("enter-pin"), timeout=KEY_TIMEOUT
        )
        if hmac.compare_digest(typed, PIN):
            await call.play(prompt("pin-accepted"))
            return True
        await call.play(prompt("wrong-pin"))
    return False
