"""A real Mosquitto broker for client tests: started on a free loopback port, stopped at the end.

``Mosquitto(tmp_path, extra="max_qos 1")`` writes a config (``listener <port> 127.0.0.1``,
``allow_anonymous true``, ``persistence true`` in the temporary directory when asked) and
:meth:`Mosquitto.restart` stops and starts it on the same port (persisted sessions survive).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

MOSQUITTO = "/usr/sbin/mosquitto"
FACTOR = float(os.environ.get("MQTTV5_TEST_TIMEOUT_FACTOR", "1"))

T = TypeVar("T")


def scaled(seconds: float) -> float:
    """A timeout scaled by MQTTV5_TEST_TIMEOUT_FACTOR."""
    return seconds * FACTOR


def run(coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
    """Run ``coro`` in a fresh event loop, failing after ``timeout`` (scaled) seconds."""

    async def bounded() -> T:
        async with asyncio.timeout(scaled(timeout)):
            return await coro

    return asyncio.run(bounded())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Mosquitto:
    """One Mosquitto process with its own config and data directory."""

    def __init__(self, directory: Path, *, extra: str = "", persistence: bool = False) -> None:
        self.directory = directory
        self.port = free_port()
        self.conf = directory / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            f"log_dest file {directory / 'mosquitto.log'}",
            "log_type all",
        ]
        if os.geteuid() == 0:
            # Started as root, Mosquitto switches to user "mosquitto", which cannot write the
            # test's temporary directory (log, persistence file).
            lines.append("user root")
        if persistence:
            lines += [
                "persistence true",
                f"persistence_location {directory}/",
                "autosave_interval 0",
            ]
        lines.append(extra)
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + scaled(10)
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mosquitto exited: {self.log()[-2000:]}") from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def stop(self) -> None:
        proc = self.proc
        self.proc = None
        if proc is None:
            return
        proc.terminate()  # SIGTERM: Mosquitto saves its persistence file before exiting
        try:
            proc.wait(scaled(10))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        path = self.directory / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""
