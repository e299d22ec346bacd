"""Throughput and latency of MQTT over UDP and DTLS at 0 %, 1 % and 10 % loss, next to TCP.

One ``mqttv5 broker`` process with tcp, udp and dtls (PSK) listeners. For each row, a
publisher and a subscriber (mqttv5's MqttClient, one process) exchange messages through it; on
the loss rows both clients reach the broker through a relay process (``mqttv5.bench.relay``)
that drops that share of the datagrams in each direction. TCP has only a 0 % row: this kernel
has no netem, and the relay is a UDP relay.

- throughput: ``--count`` QoS 1 messages of 64 bytes, published with up to 64 in flight;
  messages per second from the first publish until the subscriber has the last one. The broker
  keeps up to 100,000 queued messages per session (``max_queued_messages``; the default 1,000
  drops messages, as Mosquitto does, when a subscriber behind a lossy path falls behind).
- latency: ``--samples`` QoS 1 messages, one every 5 ms; milliseconds from publish to receipt
  (p50, p99, max). On the loss rows a lost datagram costs at least one retransmission timeout
  (``rto_min`` 0.05 s here, on the broker's listeners and on the clients).

Run:  .venv/bin/python benchmarks/udp.py [--count 5000] [--samples 400]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PSK = "00112233445566778899aabbccddeeff"
PAYLOAD = b"x" * 64


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def broker(directory: Path) -> Iterator[dict[str, int]]:
    ports = {
        "tcp": free_port(),
        "udp": free_port(socket.SOCK_DGRAM),
        "dtls": free_port(socket.SOCK_DGRAM),
    }
    (directory / "psk").write_text(f"bench:{PSK}\n")
    conf = directory / "broker.toml"
    conf.write_text(
        'sys_interval = 0\nlog_level = "warning"\nstorage = "memory"\n'
        "max_queued_messages = 100000\n"
        f'[[listener]]\ntype = "tcp"\nport = {ports["tcp"]}\nallow_anonymous = true\n'
        f'[[listener]]\ntype = "udp"\nport = {ports["udp"]}\nallow_anonymous = true\n'
        "rto_min = 0.05\n"
        f'[[listener]]\ntype = "dtls"\nport = {ports["dtls"]}\npsk_file = "{directory}/psk"\n'
        "allow_anonymous = true\nrto_min = 0.05\n"
    )
    cli = "import sys; from mqttv5.cli import main; sys.exit(main())"
    proc = subprocess.Popen([sys.executable, "-c", cli, "broker", "-c", str(conf)])
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", ports["tcp"]), 0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the broker did not start") from None
                time.sleep(0.05)
        yield ports
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def relay(target: int, loss: float) -> Iterator[int]:
    """A relay process dropping ``loss`` of the datagrams; yields its port."""
    if loss == 0:
        yield target
        return
    port = free_port(socket.SOCK_DGRAM)
    code = (
        "import asyncio\nfrom mqttv5.bench.relay import UdpRelay\n"
        "async def main():\n"
        f"    r = UdpRelay(('127.0.0.1', {target}), loss={loss}, seed=3)\n"
        f"    await r.start('127.0.0.1', {port})\n"
        "    await asyncio.Event().wait()\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    time.sleep(0.5)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def make_client(kind: str, port: int, name: str) -> Any:
    from mqttv5 import MqttClient
    from mqttv5.client import ConnectOptions
    from mqttv5.transport.udp import UdpSettings

    scheme = {"tcp": "mqtt", "udp": "mqtt-udp", "dtls": "mqtts-dtls"}[kind]
    udp = UdpSettings(rto_min=0.05) if kind != "tcp" else None  # as the broker's listeners
    client = MqttClient(name, url=f"{scheme}://127.0.0.1:{port}", options=ConnectOptions(udp=udp))
    if kind == "dtls":
        client.set_dtls_config("bench", PSK)
    return client


async def throughput(kind: str, port: int, count: int) -> float:
    pub, sub = make_client(kind, port, "tp-pub"), make_client(kind, port, "tp-sub")
    await pub.connect()
    await sub.connect()
    await sub.subscribe("bench/tp", qos=1)
    done = asyncio.get_running_loop().create_future()
    got = 0

    async def consume() -> None:
        nonlocal got
        async for _ in sub.messages():
            got += 1
            if got == count:
                done.set_result(time.perf_counter())
                return

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    window = asyncio.Semaphore(64)
    start = time.perf_counter()

    async def one() -> None:
        async with window:
            await pub.publish("bench/tp", PAYLOAD, qos=1)

    await asyncio.gather(*(one() for _ in range(count)))
    end = await asyncio.wait_for(done, 120)
    await task
    await pub.disconnect()
    await sub.disconnect()
    return count / (end - start)


async def latency(kind: str, port: int, samples: int) -> list[float]:
    pub, sub = make_client(kind, port, "lat-pub"), make_client(kind, port, "lat-sub")
    await pub.connect()
    await sub.connect()
    await sub.subscribe("bench/lat", qos=1)
    delays: list[float] = []

    async def consume() -> None:
        async for message in sub.messages():
            delays.append(time.perf_counter() - float(message.payload))
            if len(delays) == samples:
                return

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    sends = set()
    for _ in range(samples):
        stamp = repr(time.perf_counter()).encode()
        send = asyncio.ensure_future(pub.publish("bench/lat", stamp, qos=1))
        sends.add(send)
        send.add_done_callback(sends.discard)
        await asyncio.sleep(0.005)
    await asyncio.wait_for(task, 120)
    await asyncio.gather(*sends)
    await pub.disconnect()
    await sub.disconnect()
    return sorted(d * 1000 for d in delays)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--samples", type=int, default=400)
    args = parser.parse_args()
    rows = [("tcp", 0.0)] + [(k, loss) for k in ("udp", "dtls") for loss in (0.0, 0.01, 0.10)]
    print(f"{'transport':10} {'loss':>5} {'msg/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    with tempfile.TemporaryDirectory() as tmp, broker(Path(tmp)) as ports:
        for kind, loss in rows:
            with relay(ports[kind], loss) as port:
                rate = asyncio.run(throughput(kind, port, args.count))
                lat = asyncio.run(latency(kind, port, args.samples))
            p50 = statistics.median(lat)
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
            print(
                f"{kind:10} {loss:>5.0%} {rate:>9.0f} {p50:>8.2f} {p99:>8.2f} {lat[-1]:>8.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
