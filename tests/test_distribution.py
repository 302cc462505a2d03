"""The distribution a user installs: ``callflow-graph``'s wheel, outside any checkout.

Builds the sdist and the wheel with ``python -m build`` (as ``make dist`` does), installs the
wheel with its ``testing`` extra into a fresh virtual environment (not editable; dependencies
from the package index, through pip's cache), and runs the ``callflow`` command from there
with a working directory outside the checkout and no ``PYTHONPATH``, so nothing of the
checkout can be imported. Slow: a build and a venv.
"""

from __future__ import annotations

import email
import os
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Sequence
from email.message import Message
from pathlib import Path

import pytest

import callflow
from tests.test_cli import check_demo_output

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
NAME = "callflow-graph"


_LEFT_OUT = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")


def run(command: Sequence[str | Path], *, cwd: Path, timeout: float = 300) -> str:
    """Run ``command`` without PYTHONPATH or CALLFLOW_* variables; its output, or fail."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
        and not name.startswith("CALLFLOW_")
    }
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    done = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert done.returncode == 0, (
        f"{command} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    )
    return done.stdout


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The sdist and the wheel, built from this checkout."""
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--outdir", out, ROOT], cwd=out)
    (sdist,) = out.glob("callflow_graph-*.tar.gz")
    (wheel,) = out.glob("callflow_graph-*-py3-none-any.whl")
    return sdist, wheel


def wheel_metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as archive:
        (path,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(archive.read(path))


def test_the_artefacts_carry_the_name_the_version_and_the_typing_marker(
    artefacts: tuple[Path, Path],
) -> None:
    """Both are named callflow-graph at callflow.__version__; the wheel holds py.typed, the
    licence and the demo's bot; twine accepts both."""
    sdist, wheel = artefacts
    version = callflow.__version__
    assert sdist.name == f"callflow_graph-{version}.tar.gz"
    assert wheel.name == f"callflow_graph-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert "callflow/py.typed" in names
    assert "callflow/_examples/front_desk.py" in names
    assert f"callflow_graph-{version}.dist-info/licenses/LICENSE" in names
    assert not any(n.startswith(("tests/", "examples/", "benchmarks/")) for n in names)
    metadata = wheel_metadata(wheel)
    assert (metadata["Name"], metadata["Version"]) == (NAME, version)
    assert metadata["License-Expression"] == "MIT"
    classifiers = metadata.get_all("Classifier") or []
    for minor in ("3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {minor}" in classifiers
    assert {"Framework :: AsyncIO", "Typing :: Typed"} <= set(classifiers)
    testing = [r for r in metadata.get_all("Requires-Dist") or [] if "extra == 'testing'" in r]
    assert {r.partition(">=")[0] for r in testing} == {"pytest", "trustme"}
    with tarfile.open(sdist) as archive:
        members = {m.name.partition("/")[2] for m in archive.getmembers()}
    assert {"LICENSE", "CHANGELOG.md", "pyproject.toml", "examples/front_desk.py"} <= members
    run([sys.executable, "-m", "twine", "check", "--strict", sdist, wheel], cwd=sdist.parent)


def test_the_wheel_installs_and_runs_outside_the_checkout(
    artefacts: tuple[Path, Path], tmp_path: Path
) -> None:
    """``pip install <wheel>[testing]`` into a fresh venv gives a ``callflow`` command whose
    ``--version`` is the package's and whose ``demo`` decides every scripted call; the
    package imported is the installed one, and the pytest plugin's needs are installed."""
    _sdist, wheel = artefacts
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv], cwd=elsewhere)
    python, command = venv / "bin" / "python", venv / "bin" / "callflow"
    run([python, "-m", "pip", "install", "-q", f"{wheel}[testing]"], cwd=elsewhere, timeout=600)

    assert run([command, "--version"], cwd=elsewhere) == f"callflow {callflow.__version__}\n"
    where = run(
        [
            python,
            "-c",
            "import importlib.metadata as m, callflow, callflow.testing.plugin, pytest, trustme; "
            f"print(m.version({NAME!r})); print(callflow.__file__)",
        ],
        cwd=elsewhere,
    ).splitlines()
    assert where[0] == callflow.__version__
    assert Path(where[1]).is_relative_to(venv), where  # not the checkout's package
    check_demo_output(run([command, "demo"], cwd=elsewhere, timeout=120))
