"""The book of calls a worker knows: one canonical id, one tenant, from admission to end.

A call enters the book when the worker admits its incoming-call notification (or when the
bot creates or joins it), bound to the tenant it belongs to, and stays there, bound to that
tenant, while it is pending, while its decision is being sent, and for as long as the bot
holds it. When it ends (Graph's ``terminated``, a keepAlive answered 404, the bot hanging
up) it leaves for a bounded set of recently ended calls, so that late notifications are still
recognised (and still refused for another tenant). A call decided without an answer (reject,
redirect, or an answer Graph refused) ends when Graph says so, or ``closing_ttl`` seconds
after its decision at the latest.

Everything per call that a worker keeps (intake, lanes, the operation registry, the keeper)
exists only for calls in this book: a notification about a call the book does not know is
dropped and counted by the intake before it creates any state. Ids are the
canonical ones (:func:`~callflow.events.canonical_call_id`); ids from elsewhere are
canonicalised here.

The book lives on the I/O loop; its changes happen there. Its queries are plain dictionary
reads, safe from the app loop as snapshots.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from typing import Final

import attrs

from callflow.clock import MONOTONIC, Clock
from callflow.events import CallEvent, ResultInfo, canonical_call_id

__all__ = ["CallBook", "Ended"]

_ABSENT: Final = object()

_BOT_SUBCODES: Final = frozenset({7000, 10550})
"""Subcodes of a call's end that say the bot ended it."""
_TRANSFERRED_SUBCODE: Final = 7015


@attrs.frozen
class Ended:
    """A call that ended recently: the tenant it belonged to, why it ended (Graph's
    ``resultInfo``, when Graph said), and who ended it when this worker knows (``by``:
    ``bot`` when the bot hung up, ``gone`` when Graph answered a request for it with 404
    before saying how it ended, ``fleet`` when another worker of the fleet owns it now)."""

    tenant_id: str | None
    result: ResultInfo | None
    by: str | None = None

    @property
    def ended_by(self) -> str:
        """Who ended the call: ``bot``, ``caller``, ``transferred``, ``platform``, ``gone``
        or ``fleet``.

        What the worker knows comes first (the bot's own hang-up); else Graph's resultInfo
        says: 7015 transferred, 7000/10550 the bot, a code of 400 or more the platform
        (keepAlive timeout, media failure, unreachable), any other end the caller; an end
        with no resultInfo at all (the call went quiet) the platform.
        """
        if self.by is not None:
            return self.by
        result = self.result
        if result is None:
            return "platform"
        if result.subcode == _TRANSFERRED_SUBCODE:
            return "transferred"
        if result.subcode in _BOT_SUBCODES:
            return "bot"
        if result.code is not None and result.code >= 400:
            return "platform"
        return "caller"


OnEnd = Callable[[str, Ended], None]
"""``on_end(call_id, ended)``: a call has ended (``ended``: why and by whom, when known)."""


class CallBook:
    """The calls a worker knows, each bound to its tenant; see the module docstring.

    ``ended_size`` bounds the set of recently ended calls; ``closing_ttl`` is how long a call
    decided without an answer stays known while Graph's ``terminated`` has not come.
    """

    __slots__ = (
        "_clock",
        "_closing",
        "_creating",
        "_ended",
        "_ended_size",
        "_live",
        "_on_end",
        "_on_hold",
        "_parked",
        "_parked_size",
        "_parked_ttl",
        "closing_ttl",
    )

    def __init__(
        self, *, ended_size: int = 10_000, closing_ttl: float = 120.0, clock: Clock = MONOTONIC
    ) -> None:
        self._live: dict[str, str | None] = {}
        self._closing: deque[tuple[float, str]] = deque()
        self._ended: OrderedDict[str, Ended] = OrderedDict()
        self._ended_size = ended_size
        self.closing_ttl = closing_ttl
        self._clock = clock
        self._on_end: list[OnEnd] = []
        self._on_hold: list[Callable[[str], None]] = []
        self._creating = 0
        # Notifications about unknown calls that arrive while the bot creates a call: Graph
        # may report the new call's first states before its reply naming it is read.
        self._parked: deque[tuple[float, CallEvent]] = deque()
        self._parked_size = 256
        self._parked_ttl = 10.0

    # -- queries (any thread: snapshot reads) ------------------------------------------------

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._live

    def knows(self, call_id: str) -> bool:
        """True while ``call_id`` is live or ended recently."""
        return call_id in self._live or call_id in self._ended

    def tenant_of(self, call_id: str) -> str | None:
        """The tenant ``call_id`` is bound to (live or recently ended); None when unknown."""
        tenant = self._live.get(call_id, _ABSENT)
        if tenant is not _ABSENT:
            return tenant  # type: ignore[return-value]
        ended = self._ended.get(call_id)
        return ended.tenant_id if ended is not None else None

    @property
    def remembered(self) -> int:
        """How many calls the book may know at most right now: those live, and as many
        ended ones as it keeps (per-call memory elsewhere is bounded by this)."""
        return len(self._live) + self._ended_size

    def ended(self, call_id: str) -> Ended | None:
        """How ``call_id`` ended, when it ended recently; None otherwise."""
        return self._ended.get(call_id)

    @property
    def creating(self) -> bool:
        """True while the bot is creating a call whose id Graph has not named yet."""
        return self._creating > 0

    # -- listeners (wired once, before the loops run) ----------------------------------------

    def on_end(self, listener: OnEnd) -> None:
        """Tell ``listener(call_id, ended)`` of every call that ends (once per call)."""
        self._on_end.append(listener)

    def on_hold(self, listener: Callable[[str], None]) -> None:
        """Tell ``listener(call_id)`` of every call the bot created or joined, once its id
        is known (notifications about it that arrived earlier can be taken now)."""
        self._on_hold.append(listener)

    # -- changes (the I/O loop) ----------------------------------------------------------------

    def admit(self, call_id: str, tenant_id: str | None) -> None:
        """A new incoming call: bind it to ``tenant_id`` (a call already known keeps its
        binding)."""
        if self._closing:
            self._expire()
        if call_id not in self._live and call_id not in self._ended:
            self._live[call_id] = tenant_id

    def hold(self, call_id: str, tenant_id: str | None) -> str:
        """A call the bot created or joined (``call_id`` as Graph named it): bind it; return
        its canonical id."""
        call_id = canonical_call_id(call_id)
        self._ended.pop(call_id, None)
        self._live.setdefault(call_id, tenant_id)
        for listener in self._on_hold:
            listener(call_id)
        return call_id

    def took(self, call_id: str, tenant_id: str | None) -> None:
        """This worker sent the default for a call a lost worker of the fleet had admitted:
        it knows the call now, until it ends (at most ``closing_ttl`` seconds)."""
        self.admit(call_id, tenant_id)
        self.closing(call_id)

    def closing(self, call_id: str) -> None:
        """``call_id`` was decided without an answer (or its answer failed): it ends when
        Graph says so, or after ``closing_ttl`` seconds."""
        if call_id in self._live:
            self._closing.append((self._clock.now() + self.closing_ttl, call_id))

    def forget(self, call_id: str) -> None:
        """Drop ``call_id`` without ending it (another worker of the fleet owns it)."""
        self._live.pop(call_id, None)

    def end(self, call_id: str, result: ResultInfo | None = None, *, by: str | None = None) -> bool:
        """``call_id`` ended (``by``: who ended it, when this worker knows, see
        :class:`Ended`): keep it among the recently ended, tell the listeners. True the
        first time, False when it had ended already."""
        call_id = canonical_call_id(call_id)
        tenant = self._live.pop(call_id, _ABSENT)
        ended = self._ended
        if tenant is _ABSENT:
            if call_id in ended:
                return False
            tenant = None  # the bot ended a call it was not told about (its own hang-up)
        record = ended[call_id] = Ended(tenant, result, by)  # type: ignore[arg-type]
        if len(ended) > self._ended_size:
            ended.popitem(last=False)
        for listener in self._on_end:
            listener(call_id, record)
        return True

    def park(self, event: CallEvent, received: float) -> bool:
        """Keep a notification about an unknown call while the bot creates one (it may be
        about that call, named by Graph's reply any moment now): True when kept (at most
        256, for 10 s), False when it is just unknown."""
        if not self._creating:
            return False
        parked = self._parked
        while parked and parked[0][0] + self._parked_ttl < received:
            parked.popleft()
        parked.append((received, event))
        if len(parked) > self._parked_size:
            parked.popleft()
        return True

    def unpark(self, call_id: str) -> list[tuple[CallEvent, float]]:
        """The notifications kept for ``call_id`` (now known), oldest first, with when each
        was received; they are no longer kept."""
        parked = self._parked
        if not parked:
            return []
        mine = [(event, received) for received, event in parked if event.call_id == call_id]
        if mine:
            self._parked = deque(item for item in parked if item[1].call_id != call_id)
        return mine

    @contextlib.contextmanager
    def creating_call(self) -> Iterator[None]:
        """Mark a call being created: until Graph names it (:meth:`hold`), notifications about
        unknown calls may be its own and are kept briefly instead of dropped."""
        self._creating += 1
        try:
            yield
        finally:
            self._creating -= 1

    def _expire(self) -> None:
        now = self._clock.now()
        closing = self._closing
        while closing and closing[0][0] <= now:
            _, call_id = closing.popleft()
            if call_id in self._live:
                self.end(call_id)
