"""``make fleet-demo``, run as a test: three workers behind a real HAProxy, one stopped.

Runs ``deploy/fleet_demo.py --json`` as a process (redis-server, HAProxy and three
``callflow run`` workers on loopback, FakeGraph in the demo's process) and reads the figures
it prints last. Needs ``haproxy`` and ``redis-server`` on the machine (``make test`` and
``make fleet-demo`` install them with apt-get when they are missing).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.redis_server import require_redis_server

ROOT = Path(__file__).resolve().parents[2]
BOUND = 60.0  # seconds the whole demo may take on a loaded 2-core machine

pytestmark = pytest.mark.slow


def require_haproxy() -> None:
    if shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin"):
        return
    pytest.fail(
        "haproxy is not installed; the fleet demo needs a real one: apt-get install haproxy "
        "(make test installs it when it can)",
        pytrace=False,
    )


def test_a_worker_stopped_mid_traffic_behind_haproxy_loses_no_call() -> None:
    """45 calls through HAProxy at 15 a second; SIGTERM to the worker holding the most
    answered calls a third of the way in. Every call is decided exactly once and in time; the
    stopped worker exits 0 after handing off; a survivor adopts each call it held; a key
    pressed on every answered call afterwards (the URL still naming the stopped worker for its
    calls) reaches the worker holding the call, which hangs up; HAProxy saw it go down."""
    require_redis_server()
    require_haproxy()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLFLOW_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "deploy/fleet_demo.py", "--json", "--calls", "45"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=BOUND * 2,
        check=False,
    )
    took = time.monotonic() - started
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    victim = figures["victim"]
    assert figures["placed"] == 45, output
    assert figures["decided_once"] == 45, output
    assert figures["victim_held"] >= 1, output
    assert figures["adopted"] == figures["victim_held"], output
    assert victim not in figures["adopted_by"], output
    assert figures["adoption_reasons"] == ["handed_off"], output
    assert figures["victim_exit"] == 0, output
    assert figures["keys_reached"] == figures["answered"] >= 45 - figures["rejected"], output
    assert figures["lost"] == 0, output
    assert f"HAProxy: Server workers/{victim} is DOWN" in done.stdout, output
    assert "no call lost" in done.stdout, output
    assert took < BOUND, f"the demo took {took:.1f} s\n{output[-2000:]}"
