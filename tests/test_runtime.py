"""Worker process tuning applied by `callflow run`."""

from __future__ import annotations

import gc

from callflow._runtime import WORKER_GC_THRESHOLD, tune_gc_for_worker


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
