"""Client throughput: mqttv5's MqttClient, paho-mqtt and aiomqtt side by side against one Mosquitto.

For each client library and QoS (0 and 1), one publishing and one subscribing client of that
library publish N messages (64-byte payloads) through a Mosquitto this script starts on a random
loopback port. The table shows the publish rate (until the last publish() returned, i.e. for
QoS 1 until the last PUBACK) and the end-to-end rate (until the subscriber received the last
message), in messages per second.

Run:  .venv/bin/python benchmarks/client.py [--count 20000] [--window 64] [--only mqttv5]
      (aiomqtt is a benchmark-only dependency: ``pip install -e .[dev]`` installs it)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

PAYLOAD = b"x" * 64
TOPIC = "bench/topic"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def mosquitto() -> Iterator[int]:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "mosquitto.conf"
        # A queue large enough that a slow subscriber loses nothing (Mosquitto drops QoS 1/2
        # messages beyond max_queued_messages, 1000 by default).
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\n"
        )
        proc = subprocess.Popen(
            ["/usr/sbin/mosquitto", "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
            yield port
        finally:
            proc.terminate()
            proc.wait(5)


class Result:
    def __init__(self, name: str, qos: int, count: int, pub_s: float, e2e_s: float, got: int):
        self.name, self.qos, self.count = name, qos, count
        self.pub_rate = count / pub_s if pub_s else 0.0
        self.e2e_rate = got / e2e_s if e2e_s else 0.0
        self.got = got


# ---------------------------------------------------------------------------------------------
# mqttv5


async def run_mqttv5(port: int, qos: int, count: int, window: int) -> tuple[float, float, int]:
    from mqttv5.client import MqttClient

    url = f"mqtt://127.0.0.1:{port}"
    async with MqttClient("bench-sub", url=url, queue_size=count + 10) as sub:
        await sub.subscribe(TOPIC, qos)
        async with MqttClient("bench-pub", url=url) as pub:
            received = 0
            done = asyncio.get_running_loop().create_future()

            async def consume() -> None:
                nonlocal received
                async for _ in sub.messages():
                    received += 1
                    if received >= count:
                        done.set_result(time.perf_counter())
                        return

            consumer = asyncio.create_task(consume())
            start = time.perf_counter()
            if qos == 0:
                for _ in range(count):
                    await pub.publish(TOPIC, PAYLOAD)
            else:
                per_worker = count // window

                async def worker(n: int) -> None:
                    for _ in range(n):
                        await pub.publish(TOPIC, PAYLOAD, qos)

                sizes = [per_worker] * window
                sizes[0] += count - per_worker * window
                await asyncio.gather(*(worker(n) for n in sizes))
            pub_done = time.perf_counter()
            try:
                end = await asyncio.wait_for(done, 10)
            except TimeoutError:
                end = time.perf_counter() - 10
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer
            return pub_done - start, end - start, received


# ---------------------------------------------------------------------------------------------
# paho-mqtt (threaded network loops)


def run_paho(port: int, qos: int, count: int, window: int) -> tuple[float, float, int]:
    import paho.mqtt.client as paho

    received = 0
    all_in = threading.Event()
    subscribed = threading.Event()
    end = [0.0]

    def on_message(client: object, userdata: object, msg: object) -> None:
        nonlocal received
        received += 1
        if received >= count:
            end[0] = time.perf_counter()
            all_in.set()

    sub = paho.Client(paho.CallbackAPIVersion.VERSION2, "paho-sub", protocol=paho.MQTTv5)
    sub.on_message = on_message
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    sub.subscribe(TOPIC, qos)
    subscribed.wait(5)

    acked = 0
    all_acked = threading.Event()

    def on_publish(*args: object) -> None:
        nonlocal acked
        acked += 1
        if acked >= count:
            all_acked.set()

    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, "paho-pub", protocol=paho.MQTTv5)
    pub.max_inflight_messages_set(window)
    pub.max_queued_messages_set(0)
    pub.on_publish = on_publish
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    start = time.perf_counter()
    for _ in range(count):
        pub.publish(TOPIC, PAYLOAD, qos)
    all_acked.wait(30)
    pub_done = time.perf_counter()
    if not all_in.wait(10):
        end[0] = time.perf_counter() - 10
    for client in (pub, sub):
        client.disconnect()
        client.loop_stop()
    return pub_done - start, end[0] - start, received


# ---------------------------------------------------------------------------------------------
# aiomqtt


async def run_aiomqtt(port: int, qos: int, count: int, window: int) -> tuple[float, float, int]:
    import aiomqtt

    async with (
        aiomqtt.Client(
            "127.0.0.1", port, identifier="aio-sub", max_queued_incoming_messages=0
        ) as sub,
        aiomqtt.Client(
            "127.0.0.1", port, identifier="aio-pub", max_inflight_messages=window
        ) as pub,
    ):
        await sub.subscribe(TOPIC, qos)
        received = 0
        done = asyncio.get_running_loop().create_future()

        async def consume() -> None:
            nonlocal received
            async for _ in sub.messages:
                received += 1
                if received >= count:
                    done.set_result(time.perf_counter())
                    return

        consumer = asyncio.create_task(consume())
        start = time.perf_counter()
        per_worker = count // window

        async def worker(n: int) -> None:
            for _ in range(n):
                await pub.publish(TOPIC, PAYLOAD, qos)

        sizes = [per_worker] * window
        sizes[0] += count - per_worker * window
        await asyncio.gather(*(worker(n) for n in sizes))
        pub_done = time.perf_counter()
        try:
            end = await asyncio.wait_for(done, 10)
        except TimeoutError:
            end = time.perf_counter() - 10
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
        return pub_done - start, end - start, received


def _sync(
    fn: Callable[[int, int, int, int], object],
) -> Callable[[int, int, int, int], tuple[float, float, int]]:
    def run(port: int, qos: int, count: int, window: int) -> tuple[float, float, int]:
        result = asyncio.run(fn(port, qos, count, window))  # type: ignore[arg-type]
        assert isinstance(result, tuple)
        return result

    return run


RUNNERS: dict[str, Callable[[int, int, int, int], tuple[float, float, int]]] = {
    "mqttv5": _sync(run_mqttv5),
    "paho-mqtt": run_paho,
    "aiomqtt": _sync(run_aiomqtt),
}


def main(argv: list[str] | None = None) -> int:
    logging.getLogger("mqtt").setLevel(logging.ERROR)  # aiomqtt: no "pending publish" warnings
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--window", type=int, default=64, help="concurrent QoS 1 publishes")
    parser.add_argument("--only", action="append", choices=sorted(RUNNERS))
    args = parser.parse_args(argv)
    results: list[Result] = []
    with mosquitto() as port:
        for name in args.only or list(RUNNERS):
            for qos in (0, 1):
                try:
                    pub_s, e2e_s, got = RUNNERS[name](port, qos, args.count, args.window)
                except ImportError as exc:
                    print(f"{name}: not installed ({exc})", file=sys.stderr)
                    break
                results.append(Result(name, qos, args.count, pub_s, e2e_s, got))
    print(f"\n{args.count} messages of {len(PAYLOAD)} bytes, Mosquitto on loopback, "
          f"python {sys.version.split()[0]}, pid {os.getpid()}")  # fmt: skip
    print(
        f"{'client':<10} {'QoS':>3} {'publish msg/s':>14} {'end-to-end msg/s':>17} {'received':>9}"
    )
    for r in results:
        print(
            f"{r.name:<10} {r.qos:>3} {r.pub_rate:>14,.0f} {r.e2e_rate:>17,.0f} "
            f"{r.got:>9}/{r.count}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
