"""``callflow check``: validate settings and reach the token and key endpoints, in plain words."""

from __future__ import annotations

import ssl
import sys
from typing import TextIO

from .errors import CallflowError, ConfigError, InboundAuthError, TokenError
from .settings import Settings

__all__ = ["run_checks"]


async def run_checks(environ: dict[str, str] | None = None, out: TextIO | None = None) -> int:
    """Run every check, print one line per check, return 0 when all passed, else 1."""
    from .graph._tokens import MsalTokenProvider
    from .webhook._jwt import InboundAuthenticator

    stream = sys.stdout if out is None else out
    failed = 0

    def report(ok: bool, what: str, detail: str = "") -> None:
        nonlocal failed
        failed += not ok
        mark = "ok  " if ok else "FAIL"
        print(f"[{mark}] {what}" + (f": {detail}" if detail else ""), file=stream)

    try:
        settings = Settings.from_env(environ)
        settings.require_for_run()
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
        ctx: ssl.SSLContext | None = None
        if settings.ca_bundle:
            ctx = ssl.create_default_context()
            ctx.load_verify_locations(settings.ca_bundle)
        try:
            async with InboundAuthenticator(
                app_id=settings.app_id,
                openid_config_url=settings.openid_config_url,
                issuers=settings.issuers,
                ssl=ctx,
            ) as auth:
                keys = len(auth.key_ids)
        except (InboundAuthError, CallflowError) as exc:
            report(False, f"inbound keys from {settings.openid_config_url}", str(exc))
        else:
            report(True, f"inbound keys from {settings.openid_config_url}", f"{keys} keys")
    print("all checks passed" if not failed else f"{failed} check(s) failed", file=stream)
    return 1 if failed else 0
