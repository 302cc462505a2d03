"""``callflow check``: validate settings and reach the token and key endpoints, in plain words."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping
from typing import TextIO

from callflow.errors import CallflowError, ConfigError, InboundAuthError, SpeechError, TokenError
from callflow.settings import PREFIX, Settings

__all__ = ["run_checks", "settings_for_run"]


def settings_for_run(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the settings a worker needs; one ConfigError names every invalid *and* missing one.

    ``Settings.from_env`` stops at invalid values before it could tell which required ones
    are missing; the missing ones are added to its message so that one run shows everything.
    """
    env = os.environ if environ is None else environ
    try:
        settings = Settings.from_env(env)
    except ConfigError as invalid:

        def given(name: str) -> str | None:
            return env.get(PREFIX + name, "").strip() or None

        required = Settings(
            app_id=given("APP_ID"),
            app_secret=given("APP_SECRET"),
            certificate_path=given("CERTIFICATE_PATH"),
            callback_url=given("CALLBACK_URL"),
        )
        try:
            required.require_for_run()
        except ConfigError as missing:
            raise ConfigError(f"{invalid}\n{missing}") from None
        raise
    settings.require_for_run()
    return settings


async def run_checks(environ: dict[str, str] | None = None, out: TextIO | None = None) -> int:
    """Run every check, print one line per check, return 0 when all passed, else 1."""
    from callflow.graph.tokens import MsalTokenProvider
    from callflow.webhook.auth import InboundAuthenticator

    stream = sys.stdout if out is None else out
    failed = 0

    def report(ok: bool, what: str, detail: str = "") -> None:
        nonlocal failed
        failed += not ok
        mark = "ok  " if ok else "FAIL"
        print(f"[{mark}] {what}" + (f": {detail}" if detail else ""), file=stream)

    try:
        settings = settings_for_run(environ)
        settings.check_serving(settings.host)  # what the worker would refuse at start
    except ConfigError as exc:
        report(False, "settings", str(exc))
        return 1
    report(True, "settings", f"app {settings.app_id}, tenant {settings.tenant_id}")

    assert settings.app_id is not None
    try:
        async with MsalTokenProvider(
            client_id=settings.app_id,
            client_secret=settings.app_secret,
            certificate_path=settings.certificate_path,
            certificate_thumbprint=settings.certificate_thumbprint,
            tenant_id=settings.tenant_id,
            authority_url=settings.authority_url,
            ca_bundle=settings.ca_bundle,
        ):
            pass
    except (TokenError, ConfigError) as exc:
        report(False, f"app token from {settings.authority_url}", str(exc))
    else:
        report(True, f"app token from {settings.authority_url}", "acquired")

    if not settings.inbound_auth:
        report(True, "inbound keys", "skipped: CALLFLOW_INBOUND_AUTH=off (development only)")
    else:
        try:
            async with InboundAuthenticator(
                app_id=settings.app_id,
                openid_config_url=settings.openid_config_url,
                issuers=settings.issuers,
                ssl=settings.client_ssl_context(),
            ) as auth:
                keys = len(auth.key_ids)
        except (InboundAuthError, CallflowError) as exc:
            report(False, f"inbound keys from {settings.openid_config_url}", str(exc))
        else:
            report(True, f"inbound keys from {settings.openid_config_url}", f"{keys} keys")
    if settings.speech_configured:
        what, detail = await _check_speech(settings)
        report(detail.startswith("voice "), what, detail)
    print("all checks passed" if not failed else f"{failed} check(s) failed", file=stream)
    return 1 if failed else 0


async def _check_speech(settings: Settings) -> tuple[str, str]:
    """Speech: reachable, credentials accepted, the default voice offered."""
    from callflow.graph.tokens import MsalTokenProvider
    from callflow.speech.config import SPEECH_SCOPE, SpeechConfig
    from callflow.speech.tts import SpeechClient

    async with contextlib.AsyncExitStack() as stack:
        token = None
        if settings.speech_auth == "entra" and settings.app_id:
            provider = MsalTokenProvider(
                client_id=settings.app_id,
                client_secret=settings.app_secret,
                certificate_path=settings.certificate_path,
                certificate_thumbprint=settings.certificate_thumbprint,
                tenant_id=settings.tenant_id,
                authority_url=settings.authority_url,
                scopes=(SPEECH_SCOPE,),
                ca_bundle=settings.ca_bundle,
            )
            try:
                token = (await stack.enter_async_context(provider)).get_token
            except (TokenError, ConfigError) as exc:
                return "Speech token (CALLFLOW_SPEECH_AUTH=entra)", str(exc)
        config = SpeechConfig.from_settings(settings, token=token)
        assert config is not None
        what = f"Speech at {config.voices_url}"
        try:
            async with SpeechClient(config) as client:
                await client.check(config.voice)
        except SpeechError as exc:
            return what, str(exc)
        return what, f"voice {config.voice} offered, credentials accepted"
    raise AssertionError("unreachable")  # pragma: no cover
