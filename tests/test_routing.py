"""Registration rules: arity, bad arguments, freezing, routers."""

from __future__ import annotations

from typing import Any

import pytest

from callflow import Bot, CallStateChanged, IncomingCall, RegistrationError, Router
from callflow.routing import CallContext


def test_arity_is_detected_once_at_registration() -> None:
    """One-argument handlers get the call; two-argument handlers also get the context."""
    bot = Bot()

    @bot.incoming_call
    async def one(call: IncomingCall) -> None: ...

    @bot.incoming_call(priority=3)
    async def two(call: IncomingCall, ctx: CallContext) -> None: ...

    routes = bot.freeze()
    assert [(h.name, h.spec.wants_ctx) for h in routes.handlers] == [
        ("two", True),
        ("one", False),
    ]


def test_handler_with_wrong_arity_is_refused() -> None:
    """A handler taking three required arguments is refused with a message saying why."""
    bot = Bot()
    with pytest.raises(RegistrationError, match=r"must take \(event\) or \(event, ctx\)"):

        @bot.incoming_call
        async def three(a: Any, b: Any, c: Any) -> None: ...


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"group": "yes"}, "group"),
        ({"where": 5}, "where"),
        ({"priority": "high"}, "priority"),
    ],
)
def test_bad_registration_arguments_are_refused(kwargs: dict[str, Any], message: str) -> None:
    """Wrong types for group, where or priority are refused naming the argument."""
    with pytest.raises(RegistrationError, match=message):
        Bot().incoming_call(**kwargs)


def test_registering_after_start_raises() -> None:
    """Once the bot started, any registration raises an error that says so."""
    bot = Bot()
    router = Router()
    bot.include_router(router)
    bot.freeze()

    async def late(call: IncomingCall) -> None: ...

    with pytest.raises(RegistrationError, match="the bot has started"):
        bot.incoming_call(late)
    with pytest.raises(RegistrationError, match="the bot has started"):
        router.incoming_call(late)
    with pytest.raises(RegistrationError, match="the bot has started"):
        bot.on(CallStateChanged)(late)
    with pytest.raises(RegistrationError, match="the bot has started"):
        bot.include_router(Router())
    assert bot.frozen


def test_on_refuses_incoming_call_and_unknown_types() -> None:
    """bot.on() points to incoming_call for IncomingCall and refuses other types."""
    bot = Bot()
    with pytest.raises(RegistrationError, match="incoming_call"):
        bot.on(IncomingCall)
    with pytest.raises(RegistrationError, match="CallStateChanged"):
        bot.on(int)


def test_middleware_must_be_async() -> None:
    """Synchronous middleware is refused."""
    bot = Bot()
    with pytest.raises(RegistrationError, match="async"):

        @bot.middleware
        def mw(event: Any, call_next: Any) -> Any: ...


def test_router_cannot_be_included_twice_or_in_a_cycle() -> None:
    """A router belongs to one parent, and cycles are refused."""
    bot, a, b = Bot(), Router("a"), Router("b")
    bot.include_router(a)
    a.include_router(b)
    with pytest.raises(RegistrationError, match="already included"):
        Bot().include_router(a)
    with pytest.raises(RegistrationError, match="cycle"):
        b.include_router(bot)
    with pytest.raises(RegistrationError, match="already included"):
        a.include_router(a)


def test_registration_returns_the_function_unchanged() -> None:
    """Decorators return the function itself, so it can still be called directly."""
    bot = Bot()

    async def h(call: IncomingCall) -> None: ...

    assert bot.incoming_call(h) is h
    assert bot.on(CallStateChanged)(h) is h
