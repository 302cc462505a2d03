"""The tutorial's IVR: a menu with one retry, then a transfer to the desk the caller chose.

* Every one-to-one call is answered; once it is established :func:`menu` runs.
* The menu says "press 1 for sales, 2 for support" and waits for one key (a key pressed
  during the menu stops it). No key, or one not on the menu: the menu plays once more, then
  the bot says goodbye and hangs up.
* 1 or 2: the call is transferred to that desk. A transfer that fails brings the caller
  back: the bot apologises and hangs up.
* A caller who hangs up ends the flow wherever it is (the awaited operation raises
  :class:`~callflow.CallEndedError`).

:func:`make_bot` builds a fresh bot each time it is called (a bot serves once): tests call it
once per test. ``bot`` is one built at import, for ``callflow run examples.menu_ivr:bot``.
"""

from __future__ import annotations

# --8<-- [start:bot]
from callflow import (
    Answer,
    Bot,
    Call,
    CallEndedError,
    IncomingCall,
    MediaPrompt,
    Target,
    TransferError,
)

PROMPTS = "https://cdn.example.com/ivr"  # WAV files: mono, 16-bit, 16 kHz, over https
MENU = MediaPrompt(f"{PROMPTS}/menu.wav", "menu")
SORRY = MediaPrompt(f"{PROMPTS}/sorry.wav", "sorry")
GOODBYE = MediaPrompt(f"{PROMPTS}/goodbye.wav", "goodbye")

DESKS = {
    "1": "5a1e5a1e-0000-4000-8000-000000000001",  # sales
    "2": "5afe5afe-0000-4000-8000-000000000002",  # support
}
TRIES = 2  # the menu, and one retry
KEY_TIMEOUT = 8.0  # seconds to press a key once the menu has played


async def menu(call: Call) -> None:
    """The whole call, once it is established: the menu, then the desk the caller chose."""
    try:
        for _ in range(TRIES):
            key = await call.collect_digits(1, prompt=MENU, timeout=KEY_TIMEOUT)
            if key in DESKS:
                await call.transfer(Target.user(DESKS[key]))
                return  # the desk has the call; the bot's leg has ended
        await call.play(GOODBYE)
    except TransferError:
        await call.play(SORRY)  # the transfer failed: the caller is back with the bot
    except CallEndedError:
        return  # the caller hung up
    await call.hang_up()


def make_bot() -> Bot:
    """A new bot that answers one-to-one calls and runs :func:`menu` on each."""
    bot = Bot()

    @bot.incoming_call(group=False)
    async def answer(call: IncomingCall) -> Answer:
        return Answer(modalities=("audio",), prefetch=(MENU,), then=menu)

    return bot


bot = make_bot()
# --8<-- [end:bot]
