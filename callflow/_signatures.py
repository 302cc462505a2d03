"""Checks of the callables a bot hands to callflow: async or not, and the parameters they take.

Registration (handlers, observers, middleware, error hooks) and ``Answer(then=...)`` check a
callable here once, so that one that could never be called right is refused when it is given
rather than failing every call later. Runs on whatever thread registers; touches no loop.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["cannot_take", "is_async"]

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def is_async(fn: Callable[..., Any]) -> bool:
    """True when calling ``fn`` returns a coroutine (an ``async def``, also behind
    ``functools.partial``, or an object with an ``async def __call__``)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
    )


def cannot_take(fn: Callable[..., Any], count: int) -> str | None:
    """None when ``fn`` can be called with ``count`` positional arguments and nothing else;
    otherwise what it takes, for an error message: ``"(event)"``, ``"(call, *, x)"``."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        return f"parameters that cannot be inspected ({exc})"
    params = list(sig.parameters.values())
    required = sum(1 for p in params if p.kind in _POSITIONAL and p.default is p.empty)
    positional = sum(1 for p in params if p.kind in _POSITIONAL)
    var_positional = any(p.kind is p.VAR_POSITIONAL for p in params)
    keyword_only = any(p.kind is p.KEYWORD_ONLY and p.default is p.empty for p in params)
    if required <= count and (positional >= count or var_positional) and not keyword_only:
        return None
    bare = sig.replace(
        parameters=[p.replace(annotation=p.empty) for p in params],
        return_annotation=sig.empty,
    )
    return str(bare)
