"""The ``callflow`` command: ``run`` a bot as a worker, ``demo``, ``check`` the settings."""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from typing import Any

import anyio

from .errors import CallflowError, ConfigError

__all__ = ["load_bot", "main"]


def load_bot(target: str) -> Any:
    """Import ``module:attr`` (the current directory first on the path, as uvicorn does)."""
    from .bot import Bot

    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise CallflowError(f"expected module:attribute (e.g. mybot:bot), got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CallflowError(f"cannot import module {module_name!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CallflowError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(obj, Bot):
        raise CallflowError(f"{target} is a {type(obj).__name__}, expected a callflow.Bot")
    return obj


def _backend_options() -> dict[str, Any]:
    """Use uvloop when it is installed (``pip install callflow[speed]``)."""
    return {"use_uvloop": True} if importlib.util.find_spec("uvloop") else {}


def _cmd_run(args: argparse.Namespace) -> int:
    from ._log import configure_logging
    from .settings import Settings

    settings = Settings.from_env()
    settings.require_for_run()
    configure_logging(fmt=settings.log_format, level=settings.log_level, pii=settings.log_pii)
    bot = load_bot(args.target)
    bot.configure(settings)
    # Objects created by imports live as long as the process: keep them out of the
    # collector's full passes, which otherwise grow with everything the worker imported.
    gc.collect()
    gc.freeze()
    anyio.run(bot.serve_until_signalled, args.host, args.port, backend_options=_backend_options())
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from .check import run_checks

    return anyio.run(run_checks)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    code: int = anyio.run(run_demo, args.calls_per_kind)
    return code


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``callflow`` command."""
    parser = argparse.ArgumentParser(
        prog="callflow", description="Microsoft Graph calling bots that always decide in time."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a bot as a long-lived worker")
    run.add_argument("target", help="the bot to run, as module:attribute (e.g. mybot:bot)")
    run.add_argument("--host", default=None, help="listen address (default CALLFLOW_HOST)")
    run.add_argument("--port", type=int, default=None, help="listen port (default CALLFLOW_PORT)")
    run.set_defaults(func=_cmd_run)
    check = sub.add_parser("check", help="check the settings, the token and the key endpoints")
    check.set_defaults(func=_cmd_check)
    demo = sub.add_parser("demo", help="play scripted calls against a built-in fake Graph")
    demo.add_argument("--calls-per-kind", type=int, default=1, help=argparse.SUPPRESS)
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``callflow`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"callflow: configuration problem\n{exc}", file=sys.stderr)
        return 2
    except CallflowError as exc:
        print(f"callflow: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # pragma: no cover - signals are handled by the worker
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
