"""The ``callflow`` command: ``check``, ``run``'s configuration and loading errors, ``demo``.

Most cases call :func:`callflow.cli.main` or :func:`callflow.check.run_checks` in-process; one
case of each command also runs ``python -m callflow`` as a subprocess, as a user would.
"""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import anyio
import pytest
import structlog

from callflow import Bot
from callflow.check import run_checks, settings_for_run
from callflow.cli import build_parser, load_bot, main
from callflow.demo import SCRIPT, run_demo
from callflow.errors import CallflowError, ConfigError, RegistrationError
from callflow.testing import FakeGraph

ROOT = Path(__file__).resolve().parent.parent
GUARD = 30.0
REQUIRED = ("CALLFLOW_APP_ID", "CALLFLOW_APP_SECRET", "CALLFLOW_CALLBACK_URL")
VALID = {
    "CALLFLOW_APP_ID": "8e2d4c10-55aa-4f3b-b1c2-0d9e7f6a5b41",
    "CALLFLOW_APP_SECRET": "not-used-by-these-tests",
    "CALLFLOW_CALLBACK_URL": "https://bot.example/api/calls",
}
"""Settings good enough for ``run`` to get as far as loading the bot."""


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put structlog's process-wide configuration back as it was after the test."""
    saved = structlog.get_config()
    try:
        yield
    finally:
        structlog.reset_defaults()
        structlog.configure(**saved)


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """This process's environment without any CALLFLOW_* variable, restored afterwards."""
    for name in list(os.environ):
        if name.startswith("CALLFLOW_"):
            monkeypatch.delenv(name)
    return monkeypatch


def subprocess_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This environment without CALLFLOW_* variables, plus ``extra``."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("CALLFLOW_")}
    env.update(extra)
    return env


async def callflow(*args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m callflow ARGS`` in the repository root and collect its output."""
    with anyio.fail_after(GUARD):
        return await anyio.run_process(
            [sys.executable, "-m", "callflow", *args],
            cwd=ROOT,
            env=dict(env),
            check=False,
            stdin=subprocess.DEVNULL,
        )


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def check(environ: Mapping[str, str]) -> tuple[int, list[str]]:
    """Run every check against ``environ``; return the exit code and the printed lines."""
    out = io.StringIO()
    code = await run_checks(dict(environ), out)
    return code, out.getvalue().splitlines()


# --- callflow check ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_check_passes_against_a_reachable_graph(fake_graph: FakeGraph) -> None:
    """With good settings every check prints an ok line and the exit code is 0."""
    code, lines = await check(fake_graph.environ())
    assert code == 0, lines
    assert lines == [
        f"[ok  ] settings: app {fake_graph.app_id}, tenant {fake_graph.tenant_id}",
        f"[ok  ] app token from {fake_graph.authority_url}: acquired",
        f"[ok  ] inbound keys from {fake_graph.openid_config_url}: 1 keys",
        "all checks passed",
    ]
    assert fake_graph.token_requests == 1


@pytest.mark.anyio
async def test_check_names_every_missing_setting() -> None:
    """Without APP_ID, APP_SECRET and CALLBACK_URL the settings line fails naming all three."""
    code, lines = await check({})
    text = "\n".join(lines)
    assert code == 1
    assert lines[0] == "[FAIL] settings: missing settings:"
    for name in REQUIRED:
        assert name in text
    assert lines[-1] != "all checks passed"


@pytest.mark.anyio
async def test_check_names_invalid_and_missing_settings_together() -> None:
    """Invalid values and missing required settings are reported in one go."""
    code, lines = await check({"CALLFLOW_PORT": "eighty", "CALLFLOW_PLATFORM_TIMEOUT": "0.1"})
    text = "\n".join(lines)
    assert code == 1
    assert lines[0] == "[FAIL] settings: invalid settings:"
    for name in ("CALLFLOW_PORT", "CALLFLOW_PLATFORM_TIMEOUT", *REQUIRED):
        assert name in text


@pytest.mark.anyio
async def test_check_reports_a_wrong_secret_as_a_token_failure(fake_graph: FakeGraph) -> None:
    """A secret the token endpoint refuses fails the token line, not the others; exit code 1."""
    wrong = "this-is-the-wrong-secret"
    code, lines = await check({**fake_graph.environ(), "CALLFLOW_APP_SECRET": wrong})
    assert code == 1
    settings, token, keys, summary = lines
    assert settings.startswith("[ok  ] settings")
    assert token.startswith(f"[FAIL] app token from {fake_graph.authority_url}: ")
    assert "invalid_client" in token
    assert keys.startswith("[ok  ] inbound keys")
    assert summary == "1 check(s) failed"
    assert wrong not in "\n".join(lines)


@pytest.mark.anyio
async def test_check_reports_an_unreachable_key_endpoint(fake_graph: FakeGraph) -> None:
    """A key endpoint nobody answers on fails the keys line, naming the URL; exit code 1."""
    url = f"http://127.0.0.1:{closed_port()}/.well-known/openid-configuration"
    code, lines = await check({**fake_graph.environ(), "CALLFLOW_OPENID_CONFIG_URL": url})
    assert code == 1
    _settings, token, keys, summary = lines
    assert token == f"[ok  ] app token from {fake_graph.authority_url}: acquired"
    assert keys.startswith(f"[FAIL] inbound keys from {url}: ")
    assert summary == "1 check(s) failed"


@pytest.mark.anyio
async def test_check_reports_a_failing_key_endpoint(fake_graph: FakeGraph) -> None:
    """A key endpoint answering 500 fails the keys line."""
    fake_graph.keys.failing = True
    code, lines = await check(fake_graph.environ())
    assert code == 1
    assert lines[2].startswith(f"[FAIL] inbound keys from {fake_graph.openid_config_url}: ")


@pytest.mark.anyio
async def test_check_skips_the_keys_when_inbound_auth_is_off(fake_graph: FakeGraph) -> None:
    """With CALLFLOW_INBOUND_AUTH=off the key endpoint is not contacted and the check passes."""
    url = f"http://127.0.0.1:{closed_port()}/openid"
    environ = {
        **fake_graph.environ(),
        "CALLFLOW_INBOUND_AUTH": "off",
        "CALLFLOW_OPENID_CONFIG_URL": url,
    }
    code, lines = await check(environ)
    assert code == 0
    assert lines[2] == "[ok  ] inbound keys: skipped: CALLFLOW_INBOUND_AUTH=off (development only)"


@pytest.mark.anyio
async def test_check_reports_an_untrusted_token_endpoint(fake_graph: FakeGraph) -> None:
    """Without the CA bundle the token endpoint's certificate is refused: the token line fails."""
    environ = {k: v for k, v in fake_graph.environ().items() if k != "CALLFLOW_CA_BUNDLE"}
    code, lines = await check(environ)
    assert code == 1
    assert lines[1].startswith(f"[FAIL] app token from {fake_graph.authority_url}: ")
    assert "SSL" in lines[1]
    assert lines[2].startswith("[ok  ] inbound keys")  # plain http: no certificate involved


@pytest.mark.anyio
async def test_check_reads_the_process_environment_through_main(
    fake_graph: FakeGraph,
    environ: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    restore_logging: None,
) -> None:
    """`main(["check"])` checks the CALLFLOW_* variables of the process and prints to stdout."""
    for name, value in fake_graph.environ(app_secret="wrong").items():
        environ.setenv(name, value)
    code = await anyio.to_thread.run_sync(main, ["check"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "[FAIL] app token from" in out
    assert "1 check(s) failed" in out
    assert "graph.token_acquire_failed" not in out + err  # a warning, not an error


@pytest.mark.slow
@pytest.mark.anyio
async def test_check_as_a_command(fake_graph: FakeGraph) -> None:
    """`python -m callflow check` exits 0 with good settings and 1 with a wrong secret."""
    good = await callflow("check", env=subprocess_env(fake_graph.environ()))
    assert good.returncode == 0, good.stderr.decode()
    assert good.stdout.decode().splitlines()[-1] == "all checks passed"
    bad = await callflow("check", env=subprocess_env(fake_graph.environ(app_secret="wrong")))
    out = bad.stdout.decode()
    assert bad.returncode == 1
    assert "[FAIL] app token from" in out
    assert out.splitlines()[-1] == "1 check(s) failed"
    assert bad.stderr == b""


# --- callflow run: settings and loading errors ---------------------------------------------


def test_settings_for_run_reads_good_settings() -> None:
    """Good variables give the settings, typed."""
    settings = settings_for_run({**VALID, "CALLFLOW_PORT": "8443"})
    assert (settings.app_id, settings.port) == (VALID["CALLFLOW_APP_ID"], 8443)


def test_settings_for_run_without_missing_ones_raises_the_invalid_ones_alone() -> None:
    """When only values are invalid, the error names those and nothing else."""
    with pytest.raises(ConfigError) as caught:
        settings_for_run({**VALID, "CALLFLOW_PORT": "eighty"})
    assert str(caught.value) == (
        "invalid settings:\n  CALLFLOW_PORT: expected a whole number, got 'eighty'"
    )


@pytest.mark.parametrize(
    ("variables", "names"),
    [
        pytest.param({}, REQUIRED, id="missing"),
        pytest.param(
            {**VALID, "CALLFLOW_PORT": "http", "CALLFLOW_LOG_LEVEL": "loud"},
            ("CALLFLOW_PORT", "CALLFLOW_LOG_LEVEL"),
            id="invalid",
        ),
        pytest.param(
            {"CALLFLOW_SAFETY_MARGIN": "soon", "CALLFLOW_CALLBACK_URL": "http://plain.example"},
            ("CALLFLOW_SAFETY_MARGIN", *REQUIRED),
            id="invalid-and-missing",
        ),
        pytest.param(
            {**VALID, "CALLFLOW_SAFETY_MARGIN": "20"},
            ("CALLFLOW_SAFETY_MARGIN",),
            id="inconsistent",
        ),
    ],
)
def test_run_with_bad_settings_exits_2_naming_every_bad_variable(
    variables: dict[str, str],
    names: tuple[str, ...],
    environ: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`callflow run` with bad variables prints each bad name and exits 2 before loading."""
    for name, value in variables.items():
        environ.setenv(name, value)
    assert main(["run", "nosuchmodule:bot"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("callflow: configuration problem\n")
    for name in names:
        assert name in err
    assert "nosuchmodule" not in err  # settings are checked before the bot is imported


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("nosuchmodule:bot", "callflow: cannot import module 'nosuchmodule': "),
        ("examples.busy_bot:nothing", "module 'examples.busy_bot' has no attribute 'nothing'"),
        (
            "examples.busy_bot:always_busy",
            "callflow: examples.busy_bot:always_busy is a function, expected a callflow.Bot",
        ),
        ("examples.busy_bot:", "expected module:attribute (e.g. mybot:bot), got 'examples."),
        ("examples.busy_bot:bott", """has no attribute 'bott'; did you mean "bot"?"""),
        ("examples/busy_bot.py:bot", "expected a module path, not a file: examples.busy_bot:bot"),
        (
            "examples.busy_bot:always_busy --factory",
            "examples.busy_bot:always_busy takes arguments (call): --factory calls it with none",
        ),
        (":bot", "expected module:attribute (e.g. mybot:bot), got ':bot'"),
    ],
)
def test_run_with_a_bad_target_exits_1_saying_what_is_wrong(
    target: str,
    message: str,
    environ: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    restore_logging: None,
) -> None:
    """A module that does not import, a missing attribute or a non-Bot exits 1 with a message."""
    for name, value in {**VALID, "CALLFLOW_LOG_FORMAT": "json"}.items():
        environ.setenv(name, value)
    assert main(["run", *target.split()]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert message in err
    assert "Traceback" not in err


def test_load_bot_returns_the_bot_and_follows_dotted_attributes() -> None:
    """`module:attr` returns that Bot; a dotted attribute reaching a non-Bot is refused."""
    from examples import busy_bot

    assert load_bot("examples.busy_bot:bot") is busy_bot.bot
    with pytest.raises(CallflowError, match=r"is a Router, expected a callflow\.Bot"):
        load_bot("tests.test_cli:ROUTER_HOLDER.router")


def test_load_bot_imports_from_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mybot:bot` is found in the current directory even when it is not on sys.path."""
    name = f"mybot_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text("from callflow import Bot\n\nbot = Bot()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, name, raising=False)
    bot = load_bot(f"{name}:bot")
    assert type(bot).__name__ == "Bot"
    assert sys.path[0] == str(tmp_path)
    del sys.modules[name]


@pytest.fixture
def bot_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], str]]:
    """Write a module of the given source into a temporary current directory; its name."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    names: list[str] = []

    def write(source: str) -> str:
        name = f"dentist_{uuid.uuid4().hex}"
        (tmp_path / f"{name}.py").write_text(source)
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


DENTIST = """\
from callflow import Bot

bot = Bot(name="front")
receptionist = Bot(name="back")
made: list[Bot] = []


def make_bot() -> Bot:
    made.append(Bot(name="made"))
    return made[-1]


def make_nothing() -> None:
    return None


def make_with(settings: object, *, debug: bool = False) -> Bot:
    return Bot()


async def make_later() -> Bot:
    return Bot()
"""


def test_a_module_alone_means_its_bot_attribute(bot_module: Callable[[str], str]) -> None:
    """`callflow run dentist` loads `dentist:bot`, as uvicorn's `main` means `main:app`."""
    name = bot_module(DENTIST)
    assert load_bot(name) is sys.modules[name].bot
    assert load_bot(f"{name}:receptionist") is sys.modules[name].receptionist


def test_a_module_without_a_bot_attribute_names_its_bots(
    bot_module: Callable[[str], str],
) -> None:
    """Without `:attribute` and without `bot`, the error says `bot` was the default and lists
    the module's Bots."""
    name = bot_module("from callflow import Bot\n\nfront = Bot()\nback = Bot()\n")
    with pytest.raises(CallflowError) as caught:
        load_bot(name)
    assert str(caught.value) == (
        f"module {name!r} has no attribute 'bot' (the default when no :attribute is given); "
        'its Bots: "back", "front"'
    )


@pytest.mark.parametrize(
    ("attribute", "suggestion"),
    [("bott", "bot"), ("Bot_", "bot"), ("receptionst", "receptionist"), ("recep", None)],
)
def test_a_misspelt_attribute_gets_a_suggestion(
    attribute: str, suggestion: str | None, bot_module: Callable[[str], str]
) -> None:
    """`dentist:bott` says `did you mean "bot"?`, matched among the module's Bots first."""
    name = bot_module(DENTIST)
    with pytest.raises(CallflowError) as caught:
        load_bot(f"{name}:{attribute}")
    message = str(caught.value)
    assert message.startswith(f"module {name!r} has no attribute {attribute!r}")
    if suggestion is None:
        assert message.endswith('its Bots: "bot", "receptionist"')
    else:
        assert message.endswith(f'; did you mean "{suggestion}"?')


@pytest.mark.parametrize(
    ("target", "instead"),
    [
        ("dentist.py:bot", "dentist:bot"),
        ("dentist.py", "dentist:bot"),
        ("clinic/dentist.py:front", "clinic.dentist:front"),
        ("./clinic/dentist:bot", "clinic.dentist:bot"),
    ],
)
def test_a_file_name_is_answered_with_the_module_path(target: str, instead: str) -> None:
    """`dentist.py:bot` says that a module path is wanted, and which."""
    with pytest.raises(CallflowError) as caught:
        load_bot(target)
    assert str(caught.value).startswith(
        f"{target.partition(':')[0]!r} is a file; expected a module path, not a file: {instead} "
    )


def test_a_factory_builds_a_new_bot_each_time(bot_module: Callable[[str], str]) -> None:
    """`module:factory --factory` calls the factory and returns the Bot it made."""
    name = bot_module(DENTIST)
    first = load_bot(f"{name}:make_bot", factory=True)
    second = load_bot(f"{name}:make_bot", factory=True)
    assert sys.modules[name].made == [first, second]
    assert first is not second
    assert first.name == "made"


@pytest.mark.parametrize(
    ("attribute", "message"),
    [
        ("make_nothing", "{target}() returned a NoneType, expected a callflow.Bot"),
        ("make_with", "{target} takes arguments (settings): --factory calls it with none"),
        ("make_later", "{target}() returned an awaitable: --factory expects a plain (not async)"),
        ("bot", "{target} is a Bot already, not a factory: drop --factory"),
        ("made", "{target} is a list, not callable: --factory expects a zero-argument function"),
        ("make_bto", "has no attribute 'make_bto'; did you mean \"make_bot\"?"),
    ],
)
def test_a_factory_that_does_not_make_a_bot_is_refused(
    attribute: str, message: str, bot_module: Callable[[str], str]
) -> None:
    """A factory returning something else, needing arguments or async: a clear error."""
    name = bot_module(DENTIST)
    target = f"{name}:{attribute}"
    with pytest.raises(CallflowError) as caught:
        load_bot(target, factory=True)
    assert message.format(target=target) in str(caught.value)


def test_a_factory_without_the_flag_is_pointed_to_it(bot_module: Callable[[str], str]) -> None:
    """A function given without --factory is refused with a hint to add it."""
    name = bot_module(DENTIST)
    with pytest.raises(CallflowError) as caught:
        load_bot(f"{name}:make_bot")
    assert str(caught.value) == (
        f"{name}:make_bot is a function, expected a callflow.Bot (if it builds one, add --factory)"
    )


def test_the_version_comes_from_the_package(capsys: pytest.CaptureFixture[str]) -> None:
    """`callflow --version` prints callflow.__version__ (the one version source) and exits 0."""
    import callflow

    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out == f"callflow {callflow.__version__}\n"
    assert re.fullmatch(r"\d+\.\d+\.\d+((a|b|rc)\d+)?", callflow.__version__)


@pytest.mark.anyio
async def test_a_bot_served_twice_says_so(fake_graph: FakeGraph) -> None:
    """Serving a Bot that is serving (or has served) raises RegistrationError saying it is
    being served twice, through bot.serve() and through FakeGraph.serve alike."""
    bot = Bot()
    twice = r"Bot 'bot' is being served twice: a Bot serves once\. Build a new Bot"
    async with fake_graph.serve(bot):
        assert bot.served
        with pytest.raises(RegistrationError, match=twice):
            async with bot.serve():
                pass  # pragma: no cover - never reached
    with pytest.raises(RegistrationError, match=twice):
        async with fake_graph.serve(bot):
            pass  # pragma: no cover - never reached
    assert not Bot().served


class _Holder:
    """An object with a Router attribute (a Router is not a Bot)."""

    def __init__(self) -> None:
        from callflow import Router

        self.router = Router("not-a-bot")


ROUTER_HOLDER = _Holder()


@pytest.mark.anyio
async def test_run_errors_as_a_command() -> None:
    """`python -m callflow run` exits 2 on bad settings and 1 on a module that does not import."""
    bad = await callflow(
        "run", "examples.busy_bot:bot", env=subprocess_env({"CALLFLOW_PORT": "99999"})
    )
    err = bad.stderr.decode()
    assert bad.returncode == 2
    for name in ("CALLFLOW_PORT", *REQUIRED):
        assert name in err
    missing = await callflow("run", "nosuchmodule:bot", env=subprocess_env(VALID))
    assert missing.returncode == 1
    assert missing.stderr.decode().startswith("callflow: cannot import module 'nosuchmodule'")


def test_the_command_needs_a_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a subcommand argparse prints the usage and exits 2; the parser knows all three."""
    with pytest.raises(SystemExit) as caught:
        main([])
    assert caught.value.code == 2
    assert "usage: callflow" in capsys.readouterr().err
    help_text = build_parser().format_help()
    for command in ("run", "check", "demo"):
        assert command in help_text


# --- callflow demo -------------------------------------------------------------------------


def table_rows(output: str) -> list[list[str]]:
    """The rows of the demo's table, split on runs of two or more spaces."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("--  "))
    rows = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def check_demo_output(output: str) -> None:
    """Every scripted call has a row with a decision; handlers and the default both decide."""
    rows = table_rows(output)
    assert [row[1] for row in rows] == [scene.label for scene in SCRIPT]
    decided_by = set()
    for _index, label, kind, decision, by, latency in rows:
        assert decision.split()[0] in ("answer", "reject", "redirect"), label
        assert kind == next(s.kind for s in SCRIPT if s.label == label)
        assert latency.endswith(" ms")
        decided_by.add(by)
    assert "default" in decided_by
    assert {"answer_colleagues", "forbid_other_tenants", "route_phone_callers"} <= decided_by
    by_label = {row[1]: row for row in rows}
    assert by_label["slow directory"][3:5] == ["reject (busy)", "default"]
    assert by_label["Dana, delivered 3 times"][3:5] == ["answer", "answer_colleagues"]
    summary = f"{len(SCRIPT)} calls, {len(SCRIPT)} decided exactly once, 2 duplicate deliveries"
    assert summary in output


@pytest.mark.slow
@pytest.mark.anyio
async def test_the_demo_decides_every_scripted_call(restore_logging: None) -> None:
    """`run_demo` plays the script in-process: every call decided once, exit code 0."""
    out = io.StringIO()
    started = time.monotonic()
    assert await run_demo(out=out) == 0
    assert time.monotonic() - started < 20
    check_demo_output(out.getvalue())


@pytest.mark.slow
@pytest.mark.anyio
async def test_the_demo_as_a_command() -> None:
    """`python -m callflow demo` needs no settings, prints the table and exits 0."""
    started = time.monotonic()
    result = await callflow("demo", env=subprocess_env({}))
    assert result.returncode == 0, result.stderr.decode()
    assert time.monotonic() - started < 20
    check_demo_output(result.stdout.decode())


@pytest.mark.anyio
async def test_check_fails_inbound_auth_off_on_a_public_interface(fake_graph: FakeGraph) -> None:
    """INBOUND_AUTH=off with HOST=0.0.0.0 fails the settings line, as the worker would refuse
    to start with it."""
    environ = {**fake_graph.environ(), "CALLFLOW_INBOUND_AUTH": "off", "CALLFLOW_HOST": "0.0.0.0"}
    code, lines = await check(environ)
    assert code == 1
    assert lines[0] == "[FAIL] settings: unsafe settings:"
    assert "CALLFLOW_INBOUND_AUTH: off while listening on '0.0.0.0'" in "\n".join(lines)


@pytest.mark.anyio
async def test_a_worker_refuses_to_serve_without_auth_on_a_public_interface(
    fake_graph: FakeGraph,
) -> None:
    """Bot.serve with INBOUND_AUTH=off on 0.0.0.0 raises ConfigError before it listens."""
    with pytest.raises(ConfigError, match="CALLFLOW_INBOUND_AUTH: off while listening"):
        async with fake_graph.serve(Bot(), inbound_auth=False, host="0.0.0.0"):
            pass  # pragma: no cover - never reached


_WITHOUT_TRUSTME = "import sys; sys.modules['trustme'] = None; "


@pytest.mark.slow
def test_the_testing_kit_says_how_to_install_it_when_trustme_is_missing() -> None:
    """Without trustme (not a runtime dependency any more) importing callflow.testing raises an
    ImportError naming the extra, and ``callflow demo`` exits 1 with that message."""
    kit = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TRUSTME + "import callflow.testing"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert kit.returncode == 1
    assert "ImportError: callflow.testing needs the trustme package" in kit.stderr
    assert "pip install 'callflow-graph[testing]'" in kit.stderr
    demo = subprocess.run(
        [
            sys.executable,
            "-c",
            _WITHOUT_TRUSTME + "from callflow.cli import main; raise SystemExit(main(['demo']))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert demo.returncode == 1
    assert demo.stderr.startswith("callflow: callflow.testing needs the trustme package")
    assert "Traceback" not in demo.stderr
    plain = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TRUSTME + "import callflow, callflow.bot"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert plain.returncode == 0, plain.stderr  # a bot itself never needs it
