"""TLS and WebSocket with clients and a broker nobody here wrote: mosquitto_pub / mosquitto_sub
over TLS and mutual TLS against our broker, paho-mqtt over WebSocket, MQTT.js over ws and wss,
our client over TLS against Mosquitto's TLS listener, and ``mqttv5 pub/sub`` over mqtts:// and
ws://. (Mosquitto's own WebSocket listener binds every interface: not used here.)"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from mqttv5 import MqttClient
from mqttv5.broker.broker import MqttBroker
from mqttv5.broker.config import ListenerSettings
from mqttv5.client import ConnectOptions
from mqttv5.transport.base import TlsError
from tests.broker.conftest import run
from tests.broker.rawclient import timeout
from tests.client.mosquitto import Mosquitto
from tests.transport.test_tls import Certs, broker_with, make_certs, tls_listener

pytestmark = pytest.mark.interop

MOSQUITTO_PUB = shutil.which("mosquitto_pub") or "mosquitto_pub"
MOSQUITTO_SUB = shutil.which("mosquitto_sub") or "mosquitto_sub"
CLI = [sys.executable, "-c", "import sys; from mqttv5.cli import main; sys.exit(main())"]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("pki"))


def _cert_options(certs: Certs) -> list[str]:
    """mosquitto_pub's options for client-one's certificate (separate files, as it names them)."""
    return ["--cert", str(certs.path("client.crt")), "--key", str(certs.path("client.key"))]


async def _proc(*args: str, wait: float = 15) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout(wait))
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _subscribed(broker: MqttBroker, client_id: str) -> None:
    """Wait until ``client_id`` holds a subscription on ``broker``."""
    async with asyncio.timeout(timeout(10)):
        while True:
            session = broker.sessions.get(client_id)
            if session is not None and session.subscriptions:
                return
            await asyncio.sleep(0.02)


def _mtls(certs: Certs, **settings: Any) -> ListenerSettings:
    return tls_listener(
        certs,
        cafile=str(certs.ca_file),
        require_certificate=True,
        use_identity_as_username=True,
        **settings,
    )


# --- mosquitto_pub / mosquitto_sub against our broker ---------------------------------------------


def test_mosquitto_clients_over_tls(certs: Certs) -> None:
    async def main() -> None:
        async with broker_with(tls_listener(certs)) as broker:
            port = str(broker.ports[0])
            tls = ["-h", "localhost", "-p", port, "--cafile", str(certs.ca_file), "-V", "5"]
            sub = asyncio.ensure_future(
                _proc(MOSQUITTO_SUB, *tls, "-i", "msub", "-t", "tls/#", "-C", "1", "-v")
            )
            await _subscribed(broker, "msub")
            code, _, err = await _proc(MOSQUITTO_PUB, *tls, "-t", "tls/a", "-m", "hi", "-q", "1")
            assert code == 0, err
            code, out, err = await sub
            assert (code, out) == (0, "tls/a hi\n"), err

    run(main())


def test_mosquitto_clients_over_mutual_tls(certs: Certs) -> None:
    async def main() -> None:
        async with broker_with(_mtls(certs)) as broker:
            port = str(broker.ports[0])
            base = ["-h", "localhost", "-p", port, "--cafile", str(certs.ca_file), "-V", "5"]
            mine = [*base, *_cert_options(certs)]
            sub = asyncio.ensure_future(
                _proc(MOSQUITTO_SUB, *mine, "-i", "msub", "-t", "m/#", "-C", "1", "-v")
            )
            await _subscribed(broker, "msub")
            session = broker.sessions.get("msub")
            assert session is not None and session.username == "client-one"  # the CN
            code, _, err = await _proc(MOSQUITTO_PUB, *mine, "-t", "m/x", "-m", "ok", "-q", "1")
            assert code == 0, err
            assert (await sub)[1] == "m/x ok\n"
            # no client certificate: refused at the handshake, the broker stays up
            code, _, err = await _proc(MOSQUITTO_PUB, *base, "-t", "m/x", "-m", "no", "-q", "1")
            assert code != 0
            # a CA the broker's certificate does not chain to
            other = ["-h", "localhost", "-p", port, "--cafile", str(certs.other_ca_file)]
            code, _, err = await _proc(MOSQUITTO_PUB, *other, "-t", "m/x", "-m", "no")
            assert code != 0
            again = [*mine, "-t", "m/y", "-m", "still up", "-q", "1"]
            assert (await _proc(MOSQUITTO_PUB, *again))[0] == 0

    run(main())


# --- paho-mqtt over WebSocket ---------------------------------------------------------------------


def _paho_round_trip(port: int, ca_file: str | None = None) -> list[bytes]:
    client = paho.Client(
        CallbackAPIVersion.VERSION2, "paho-ws", protocol=paho.MQTTv5, transport="websockets"
    )
    client.ws_set_options(path="/mqtt")
    if ca_file is not None:
        client.tls_set(ca_certs=ca_file)
    got: list[bytes] = []
    done = threading.Event()
    subscribed = threading.Event()

    def on_message(c: paho.Client, u: object, m: paho.MQTTMessage) -> None:
        got.append(bytes(m.payload))
        done.set()

    client.on_message = on_message
    client.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
    client.on_connect = lambda c, u, f, rc, p: c.subscribe("paho/ws", qos=1)
    client.connect("localhost", port)
    client.loop_start()
    try:
        assert subscribed.wait(timeout(5))
        client.publish("paho/ws", b"over websocket", qos=1)
        assert done.wait(timeout(5))
    finally:
        client.disconnect()
        client.loop_stop()
    return got


def test_paho_over_websocket(certs: Certs) -> None:
    async def main() -> None:
        server = str(certs.server)
        listeners = (
            ListenerSettings(type="ws", port=0, allow_anonymous=True, ws_path="/mqtt"),
            ListenerSettings(
                type="wss", port=0, allow_anonymous=True, certfile=server, keyfile=server
            ),
        )
        async with broker_with(*listeners) as broker:
            ws, wss = broker.ports
            assert await asyncio.to_thread(_paho_round_trip, ws) == [b"over websocket"]
            got = await asyncio.to_thread(_paho_round_trip, wss, str(certs.ca_file))
            assert got == [b"over websocket"]

    run(main())


# --- MQTT.js over ws and wss ----------------------------------------------------------------------

_MQTTJS = """
const mqtt = require("mqtt");
const fs = require("fs");
const [url, ca] = process.argv.slice(2);
const options = { protocolVersion: 5, connectTimeout: 5000, reconnectPeriod: 0, clientId: "js" };
if (ca) options.ca = fs.readFileSync(ca);
const client = mqtt.connect(url, options);
client.on("connect", () => {
  client.subscribe("js/t", { qos: 1 }, () => client.publish("js/t", "hello from js", { qos: 1 }));
});
const timer = setTimeout(() => { console.error("timeout"); process.exit(3); }, 10000);
client.on("message", (topic, payload) => {
  console.log(JSON.stringify({ topic, payload: payload.toString() }));
  clearTimeout(timer);
  client.end();
});
client.on("error", (e) => { console.error("error " + e.message); process.exit(2); });
"""


@pytest.fixture(scope="module")
def mqttjs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MQTT.js installed with npm into a temporary directory (node and npm are part of the
    machine image; the npm registry is reachable: a failure here is a set-up error, not a skip)."""
    npm, node = shutil.which("npm"), shutil.which("node")
    assert npm is not None, "npm is needed for the MQTT.js interop test"
    assert node is not None, "node is needed for the MQTT.js interop test"
    directory = tmp_path_factory.mktemp("mqttjs")
    try:
        done = subprocess.run(
            [npm, "install", "mqtt@5", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=directory,
            capture_output=True,
            timeout=timeout(60),
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError("npm install mqtt timed out (no registry?)") from exc
    assert done.returncode == 0, f"npm install mqtt failed: {done.stderr.decode()[-300:]}"
    script = directory / "roundtrip.js"
    script.write_text(_MQTTJS)
    return script


def test_mqttjs_over_ws_and_wss(certs: Certs, mqttjs: Path) -> None:
    async def main() -> None:
        server = str(certs.server)
        listeners = (
            ListenerSettings(type="ws", port=0, allow_anonymous=True),
            ListenerSettings(
                type="wss", port=0, allow_anonymous=True, certfile=server, keyfile=server
            ),
        )
        async with broker_with(*listeners) as broker:
            ws, wss = broker.ports
            runs = [
                [f"ws://localhost:{ws}/mqtt"],
                [f"wss://localhost:{wss}/mqtt", str(certs.ca_file)],
            ]
            for args in runs:
                code, out, err = await _proc("node", str(mqttjs), *args, wait=20)
                assert code == 0, err
                assert json.loads(out) == {"topic": "js/t", "payload": "hello from js"}

    run(main())


# --- our client against Mosquitto's TLS listener --------------------------------------------------


@pytest.fixture
def mosquitto_tls(certs: Certs, tmp_path: Path) -> Iterator[Callable[[bool], Mosquitto]]:
    started: list[Mosquitto] = []

    def start(require_certificate: bool) -> Mosquitto:
        extra = "\n".join(
            [
                f"cafile {certs.ca_file}",
                f"certfile {certs.path('server.crt')}",
                f"keyfile {certs.path('server.key')}",
                f"require_certificate {'true' if require_certificate else 'false'}",
            ]
        )
        mosq = Mosquitto(tmp_path, extra=extra)
        mosq.start()
        started.append(mosq)
        return mosq

    yield start
    for mosq in started:
        mosq.stop()


def test_our_client_against_mosquitto_tls(
    certs: Certs, mosquitto_tls: Callable[[bool], Mosquitto]
) -> None:
    mosq = mosquitto_tls(True)

    async def main() -> None:
        url = f"mqtts://localhost:{mosq.port}"
        client = MqttClient("ours", options=ConnectOptions(connect_timeout=timeout(5)))
        client.set_tls_config(
            ca_file=str(certs.ca_file),
            cert_file=str(certs.path("client.crt")),
            key_file=str(certs.path("client.key")),
        )
        await client.connect(url)
        await client.subscribe("mosq/tls", qos=1)
        await client.publish("mosq/tls", b"via mosquitto", qos=1)
        assert (await anext(client.messages())).payload == b"via mosquitto"
        await client.disconnect()
        anonymous = MqttClient("nocert", options=ConnectOptions(connect_timeout=timeout(5)))
        anonymous.set_tls_config(ca_file=str(certs.ca_file))
        with pytest.raises(TlsError):
            await anonymous.connect(url)
        wrong = MqttClient("wrong", options=ConnectOptions(connect_timeout=timeout(5)))
        wrong.set_tls_config(ca_file=str(certs.other_ca_file))
        with pytest.raises(TlsError, match="server certificate not trusted"):
            await wrong.connect(url)

    run(main())


# --- mqttv5 pub / sub -----------------------------------------------------------------------------


def test_mqttv5_cli_over_mqtts_and_ws(certs: Certs) -> None:
    async def main() -> None:
        listeners = (
            _mtls(certs),
            ListenerSettings(type="ws", port=0, allow_anonymous=True, ws_path="/mqtt"),
        )
        async with broker_with(*listeners) as broker:
            tls, ws = broker.ports
            mine = ["--cafile", str(certs.ca_file), *_cert_options(certs)]
            url = f"mqtts://localhost:{tls}"
            sub_args = ["sub", "-L", url, "-t", "cli/#", "-i", "csub", *mine, "-C", "2", "-v"]
            sub = asyncio.ensure_future(_proc(*CLI, *sub_args))
            await _subscribed(broker, "csub")
            code, _, err = await _proc(
                *CLI, "pub", "-L", f"ws://127.0.0.1:{ws}/mqtt", "-t", "cli/ws", "-m", "from ws"
            )
            assert code == 0, err
            code, _, err = await _proc(
                *CLI, "pub", "-h", "localhost", "-p", str(tls), *mine, "-t", "cli/tls", "-m", "x"
            )
            assert code == 0, err
            code, out, err = await sub
            assert code == 0, err
            assert out.splitlines() == ["cli/ws from ws", "cli/tls x"]
            no_cert = ["-h", "localhost", "-p", str(tls), "--cafile", str(certs.ca_file)]
            code, _, err = await _proc(*CLI, "pub", *no_cert, "-t", "cli/tls", "-m", "x")
            assert code == 1
            assert "requires a client certificate" in err

    run(main())
