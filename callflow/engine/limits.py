"""The engine's limits: one frozen value instead of the same numbers passed part to part.

Timeouts, bounds and rates that the intake, the admission policy, the outbox and the lanes
each read a few of. Built from the settings (:meth:`Limits.from_settings`) by the bot, or
directly in tests; checked when built, so a part never sees an impossible combination.
No loop, no I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from callflow.settings import Settings

__all__ = ["Limits"]


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be more than 0, got {value!r}")


def _not_negative(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{attribute.name} must be 0 or more, got {value!r}")


def _at_least_one(instance: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be 1 or more, got {value!r}")


@attrs.frozen
class Limits:
    """What bounds a running engine (each a ``CALLFLOW_*`` setting of the same name)."""

    platform_timeout: float = attrs.field(default=15.0, validator=_positive)
    """Seconds Graph waits for a decision."""
    recording_timeout: float = attrs.field(default=5.0, validator=_positive)
    """Seconds Graph waits for the decision of a policy-based recording call."""
    safety_margin: float = attrs.field(default=3.0, validator=_not_negative)
    """The default decision is sent this long before the platform's timeout."""
    max_pending: int = attrs.field(default=10_000, validator=_at_least_one)
    """Undecided calls above this get the default at once."""
    deadline_send_rate: float = attrs.field(default=500.0, validator=_positive)
    """Default decisions the outbox can send a second (sizes the deadline waves)."""
    max_send_backlog: int = attrs.field(default=1_000, validator=_at_least_one)
    """Decisions waiting to be sent at which a new call waits for room, then gets 503."""
    max_concurrent_sends: int = attrs.field(default=256, validator=_at_least_one)
    """Decision requests in flight at once."""
    shed_lag: float = attrs.field(default=0.5, validator=_not_negative)
    """Seconds the I/O loop may run late before new calls get the default at once."""
    compact_above: int = attrs.field(default=1_000, validator=_not_negative)
    """Pending calls above which a new call keeps its body text compressed."""
    drain_timeout: float = attrs.field(default=15.0, validator=_not_negative)
    """Seconds a stopping engine lets pending calls decide before sending the defaults."""
    recent_size: int = attrs.field(default=100_000, validator=_at_least_one)
    """Notifications remembered for deduplication (and call states for staleness)."""
    recent_ttl: float = attrs.field(default=600.0, validator=_positive)
    """Seconds a notification is remembered for deduplication."""
    max_queued_per_call: int = attrs.field(default=256, validator=_at_least_one)
    """Events a call's lane holds behind a slow observer (the oldest observer event goes)."""
    max_queued_events: int = attrs.field(default=10_000, validator=_at_least_one)
    """Observer events the app loop's inbox holds while it is held up."""

    def __attrs_post_init__(self) -> None:
        if self.safety_margin >= min(self.platform_timeout, self.recording_timeout):
            raise ValueError(
                f"safety_margin ({self.safety_margin} s) must be shorter than the platform "
                f"timeouts ({self.platform_timeout} s, {self.recording_timeout} s for policy "
                "recording)"
            )

    @property
    def decide_within(self) -> float:
        """Seconds from a call's arrival to its default decision."""
        return self.platform_timeout - self.safety_margin

    @property
    def decide_recording_within(self) -> float:
        """The same for a policy-based recording call."""
        return self.recording_timeout - self.safety_margin

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> Limits:
        """The limits ``settings`` name, with ``overrides`` (field names) winning."""
        values: dict[str, Any] = {}
        for field in attrs.fields(cls):
            value = getattr(settings, field.name, None)
            if value is not None:
                values[field.name] = value
        values.update(overrides)
        return cls(**values)

    @classmethod
    def split(cls, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``options`` as (the ones that are limits, the others)."""
        names = {field.name for field in attrs.fields(cls)}
        limits = {name: value for name, value in options.items() if name in names}
        return limits, {name: value for name, value in options.items() if name not in names}
