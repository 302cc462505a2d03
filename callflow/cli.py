"""The ``callflow`` command: ``run`` a bot as a worker, ``demo``, ``check`` the settings."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from typing import Any

import anyio

from callflow.errors import CallflowError, ConfigError

__all__ = ["load_bot", "main"]


def load_bot(target: str) -> Any:
    """Import ``module:attr`` (the current directory first on the path, as uvicorn does)."""
    from callflow.bot import Bot

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


def _backend_options(loop: str = "auto") -> dict[str, Any]:
    """uvloop for ``LOOP=uvloop``, or ``auto`` when it is installed (``callflow[speed]``)."""
    from callflow._runtime import use_uvloop

    return {"use_uvloop": True} if use_uvloop(loop) else {}


def _cmd_run(args: argparse.Namespace) -> int:
    from callflow._log import configure_logging
    from callflow._runtime import tune_worker
    from callflow.check import settings_for_run

    settings = settings_for_run()
    configure_logging(
        fmt=settings.log_format,
        level=settings.log_level,
        pii=settings.log_pii,
        tracing=settings.tracing != "off",
    )
    bot = load_bot(args.target)
    bot.configure(settings)
    options = _backend_options(settings.loop)
    tune_worker(settings)
    anyio.run(bot.serve_until_signalled, args.host, args.port, backend_options=options)
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from callflow._log import configure_logging
    from callflow.check import run_checks

    # The check lines are the output: keep the libraries' warnings out of it.
    configure_logging(fmt="console", level="error", stream=sys.stderr, cache=False)
    return anyio.run(run_checks)


def _testing_kit() -> None:
    """Raise CallflowError saying how to install the testing kit when it cannot be imported."""
    try:
        import callflow.testing  # noqa: F401
    except ImportError as exc:
        raise CallflowError(str(exc)) from None


def _cmd_demo(args: argparse.Namespace) -> int:
    _testing_kit()
    from callflow.demo import run_demo

    code: int = anyio.run(run_demo, args.calls_per_kind)
    return code


def _cmd_bench(args: argparse.Namespace) -> int:
    _testing_kit()
    from callflow._log import configure_logging
    from callflow.bench import bench_bot

    configure_logging(fmt="console", level=args.log_level, stream=sys.stderr, cache=False)
    bot = load_bot(args.target)
    report = anyio.run(
        lambda: bench_bot(
            bot,
            target=args.target,
            calls=args.calls,
            concurrency=args.concurrency,
            kind=args.kind,
            warmup=args.warmup,
        )
    )
    print(report.render())
    return 1 if report.undecided else 0


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
    bench = sub.add_parser(
        "bench", help="measure a bot's decision latency against the built-in fake Graph"
    )
    bench.add_argument("target", help="the bot to measure, as module:attribute (e.g. mybot:bot)")
    bench.add_argument("--calls", type=int, default=200, help="calls to place (default 200)")
    bench.add_argument(
        "--concurrency", type=int, default=4, help="calls in flight at once (default 4)"
    )
    bench.add_argument("--kind", default="p2p", help="kind of incoming call (default p2p)")
    bench.add_argument("--warmup", type=int, default=5, help="uncounted first calls (default 5)")
    bench.add_argument(
        "--log-level",
        default="warning",
        choices=("debug", "info", "warning", "error"),
        help="the bot's log level while measured (default warning)",
    )
    bench.set_defaults(func=_cmd_bench)
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
