"""Admission: whether a new incoming call is taken for the handlers, decided at once, or refused.

A pure policy over numbers the intake gives it (how many calls are pending, how late the I/O
loop runs, how many decisions wait to be sent, when the call would fall due): no loop, no
I/O, no clock of its own, so it is tested by calling it. The intake asks it for every new
call and acts on the answer.

- :meth:`Admission.judge`: ``None`` (take the call) or why it gets the default decision now:
  ``shutdown`` (the worker is draining), ``max_pending``, ``ingress_lag`` (the I/O loop runs
  later than ``shed_lag``: taking the call would only make it later) or ``deadline_wave``
  (held, it would fall due with more undecided calls than the outbox can send within one
  safety margin).
- :meth:`Admission.refuses`: whether a notification with a new call should wait for room
  and then get 503, rather than be taken and decided late.

Deadline waves: undecided calls are counted by deadline bucket (an eighth of the safety
margin wide). The outbox sends about ``deadline_send_rate`` defaults a second and has one
safety margin to send a call's default before the platform gives up, so at most
rate x margin undecided calls may fall due within any one margin.
"""

from __future__ import annotations

from typing import Final

from callflow.engine.limits import Limits

__all__ = ["SHUTDOWN", "Admission"]

SHUTDOWN: Final = "shutdown"
MAX_PENDING: Final = "max_pending"
INGRESS_LAG: Final = "ingress_lag"
DEADLINE_WAVE: Final = "deadline_wave"


class Admission:
    """The admission policy of one engine; see the module docstring."""

    __slots__ = (
        "_max_pending",
        "_refuse_lag",
        "_shed_lag",
        "_span_base",
        "_span_first",
        "_span_last",
        "_wave",
        "_wave_limit",
        "_wave_width",
        "max_send_backlog",
    )

    def __init__(self, limits: Limits) -> None:
        self._max_pending = limits.max_pending
        self._shed_lag = limits.shed_lag
        self.max_send_backlog = limits.max_send_backlog
        # Past this lag a new call would lose half its time before anyone saw it: refuse it.
        shortest = min(limits.decide_within, limits.decide_recording_within)
        self._refuse_lag = max(limits.shed_lag, shortest / 2)
        slack = max(limits.safety_margin, 0.1)
        self._wave_width = slack / 8
        self._wave_limit = max(1, int(limits.deadline_send_rate * slack))
        self._wave: dict[int, int] = {}
        # The last window summed: buckets [first, last) hold ``base`` calls.
        self._span_first = self._span_last = self._span_base = 0

    def judge(
        self, *, draining: bool, pending: int, lag: float, deadline: float, now: float
    ) -> str | None:
        """Why a new call due at ``deadline`` gets the default now; None to take it (it then
        counts in its deadline wave until :meth:`leave`)."""
        if draining:
            return SHUTDOWN
        if pending >= self._max_pending:
            return MAX_PENDING
        if lag > self._shed_lag:
            return INGRESS_LAG
        if not self._join_wave(deadline, now):
            return DEADLINE_WAVE
        return None

    def refuses(self, backlog: int, lag: float) -> bool:
        """True while a new call could not be decided in time if taken: more decisions wait
        to be sent than ``max_send_backlog``, or the I/O loop runs far behind."""
        return backlog >= self.max_send_backlog or lag > self._refuse_lag

    def hopeless(self, lag: float) -> bool:
        """True when the I/O loop runs so late that waiting for room is no use."""
        return lag > self._refuse_lag

    def leave(self, deadline: float) -> None:
        """A taken call due at ``deadline`` was decided (or gone): it no longer falls due."""
        bucket = int(deadline / self._wave_width)
        held = self._wave.get(bucket)
        if held:
            self._wave[bucket] = held - 1
            if self._span_first <= bucket < self._span_last:
                self._span_base -= 1

    def _join_wave(self, deadline: float, now: float) -> bool:
        """Count a held call due at ``deadline``; False when its wave is full."""
        width = self._wave_width
        wave = self._wave
        last = int(deadline / width)
        first = max(last - 7, int(now / width))
        if last != self._span_last or first != self._span_first:
            # The window moved (every eighth of a margin): sum its older buckets once.
            base = 0
            for bucket in range(first, last):
                base += wave.get(bucket, 0)
            self._span_first, self._span_last, self._span_base = first, last, base
        if self._span_base + wave.get(last, 0) >= self._wave_limit:
            return False
        held = wave.get(last)
        if held is None:
            if len(wave) > 64:  # forget the buckets that are already due
                current = int(now / width)
                for bucket in [b for b in wave if b < current]:
                    del wave[bucket]
            wave[last] = 1
        else:
            wave[last] = held + 1
        return True
