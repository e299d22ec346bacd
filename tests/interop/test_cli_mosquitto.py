"""``mqttv5 pub`` / ``mqttv5 sub`` as subprocesses against Mosquitto, and side by side with
mosquitto_pub / mosquitto_sub."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..client.mosquitto import Mosquitto, scaled

pytestmark = pytest.mark.interop

CLI = [sys.executable, "-c", "import sys; from mqttv5.cli import main; sys.exit(main())"]


@pytest.fixture(scope="module")
def mosq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path_factory.mktemp("cli-mosquitto"))
    broker.start()
    yield broker
    broker.stop()


def mqttv5(
    *args: str, stdin: bytes | None = None, timeout: float = 10
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*CLI, *args], input=stdin, capture_output=True, timeout=scaled(timeout), check=False
    )


def spawn(*cmd: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(scaled(0.4))  # let it connect and subscribe
    return proc


def finish(proc: subprocess.Popen[bytes], timeout: float = 10) -> tuple[int, bytes, bytes]:
    out, err = proc.communicate(timeout=scaled(timeout))
    return proc.returncode, out, err


def test_pub_to_mosquitto_sub(mosq: Mosquitto) -> None:
    port = str(mosq.port)
    sub = spawn("mosquitto_sub", "-p", port, "-V", "5", "-t", "cli/one", "-C", "1", "-q", "1",
                "-F", "%t|%p|%q|%P|%R|%C")  # fmt: skip
    done = mqttv5("pub", "-p", port, "-t", "cli/one", "-m", "hello", "-q", "1",
                  "-D", "publish", "user-property", "k", "v", "-D", "publish", "content-type",
                  "text/x", "--response-topic", "back")  # fmt: skip
    assert done.returncode == 0, done.stderr
    code, out, _ = finish(sub)
    assert code == 0
    assert out == b"cli/one|hello|1|k:v|back|text/x\n"


def test_mosquitto_pub_to_sub_with_format(mosq: Mosquitto) -> None:
    port = str(mosq.port)
    sub = spawn(*CLI, "sub", "-p", port, "-t", "cli/two/#", "-C", "2", "-q", "2",
                "-F", "%t %p %q %r %l %x %P %m\\n", "-N")  # fmt: skip
    for payload in ("a", "bc"):
        pub = ["mosquitto_pub", "-p", port, "-V", "5", "-t", "cli/two/x", "-m", payload, "-q", "2"]
        subprocess.run([*pub, "-D", "publish", "user-property", "u", "1"], check=True)
    code, out, err = finish(sub)
    assert code == 0, err
    lines = out.decode().splitlines()
    assert lines[0].startswith("cli/two/x a 2 0 1 61 u:1 ")
    assert lines[1].startswith("cli/two/x bc 2 0 2 6263 u:1 ")


def test_sub_json_verbose_and_count(mosq: Mosquitto) -> None:
    port = str(mosq.port)
    sub = spawn(*CLI, "sub", "-p", port, "-t", "cli/json", "-C", "1", "--json")
    assert mqttv5("pub", "-p", port, "-t", "cli/json", "-m", '{"a": 1}').returncode == 0
    _, out, _ = finish(sub)
    obj = json.loads(out)
    assert obj["topic"] == "cli/json" and obj["payload"] == '{"a": 1}' and obj["qos"] == 0
    sub = spawn(*CLI, "sub", "-p", port, "-t", "cli/v", "-C", "1", "-v")
    subprocess.run(["mosquitto_pub", "-p", port, "-t", "cli/v", "-m", "x y"], check=True)
    assert finish(sub)[1] == b"cli/v x y\n"


def test_pub_stdin_lines_file_and_repeat(mosq: Mosquitto, tmp_path: Path) -> None:
    port = str(mosq.port)
    sub = spawn("mosquitto_sub", "-p", port, "-t", "cli/lines", "-C", "6")
    assert mqttv5("pub", "-p", port, "-t", "cli/lines", "-l", stdin=b"one\ntwo\n").returncode == 0
    payload = tmp_path / "p.bin"
    payload.write_bytes(b"file")
    assert mqttv5("pub", "-p", port, "-t", "cli/lines", "-f", str(payload)).returncode == 0
    done = mqttv5("pub", "-L", f"mqtt://127.0.0.1:{port}/cli/lines", "-m", "r",
                  "--repeat", "3", "--repeat-delay", "0.01")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert finish(sub)[1] == b"one\ntwo\nfile\nr\nr\nr\n"


def test_timeout_exit_code(mosq: Mosquitto) -> None:
    done = mqttv5("sub", "-p", str(mosq.port), "-t", "cli/never", "-W", "0.3")
    assert done.returncode == 27  # as mosquitto_sub
    assert b"Timed out" in done.stderr


def test_errors_scripts_can_read(mosq: Mosquitto, tmp_path: Path) -> None:
    closed = Mosquitto(tmp_path, extra="allow_anonymous false")
    closed.start()
    try:
        done = mqttv5("pub", "-p", str(closed.port), "-t", "x", "-m", "y")
    finally:
        closed.stop()
    assert done.returncode == 1
    assert b"Connection refused: not authorized (0x87)" in done.stderr
    done = mqttv5("sub", "-p", str(closed.port), "-t", "x")
    assert done.returncode == 1 and b"Connection refused" in done.stderr
    done = mqttv5("pub", "-t", "x", "-m", "y", "--cafile", "ca.pem")
    assert done.returncode == 1 and b"--cafile: cannot read ca.pem" in done.stderr
    done = mqttv5("sub", "-c", "-t", "x")
    assert done.returncode == 1 and b"client id" in done.stderr


def test_help_and_dash_h_is_host(mosq: Mosquitto) -> None:
    done = mqttv5("pub", "--help")
    assert done.returncode == 0 and b"--will-topic" in done.stdout
    done = mqttv5("sub", "-h", "127.0.0.1", "-p", str(mosq.port), "-t", "cli/h", "-E")
    assert done.returncode == 0, done.stderr


def test_persistent_session_and_v311(mosq: Mosquitto) -> None:
    port = str(mosq.port)
    args = ["sub", "-p", port, "-t", "cli/sess", "-q", "1", "-c", "-i", "cli-sess"]
    assert mqttv5(*args, "-E").returncode == 0
    subprocess.run(["mosquitto_pub", "-p", port, "-t", "cli/sess", "-m", "queued", "-q", "1"],
                   check=True)  # fmt: skip
    done = mqttv5(*args, "-C", "1", "-W", "5", "-V", "311")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"queued\n"


def test_will_from_cli(mosq: Mosquitto) -> None:
    port = str(mosq.port)
    watcher = spawn("mosquitto_sub", "-p", port, "-t", "cli/will", "-C", "1")
    victim = spawn(*CLI, "sub", "-p", port, "-t", "cli/whatever", "--will-topic", "cli/will",
                   "--will-payload", "bye", "--no-reconnect")  # fmt: skip
    victim.kill()  # no DISCONNECT: the will is published
    victim.communicate()
    assert finish(watcher)[1] == b"bye\n"
