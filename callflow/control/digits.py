"""Digit collection: a call's key presses, read in order, and the wait for a complete entry.

Runs on the I/O loop, inside :meth:`~callflow.control.control.CallControl.collect_digits`:
:class:`ToneBuffer` holds the key presses of one call that Graph reported (fed by the
:class:`~callflow.control.registry.OperationRegistry` from the notifications) and
:func:`collect` waits until they make one entry (enough digits, a stop tone, or a timeout),
playing a prompt meanwhile when asked to, which the first key press stops (barge-in). It
touches nothing but the call's record and the prompt it is given; it sends nothing to Graph
itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

import anyio
import attrs

from callflow.clock import Clock
from callflow.errors import CallEndedError, MediaCancelledError

__all__ = ["DigitRequest", "Entry", "Keypad", "ToneBuffer", "collect"]


class ToneBuffer:
    """The key presses of one call not yet consumed, ordered by ``sequenceId``.

    Graph reports each key as its own notification; they may arrive out of order and twice.
    :meth:`add` keeps each ``sequence_id`` once (and refuses those at or below what was
    consumed); :meth:`take` reads them in sequence order. Sequence ids are taken to count up
    by one from ``first_sequence`` (Graph's start at 1): a gap makes :meth:`take` wait for the
    missing key unless ``force`` is set (so keys numbered otherwise are still collected,
    only once the collection's time is up). At most ``limit`` keys are kept (the oldest go).
    """

    __slots__ = ("_tones", "consumed_upto", "first_sequence", "limit", "overflowed")

    def __init__(self, limit: int = 64, first_sequence: int = 1) -> None:
        self._tones: dict[int, str] = {}
        self.consumed_upto: int | None = None
        self.first_sequence = first_sequence
        self.limit = limit
        self.overflowed = 0

    def __len__(self) -> int:
        return len(self._tones)

    def add(self, sequence_id: int, tone: str) -> bool:
        """Keep a key press; False when it is a duplicate or older than what was consumed."""
        if sequence_id in self._tones or (
            self.consumed_upto is not None and sequence_id <= self.consumed_upto
        ):
            return False
        self._tones[sequence_id] = tone
        if len(self._tones) > self.limit:
            del self._tones[min(self._tones)]
            self.overflowed += 1
        return True

    def take(
        self, max_digits: int, stop_tones: Iterable[str], *, force: bool = False
    ) -> str | None:
        """Consume and return the digits of one collection, or None when it is not over yet.

        A collection is over at the ``max_digits``-th key or at a stop tone (not returned),
        whichever comes first in sequence order. With ``force`` (its time is up) it is over
        anyway, with the keys there are, gaps or not. Keys after the end stay buffered.
        """
        stops = frozenset(stop_tones)
        previous = self.consumed_upto
        if previous is None:
            lowest = min(self._tones, default=self.first_sequence)
            previous = min(lowest, self.first_sequence) - 1
        digits: list[str] = []
        last: int | None = None
        for sequence_id in sorted(self._tones):
            if not force and sequence_id != previous + 1:
                return None  # a key in between has not arrived (yet)
            previous = last = sequence_id
            tone = self._tones[sequence_id]
            if tone in stops:
                self._consume(last)
                return "".join(digits)
            digits.append(tone)
            if len(digits) >= max_digits:
                self._consume(last)
                return "".join(digits)
        if not force:
            return None
        if last is not None:
            self._consume(last)
        return "".join(digits)

    def _consume(self, upto: int) -> None:
        for sequence_id in [s for s in self._tones if s <= upto]:
            del self._tones[sequence_id]
        self.consumed_upto = upto


class Keypad(Protocol):
    """What a digit collection reads of its call (the registry's record of it)."""

    @property
    def tones(self) -> ToneBuffer:
        """The call's key presses not consumed yet."""

    @property
    def last_tone_at(self) -> float:
        """The clock's reading when the last key press arrived."""

    @property
    def ended(self) -> bool:
        """True once the call ended."""

    @property
    def changed(self) -> anyio.Event:
        """Set at the call's next change (a key press, a state, its end)."""

    def touch(self) -> None:
        """Wake whoever waits on :attr:`changed`."""

    def ended_error(self) -> CallEndedError:
        """The error to raise once the call ended."""


@attrs.frozen
class DigitRequest:
    """When one digit collection is over (see :meth:`callflow.control.call.Call.collect_digits`):
    at the ``max_digits``-th key, at a key of ``stop_tones``, ``inter_digit_timeout`` s after a
    key with no next one, or ``timeout`` s after it began."""

    max_digits: int
    timeout: float
    inter_digit_timeout: float
    stop_tones: tuple[str, ...]


@attrs.frozen
class Entry:
    """One digit collection's result: the ``digits`` (stop tone left out), how it ``ended``
    (``max_digits``, ``stop_tone``, ``inter_digit_timeout`` or ``timeout``) and whether a
    key stopped its prompt (``barged_in``)."""

    digits: str
    ended: str
    barged_in: bool = False


WhyStopped = Callable[[], "str | None"]
"""Why the collection stopped its prompt: ``barge_in`` (a key came while it played) or
``collection_ended`` (the collection failed: the call ended, say); None while it has not."""


async def collect(
    keys: Keypad,
    request: DigitRequest,
    *,
    clock: Clock,
    prompt: Callable[[WhyStopped], Awaitable[object]] | None = None,
) -> Entry:
    """Collect one entry of the caller's key presses (see :class:`DigitRequest`).

    With ``prompt``, ``prompt(why)`` plays it while collecting and the clock starts when it
    ends; the first key press stops it (barge-in), and ``why()`` then says why the prompt
    was stopped (for its log line). Raises the call's CallEndedError when it ended first,
    and the prompt's error when it failed before any key was pressed. Its timeouts run on
    ``clock`` (the one that stamped the key presses).
    """
    if prompt is None:
        return await _gather(keys, request, clock, None)
    return await _with_prompt(keys, request, clock, prompt)


class _Playing:
    """The prompt of a digit collection: its cancel scope, how it ended, and why the
    collection stopped it."""

    __slots__ = ("done", "error", "scope", "why")

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.done = False
        self.error: BaseException | None = None
        self.why: str | None = None

    def stop(self, why: str) -> None:
        """Stop the prompt (if it still plays) and say why."""
        if not self.done and self.why is None:
            self.why = why
        self.scope.cancel()


async def _with_prompt(
    keys: Keypad,
    request: DigitRequest,
    clock: Clock,
    prompt: Callable[[WhyStopped], Awaitable[object]],
) -> Entry:
    """Play ``prompt`` while collecting; the first key press stops it (barge-in)."""
    playing = _Playing()

    async def play() -> None:
        try:
            with playing.scope:
                await prompt(lambda: playing.why)
        except MediaCancelledError:
            pass  # cancelled by someone else: the menu is over, keep collecting
        except Exception as exc:
            playing.error = exc
        finally:
            playing.done = True
            keys.touch()

    entry: Entry | None = None
    failure: Exception | None = None
    # Errors leave the task group as they are, not wrapped in an ExceptionGroup: the
    # body keeps its own, the prompt task keeps its own in `playing`.
    async with anyio.create_task_group() as tg:
        tg.start_soon(play)
        try:
            entry = await _gather(keys, request, clock, playing)
        except Exception as exc:
            failure = exc
        finally:
            playing.stop("collection_ended")  # no-op once the prompt ended or a key stopped it
    if failure is not None:
        raise failure
    if playing.error is not None and entry is None:
        raise playing.error
    assert entry is not None
    return entry


async def _gather(
    keys: Keypad,
    request: DigitRequest,
    clock: Clock,
    playing: _Playing | None,
) -> Entry:
    tones = keys.tones
    max_digits, stop_tones = request.max_digits, request.stop_tones
    began = end = None
    barged_in = False
    while True:
        digits = tones.take(max_digits, stop_tones)
        if digits is not None:
            if playing is not None and not playing.done:
                barged_in = True  # the entry came while the prompt played
                playing.stop("barge_in")
            ended = "max_digits" if len(digits) >= max_digits else "stop_tone"
            return Entry(digits, ended, barged_in)
        if keys.ended:
            raise keys.ended_error()
        if playing is not None and not playing.done:
            if len(tones):
                barged_in = True
                playing.stop("barge_in")  # a key stops the prompt
            elif playing.error is None:
                await keys.changed.wait()
                continue
        if playing is not None and playing.error is not None:
            raise playing.error
        now = clock.now()
        if began is None:
            began = now
            end = began + request.timeout
        assert end is not None
        wake = end
        if len(tones):
            wake = min(end, max(keys.last_tone_at, began) + request.inter_digit_timeout)
        if now >= wake:
            digits = tones.take(max_digits, stop_tones, force=True)
            assert digits is not None
            return Entry(digits, "timeout" if now >= end else "inter_digit_timeout", barged_in)
        changed = keys.changed
        timer = clock.call_at(asyncio.get_running_loop(), wake, keys.touch)
        try:
            await changed.wait()  # a key, the call's end, or the time to `wake` on the clock
        finally:
            timer.cancel()
