"""The ``callflow`` command: ``run`` a bot as a worker, ``demo``, ``check`` the settings.

Runs on the caller's thread; ``run`` and ``bench`` import the bot's module (the current
directory first on the path, as uvicorn does) and start event loops of their own.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio

from callflow import __version__
from callflow.errors import CallflowError, ConfigError

if TYPE_CHECKING:
    from callflow.bot import Bot

__all__ = ["DEFAULT_ATTRIBUTE", "load_bot", "main"]

DEFAULT_ATTRIBUTE = "bot"
"""The attribute ``callflow run mybot`` loads: ``mybot:bot``, as uvicorn's ``:app``."""


def load_bot(target: str, *, factory: bool = False) -> Bot:
    """Import ``module:attr`` (``module`` alone means ``module:bot``) and return its Bot.

    The current directory comes first on the path, as with uvicorn. With ``factory`` the
    attribute is a zero-argument callable returning a new Bot, called once here. Every
    mistake raises :class:`~callflow.errors.CallflowError` saying what to write instead.
    """
    module_name, sep, attr = target.partition(":")
    if not sep:
        attr = DEFAULT_ATTRIBUTE
    if not module_name or not attr:
        raise CallflowError(f"expected module:attribute (e.g. mybot:bot), got {target!r}")
    _refuse_a_file(module_name, attr)
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
            default = "" if sep else " (the default when no :attribute is given)"
            raise CallflowError(
                f"module {module_name!r} has no attribute {attr!r}{default}"
                + _did_you_mean(obj, part, factory)
            ) from None
    return _made(obj, target) if factory else _checked(obj, target)


def _refuse_a_file(module_name: str, attr: str) -> None:
    """``mybot.py:bot`` or ``bots/mybot:bot``: say that a module path is wanted."""
    stem = module_name.removesuffix(".py")
    if stem == module_name and "/" not in module_name and os.sep not in module_name:
        return
    dotted = stem.replace(os.sep, ".").replace("/", ".").strip(".")
    raise CallflowError(
        f"{module_name!r} is a file; expected a module path, not a file: "
        f"{dotted}:{attr} (run from the directory that holds the package or module)"
    )


def _did_you_mean(obj: Any, name: str, factory: bool) -> str:
    """``; did you mean "bot"?`` over the Bots (or, for a factory, the functions) of ``obj``;
    their list when none is close; else the closest other attribute that is no class or
    module (ignoring case throughout)."""
    from callflow.bot import Bot

    values = {n: getattr(obj, n, None) for n in dir(obj) if not n.startswith("__")}
    wanted = [
        n for n, v in values.items() if (inspect.isfunction(v) if factory else isinstance(v, Bot))
    ]
    others = [n for n, v in values.items() if not (inspect.ismodule(v) or isinstance(v, type))]
    close = _closest(name, wanted) or (None if wanted else _closest(name, others))
    if close:
        return f'; did you mean "{close}"?'
    if wanted:
        what = "functions" if factory else "Bots"
        return f"; its {what}: " + ", ".join(f'"{n}"' for n in sorted(wanted))
    return ""


def _closest(name: str, candidates: list[str]) -> str | None:
    by_lower = {c.lower(): c for c in candidates}
    close = difflib.get_close_matches(name.lower(), by_lower, n=1)
    return by_lower[close[0]] if close else None


def _checked(obj: Any, target: str) -> Bot:
    from callflow.bot import Bot

    if isinstance(obj, Bot):
        return obj
    hint = ""
    if callable(obj) and not isinstance(obj, type):
        hint = " (if it builds one, add --factory)"
    raise CallflowError(f"{target} is a {type(obj).__name__}, expected a callflow.Bot{hint}")


def _made(obj: Any, target: str) -> Bot:
    """Call the factory ``obj`` with no arguments; its result must be a Bot."""
    from callflow.bot import Bot

    if isinstance(obj, Bot):
        raise CallflowError(f"{target} is a Bot already, not a factory: drop --factory")
    if not callable(obj):
        raise CallflowError(
            f"{target} is a {type(obj).__name__}, not callable: --factory expects a "
            "zero-argument function returning a callflow.Bot"
        )
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        signature = None
    if signature is not None:
        required = [
            p.name
            for p in signature.parameters.values()
            if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        if required:
            raise CallflowError(
                f"{target} takes arguments ({', '.join(required)}): --factory calls it with "
                "none; give them defaults or wrap it in a zero-argument function"
            )
    made = obj()
    if inspect.isawaitable(made):
        if inspect.iscoroutine(made):
            made.close()
        raise CallflowError(
            f"{target}() returned an awaitable: --factory expects a plain (not async) function "
            "returning a callflow.Bot"
        )
    if not isinstance(made, Bot):
        raise CallflowError(
            f"{target}() returned a {type(made).__name__}, expected a callflow.Bot "
            "(--factory calls the attribute and serves what it returns)"
        )
    return made


def _backend_options(loop: str = "auto") -> dict[str, Any]:
    """uvloop for ``LOOP=uvloop``, or ``auto`` when it is installed (``callflow-graph[speed]``)."""
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
    bot = load_bot(args.target, factory=args.factory)
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
    bot = load_bot(args.target, factory=args.factory)
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


_TARGET_HELP = (
    "the bot to {verb}, as module:attribute (e.g. mybot:bot; mybot alone means mybot:bot)"
)
_FACTORY_HELP = "the attribute is a zero-argument function returning a new Bot: call it"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``callflow`` command."""
    parser = argparse.ArgumentParser(
        prog="callflow", description="Microsoft Graph calling bots that always decide in time."
    )
    parser.add_argument(
        "--version", action="version", version=f"callflow {__version__}", help="print the version"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a bot as a long-lived worker")
    run.add_argument("target", help=_TARGET_HELP.format(verb="run"))
    run.add_argument("--factory", action="store_true", help=_FACTORY_HELP)
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
    bench.add_argument("target", help=_TARGET_HELP.format(verb="measure"))
    bench.add_argument("--factory", action="store_true", help=_FACTORY_HELP)
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
