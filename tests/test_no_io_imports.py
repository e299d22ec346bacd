"""The sans-I/O core must stay free of I/O, clocks and concurrency.

`mqttv5.protocol` (and the pure parts of the UDP transport: reliability and fragmentation)
take bytes and time as inputs and return packets, bytes and deadlines as outputs. They must
never import asyncio, sockets, TLS, the clock, selectors or threads, so that they can be
property-tested and fuzzed deterministically and shared by client and broker.

The check parses each file with `ast` (nothing is imported or executed) and looks at every
`import` and `from ... import` anywhere in the file, including inside functions and
`if TYPE_CHECKING:` blocks, and at `__import__("...")` / `importlib.import_module("...")`
calls with a literal module name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

FORBIDDEN = frozenset({"asyncio", "socket", "ssl", "time", "selectors", "threading"})

SRC = Path(__file__).resolve().parent.parent / "src" / "mqttv5"
PROTOCOL_DIR = SRC / "protocol"
EXTRA_FILES = (
    SRC / "transport" / "udp" / "reliability.py",
    SRC / "transport" / "udp" / "fragmentation.py",
)


def _forbidden_root(module: str) -> str | None:
    """Return the forbidden top-level module `module` belongs to, if any."""
    root = module.split(".", 1)[0]
    return root if root in FORBIDDEN else None


def forbidden_imports(source: str, filename: str = "<string>") -> list[str]:
    """Return "line N: module" for every forbidden import in `source`."""
    tree = ast.parse(source, filename=filename)
    found: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom | ast.Call):
            continue
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            # Relative imports (`from . import time`) stay inside our own package.
            if node.level == 0 and node.module is not None:
                modules = [node.module]
        elif node.args:
            func = node.func
            is_dunder = isinstance(func, ast.Name) and func.id == "__import__"
            is_importlib = isinstance(func, ast.Attribute) and func.attr == "import_module"
            first = node.args[0]
            if (
                (is_dunder or is_importlib)
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
            ):
                modules = [first.value]
        found.extend(
            f"line {node.lineno}: {module}" for module in modules if _forbidden_root(module)
        )
    return found


def _checked_files() -> list[Path]:
    files = sorted(PROTOCOL_DIR.rglob("*.py")) if PROTOCOL_DIR.is_dir() else []
    files.extend(path for path in EXTRA_FILES if path.is_file())
    return files


def test_protocol_package_exists() -> None:
    assert PROTOCOL_DIR.is_dir(), f"{PROTOCOL_DIR} is missing"
    assert _checked_files(), f"no .py files found under {PROTOCOL_DIR}"


@pytest.mark.parametrize("path", _checked_files(), ids=lambda p: str(p.relative_to(SRC.parent)))
def test_sans_io_module_imports_no_io(path: Path) -> None:
    bad = forbidden_imports(path.read_text(encoding="utf-8"), filename=str(path))
    assert not bad, f"{path.relative_to(SRC.parent)} imports I/O modules: {bad}"


# --- the checker itself ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import asyncio\n", ["line 1: asyncio"]),
        ("import os, socket as s\n", ["line 1: socket"]),
        ("import asyncio.events\n", ["line 1: asyncio.events"]),
        ("from asyncio import sleep\n", ["line 1: asyncio"]),
        ("from time import monotonic\n", ["line 1: time"]),
        ("from ssl import SSLContext\n", ["line 1: ssl"]),
        ("import selectors\n", ["line 1: selectors"]),
        ("from threading import Lock\n", ["line 1: threading"]),
        ("def f():\n    import time\n    return time.time()\n", ["line 2: time"]),
        (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import asyncio\n",
            ["line 3: asyncio"],
        ),
        ("m = __import__('socket')\n", ["line 1: socket"]),
        (
            "import importlib\nm = importlib.import_module('asyncio.tasks')\n",
            ["line 2: asyncio.tasks"],
        ),
    ],
)
def test_checker_flags_io_imports(source: str, expected: list[str]) -> None:
    assert forbidden_imports(source) == expected


@pytest.mark.parametrize(
    "source",
    [
        "import struct\nimport enum\nfrom dataclasses import dataclass\n",
        "import timeit\nimport datetime\nimport sslib\nimport asyncio_extra\n",
        "from . import time\nfrom .socket import x\nfrom ..asyncio import y\n",
        "from collections.abc import Iterator\n",
        "x = 'import asyncio'\n# import socket\n",
    ],
)
def test_checker_accepts_pure_imports(source: str) -> None:
    assert forbidden_imports(source) == []
