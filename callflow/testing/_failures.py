"""Strict mode: failures of a served bot's own code, kept so that a test can fail on them.

A :class:`~callflow.testing.FakeGraph` hands :meth:`FailureLog.add` to every bot it serves
(``bot.serve(on_failure=...)``): each handler that raised or returned something that is not
a decision, each observer, flow or error hook that raised, is kept here as a
:class:`~callflow.engine.lanes.Failure`. In strict mode the fake raises
:class:`BotCodeError` for them when the bot stops serving, and the pytest plugin fails the
test as soon as it returns.

Runs on the test's event loop (where the bot's app loop is); touches nothing else.
"""

from __future__ import annotations

from typing import Final

import anyio

from callflow.engine.lanes import Failure

__all__ = ["BotCodeError", "FailureLog"]

_HOW_TO_ALLOW: Final = (
    "If the test provokes this on purpose, turn strict mode off for it: "
    "@pytest.mark.callflow_lenient (the pytest plugin), FakeGraph(strict=False) or "
    "fake.serve(bot, strict=False); fake.failures still lists what failed."
)


class BotCodeError(AssertionError):
    """Strict mode: the bot's own code (a handler, observer, middleware, filter, flow or
    error hook) failed while it served; the message names each failure and its call.
    ``failures`` holds them (:class:`~callflow.engine.lanes.Failure`)."""

    def __init__(self, failures: tuple[Failure, ...]) -> None:
        self.failures = failures
        lines = "\n".join(f"  - {failure}" for failure in failures)
        count = len(failures)
        super().__init__(
            f"the bot's own code failed {count} time{'s' if count > 1 else ''} "
            f"(callflow strict mode):\n{lines}\n{_HOW_TO_ALLOW}"
        )


class FailureLog:
    """Every failure of the bot code a fake served; which of them a test was told of."""

    def __init__(self) -> None:
        self._failures: list[Failure] = []
        self._told = 0
        self._changed: anyio.Event | None = None

    def add(self, failure: Failure) -> None:
        """Keep ``failure`` (the ``on_failure`` a served bot calls)."""
        self._failures.append(failure)
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    async def wait(self, count: int, timeout: float) -> tuple[Failure, ...]:  # noqa: ASYNC109
        """Every failure, once there are ``count``; TimeoutError after ``timeout`` s."""
        try:
            with anyio.fail_after(timeout):
                while len(self._failures) < count:
                    if self._changed is None:
                        self._changed = anyio.Event()
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(
                f"FakeGraph: expected {count} failure(s) of bot code within {timeout:g} s, "
                f"got {len(self._failures)}"
            ) from None
        return self.all

    @property
    def all(self) -> tuple[Failure, ...]:
        """Every failure so far, in order."""
        return tuple(self._failures)

    def _take(self) -> tuple[Failure, ...]:
        new = tuple(self._failures[self._told :])
        self._told = len(self._failures)
        return new

    def raise_new(self) -> None:
        """Raise :class:`BotCodeError` for the failures not yet raised or noted (chained to
        the first one's exception, so its traceback shows)."""
        new = self._take()
        if new:
            raise BotCodeError(new) from new[0].error

    def note_on(self, exc: BaseException) -> None:
        """Add the failures not yet raised or noted to ``exc``, which is ending the test."""
        new = self._take()
        if new:
            exc.add_note(str(BotCodeError(new)))
