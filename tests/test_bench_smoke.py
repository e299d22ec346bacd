"""Smoke test of ``mqttv5 bench``: every scenario, briefly, against our broker in a subprocess.

The counts in the JSON must add up (received == sent x fan factor, nothing lost or duplicated at
QoS 1 and 2 on a healthy loopback run; at QoS 0 only received <= expected and > 0). Nothing here
checks timing: throughput and latency depend on the machine.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mqttv5.bench.report import Result, format_table, percentiles
from mqttv5.bench.scenarios import BenchOptions, make_plan
from tests.broker.rawclient import timeout

SCRIPT = Path(sys.executable).with_name("mqttv5")
COMMAND = (
    [str(SCRIPT)]
    if SCRIPT.exists()
    else [sys.executable, "-c", "import sys; from mqttv5.cli import main; sys.exit(main())"]
)
LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+) \(tcp\)")


@dataclass
class Broker:
    """The broker under test and what it logged."""

    proc: subprocess.Popen[str]
    port: int = 0
    log: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def describe(self) -> str:
        """For a failure message: is the broker alive, and its last log lines."""
        state = "running" if self.proc.poll() is None else f"exited {self.proc.returncode}"
        return f"broker {state}; its log ends:\n" + "".join(self.log[-15:])


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    """``mqttv5 broker --port 0`` in a subprocess (the port is read from its log)."""
    proc = subprocess.Popen(
        [*COMMAND, "broker", "--port", "0", "--sys-interval", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    running = Broker(proc)
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stderr is not None
    stream = proc.stderr

    def read() -> None:
        for line in stream:
            running.log.append(line)
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        while not running.port:
            found = LISTENING.search(lines.get(timeout=timeout(20)))
            if found:
                running.port = int(found.group(1))
        yield running
    finally:
        proc.terminate()
        proc.wait(timeout(10))
        reader.join(timeout(10))
        stream.close()


def bench(broker: Broker, *args: str) -> tuple[int, dict[str, Any]]:
    """Run ``mqttv5 bench ARGS --json`` against the broker: (exit status, JSON)."""
    port = str(broker.port)
    done = subprocess.run(
        [*COMMAND, "bench", *args, "-h", "127.0.0.1", "-p", port, "--json", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=timeout(60),
        check=False,
        env={**os.environ, "PYTHONASYNCIODEBUG": ""},  # measure, do not debug, the workers
    )
    assert done.returncode in (0, 1) and done.stdout, f"{done.stderr}\n{broker.describe()}"
    return done.returncode, json.loads(done.stdout)


def assert_exact(result: dict[str, Any], fan: int) -> None:
    """Every message arrived exactly once (QoS 1 and 2)."""
    assert result["sent"] > 0
    assert result["expected"] == result["sent"] * fan
    assert result["received"] == result["expected"]
    assert result["lost"] == 0
    assert result["duplicated"] == 0
    assert result["unexpected"] == 0
    assert result["errors"] == []
    assert result["ok"] is True


@pytest.mark.parametrize(
    ("args", "fan"),
    [
        (["fanin", "--qos", "1", "--publishers", "2", "--count", "300"], 1),
        (["fanin", "--qos", "2", "--publishers", "2", "--count", "200"], 1),
        (["fanin", "--qos", "1", "--count", "200", "-V", "311"], 1),
        (["fanout", "--qos", "1", "--subscribers", "3", "--count", "200"], 3),
        (["pairs", "--qos", "2", "--pairs", "3", "--count", "150"], 1),
        (["shared", "--qos", "1", "--publishers", "2", "--subscribers", "3", "--count", "200"], 1),
    ],
    ids=["fanin-qos1", "fanin-qos2", "fanin-311", "fanout-qos1", "pairs-qos2", "shared-qos1"],
)
def test_reliable_delivery_counts_add_up(broker: Broker, args: list[str], fan: int):
    status, result = bench(broker, *args, "--duration", "10", "--strict")
    assert status == 0, broker.describe()
    assert_exact(result, fan)
    count = int(args[args.index("--count") + 1])
    assert result["sent"] * fan == result["received"]
    assert result["sent"] == count * result["publishers"]


@pytest.mark.parametrize("scenario", ["fanin", "fanout", "pairs"])
def test_qos0_counts_are_consistent(broker: Broker, scenario: str):
    _, result = bench(broker, scenario, "--duration", "1", "--broker-pid", str(broker.pid))
    assert result["errors"] == []
    assert 0 < result["received"] <= result["expected"]
    assert result["duplicated"] == 0
    assert result["broker_cpu_us_per_msg"] is not None


def test_latency_reports_percentiles(broker: Broker):
    _, result = bench(broker, "latency", "--qos", "1", "--rate", "500", "--duration", "1")
    assert_exact(result, 1)
    latency = result["latency_us"]
    assert latency["samples"] == result["received"]
    assert 0 < latency["p50"] <= latency["p99"] <= latency["p99.9"] <= latency["max"]
    assert result["send_lag_us"]["samples"] == result["sent"]


def test_connect_cycles(broker: Broker):
    _, result = bench(
        broker, "connect", "--clients", "2", "--duration", "1", "--broker-pid", str(broker.pid)
    )
    assert result["errors"] == []
    assert result["received"] > 0
    assert result["lost"] == 0
    assert result["broker_cpu_ms_per_1000_connects"] is not None


def test_idle_connections_memory(broker: Broker):
    _, result = bench(
        broker, "idle", "--clients", "60", "--duration", "0.5", "--broker-pid", str(broker.pid)
    )
    assert_exact(result, 1)
    assert result["received"] == 60
    assert result["broker_rss_after_kib"] > 0
    assert result["broker_rss_bytes_per_connection"] is not None


def test_options_that_do_not_apply_are_refused(broker: Broker):
    done = subprocess.run(
        [*COMMAND, "bench", "fanin", "--pairs", "3", "-p", str(broker.port)],
        capture_output=True,
        text=True,
        timeout=timeout(30),
        check=False,
    )
    assert done.returncode == 2
    assert "--pairs does not apply to the fanin scenario" in done.stderr


def test_no_broker_is_an_error():
    done = subprocess.run(
        [*COMMAND, "bench", "fanin", "-h", "127.0.0.1", "-p", "1", "--duration", "1"],
        capture_output=True,
        text=True,
        timeout=timeout(30),
        check=False,
    )
    assert done.returncode == 1
    assert "cannot connect" in done.stderr


# --- in-process checks of the parts the runs above rely on --------------------------------------


def test_percentiles_are_nearest_rank_in_microseconds():
    found = percentiles(array("q", [i * 1000 for i in range(1000, 0, -1)]))
    assert found == {"p50": 500, "p99": 990, "p99.9": 999, "max": 1000, "samples": 1000}


def test_plan_fan_factors_and_groups():
    fanout = make_plan(BenchOptions("fanout", subscribers=3, workers=2), run_id="t")
    pubs = [p for spec in fanout.specs for p in spec.publishers]
    assert [p.fan for p in pubs] == [3]
    assert len(fanout.groups) == 3
    shared = make_plan(BenchOptions("shared", publishers=2, subscribers=4, workers=4), "t")
    assert len(shared.groups) == 1
    assert shared.groups[0].members == (0, 1, 2, 3)
    subs = [s for spec in shared.specs for s in spec.subscribers]
    assert {s.topic_filter for s in subs} == {"$share/bench-t/bench/t/shared/+"}
    fanin = make_plan(BenchOptions("fanin", publishers=4, window=500), "t")
    assert fanin.window == 125  # the subscriber is never more than 500 behind


def test_table_says_what_was_lost():
    result = Result("fanin", "mqtt://h:1", "5", 1, 64, publishers=4, subscribers=1)
    result.sent = result.expected = 10
    result.received, result.lost = 9, 1
    text = format_table(result)
    assert "FAILED: 1 lost" in text
    assert result.to_json()["ok"] is False
    idle = Result("idle", "mqtt://h:1", "5", 0, 64, clients=5, sent=5, expected=5, received=5)
    assert format_table(idle).endswith("OK")
