"""Worker process tuning applied by `callflow run`."""

from __future__ import annotations

import gc
import importlib.util
import sys

import pytest

from callflow._runtime import WORKER_GC_THRESHOLD, tune_gc_for_worker, tune_worker, use_uvloop
from callflow.errors import ConfigError
from callflow.settings import Settings


def test_worker_collector_settings_freeze_start_up_objects_and_raise_thresholds() -> None:
    """The worker freezes what exists at start-up and raises the collection thresholds."""
    before = gc.get_threshold()
    try:
        tune_gc_for_worker()
        assert gc.get_threshold() == WORKER_GC_THRESHOLD
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_a_worker_sets_the_switch_interval_from_its_settings() -> None:
    """callflow run hands the interpreter between its two threads every SWITCH_INTERVAL."""
    before_interval, before_threshold = sys.getswitchinterval(), gc.get_threshold()
    try:
        tune_worker(Settings(switch_interval=0.0005))
        assert sys.getswitchinterval() == pytest.approx(0.0005)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before_threshold)
        sys.setswitchinterval(before_interval)


def test_the_loop_setting_picks_uvloop_only_when_it_can() -> None:
    """LOOP=asyncio never uses uvloop, auto uses it when installed, and uvloop without it
    installed is a ConfigError naming the setting."""
    installed = importlib.util.find_spec("uvloop") is not None
    assert use_uvloop("asyncio") is False
    assert use_uvloop("auto") is installed
    if installed:
        assert use_uvloop("uvloop") is True
    else:
        with pytest.raises(ConfigError, match="CALLFLOW_LOOP=uvloop"):
            use_uvloop("uvloop")
    with pytest.raises(ConfigError, match="CALLFLOW_LOOP"):
        Settings.from_env({"CALLFLOW_LOOP": "trio"})
