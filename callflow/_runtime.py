"""Process-wide tuning that ``callflow run`` applies to a worker (not to embedded bots)."""

from __future__ import annotations

import gc
import importlib.util
import sys
from typing import TYPE_CHECKING, Final

from callflow.errors import ConfigError

if TYPE_CHECKING:
    from callflow.settings import Settings

__all__ = ["WORKER_GC_THRESHOLD", "tune_gc_for_worker", "tune_worker", "use_uvloop"]

WORKER_GC_THRESHOLD: Final = (50_000, 20, 100)
"""Young-generation threshold high enough that a call's objects usually die before the
collector looks at them; with the default (700) every call in flight is promoted and later
traversed again by full collections, which costs a third of the throughput under load."""


def tune_gc_for_worker() -> None:
    """Freeze what imports created and raise the collection thresholds.

    Objects that exist at start-up (modules, classes, settings) live as long as the process:
    ``gc.freeze()`` keeps them out of every later collection. Reference cycles are still
    collected, just in larger, rarer batches.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*WORKER_GC_THRESHOLD)


def tune_worker(settings: Settings) -> None:
    """What ``callflow run`` does to its process: collector tuning and ``SWITCH_INTERVAL``.

    A worker runs two threads (the I/O loop and the app loop) that take turns holding the
    interpreter: the switch interval bounds how long one waits for the other when both have
    work, so it bounds how late the I/O loop may read a notification while a handler computes.
    """
    tune_gc_for_worker()
    sys.setswitchinterval(settings.switch_interval)


def use_uvloop(choice: str) -> bool:
    """Whether the ``LOOP`` setting (``auto``, ``asyncio``, ``uvloop``) means uvloop here.

    Raises ConfigError for ``uvloop`` when it is not installed.
    """
    installed = importlib.util.find_spec("uvloop") is not None
    if choice == "uvloop" and not installed:
        raise ConfigError(
            "CALLFLOW_LOOP=uvloop but uvloop is not installed: "
            "pip install 'callflow-graph[speed]' (or set CALLFLOW_LOOP=auto)"
        )
    return installed if choice == "auto" else choice == "uvloop"
