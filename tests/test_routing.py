"""Registration rules: arity, bad arguments, freezing, routers; the flow of Answer(then=)."""

from __future__ import annotations

import functools
from typing import Any

import pytest

from callflow import (
    Answer,
    Bot,
    Call,
    CallStateChanged,
    CallTerminated,
    DecisionError,
    IncomingCall,
    RegistrationError,
    Router,
)
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


def test_middleware_with_the_wrong_parameters_is_refused() -> None:
    """Middleware that cannot take (event, call_next) is refused when registered, naming it,
    what it takes and what it should take (it would otherwise fail every call)."""
    bot = Bot()
    with pytest.raises(
        RegistrationError,
        match=r"middleware 'only_event' must take \(event, call_next\), it takes \(event\)",
    ):

        @bot.middleware
        async def only_event(event: Any) -> Any: ...

    with pytest.raises(RegistrationError, match=r"'three' .* it takes \(event, call_next, x\)"):

        @bot.middleware
        async def three(event: Any, call_next: Any, x: Any) -> Any: ...

    with pytest.raises(
        RegistrationError, match=r"'keyword' .* it takes \(event, call_next, \*, x\)"
    ):

        @bot.middleware
        async def keyword(event: Any, call_next: Any, *, x: Any) -> Any: ...

    @bot.middleware
    async def fine(event: Any, call_next: Any, extra: Any = None) -> Any: ...

    @bot.middleware
    async def flexible(*args: Any) -> Any: ...  # accepted, like the one above


def test_error_hooks_with_the_wrong_parameters_are_refused() -> None:
    """An error hook must take (exc, event): anything else is refused when registered."""
    bot = Bot()
    with pytest.raises(
        RegistrationError, match=r"error hook 'hook' must take \(exc, event\), it takes \(exc\)"
    ):

        @bot.on_error
        async def hook(exc: BaseException) -> None: ...

    with pytest.raises(RegistrationError, match=r"an error hook must be callable, got 5"):
        bot.on_error(5)  # type: ignore[type-var]

    @bot.on_error
    async def good(exc: BaseException, event: Any) -> None: ...

    @bot.on_error
    def plain(exc: BaseException, event: Any) -> None: ...

    assert bot.freeze().error_hooks == (good, plain)


async def _flow(call: Call) -> None: ...


async def _two(call: Call, other: Any) -> None: ...


def test_answer_checks_its_flow_when_constructed() -> None:
    """Answer(then=) takes an async callable of one positional parameter (the Call); any
    other is refused at once, naming the flow and what it takes."""
    assert Answer(then=_flow).then is _flow
    assert Answer(then=functools.partial(_two, other=1)).then is not None
    with pytest.raises(
        DecisionError,
        match=r"Answer.then must be .*async def flow\(call\).*'_two' takes \(call, other\)",
    ):
        Answer(then=_two)

    async def no_call() -> None: ...

    with pytest.raises(DecisionError, match=r"'no_call' takes \(\)"):
        Answer(then=no_call)  # type: ignore[arg-type]
    with pytest.raises(DecisionError, match="async"):
        Answer(then=lambda call: None)  # type: ignore[arg-type,return-value]


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


def test_the_same_function_registered_twice_is_refused_naming_it() -> None:
    """A handler, observer, middleware or error hook registered twice would run twice."""
    bot = Bot()

    async def greet(call: IncomingCall) -> None: ...

    async def seen(event: CallStateChanged) -> None: ...

    async def tracing(event: Any, call_next: Any) -> Any: ...

    async def report(exc: BaseException, event: Any) -> None: ...

    bot.incoming_call(greet)
    with pytest.raises(RegistrationError, match="handler 'greet' is registered twice on 'bot'"):
        bot.incoming_call(priority=5)(greet)
    bot.on(CallStateChanged)(seen)
    with pytest.raises(RegistrationError, match="observer 'seen' of CallStateChanged is regis"):
        bot.on(CallStateChanged)(seen)
    bot.on(CallTerminated)(seen)  # one function observing two event types is fine
    bot.middleware(tracing)
    with pytest.raises(RegistrationError, match="middleware 'tracing' is registered twice"):
        bot.middleware(tracing)
    bot.on_error(report)
    with pytest.raises(RegistrationError, match="error hook 'report' is registered twice"):
        bot.on_error(report)


def test_the_same_function_on_two_routers_of_one_bot_is_refused_when_it_starts() -> None:
    async def greet(call: IncomingCall) -> None: ...

    async def tracing(event: Any, call_next: Any) -> Any: ...

    bot, menu = Bot(), Router("menu")
    bot.incoming_call(greet)
    menu.incoming_call(greet)
    bot.include_router(menu)
    with pytest.raises(RegistrationError, match="handler 'greet' is registered twice, on 'bot' "):
        bot.freeze()
    assert not bot.frozen

    bot, menu = Bot(), Router("menu")
    bot.middleware(tracing)
    menu.middleware(tracing)
    bot.include_router(menu)
    with pytest.raises(RegistrationError, match="middleware 'tracing' is registered twice on the"):
        bot.freeze()


def test_services_reach_handlers_through_the_context() -> None:
    """``ctx.services`` is what the bot was given; a test builds a context with a fake."""

    class Clock:
        hour = 20

    def hour_of(ctx: CallContext[Clock]) -> int:
        return ctx.services.hour

    assert hour_of(CallContext("c1", services=Clock())) == 20
    assert CallContext("c1").services is None
    bot: Bot[Clock] = Bot(services=Clock())
    assert bot.services.hour == 20
    bot.freeze()
    with pytest.raises(RegistrationError, match="cannot register services"):
        bot.services = Clock()


def test_a_call_handle_is_not_built_by_hand() -> None:
    with pytest.raises(TypeError, match=r"ctx\.call"):
        Call()
