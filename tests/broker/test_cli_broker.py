"""Tests for ``mqttv5 broker`` (mqttv5.cli.broker) and its logging (mqttv5.broker.logsetup).

The command is run as a subprocess where it matters that nothing starts (a bad configuration),
and in-process with a fake broker for the lifecycle: start failures, signals, reload. Tests of
the real broker behind the command live with the broker's tests.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import signal
import subprocess
import sys
import types
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, ClassVar

import pytest

from mqttv5.broker.config import BrokerConfig, config_reference_markdown
from mqttv5.broker.logsetup import JsonFormatter, TextFormatter, setup_logging, teardown_logging
from mqttv5.cli import broker as cli
from mqttv5.protocol.errors import ConfigError
from tests.broker.rawclient import timeout

SCRIPT = Path(sys.executable).with_name("mqttv5")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "mqttv5.cli"]

# Loaded into the subprocess through PYTHONPATH: records every socket bind and every event loop
# run (asyncio.run uses a Runner too), and at exit which modules were imported, so a test can tell
# that a bad configuration never got near a socket.
GUARD = """
import asyncio, atexit, os, socket, sys
_MARKER = os.environ["MQTTV5_TEST_MARKER"]
def _note(text):
    with open(_MARKER, "a") as f:
        f.write(text + "\\n")
_bind = socket.socket.bind
def bind(self, address):
    _note(f"bind {address!r}")
    return _bind(self, address)
socket.socket.bind = bind
_run = asyncio.Runner.run
def run(self, coro, **kwargs):
    _note("loop")
    return _run(self, coro, **kwargs)
asyncio.Runner.run = run
atexit.register(lambda: _note("modules " + " ".join(sorted(sys.modules))))
"""


@pytest.fixture(autouse=True)
def _no_logging_left_behind():
    yield
    teardown_logging()


def run_cli(args: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run ``mqttv5 ARGS`` with the guard; return the result and what the guard recorded."""
    guard_dir = tmp_path / "guard"
    guard_dir.mkdir(exist_ok=True)
    (guard_dir / "sitecustomize.py").write_text(GUARD)
    marker = tmp_path / "marker.txt"
    marker.unlink(missing_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(guard_dir), env.get("PYTHONPATH")]))
    env["MQTTV5_TEST_MARKER"] = str(marker)
    result = subprocess.run(
        [*COMMAND, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=timeout(30),
        check=False,
    )
    return result, marker.read_text() if marker.exists() else ""


# --- subprocess: bad configurations never start ---------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            "[[listener]]\nport = 70000\n",
            "listener[0].port: must be 0..65535 (got 70000) in {path}",
        ),
        (
            "[[listener]]\nport = 1883\n[[listener]]\nport = 1884\nprot = 1\n",
            "listener[1].prot: unknown key (did you mean 'port'?) in {path}",
        ),
        (
            'storage = "mysql"\n',
            'storage: must be one of "memory", "sqlite" (got "mysql") in {path}',
        ),
        ("sys_interval = \n", "line 1: invalid TOML: Invalid value (column 16) in {path}"),
        (
            '[[listener]]\ntype = "tls"\n',
            "listener[0].certfile: a tls listener needs certfile and keyfile in {path}",
        ),
        (
            '[[listener]]\nbind = "0.0.0.0"\n',
            "allow_anonymous: listener 0.0.0.0:1883 is not on loopback: "
            "set allow_anonymous = true or a password_file in {path}",
        ),
    ],
)
def test_bad_config_exits_1_with_one_line_and_never_listens(tmp_path, toml, expected):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    result, guard = run_cli(["broker", "-c", str(path)], tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == f"mqttv5 broker: error: {expected.format(path=path)}\n"
    # never got near a socket: no bind, no event loop, no uvloop
    assert "bind " not in guard
    assert "loop" not in guard.splitlines()
    (modules_line,) = [line for line in guard.splitlines() if line.startswith("modules ")]
    modules = modules_line.split()[1:]
    assert "mqttv5.cli.broker" in modules  # the guard saw the command run
    assert "uvloop" not in modules


def test_missing_config_file(tmp_path):
    path = tmp_path / "nope.toml"
    result, guard = run_cli(["broker", "-c", str(path)], tmp_path)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"mqttv5 broker: error: config: cannot read {path}: ")
    assert "bind " not in guard


def test_bad_flag_value_exits_1_naming_the_flag(tmp_path):
    result, guard = run_cli(["broker", "--port", "70000"], tmp_path)
    assert result.returncode == 1
    assert result.stderr == "mqttv5 broker: error: argument --port: must be 0..65535 (got 70000)\n"
    assert "bind " not in guard


def test_flag_override_does_not_hide_a_bad_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("maximum_qos = 5\n")
    result, _ = run_cli(["broker", "-c", str(path), "--port", "0"], tmp_path)
    assert result.returncode == 1
    assert "maximum_qos: must be 0..2 (got 5)" in result.stderr


def test_unparsable_flag_is_a_usage_error(tmp_path):
    result, _ = run_cli(["broker", "--storage", "mysql"], tmp_path)
    assert result.returncode == 2
    assert "invalid choice: 'mysql'" in result.stderr


# --- subprocess: help and reference ---------------------------------------------------------------


OPTIONS = [
    "-c", "--config", "--bind", "-p", "--port", "--storage", "--data-dir", "--allow-anonymous",
    "--log-level", "--log-format", "--log-file", "--max-packet-size", "--sys-interval",
    "--password-file", "--acl-file", "-v", "--verbose", "--print-config-reference", "--help",
    "--scram-file",
    "--metrics-port", "--tls-port", "--ws-port", "--wss-port", "--udp-port", "--dtls-port",
    "--psk-file", "--certfile", "--keyfile",
    "--cafile", "--require-certificate",
]  # fmt: skip


def test_help_lists_every_option(tmp_path):
    result, guard = run_cli(["broker", "--help"], tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("usage: mqttv5 broker")
    words = set(result.stdout.replace(",", " ").split())
    missing = [option for option in OPTIONS if option not in words]
    assert missing == []
    for choice in ("memory", "sqlite", "text", "json", "debug", "info", "warning", "error"):
        assert choice in result.stdout
    assert "SIGHUP" in result.stdout
    assert "bind " not in guard


def test_help_matches_the_parser():
    parser = cli.build_parser()
    declared = {s for action in parser._actions for s in action.option_strings}
    assert declared == set(OPTIONS) | {"-h"}


def test_print_config_reference(tmp_path):
    result, _ = run_cli(["broker", "--print-config-reference"], tmp_path)
    assert result.returncode == 0
    assert result.stdout == config_reference_markdown()


# --- in-process with a fake broker ----------------------------------------------------------------


class FakeBroker:
    """Stands in for MqttBroker: records calls; ``script`` runs once started (sends signals)."""

    start_error: ClassVar[BaseException | None] = None
    restart: ClassVar[list[str]] = []
    script: ClassVar[Callable[[FakeBroker], Coroutine[Any, Any, None]] | None] = None
    instances: ClassVar[list[FakeBroker]] = []

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.stops = 0
        self.reloads: list[BrokerConfig] = []
        self.started = False
        self._closed: asyncio.Event | None = None
        self._script: asyncio.Task[None] | None = None
        type(self).instances.append(self)

    async def start(self) -> None:
        self._closed = asyncio.Event()
        if self.start_error is not None:
            raise self.start_error
        self.started = True
        script = type(self).script
        if script is not None:
            self._script = asyncio.create_task(script(self))

    async def stop(self) -> None:
        self.stops += 1
        await asyncio.sleep(0.01)
        assert self._closed is not None
        self._closed.set()
        if self._script is not None:
            await self._script

    async def wait_closed(self) -> None:
        assert self._closed is not None
        await self._closed.wait()

    def reload(self, config: BrokerConfig) -> list[str]:
        self.reloads.append(config)
        return list(self.restart)


@pytest.fixture
def fake(monkeypatch):
    """Install FakeBroker as mqttv5.broker.broker.MqttBroker; return a fresh subclass."""

    class Fake(FakeBroker):
        instances: ClassVar[list[FakeBroker]] = []

    module = types.ModuleType("mqttv5.broker.broker")
    module.MqttBroker = Fake  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mqttv5.broker.broker", module)
    return Fake


async def until(condition: Callable[[], object]) -> None:
    async with asyncio.timeout(timeout(10)):
        while not condition():
            await asyncio.sleep(0.005)


def kill(sig: signal.Signals) -> None:
    os.kill(os.getpid(), sig)


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("mqttv5 broker: error:")]
    assert len(lines) == 1, err
    assert err.endswith(lines[0] + "\n")  # the last thing printed
    return lines[0]


@pytest.mark.parametrize(
    "error",
    [
        # what asyncio's create_server raises
        OSError(
            errno.EADDRINUSE,
            "error while attempting to bind on address ('127.0.0.1', 1883): address already in use",
        ),
        # the same, wrapped by the broker
        OSError(
            errno.EADDRINUSE,
            "cannot listen on 127.0.0.1:1883: error while attempting to bind on address "
            "('127.0.0.1', 1883): address already in use",
        ),
        OSError(errno.EADDRINUSE, "cannot listen on 127.0.0.1:1883: address already in use"),
    ],
)
def test_port_in_use_exits_1_with_one_line(fake, capsys, error):
    fake.start_error = error
    assert cli.main(["--bind", "127.0.0.1"]) == 1
    err = capsys.readouterr().err
    line = one_error_line(err)
    assert line == "mqttv5 broker: error: cannot listen on 127.0.0.1:1883: address already in use"
    assert fake.instances[0].stops == 0


def test_config_error_from_start_exits_1(fake, capsys):
    fake.start_error = ConfigError("listener[0].bind", "cannot resolve 'nohost'")
    assert cli.main([]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line == "mqttv5 broker: error: listener[0].bind: cannot resolve 'nohost'"


def test_sigterm_stops_once_and_exits_0(fake, capsys):
    async def script(broker):
        kill(signal.SIGTERM)
        await until(lambda: broker.stops)
        kill(signal.SIGINT)  # a second signal while stopping does not stop twice
        await asyncio.sleep(0.05)

    fake.script = script
    assert cli.main(["--port", "0"]) == 0
    (broker,) = fake.instances
    assert broker.stops == 1
    assert [(lis.bind, lis.port) for lis in broker.config.listeners] == [
        ("127.0.0.1", 0),
        ("::1", 0),
    ]
    err = capsys.readouterr().err
    assert "SIGTERM received: shutting down." in err
    assert "terminating" in err
    assert "error" not in err.lower()


def test_sighup_reloads_the_file_with_the_flags_on_top(fake, capsys, tmp_path):
    path = tmp_path / "broker.toml"
    path.write_text('log_level = "info"\nsys_interval = 10\n')
    fake.restart = ["listeners"]

    async def script(broker):
        path.write_text('log_level = "info"\nsys_interval = 3\n[[listener]]\nport = 0\n')
        kill(signal.SIGHUP)
        await until(lambda: broker.reloads)
        path.write_text("sys_interval = -1\n")  # a bad file is refused as a whole
        kill(signal.SIGHUP)
        await asyncio.sleep(0.05)
        kill(signal.SIGINT)
        await asyncio.sleep(0.05)

    fake.script = script
    assert cli.main(["-c", str(path), "--max-packet-size", "2048"]) == 0
    (broker,) = fake.instances
    assert broker.config.sys_interval == 10
    (reloaded,) = broker.reloads
    assert reloaded.sys_interval == 3
    assert reloaded.max_packet_size == 2048  # the flag still applies
    assert [lis.port for lis in reloaded.listeners] == [0]
    err = capsys.readouterr().err
    assert f"Config loaded from {path}." in err
    assert f"Warning: Config reloaded from {path}; these settings need a restart: listeners." in err
    assert "Error: Reload failed, configuration unchanged: sys_interval: must be at least 0" in err
    assert broker.stops == 1


def test_sighup_applies_new_log_settings(fake, capsys, tmp_path):
    path = tmp_path / "broker.toml"
    path.write_text('log_format = "text"\n')

    async def script(broker):
        path.write_text('log_format = "json"\n')
        kill(signal.SIGHUP)
        await until(lambda: broker.reloads)
        kill(signal.SIGTERM)

    fake.script = script
    assert cli.main(["-c", str(path)]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].split(": ", 1)[1].startswith("mqttv5 version")  # text before the reload
    last = json.loads(lines[-1])  # json after it
    assert last["msg"].endswith("terminating.")
    assert last["logger"] == "mqttv5.broker"


def test_sighup_without_config_file(fake, capsys):
    async def script(broker):
        kill(signal.SIGHUP)
        await asyncio.sleep(0.05)
        kill(signal.SIGTERM)

    fake.script = script
    assert cli.main([]) == 0
    assert fake.instances[0].reloads == []
    assert "SIGHUP received: no configuration file (-c) to reload." in capsys.readouterr().err


def test_log_file_and_verbose(fake, capsys, tmp_path):
    log_file = tmp_path / "broker.log"

    async def script(broker):
        logging.getLogger("mqttv5.broker").debug("a debug line")
        kill(signal.SIGTERM)

    fake.script = script
    assert cli.main(["--log-file", str(log_file), "-v"]) == 0
    assert fake.instances[0].config.log_level == "debug"
    assert capsys.readouterr().err == ""
    text = log_file.read_text()
    assert "a debug line" in text
    assert "Using default config." in text


def test_unwritable_log_file_exits_1(fake, capsys, tmp_path):
    bad = tmp_path / "missing-dir" / "broker.log"
    assert cli.main(["--log-file", str(bad)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"mqttv5 broker: error: log_file: cannot open {bad}: ")
    assert fake.instances == []


# --- error descriptions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            "error while attempting to bind on address ('::1', 1883, 0, 0): address already in use",
            "cannot listen on [::1]:1883: address already in use",
        ),
        (
            "error while attempting to bind on address ('10.9.9.9', 80): "
            "cannot assign requested address",
            "cannot listen on 10.9.9.9:80: cannot assign requested address",
        ),
        (
            "cannot listen on 1.2.3.4:1: permission denied",
            "cannot listen on 1.2.3.4:1: permission denied",
        ),
    ],
)
def test_describe_os_error(message, expected):
    assert cli.describe_os_error(OSError(errno.EADDRINUSE, message)) == expected


def test_describe_os_error_fallback():
    assert cli.describe_os_error(OSError(errno.EACCES, "Permission denied")) == (
        "cannot start: Permission denied"
    )


def test_describe_config_error():
    assert cli.describe_config_error(ConfigError("k", "bad (got 1)", "/x.toml")) == (
        "k: bad (got 1) in /x.toml"
    )
    assert cli.describe_config_error(ConfigError("port", "must be 0..65535", "--port")) == (
        "argument --port: must be 0..65535"
    )
    assert cli.describe_config_error(ConfigError("k", "m")) == "k: m"


# --- logging --------------------------------------------------------------------------------------


def record(level: int, msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("mqttv5.broker", level, __file__, 1, msg, args, None)
    rec.created = 1700000000.25
    rec.__dict__.update(extra)
    return rec


class TestLogFormat:
    def test_text_is_mosquitto_style(self):
        msg = "New client connected from %s as %s (p5, c1, k60, u'user')."
        line = TextFormatter().format(record(logging.INFO, msg, "127.0.0.1:54321", "cid"))
        assert line == (
            "1700000000: New client connected from 127.0.0.1:54321 as cid (p5, c1, k60, u'user')."
        )

    def test_text_marks_warnings_and_errors(self):
        fmt = TextFormatter()
        assert fmt.format(record(logging.WARNING, "disk low")) == "1700000000: Warning: disk low"
        assert fmt.format(record(logging.ERROR, "bad")) == "1700000000: Error: bad"
        assert fmt.format(record(logging.ERROR, "Error: x")) == "1700000000: Error: x"
        assert fmt.format(record(logging.DEBUG, "d")) == "1700000000: d"

    def test_text_includes_the_traceback(self):
        try:
            raise ValueError("boom")
        except ValueError:
            rec = record(logging.ERROR, "failed")
            rec.exc_info = sys.exc_info()
        text = TextFormatter().format(rec)
        assert text.startswith("1700000000: Error: failed\nTraceback")
        assert "ValueError: boom" in text

    def test_json_lines_with_extra_fields(self):
        line = JsonFormatter().format(
            record(logging.INFO, "client %s connected", "c1", client_id="c1", peer=("::1", 5))
        )
        assert "\n" not in line
        assert json.loads(line) == {
            "ts": 1700000000.25,
            "level": "info",
            "logger": "mqttv5.broker",
            "msg": "client c1 connected",
            "client_id": "c1",
            "peer": ["::1", 5],
        }

    def test_json_keeps_unencodable_extras_as_text(self):
        line = JsonFormatter().format(record(logging.WARNING, "x", thing=object()))
        assert json.loads(line)["thing"].startswith("<object object")

    def test_json_exception(self):
        try:
            raise ValueError("boom")
        except ValueError:
            rec = record(logging.ERROR, "failed")
            rec.exc_info = sys.exc_info()
        entry = json.loads(JsonFormatter().format(rec))
        assert entry["level"] == "error"
        assert "ValueError: boom" in entry["exc"]


class TestSetupLogging:
    def test_idempotent(self, capsys):
        logger = logging.getLogger("mqttv5")
        before = list(logger.handlers)
        setup_logging(BrokerConfig())
        setup_logging(BrokerConfig(log_level="warning"))
        assert len(logger.handlers) == len(before) + 1
        assert logger.level == logging.WARNING
        logging.getLogger("mqttv5.broker").info("hidden")
        logging.getLogger("mqttv5.broker").warning("shown")
        err = capsys.readouterr().err
        assert err.count("shown") == 1
        assert "hidden" not in err

    def test_teardown_restores(self):
        logger = logging.getLogger("mqttv5")
        before, level = list(logger.handlers), logger.level
        setup_logging(BrokerConfig(log_level="debug"))
        setup_logging(BrokerConfig(log_level="error"))
        teardown_logging()
        assert logger.handlers == before
        assert logger.level == level

    def test_levels(self):
        for name, level in [("debug", 10), ("info", 20), ("warning", 30), ("error", 40)]:
            assert setup_logging(BrokerConfig(log_level=name)).level == level

    def test_json_to_a_file(self, tmp_path):
        path = tmp_path / "log.jsonl"
        setup_logging(BrokerConfig(log_format="json", log_file=str(path)))
        logging.getLogger("mqttv5.broker").info("hello %s", "world", extra={"client_id": "c"})
        logging.getLogger("asyncio").error("loop trouble")
        teardown_logging()
        entries = [json.loads(line) for line in path.read_text().splitlines()]
        assert [(e["logger"], e["msg"]) for e in entries] == [
            ("mqttv5.broker", "hello world"),
            ("asyncio", "loop trouble"),
        ]
        assert entries[0]["client_id"] == "c"

    def test_bad_log_file_keeps_the_previous_setup(self, tmp_path, capsys):
        setup_logging(BrokerConfig())
        with pytest.raises(OSError):
            setup_logging(BrokerConfig(log_file=str(tmp_path / "no" / "such.log")))
        logging.getLogger("mqttv5.broker").warning("still here")
        assert "still here" in capsys.readouterr().err
