"""What a FakeGraph lets a test read back: requests, calls, operations, bot-code failures.

:class:`Recorded` is the part of :class:`~callflow.testing.FakeGraph` that reads its records
(:mod:`~callflow.testing._state`) and its strict-mode log
(:mod:`~callflow.testing._failures`); a base class of the fake, kept apart so that the
facade stays one screenful per concern. Runs on the test's event loop.
"""

from __future__ import annotations

from collections.abc import Callable

from callflow.engine.lanes import Failure
from callflow.testing._call_handle import CallHandle
from callflow.testing._failures import FailureLog
from callflow.testing._records import FakeOperation, GraphRequest, OpName
from callflow.testing._runtime import Runtime
from callflow.testing._state import GraphState

__all__ = ["Recorded"]


class Recorded:
    """The records of a fake: what its bots sent, the calls placed, what their code broke."""

    _state: GraphState
    _runtime: Runtime
    _failures: FailureLog
    strict: bool

    @property
    def requests(self) -> tuple[GraphRequest, ...]:
        """Every call-control request received so far, in arrival order."""
        return tuple(self._state.requests)

    def requests_for(self, call_id: str) -> tuple[GraphRequest, ...]:
        """The call-control requests received for ``call_id``."""
        return self._state.requests_for(call_id)

    @property
    def calls(self) -> tuple[CallHandle, ...]:
        """Every call placed so far."""
        return tuple(self._state.calls.values())

    def call(self, call_id: str) -> CallHandle:
        """The handle of a placed call; KeyError naming the id if there is none."""
        return self._state.call(call_id)

    @property
    def operations(self) -> tuple[FakeOperation, ...]:
        """Every operation started so far, in the order the actions arrived."""
        return tuple(self._state.operations)

    async def wait_requests(
        self,
        count: int = 1,
        *,
        op: OpName | None = None,
        call_id: str | None = None,
        where: Callable[[GraphRequest], bool] | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> tuple[GraphRequest, ...]:
        """Return the requests (of ``op`` or ``"decision"``, for ``call_id``, for which
        ``where(request)`` is true) once there are ``count`` of them; TimeoutError after
        ``timeout`` seconds. Wait on this rather than polling :attr:`requests`::

            (prompt,) = await fake.wait_requests(
                op="playPrompt", where=lambda r: r.prompt_ids == ("menu",)
            )
        """
        self._runtime.check()
        return await self._state.wait_requests(count, op, call_id, timeout, where)

    # -- strict mode ------------------------------------------------------------------------

    @property
    def failures(self) -> tuple[Failure, ...]:
        """Every failure of the served bots' own code so far (handlers that raised or
        returned something that is not a decision, observers, flows, error hooks), strict
        or not; each names what failed, its call and the exception."""
        return self._failures.all

    async def wait_failures(
        self,
        count: int = 1,
        *,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> tuple[Failure, ...]:
        """Return :attr:`failures` once there are ``count``; TimeoutError after ``timeout`` s
        (for tests that provoke failures on purpose: mark them ``callflow_lenient``)."""
        return await self._failures.wait(count, timeout)

    def check_failures(self) -> None:
        """Raise :class:`~callflow.testing.BotCodeError` for the failures not raised yet
        (strict mode does this when a served bot stops, the pytest plugin after each test)."""
        self._failures.raise_new()
