"""An appointment line: greets the caller by name, reads back their appointment, and takes a
spoken or keyed answer.

Every one-to-one call from a Teams user is answered; once it is established:

* The bot greets the caller by name ("Hello Dana") and reads back the appointment it has for
  them (:data:`APPOINTMENTS`, by the caller's user id; replace :func:`appointment_for` to
  look them up elsewhere).
* It asks what to do with it, in one question the caller answers by voice or by key
  (``call.ask``): "keep" or 1, "cancel" or 2, "change" / "someone" or 3. A key stops the
  question at once; otherwise what was said is recognised by Azure AI Speech. Not
  understood: the bot asks once more, then says goodbye.
* keep: "see you then"; cancel: the appointment is cancelled (:func:`cancel_appointment`);
  change: the call is transferred to the front desk (``CALLFLOW_APPT_DESK``).
* A caller without an appointment is told so. A caller who hangs up ends the flow; when
  Graph or Speech fails a step the bot hangs up rather than leave the caller in silence.

What the bot says is computed text (names, dates): ``call.say()`` and ``Say(...)`` prompts
are rendered by Azure AI Speech and served to Graph by the worker itself (the front door
forwards ``CALLFLOW_MEDIA_PATH`` to it as it does the webhook). The question is a ``Say``
prompt of ``call.ask``, so a key stops it at once. Speaking and listening need the Speech
settings (``CALLFLOW_SPEECH_REGION`` and ``CALLFLOW_SPEECH_KEY``)::

    CALLFLOW_SPEECH_REGION=westeurope CALLFLOW_SPEECH_KEY=... \\
    CALLFLOW_APPT_DESK=<user id> callflow run examples.appointments:bot
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import NamedTuple

import structlog

from callflow import (
    Answer,
    Bot,
    Call,
    CallEndedError,
    Choice,
    GraphError,
    IncomingCall,
    OperationError,
    SpeechError,
    Target,
    TransferError,
)
from callflow.prompts import Say

DESK = os.environ.get("CALLFLOW_APPT_DESK", "de5cde5c-0000-4000-8000-000000000001")
LANGUAGE = os.environ.get("CALLFLOW_APPT_LANGUAGE") or None
"""The language callers answer in (default: ``CALLFLOW_SPEECH_LANGUAGE``)."""

CHOICES = {
    "keep": Choice(key="1", words=["keep", "keep it", "yes", "confirm"]),
    "cancel": Choice(key="2", words=["cancel", "cancel it"]),
    "change": Choice(key="3", words=["change", "reschedule", "someone", "front desk"]),
}

log = structlog.get_logger(__name__)
bot = Bot()


class Appointment(NamedTuple):
    when: datetime
    with_whom: str


APPOINTMENTS: dict[str, Appointment] = {}
"""Appointments by the caller's Entra user id (in memory, in this example)."""
CANCELLED: list[str] = []
"""The user ids whose appointment :func:`cancel_appointment` cancelled."""


def appointment_for(user_id: str | None) -> Appointment | None:
    """The caller's next appointment, if any: a real bot would ask its booking system."""
    return APPOINTMENTS.get(user_id or "")


async def cancel_appointment(user_id: str) -> None:
    """Cancel the caller's appointment: a real bot would tell its booking system."""
    APPOINTMENTS.pop(user_id, None)
    CANCELLED.append(user_id)


def read_back(appointment: Appointment) -> str:
    """``"on Tuesday 14 March at 10:00 with Doctor Lee"``."""
    when = appointment.when
    return f"on {when:%A} {when.day} {when:%B} at {when:%H:%M} with {appointment.with_whom}"


@bot.incoming_call(group=False, where=lambda call: call.caller.user_id is not None)
async def answer(call: IncomingCall) -> Answer:
    """Answer Teams users; the flow knows who called."""
    user_id = call.caller.user_id
    name = call.caller.display_name or "there"

    async def flow(handle: Call) -> None:
        await appointment_line(handle, user_id or "", name)

    return Answer(modalities=("audio",), then=flow)


async def appointment_line(call: Call, user_id: str, name: str) -> None:
    """The whole call: greet, read back, ask, act."""
    try:
        appointment = appointment_for(user_id)
        if appointment is None:
            await call.say(f"Hello {name}. I have no appointment for you. Goodbye.")
            await call.hang_up()
            return
        await call.say(f"Hello {name}. Your appointment is {read_back(appointment)}.")
        question = Say(
            "To keep it, say keep or press 1. To cancel it, say cancel or press 2. "
            "To change it, say change or press 3."
        )
        reply = await call.ask(question, choices=CHOICES, language=LANGUAGE, attempts=2)
        log.info("appointments.reply", choice=reply.choice, via=reply.via)
        if reply.choice == "change":
            await transfer_to_desk(call)
            return
        if reply.choice == "keep":
            await call.say("Thank you. See you then. Goodbye.")
        elif reply.choice == "cancel":
            await cancel_appointment(user_id)
            await call.say("Your appointment is cancelled. Goodbye.")
        else:
            await call.say("Sorry, I did not understand. Goodbye.")
        await call.hang_up()
    except CallEndedError:
        log.info("appointments.caller_hung_up", call_id=call.call_id)
    except (OperationError, GraphError, SpeechError) as exc:
        log.warning("appointments.failed", call_id=call.call_id, error=str(exc))
        await call.hang_up()


async def transfer_to_desk(call: Call) -> None:
    """Hand the call to the front desk; when that fails, apologise and hang up."""
    try:
        await call.transfer(Target.user(DESK))
    except TransferError as exc:
        log.warning("appointments.transfer_failed", call_id=call.call_id, result=str(exc.result))
        await call.say("Sorry, nobody can take your call now. Goodbye.")
        await call.hang_up()
