"""How a FakeGraph is set up: the bot it serves, its timeouts, the knobs a test turns.

:class:`FakeConfig` is what a :class:`~callflow.testing.FakeGraph` is built with (the bot's
identity, the platform and recording timeouts, the token lifetime, the issuer, whether
follow-up notifications are sent, the ``callbackUri``), checked once. :class:`Knobs` is what
a test may change while the fake runs (latency, operation duration, upper-case call ids in
notification URLs, the recording audio). :func:`bot_settings` and :func:`bot_environ` wire a
bot to a running fake, as :class:`~callflow.Settings` or as ``CALLFLOW_*`` variables.

Plain values and functions: built on the test's event loop (where the fake runs) and read by
the fake's parts; they touch nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Generic, Self, TypeVar, cast, overload

import attrs

from callflow.settings import PREFIX, Settings
from callflow.testing._keys import DEFAULT_ISSUER
from callflow.testing._records import CALLBACK_URL, DEFAULT_APP_ID, DEFAULT_TENANT_ID

__all__ = ["HOST", "FakeConfig", "Forward", "Knobs", "bot_environ", "bot_settings", "silent_wav"]

_V = TypeVar("_V")

HOST: Final = "127.0.0.1"
"""Where the fake listens, and where the bots it wires listen."""
_DEFAULT_SAFETY_MARGIN: Final = 3.0
_ENVIRON_NAMES: Final = (
    "app_id",
    "app_secret",
    "tenant_id",
    "authority_url",
    "ca_bundle",
    "graph_url",
    "openid_config_url",
    "issuers",
    "callback_url",
    "host",
    "port",
    "metrics_port",
    "platform_timeout",
    "recording_timeout",
    "safety_margin",
)


@attrs.define
class FakeConfig:
    """What a FakeGraph is built with; ValueError naming every bad value when built.

    The fake's attributes of these names read and set it (the parts read it when they use
    it, so a value set later applies from then on, unchecked).
    """

    app_id: str = DEFAULT_APP_ID
    tenant_id: str = DEFAULT_TENANT_ID
    app_secret: str = "fake-secret"
    platform_timeout: float = 15.0
    recording_timeout: float = 5.0
    token_lifetime: int = 3600
    issuer: str = DEFAULT_ISSUER
    follow_up: bool = True
    callback_url: str = CALLBACK_URL

    def __attrs_post_init__(self) -> None:
        problems = []
        for name, value in (
            ("platform_timeout", self.platform_timeout),
            ("recording_timeout", self.recording_timeout),
        ):
            if not value > 0:
                problems.append(f"{name}={value!r}: expected seconds > 0")
        if self.token_lifetime <= 0:
            problems.append(f"token_lifetime={self.token_lifetime!r}: expected seconds > 0")
        if not self.app_id or not self.tenant_id or not self.app_secret:
            problems.append("app_id, tenant_id and app_secret must be non-empty strings")
        if problems:
            raise ValueError("invalid FakeGraph settings: " + "; ".join(problems))
        # Checked as given (the message shows what the caller passed), kept as floats.
        self.platform_timeout = float(self.platform_timeout)
        self.recording_timeout = float(self.recording_timeout)


def silent_wav(seconds: float) -> bytes:
    """A WAV file of ``seconds`` of silence: mono, 16-bit, 16 kHz (what Graph records)."""
    rate = 16_000
    data = b"\x00\x00" * int(rate * seconds)
    header = (
        b"RIFF"
        + (36 + len(data)).to_bytes(4, "little")
        + b"WAVEfmt "
        + (16).to_bytes(4, "little")
        + (1).to_bytes(2, "little")
        + (1).to_bytes(2, "little")
        + rate.to_bytes(4, "little")
        + (rate * 2).to_bytes(4, "little")
        + (2).to_bytes(2, "little")
        + (16).to_bytes(2, "little")
        + b"data"
        + len(data).to_bytes(4, "little")
    )
    return header + data


@attrs.define
class Knobs:
    """What a test may change while the fake runs (the FakeGraph attributes of these names)."""

    latency: float = 0.0
    operation_duration: float = 0.05
    upper_case_ids: bool = False
    recording_audio: bytes = attrs.Factory(lambda: silent_wav(0.1))

    def url_id(self, call_id: str) -> str:
        """The call id as operation and tone notification URLs name it."""
        return call_id.replace("-", "").upper() if self.upper_case_ids else call_id


class Forward(Generic[_V]):
    """An attribute of the fake kept by one of its parts: reading or setting it reads or sets
    the field of the same name on the fake's ``holder`` (its :class:`FakeConfig` or
    :class:`Knobs`), where the parts read it when they use it."""

    def __init__(self, holder: str, doc: str | None = None) -> None:
        self.__doc__ = doc
        self._holder = holder
        self._name = ""

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self._name = name

    @overload
    def __get__(self, obj: None, owner: type[Any] | None = None) -> Self: ...

    @overload
    def __get__(self, obj: object, owner: type[Any] | None = None) -> _V: ...

    def __get__(self, obj: object | None, owner: type[Any] | None = None) -> Self | _V:
        if obj is None:
            return self
        return cast(_V, getattr(getattr(obj, self._holder), self._name))

    def __set__(self, obj: object, value: _V) -> None:
        setattr(getattr(obj, self._holder), self._name, value)


def bot_settings(
    config: FakeConfig,
    authority_url: str,
    ca_bundle: str,
    graph_url: str,
    openid_config_url: str,
    overrides: Mapping[str, Any],
) -> Settings:
    """The settings of :meth:`FakeGraph.settings <callflow.testing.FakeGraph.settings>`."""
    values: dict[str, Any] = {
        "app_id": config.app_id,
        "app_secret": config.app_secret,
        "tenant_id": config.tenant_id,
        "authority_url": authority_url,
        "ca_bundle": ca_bundle,
        "graph_url": graph_url,
        "openid_config_url": openid_config_url,
        "issuers": (config.issuer.rstrip("/"),),
        "callback_url": config.callback_url,
        "host": HOST,
        "port": 0,
        "metrics_port": 0,
        "platform_timeout": config.platform_timeout,
        "recording_timeout": config.recording_timeout,
    }
    values.update(overrides)
    if "safety_margin" not in overrides:
        shortest = min(values["platform_timeout"], values["recording_timeout"])
        margin = _DEFAULT_SAFETY_MARGIN
        values["safety_margin"] = margin if margin < shortest else round(shortest / 3, 3)
    settings = Settings(**values)
    settings.check_consistency()
    return settings


def bot_environ(settings: Settings, overrides: Mapping[str, Any]) -> dict[str, str]:
    """``settings`` as ``CALLFLOW_*`` variables: the wiring, plus every overridden name."""
    env: dict[str, str] = {}
    for name in sorted({*_ENVIRON_NAMES, *overrides}):
        value = getattr(settings, name)
        if value is not None:
            env[PREFIX + name.upper()] = _env_value(value)
        elif name == "metrics_port":
            env[PREFIX + "METRICS_PORT"] = "off"
    return env


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    return str(value)
