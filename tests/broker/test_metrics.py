"""The metrics listener: ``/metrics`` scraped and parsed with prometheus_client, ``/health``,
the HTTP corner cases, ``[metrics]`` and ``--metrics-port``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mqttv5 import MqttClient
from mqttv5.broker import metrics_http
from mqttv5.broker.broker import MqttBroker
from mqttv5.broker.config import (
    BridgeSettings,
    BridgeTopic,
    BrokerConfig,
    ListenerSettings,
    MetricsSettings,
    config_from_args,
    load_config,
    validate_config,
)
from mqttv5.cli.broker import build_parser
from mqttv5.client import ConnectOptions, RefusedByServer
from mqttv5.protocol.errors import ConfigError
from tests.broker.conftest import run, started_broker
from tests.broker.rawclient import timeout

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def http(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send one raw request; the whole response (the server closes the connection)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        async with asyncio.timeout(timeout(5)):
            data = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


async def scrape(broker: MqttBroker) -> Samples:
    """GET /metrics, parsed by prometheus_client: (sample name, labels) -> value."""
    assert broker.metrics_server is not None
    request = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n"
    status, headers, body = await http(broker.metrics_server.port, request)
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert int(headers["Content-Length"]) == len(body)
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def metrics_broker(**overrides: Any) -> Any:
    return started_broker(metrics=MetricsSettings(port=0), **overrides)


def test_scrape_counts_the_traffic_sent() -> None:
    async def main() -> None:
        async with (
            metrics_broker() as broker,
            MqttClient("sub", url=f"mqtt://127.0.0.1:{broker.ports[0]}") as sub,
            MqttClient("pub", url=f"mqtt://127.0.0.1:{broker.ports[0]}") as pub,
            MqttClient(
                "tiny",
                url=f"mqtt://127.0.0.1:{broker.ports[0]}",
                options=ConnectOptions(maximum_packet_size=64),
            ) as tiny,
        ):
            await sub.subscribe("t/#", 2)
            await tiny.subscribe("big", 0)
            sent = [(0, 3), (1, 2), (2, 1)]  # (QoS, how many)
            for qos, count in sent:
                for i in range(count):
                    await pub.publish(f"t/{qos}/{i}", b"x" * 10, qos)
            await pub.publish("t/kept", b"state", 1, retain=True)
            await pub.publish("big", b"y" * 200, 0)  # over tiny's Maximum Packet Size
            received = 0
            async with asyncio.timeout(timeout(5)):
                async for _message in sub.messages():
                    received += 1
                    if received == 7:
                        break
            c = broker.counters
            await asyncio.sleep(0.05)  # the last acknowledgements
            samples = await scrape(broker)
            assert value(samples, "mqttv5_messages_received_total") == 8
            assert value(samples, "mqttv5_messages_sent_total") == 7
            assert value(samples, "mqttv5_messages_acknowledged_total") == 4  # QoS 1 x3, QoS 2
            assert value(samples, "mqttv5_messages_dropped_total", cause="too_large") == 1
            assert value(samples, "mqttv5_messages_dropped_total", cause="queue_full") == 0
            assert value(samples, "mqttv5_bytes_received_total") == c.bytes_received
            assert value(samples, "mqttv5_bytes_sent_total") == c.bytes_sent
            assert c.bytes_received > 8 * 10
            assert value(samples, "mqttv5_connections") == 3
            assert value(samples, "mqttv5_clients_connected") == 3
            assert value(samples, "mqttv5_connections_opened_total") == 3
            listener = broker.listeners[0].name
            assert value(samples, "mqttv5_listener_connections", listener=listener) == 3
            assert value(samples, "mqttv5_sessions") == 3
            assert value(samples, "mqttv5_subscriptions") == 2
            assert value(samples, "mqttv5_retained_messages") == 1
            assert value(samples, "mqttv5_auth_failures_total") == 0
            assert value(samples, "mqttv5_info", version=metrics_http.__version__) == 1
            assert value(samples, "process_resident_memory_bytes") > 1_000_000
            assert value(samples, "process_cpu_seconds_total") > 0
            assert value(samples, "process_open_fds") > 3

    run(main())


def test_auth_failures_and_bridges_are_counted() -> None:
    async def main() -> None:
        async with started_broker() as core:
            settings = BridgeSettings(
                name="edge",
                address=f"mqtt://127.0.0.1:{core.ports[0]}",
                client_id="bridge-edge",
                topics=[BridgeTopic("#", "out", 1)],
                reconnect_delay=0.05,
                reconnect_delay_max=0.2,
            )
            async with metrics_broker(bridges=[settings], allow_anonymous=False) as edge:
                with pytest.raises(RefusedByServer):
                    await MqttClient("nobody").connect(f"mqtt://127.0.0.1:{edge.ports[0]}")
                manager = edge.bridges
                assert manager is not None
                async with asyncio.timeout(timeout(5)):
                    while not manager.bridges["edge"].up:
                        await asyncio.sleep(0.01)
                samples = await scrape(edge)
                assert value(samples, "mqttv5_auth_failures_total") == 1
                assert value(samples, "mqttv5_bridge_up", bridge="edge") == 1
                assert value(samples, "mqttv5_bridge_connections_total", bridge="edge") == 1
                forwarded = "mqttv5_bridge_messages_forwarded_total"
                assert value(samples, forwarded, bridge="edge", direction="out") == 0
                assert value(samples, forwarded, bridge="edge", direction="in") == 0
                # the bridge's local side is a client of this broker, not of its listener
                assert value(samples, "mqttv5_clients_connected") == 1
                assert (
                    value(samples, "mqttv5_listener_connections", listener="tcp:127.0.0.1:0") == 0
                )

    run(main())


def test_health_and_http_corner_cases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_http, "_REQUEST_TIMEOUT", 0.2)

    async def main() -> None:
        async with metrics_broker() as broker:
            assert broker.metrics_server is not None
            port = broker.metrics_server.port
            status, headers, body = await http(port, b"GET /health HTTP/1.1\r\n\r\n")
            assert (status, body, headers["Connection"]) == (200, b"ok\n", "close")
            status, headers, body = await http(port, b"HEAD /metrics HTTP/1.0\r\n\r\n")
            assert status == 200
            assert body == b""
            assert int(headers["Content-Length"]) > 1000
            status, _, _ = await http(port, b"GET /metrics?x=1 HTTP/1.1\r\n\r\n")
            assert status == 200
            status, headers, _ = await http(port, b"POST /metrics HTTP/1.1\r\n\r\n")
            assert (status, headers["Allow"]) == (405, "GET, HEAD")
            assert (await http(port, b"GET /nope HTTP/1.1\r\n\r\n"))[0] == 404
            assert (await http(port, b"hello\r\n\r\n"))[0] == 400
            assert (await http(port, b"GET / HTTP/2.0\r\n\r\n"))[0] == 505
            huge = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 10_000 + b"\r\n\r\n"
            assert (await http(port, huge))[0] == 431
            assert (await http(port, b"GET /metrics HTTP/1.1\r\n"))[0] == 408  # never finished
            assert (await http(port, b"GET /"))[0] == 408

    run(main())


def test_the_listener_closes_with_the_broker() -> None:
    async def main() -> None:
        async with metrics_broker() as broker:
            assert broker.metrics_server is not None
            port = broker.metrics_server.port
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)

    run(main())


def test_a_metrics_port_in_use_stops_start_up() -> None:
    async def main() -> None:
        async with metrics_broker() as first:
            assert first.metrics_server is not None
            port = first.metrics_server.port
            config = dataclasses.replace(
                first.config,
                listeners=[ListenerSettings(port=0)],
                metrics=MetricsSettings(port=port),
            )
            second = MqttBroker(config)
            with pytest.raises(OSError, match=rf"cannot listen on 127.0.0.1:{port} \(metrics\)"):
                await second.start()
            assert second.listeners == []  # what it had opened is closed again

    run(main())


def test_metrics_changes_need_a_restart() -> None:
    async def main() -> None:
        async with started_broker() as broker:
            new = dataclasses.replace(broker.config, metrics=MetricsSettings(port=0))
            assert broker.reload(new) == ["metrics"]
            assert broker.config.metrics is None  # what runs
            assert broker.reload(dataclasses.replace(broker.config, max_queued_messages=5)) == []

    run(main())


# --- configuration --------------------------------------------------------------------------------


@pytest.fixture
def write(tmp_path: Any) -> Callable[[str], str]:
    def write(text: str) -> str:
        path = tmp_path / "broker.toml"
        path.write_text(text)
        return str(path)

    return write


class TestMetricsConfig:
    def test_a_metrics_table_turns_it_on(self, write: Callable[[str], str]) -> None:
        assert load_config(write("")).metrics is None
        assert load_config(write("[metrics]")).metrics == MetricsSettings("127.0.0.1", 9234)
        config = load_config(write('[metrics]\nbind = "::1"\nport = 9300'))
        assert config.metrics == MetricsSettings("::1", 9300)

    @pytest.mark.parametrize(
        ("text", "key", "words"),
        [
            ("[metrics]\nport = 70000", "metrics.port", "0..65535"),
            ("[metrics]\nprot = 1", "metrics.prot", "did you mean 'port'"),
            ("[metrics]\nenabled = true", "metrics.enabled", "unknown key"),
            ('[metrics]\nbind = ""', "metrics.bind", "IP address or host name"),
            ("metrics = 9234", "metrics", "must be a table"),
            (
                "[[listener]]\nport = 9234\n[metrics]",
                "metrics.port",
                "already uses port 9234",
            ),
        ],
    )
    def test_errors_name_the_key(
        self, write: Callable[[str], str], text: str, key: str, words: str
    ) -> None:
        with pytest.raises(ConfigError) as info:
            load_config(write(text))
        assert info.value.key == key
        assert words in info.value.message

    def test_objects_built_in_python_are_checked(self) -> None:
        with pytest.raises(ConfigError) as info:
            validate_config(BrokerConfig(metrics=MetricsSettings(port=-1)))
        assert info.value.key == "metrics.port"

    def test_metrics_port_flag(self, write: Callable[[str], str]) -> None:
        parser = build_parser()
        config = config_from_args(parser.parse_args(["--metrics-port", "0"]))
        assert config.metrics == MetricsSettings("127.0.0.1", 0)
        path = write('[metrics]\nbind = "127.0.0.2"\nport = 9300')
        config = config_from_args(parser.parse_args(["-c", path, "--metrics-port", "9301"]))
        assert config.metrics == MetricsSettings("127.0.0.2", 9301)
        assert config_from_args(parser.parse_args(["-c", path])).metrics == MetricsSettings(
            "127.0.0.2", 9300
        )
        with pytest.raises(ConfigError) as info:
            config_from_args(argparse.Namespace(metrics_port=70000))
        assert (info.value.key, info.value.source) == ("metrics.port", "--metrics-port")


def test_storage_commits_and_their_latency_are_exposed() -> None:
    async def main() -> None:
        async with (
            metrics_broker(storage="sqlite", data_dir="data") as broker,
            MqttClient("pub", url=f"mqtt://127.0.0.1:{broker.ports[0]}") as pub,
        ):
            for i in range(5):
                await pub.publish(f"kept/{i}", b"state", 1, retain=True)
            samples = await scrape(broker)
            assert value(samples, "mqttv5_storage_commits_total") >= 1
            assert value(samples, "mqttv5_storage_commit_seconds_total") > 0
            assert value(samples, "mqttv5_storage_commit_seconds_max") > 0
            assert value(samples, "mqttv5_storage_failing") == 0
            assert value(samples, "mqttv5_storage_journal_bytes") > 0  # not folded yet, or
            # the segment being written (a folded one is deleted only once a newer one exists)

    run(main())
