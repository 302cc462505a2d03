"""Handler registration: decorators, filters, priority, middleware and error hooks.

A :class:`Router` is a table of frozen handler specs filled by decorators that return the
function unchanged. :class:`~callflow.Bot` is the root router; other routers are merged into
it with :meth:`Router.include_router`. When the bot starts, the table is frozen and compiled
once (sorted by priority, middleware chains built); registering anything afterwards raises
:class:`~callflow.errors.RegistrationError`. Every function is checked when it is registered:
one that cannot take the arguments it will be called with (a handler ``(event)`` or
``(event, ctx)``, middleware ``(event, call_next)``, an error hook ``(exc, event)``) is
refused with a :class:`~callflow.errors.RegistrationError` naming it.

Handlers for incoming calls run in priority order (higher ``priority`` first; ties in
registration order). Filters are checked before a handler runs. The first handler that
returns a decision wins; ``None`` means "no opinion" and the next handler runs. A handler that
raises is logged with the call id, passed to the ``on_error`` hooks, and the next one runs.
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeAlias, TypeVar, cast, overload

import anyio
import attrs
import structlog
from structlog.typing import FilteringBoundLogger
from typing_extensions import TypeVar as DefaultTypeVar

from callflow._signatures import cannot_take
from callflow._signatures import is_async as _is_async
from callflow.clock import MONOTONIC, Clock
from callflow.errors import RegistrationError
from callflow.events import (
    CallAdopted,
    CallEvent,
    CallStateChanged,
    CallTerminated,
    IncomingCall,
    OperationFinished,
    ParticipantsUpdated,
    ToneReceived,
    UnknownNotification,
)

if TYPE_CHECKING:
    from callflow.control.call import Call
    from callflow.decisions import Decision

__all__ = [
    "CallContext",
    "ErrorHook",
    "Handler",
    "HandlerSpec",
    "Middleware",
    "ObserverSpec",
    "Router",
]

log = structlog.get_logger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
S = DefaultTypeVar("S", default=Any)
"""The type of a bot's own services (``Bot(services=...)``, ``ctx.services``)."""
Handler: TypeAlias = (
    "Callable[[IncomingCall], Awaitable[Decision | None]]"
    " | Callable[[IncomingCall, CallContext[Any]], Awaitable[Decision | None]]"
    " | Callable[[IncomingCall], Decision | None]"
    " | Callable[[IncomingCall, CallContext[Any]], Decision | None]"
)
"""An incoming-call handler: ``(call)`` or ``(call, ctx)``, async or plain, returning a
decision or None. A handler typed to return anything else is a type error."""
H = TypeVar("H", bound=Handler)
Middleware = Callable[[CallEvent, Callable[[CallEvent], Awaitable[Any]]], Awaitable[Any]]
"""``async def mw(event, call_next)``: wraps every handler and observer invocation."""
ErrorHook = Callable[[BaseException, CallEvent], Awaitable[None] | None]
"""``async def hook(exc, event)``: told about every exception a handler or observer raised."""

_SEQ = itertools.count()
_EVENT_TYPES = (IncomingCall, CallStateChanged, CallTerminated, ParticipantsUpdated,
                ToneReceived, OperationFinished, UnknownNotification, CallAdopted)  # fmt: skip


class CallSource(Protocol):
    """What a context asks of the serving bot: call handles, hang-ups, the bot's services."""

    services: Any

    def call(self, call_id: str, tenant_id: str | None = None) -> Call:
        """The handle of ``call_id``."""
        ...

    async def hang_up(self, call_id: str) -> None:
        """Hang up the bot's leg of ``call_id``."""
        ...


_UNSET: Any = object()


class CallContext(Generic[S]):
    """What a handler knows about its call beyond the event: deadline, logger, call handle.

    ``deadline`` is a ``time.monotonic()`` value (None for observers of non-call events);
    ``remaining()`` says how many seconds are left before the default decision goes out.
    ``call`` is the :class:`~callflow.Call` handle of the event's call (play, collect digits,
    record, transfer...; for a call the bot answered or created). ``services`` is what the
    bot was given as ``Bot(services=...)``: annotate the parameter ``ctx:
    CallContext[MyServices]`` and ``ctx.services`` has that type.

    To unit-test a handler without a bot, build one yourself:
    ``CallContext(call_id="c1", services=FakeServices())``.
    """

    __slots__ = ("_clock", "_log", "_services", "_source", "call_id", "deadline", "tenant_id")

    def __init__(
        self,
        call_id: str | None = None,
        deadline: float | None = None,
        *,
        services: S = _UNSET,
        tenant_id: str | None = None,
        clock: Clock = MONOTONIC,
        source: CallSource | None = None,
    ) -> None:
        self.call_id = call_id
        self.deadline = deadline
        self.tenant_id = tenant_id
        self._services = services
        self._source = source
        self._clock = clock
        self._log: FilteringBoundLogger | None = None

    @property
    def services(self) -> S:
        """The bot's own services (``Bot(services=...)``; None when it was given none)."""
        if self._services is not _UNSET:
            return self._services
        return cast("S", self._source.services if self._source is not None else None)

    @property
    def call(self) -> Call:
        """The handle of this event's call, for call control after the answer."""
        if self._source is None or self.call_id is None:
            raise RuntimeError("this context is not attached to a running bot's Graph client")
        return self._source.call(self.call_id, self.tenant_id)

    def remaining(self) -> float:
        """Seconds left before the deadline (0 once passed; infinite when there is none)."""
        if self.deadline is None:
            return math.inf
        return max(0.0, self.deadline - self._clock.now())

    @property
    def log(self) -> FilteringBoundLogger:
        """A structlog logger bound to this call's id."""
        if self._log is None:
            bound: FilteringBoundLogger = log.bind(call_id=self.call_id)
            self._log = bound
        return self._log

    async def hang_up(self) -> None:
        """Hang up the bot's leg of this call (DELETE the call in Graph)."""
        if self._source is None or self.call_id is None:
            raise RuntimeError("this context is not attached to a running bot's Graph client")
        await self._source.hang_up(self.call_id)

    def __repr__(self) -> str:
        return f"<CallContext call_id={self.call_id} remaining={self.remaining():.3f}s>"


def _describe(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__name__", None) or repr(fn)
    return str(name)


def _check_parameters(fn: Callable[..., Any], what: str, expected: str) -> None:
    """Refuse ``fn`` unless it can be called with the positional arguments ``expected``
    names (``"event, call_next"``)."""
    takes = cannot_take(fn, expected.count(",") + 1)
    if takes is not None:
        raise RegistrationError(
            f"{what} {_describe(fn)!r} must take ({expected}), it takes {takes}"
        )


def _wants_context(fn: Callable[..., Any], what: str) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise RegistrationError(f"cannot inspect {what} {_describe(fn)!r}: {exc}") from exc
    positional = [
        p
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    if any(p.kind is p.VAR_POSITIONAL for p in sig.parameters.values()):
        return True
    if len(positional) == 1:
        return False
    if len(positional) == 2:
        return True
    raise RegistrationError(
        f"{what} {_describe(fn)!r} must take (event) or (event, ctx), "
        f"it takes {len(positional)} required positional arguments"
    )


@attrs.frozen
class HandlerSpec:
    """One registered incoming-call handler, as the router stores it."""

    fn: Callable[..., Any]
    name: str
    group: bool | None
    where: Callable[[IncomingCall], bool] | None
    priority: int
    seq: int
    wants_ctx: bool
    is_async: bool
    router: Router = attrs.field(repr=False)

    def matches(self, call: IncomingCall) -> bool:
        """True when the group flag and the filter accept ``call`` (filters may raise)."""
        if self.group is not None and call.is_group_call != self.group:
            return False
        return self.where is None or bool(self.where(call))


@attrs.frozen
class ObserverSpec:
    """One registered observer of call events other than the incoming call."""

    event_type: type[Any]
    fn: Callable[..., Any]
    name: str
    where: Callable[[Any], bool] | None
    seq: int
    wants_ctx: bool
    is_async: bool
    router: Router = attrs.field(repr=False)


class Router:
    """A set of handlers, observers, middleware and error hooks; include it into a bot."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"router-{id(self):x}"
        self._handlers: list[HandlerSpec] = []
        self._observers: list[ObserverSpec] = []
        self._middleware: list[Middleware] = []
        self._error_hooks: list[ErrorHook] = []
        self._children: list[Router] = []
        self._parent: Router | None = None
        self._frozen = False

    # -- registration -----------------------------------------------------------------------

    def _check_open(self, what: str) -> None:
        if self._frozen:
            raise RegistrationError(
                f"cannot register {what}: the bot has started; register every handler, "
                "observer, middleware and router before bot.serve() or bot.run()"
            )

    @overload
    def incoming_call(self, fn: H, /) -> H: ...
    @overload
    def incoming_call(
        self,
        *,
        group: bool | None = None,
        where: Callable[[IncomingCall], bool] | None = None,
        priority: int = 0,
    ) -> Callable[[H], H]: ...
    def incoming_call(  # type: ignore[misc]  # mypy cannot match overload 2's return-only H
        self,
        fn: H | None = None,
        /,
        *,
        group: bool | None = None,
        where: Callable[[IncomingCall], bool] | None = None,
        priority: int = 0,
    ) -> H | Callable[[H], H]:
        """Register a handler for incoming calls: ``async def h(call)`` or ``(call, ctx)``.

        ``group=True`` takes only group calls and meeting invitations, ``False`` only
        peer-to-peer calls, ``None`` both; ``where(call)`` filters further; higher ``priority``
        runs first. The handler returns ``Answer``, ``Reject``, ``Redirect`` or ``None``.
        A plain ``def`` handler runs in a worker thread.
        """
        if group is not None and not isinstance(group, bool):
            raise RegistrationError(
                f"incoming_call(group=...) must be True, False or None, got {group!r}"
            )
        if where is not None and not callable(where):
            raise RegistrationError(f"incoming_call(where=...) must be callable, got {where!r}")
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise RegistrationError(f"incoming_call(priority=...) must be an int, got {priority!r}")

        def register(func: H) -> H:
            self._check_open(f"handler {_describe(func)!r}")
            if not callable(func):
                raise RegistrationError(f"an incoming-call handler must be callable, got {func!r}")
            if any(h.fn is func for h in self._handlers):
                raise RegistrationError(
                    f"handler {_describe(func)!r} is registered twice on {self.name!r}: "
                    "a handler runs once per call, register it once"
                )
            spec = HandlerSpec(
                fn=func,
                name=_describe(func),
                group=group,
                where=where,
                priority=priority,
                seq=next(_SEQ),
                wants_ctx=_wants_context(func, "handler"),
                is_async=_is_async(func),
                router=self,
            )
            self._handlers.append(spec)
            return func

        return register(fn) if fn is not None else register

    def on(
        self, event_type: type[Any], *, where: Callable[[Any], bool] | None = None
    ) -> Callable[[F], F]:
        """Register an observer for one event type: ``async def obs(event)`` or ``(event, ctx)``.

        Observers see ``CallStateChanged``, ``CallTerminated``, ``ParticipantsUpdated``,
        ``ToneReceived``, ``OperationFinished`` and ``UnknownNotification`` (use
        ``incoming_call`` to decide calls). Their results are ignored; every matching observer
        runs, in registration order, per call in arrival order.

        ``CallAdopted`` observers (fleet mode: this worker took over a call another worker
        answered) run like flows instead: each is a task of its own that may await
        operations on ``ctx.call`` for the rest of the call while the call's other events
        reach their observers; one that raises has its call hung up, as a flow does.
        """
        if event_type is IncomingCall:
            raise RegistrationError(
                "use @bot.incoming_call to handle IncomingCall; @bot.on observes the other events"
            )
        if event_type not in _EVENT_TYPES:
            names = ", ".join(t.__name__ for t in _EVENT_TYPES[1:])
            raise RegistrationError(f"bot.on() takes one of {names}, got {event_type!r}")

        def register(func: F) -> F:
            self._check_open(f"observer {_describe(func)!r}")
            if any(o.fn is func and o.event_type is event_type for o in self._observers):
                raise RegistrationError(
                    f"observer {_describe(func)!r} of {event_type.__name__} is registered "
                    f"twice on {self.name!r}: it would run twice per event"
                )
            self._observers.append(
                ObserverSpec(
                    event_type=event_type,
                    fn=func,
                    name=_describe(func),
                    where=where,
                    seq=next(_SEQ),
                    wants_ctx=_wants_context(func, "observer"),
                    is_async=_is_async(func),
                    router=self,
                )
            )
            return func

        return register

    def middleware(self, fn: F) -> F:
        """Register ``async def mw(event, call_next)`` around every handler of this router.

        Middleware of a router wraps the handlers of that router and of the routers included
        into it; the outermost router's middleware runs first.
        """
        self._check_open(f"middleware {_describe(fn)!r}")
        if not _is_async(fn):
            raise RegistrationError(f"middleware {_describe(fn)!r} must be an async function")
        _check_parameters(fn, "middleware", "event, call_next")
        if any(mw is fn for mw in self._middleware):
            raise RegistrationError(
                f"middleware {_describe(fn)!r} is registered twice on {self.name!r}: "
                "it would wrap every handler twice"
            )
        self._middleware.append(fn)
        return fn

    def on_error(self, fn: F) -> F:
        """Register ``async def hook(exc, event)``, told of every exception a handler, an
        observer or an ``Answer(then=...)`` flow raised (a plain ``def`` runs on the loop)."""
        self._check_open(f"error hook {_describe(fn)!r}")
        if not callable(fn):
            raise RegistrationError(f"an error hook must be callable, got {fn!r}")
        _check_parameters(fn, "error hook", "exc, event")
        if any(hook is fn for hook in self._error_hooks):
            raise RegistrationError(
                f"error hook {_describe(fn)!r} is registered twice on {self.name!r}: "
                "it would be told of every error twice"
            )
        self._error_hooks.append(fn)
        return fn

    def include_router(self, router: Router) -> Router:
        """Merge ``router``'s handlers into this one (its middleware wraps only its handlers)."""
        self._check_open(f"router {router.name!r}")
        if router is self or router._parent is not None:
            raise RegistrationError(f"router {router.name!r} is already included somewhere")
        node: Router | None = self
        while node is not None:
            if node is router:
                raise RegistrationError(f"including router {router.name!r} would make a cycle")
            node = node._parent
        router._parent = self
        self._children.append(router)
        return router

    # -- compilation ------------------------------------------------------------------------

    def _walk(self) -> list[Router]:
        out = [self]
        for child in self._children:
            out.extend(child._walk())
        return out

    def _chain(self) -> list[Middleware]:
        """Middleware from the root down to this router, outermost first."""
        chain: list[Middleware] = []
        node: Router | None = self
        while node is not None:
            chain[:0] = node._middleware
            node = node._parent
        return chain

    def freeze(self) -> CompiledRoutes:
        """Freeze this router tree and compile its tables; idempotent."""
        routers = self._walk()
        if not self._frozen:
            _refuse_duplicates(routers)
        for r in routers:
            r._frozen = True
        handlers = sorted(
            (h for r in routers for h in r._handlers), key=lambda h: (-h.priority, h.seq)
        )
        observers: dict[type[Any], list[ObserverSpec]] = {}
        for o in sorted((o for r in routers for o in r._observers), key=lambda o: o.seq):
            observers.setdefault(o.event_type, []).append(o)
        hooks = [hook for r in routers for hook in r._error_hooks]
        return CompiledRoutes(
            handlers=tuple(_Invoker(h, h.router._chain()) for h in handlers),
            observers={
                k: tuple(_Invoker(o, o.router._chain()) for o in v) for k, v in observers.items()
            },
            error_hooks=tuple(hooks),
        )

    @property
    def frozen(self) -> bool:
        """True once the bot has started and the table can no longer change."""
        return self._frozen


def _refuse_duplicates(routers: list[Router]) -> None:
    """Refuse a function registered in two routers of one tree (it would run twice)."""
    seen: dict[tuple[str, Any, Any], Router] = {}

    def check(what: str, key: Any, fn: Callable[..., Any], router: Router) -> None:
        other = seen.setdefault((what, key, fn), router)
        if other is not router:
            raise RegistrationError(
                f"{what} {_describe(fn)!r} is registered twice, on {other.name!r} and on "
                f"{router.name!r}: register it once"
            )

    for r in routers:
        for h in r._handlers:
            check("handler", None, h.fn, r)
        for o in r._observers:
            check("observer", o.event_type, o.fn, r)
        for hook in r._error_hooks:
            check("error hook", None, hook, r)
    for r in routers:  # middleware on a router and on one it is included into wraps twice
        chain = r._chain()
        for index, mw in enumerate(chain):
            if any(other is mw for other in chain[:index]):
                raise RegistrationError(
                    f"middleware {_describe(mw)!r} is registered twice on the way to "
                    f"{r.name!r} (on it and on a router it is included into): register it once"
                )


_DIRECT = 0
"""Invoker mode: an async one-argument handler with no middleware, awaited as ``fn(event)``."""
_WRAPPED = 1
"""Invoker mode: anything else, awaited as ``call(event, ctx)``."""


class _Invoker:
    """A handler or observer with its middleware chain compiled into one callable."""

    __slots__ = ("call", "fn", "group", "mode", "name", "spec", "where")

    def __init__(self, spec: HandlerSpec | ObserverSpec, chain: list[Middleware]) -> None:
        self.spec = spec
        self.name = spec.name
        self.group = spec.group if isinstance(spec, HandlerSpec) else None
        self.where: Callable[[Any], bool] | None = spec.where
        fn = self.fn = spec.fn
        self.mode = _DIRECT if spec.is_async and not spec.wants_ctx and not chain else _WRAPPED

        if spec.is_async:
            if spec.wants_ctx:

                async def base(event: CallEvent, ctx: CallContext) -> Any:
                    return await fn(event, ctx)
            else:

                async def base(event: CallEvent, ctx: CallContext) -> Any:
                    return await fn(event)
        else:
            args_fn = (lambda e, c: (e, c)) if spec.wants_ctx else (lambda e, c: (e,))

            async def base(event: CallEvent, ctx: CallContext) -> Any:
                return await anyio.to_thread.run_sync(
                    fn, *args_fn(event, ctx), abandon_on_cancel=True
                )

        call: Callable[[CallEvent, CallContext], Awaitable[Any]] = base
        for mw in reversed(chain):
            call = self._wrap(mw, call)
        self.call = call

    @staticmethod
    def _wrap(
        mw: Middleware, inner: Callable[[CallEvent, CallContext], Awaitable[Any]]
    ) -> Callable[[CallEvent, CallContext], Awaitable[Any]]:
        async def wrapped(event: CallEvent, ctx: CallContext) -> Any:
            async def call_next(ev: CallEvent) -> Any:
                return await inner(ev, ctx)

            return await mw(event, call_next)

        return wrapped


@attrs.frozen
class CompiledRoutes:
    """The frozen routing table the dispatcher runs."""

    handlers: tuple[_Invoker, ...]
    observers: dict[type[Any], tuple[_Invoker, ...]]
    error_hooks: tuple[ErrorHook, ...]

    def observers_for(self, event: CallEvent) -> tuple[_Invoker, ...]:
        """The observers registered for ``event``'s type, in registration order."""
        return self.observers.get(type(event), ())
