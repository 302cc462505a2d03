"""The bot: the root router, wired to the engine, the webhook and Graph when it serves."""

from __future__ import annotations

from typing import Any

from .deadline import DecisionSink, SinkFactory
from .decisions import Reject, RejectReason
from .dispatch import Engine
from .routing import Router
from .settings import Settings

__all__ = ["Bot"]


class Bot(Router):
    """A calling bot: register handlers on it, then run it.

    ``Bot()`` reads its settings from ``CALLFLOW_*`` environment variables when it starts
    (not when it is created, so a module that defines a bot imports without any settings).
    """

    def __init__(self, settings: Settings | None = None, *, name: str = "bot") -> None:
        super().__init__(name)
        self._settings = settings

    @property
    def settings(self) -> Settings:
        """The bot's settings, read from the environment on first use."""
        if self._settings is None:
            self._settings = Settings.from_env()
        return self._settings

    def configure(self, settings: Settings) -> None:
        """Replace the bot's settings (before it starts)."""
        self._check_open("settings")
        self._settings = settings

    def engine(
        self,
        sink: DecisionSink,
        *,
        scheduler_sink: SinkFactory | None = None,
        services: Any = None,
        **overrides: Any,
    ) -> Engine:
        """Build the engine that runs this bot's handlers with the deadline guarantee."""
        s = self.settings
        options: dict[str, Any] = {
            "platform_timeout": s.platform_timeout,
            "recording_timeout": s.recording_timeout,
            "safety_margin": s.safety_margin,
            "max_pending": s.max_pending,
            "drain_timeout": s.drain_timeout,
            "default_decision": Reject(RejectReason(s.default_reject_reason)),
        }
        options.update(overrides)
        return Engine(self, sink=sink, scheduler_sink=scheduler_sink, services=services, **options)
