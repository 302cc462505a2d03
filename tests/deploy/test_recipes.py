"""The deployment recipes in ``deploy/``, checked without a container runtime or a cluster.

- ``Dockerfile``: parsed (``dockerfile-parse``): multi-stage, a non-root runtime, the health
  check, ``STOPSIGNAL SIGTERM``, the stop timeout derived from the drain settings, and every
  file it copies from the build context exists. ``healthcheck.py`` is run against a real
  worker (FakeGraph) while it is ready and once it stops.
- ``haproxy/haproxy.cfg``: accepted by ``haproxy -c`` with the environment it is templated by;
  routes the webhook and the media path, per instance, and checks ``/readyz``.
- ``compose.yaml``: validated against the compose-spec JSON schema (the copy
  ``check-jsonschema`` ships, offline) and wired as the fleet needs.
- ``kubernetes/``: validated offline against the Kubernetes schemas (``kubernetes-validate``,
  strict), probes, preStop and ``terminationGracePeriodSeconds`` checked against the drain
  settings' defaults.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from callflow import Bot
from callflow.fleet.store import HEARTBEATS_TO_LIVE
from callflow.settings import Settings
from callflow.testing import FakeGraph, SigningKey
from callflow.webhook.server import SHUTDOWN_TIMEOUT
from tests.redis_server import _free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
HELD_WRITE = 2.0
"""Seconds a stopping worker gives the held calls still queued to reach Redis before it hands
them off (``Fleet.hand_off``)."""
PRE_STOP = 5  # the Deployment's preStop sleep
SLACK = 5  # at most this much more than needed


def stop_budget(env: dict[str, str] | None = None) -> float:
    """Seconds a worker may need from SIGTERM to its exit, for the settings in ``env``
    (``CALLFLOW_*``; the defaults for the rest): the drain, the last decisions' POST, the
    connections closing, then the hand-off (the queued held calls written, then at most a
    heartbeat's life for a survivor to adopt them)."""
    timings = ("DRAIN_TIMEOUT", "REQUEST_TIMEOUT", "HEARTBEAT_INTERVAL")
    given = env or {}
    s = Settings.from_env(
        {f"CALLFLOW_{n}": given[f"CALLFLOW_{n}"] for n in timings if f"CALLFLOW_{n}" in given}
    )
    return (
        s.drain_timeout
        + s.request_timeout
        + SHUTDOWN_TIMEOUT
        + HELD_WRITE
        + HEARTBEATS_TO_LIVE * s.heartbeat_interval
    )


def test_the_stop_budget_of_the_default_settings_is_27_seconds() -> None:
    assert stop_budget() == 15 + 5 + 2 + 2 + 3
    assert stop_budget({"CALLFLOW_DRAIN_TIMEOUT": "30"}) == 42


# --- Dockerfile -------------------------------------------------------------------------------


def _dockerfile() -> DockerfileParser:
    return DockerfileParser(path=str(DEPLOY / "Dockerfile"))


def _stages(parser: DockerfileParser) -> list[list[dict[str, Any]]]:
    stages: list[list[dict[str, Any]]] = []
    for item in parser.structure:
        if item["instruction"] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(item)
    return stages


def _sources(value: str) -> list[str]:
    """The build-context sources of a COPY/ADD value; [] for one that copies from a stage."""
    words = json.loads(value) if value.lstrip().startswith("[") else shlex.split(value)
    if any(w.startswith("--from=") for w in words):
        return []
    paths = [w for w in words if not w.startswith("--")]
    return paths[:-1]


def test_the_dockerfile_builds_in_one_stage_and_runs_in_a_slim_one_not_as_root() -> None:
    stages = _stages(_dockerfile())
    assert len(stages) >= 2
    build, runtime = stages[0], stages[-1]
    assert " AS build" in build[0]["value"]
    assert "slim" in runtime[0]["value"]
    assert any(
        "from=build" in item["value"] for item in runtime if item["instruction"] in ("RUN", "COPY")
    )
    users = [item["value"] for item in runtime if item["instruction"] == "USER"]
    assert users, "the runtime stage sets no USER"
    assert users[-1].split(":")[0] not in ("root", "0")
    last_user = max(i for i, item in enumerate(runtime) if item["instruction"] == "USER")
    entry = next(i for i, item in enumerate(runtime) if item["instruction"] == "ENTRYPOINT")
    assert last_user < entry
    assert json.loads(runtime[entry]["value"]) == ["callflow", "run"]  # exec form: PID 1


def test_the_dockerfile_checks_readiness_stops_with_sigterm_and_gives_the_drain_its_time() -> None:
    parser = _dockerfile()
    runtime = _stages(parser)[-1]
    by_name = {item["instruction"]: item["value"] for item in runtime}
    assert by_name["STOPSIGNAL"] == "SIGTERM"
    health = by_name["HEALTHCHECK"]
    assert "CMD" in health
    script = health.split("CMD", 1)[1]
    assert "healthcheck.py" in script
    assert "/readyz" in (DEPLOY / "healthcheck.py").read_text()
    env = dict(parser.envs)
    needed = stop_budget(env)
    stop_timeout = float(parser.labels["io.callflow.stop-timeout"])
    assert needed <= stop_timeout <= needed + SLACK, (needed, stop_timeout)
    assert f"--stop-timeout {int(stop_timeout)}" in parser.content


def test_every_file_the_dockerfile_copies_exists_and_is_sent_to_the_builder() -> None:
    parser = _dockerfile()
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    sources = [
        source
        for item in parser.structure
        if item["instruction"] in ("COPY", "ADD")
        for source in _sources(item["value"])
    ]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the build context"
        assert source.rstrip("/") in kept, f"COPY {source}: left out by the .dockerignore"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_the_health_check_passes_while_the_worker_is_ready_and_fails_once_it_stops(
    callflow_signing_key: SigningKey,
) -> None:
    async def health(port: int) -> int:
        env = {**os.environ, "CALLFLOW_PORT": str(port)}
        done = await anyio.run_process(
            [sys.executable, str(DEPLOY / "healthcheck.py")], env=env, check=False
        )
        return done.returncode

    async with FakeGraph(signing_key=callflow_signing_key) as fake:
        async with fake.serve(Bot(), port=0) as running:
            assert await health(running.port) == 0
            running.stop()  # what SIGTERM does first: not ready
            assert await health(running.port) == 1
        assert await health(running.port) == 1  # gone: refused


# --- HAProxy --------------------------------------------------------------------------------

HAPROXY_ENV = {
    "CALLFLOW_LB_BIND": f"127.0.0.1:{_free_port()}",  # only parsed: haproxy -c binds nothing
    "CALLFLOW_W1": "127.0.0.1:1",
    "CALLFLOW_W2": "127.0.0.1:2",
    "CALLFLOW_W3": "127.0.0.1:3",
    "CALLFLOW_WEBHOOK_PATH": "/api/calls",
    "CALLFLOW_MEDIA_PATH": "/api/media/",
    "CALLFLOW_LB_CHECK": "1s",
}


def _haproxy() -> str:
    path = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail("haproxy is not installed: apt-get install haproxy", pytrace=False)
    return path


def test_the_haproxy_config_is_valid_and_routes_both_paths_per_instance() -> None:
    cfg = DEPLOY / "haproxy" / "haproxy.cfg"
    done = subprocess.run(
        [_haproxy(), "-c", "-f", str(cfg)],
        env={**os.environ, **HAPROXY_ENV},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    text = cfg.read_text()
    assert "option httpchk GET /readyz" in text
    assert 'acl media path_beg "${CALLFLOW_MEDIA_PATH}"' in text
    assert "unless webhook || media" in text
    for name in ("w1", "w2", "w3"):
        assert f"use-server {name} if {{ urlp(instance) -m str {name} }}" in text
        assert f'server {name} "${{CALLFLOW_{name.upper()}}}"' in text
    assert "retry-on conn-failure empty-response 503" in text


def test_the_haproxy_config_refuses_to_load_without_its_environment() -> None:
    """The template is really templated: no address, no balancer."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLFLOW_")}
    done = subprocess.run(
        [_haproxy(), "-c", "-f", str(DEPLOY / "haproxy" / "haproxy.cfg")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0


# --- compose --------------------------------------------------------------------------------


def _compose_schema_errors(path: Path) -> str | None:
    """None when ``path`` is valid under the compose-spec schema, else the validator's words."""
    done = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", path],
        capture_output=True,
        text=True,
        check=False,
    )
    return None if done.returncode == 0 else done.stdout + done.stderr


def test_the_compose_file_is_valid_under_the_compose_spec_schema(tmp_path: Path) -> None:
    compose = DEPLOY / "compose.yaml"
    assert _compose_schema_errors(compose) is None
    broken = yaml.safe_load(compose.read_text())
    broken["services"]["haproxy"]["stop_grace_priod"] = "30s"  # a typo the schema catches
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(broken))
    assert _compose_schema_errors(tmp_path / "compose.yaml") is not None


def test_the_compose_fleet_is_wired_like_the_demo() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"haproxy", "redis", "worker1", "worker2", "worker3"} <= services.keys()
    lb = services["haproxy"]
    mounted = lb["volumes"][0].split(":")[0]
    assert (DEPLOY / mounted).resolve() == (DEPLOY / "haproxy" / "haproxy.cfg").resolve()
    assert lb["environment"]["CALLFLOW_MEDIA_PATH"] == "/api/media/"
    for index in (1, 2, 3):
        worker = services[f"worker{index}"]
        env = worker["environment"]
        assert worker["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (DEPLOY / worker["build"]["context"] / worker["build"]["dockerfile"]).exists()
        # HAProxy's server wN is the worker whose INSTANCE_ID is wN
        assert env["CALLFLOW_INSTANCE_ID"] == f"w{index}"
        assert lb["environment"][f"CALLFLOW_W{index}"] == f"worker{index}:8000"
        assert env["CALLFLOW_INTERNAL_URL"] == f"http://worker{index}:8000"
        assert (
            env["CALLFLOW_STORE"].startswith("redis://") and "@redis:6379" in env["CALLFLOW_STORE"]
        )
        assert worker["stop_signal"] == "SIGTERM"
        grace = float(worker["stop_grace_period"].rstrip("s"))
        needed = stop_budget(env)
        assert needed <= grace <= needed + SLACK


# --- Kubernetes -----------------------------------------------------------------------------

K8S = DEPLOY / "kubernetes"
VERSIONS = ("1.29.0", kubernetes_validate.latest_version())


def _manifests() -> dict[str, dict[str, Any]]:
    docs = [
        doc
        for path in sorted(K8S.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]
    return {doc["kind"]: doc for doc in docs}


@pytest.mark.parametrize("version", VERSIONS)
def test_the_kubernetes_manifests_are_valid_against_the_schema(version: str) -> None:
    manifests = _manifests()
    assert {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap", "Secret"} <= set(manifests)
    for doc in manifests.values():
        kubernetes_validate.validate(doc, version, strict=True)
    broken = copy.deepcopy(manifests["Deployment"])
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["httpGet"]["paht"] = "/readyz"  # a typo strict mode catches
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def test_the_deployment_probes_readiness_and_liveness_and_drains_within_its_grace() -> None:
    manifests = _manifests()
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(PRE_STOP)]
    config = manifests["ConfigMap"]["data"]
    needed = PRE_STOP + stop_budget(config)
    grace = pod["terminationGracePeriodSeconds"]
    assert math.ceil(needed) <= grace <= needed + SLACK, (needed, grace)
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_secrets_come_from_the_secret_and_the_redis_address_from_the_config_map() -> None:
    manifests = _manifests()
    (container,) = manifests["Deployment"]["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item for item in container["env"]}
    secret_keys = set(manifests["Secret"]["stringData"])
    for name in ("CALLFLOW_APP_SECRET", "CALLFLOW_FLEET_SECRET", "REDIS_PASSWORD"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == manifests["Secret"]["metadata"]["name"]
        assert ref["key"] in secret_keys
    address = env["REDIS_ADDRESS"]["valueFrom"]["configMapKeyRef"]
    assert address["key"] in manifests["ConfigMap"]["data"]
    # $(NAME) is expanded by Kubernetes from the variables defined before it
    names = [item["name"] for item in container["env"]]
    store = env["CALLFLOW_STORE"]["value"]
    assert store == "rediss://callflow:$(REDIS_PASSWORD)@$(REDIS_ADDRESS)"
    assert names.index("CALLFLOW_STORE") > max(
        names.index("REDIS_PASSWORD"), names.index("REDIS_ADDRESS")
    )
    assert env["CALLFLOW_INTERNAL_URL"]["value"] == "http://$(POD_IP):8000"
    assert not any(
        key.lower().endswith(("secret", "password")) for key in manifests["ConfigMap"]["data"]
    )
    # A fleet needs two workers left for one to adopt the calls of the one that stops.
    assert manifests["PodDisruptionBudget"]["spec"]["minAvailable"] >= 2
    paths = {p["path"] for r in manifests["Ingress"]["spec"]["rules"] for p in r["http"]["paths"]}
    assert paths == {"/api/calls", "/api/media/"}
