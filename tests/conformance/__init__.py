"""MQTT 5.0 conformance: tests for statements the other suites leave untested
(``test_server_*.py`` exercise the broker, ``test_client_*.py`` the client side), and the
manifest reader shared by the root ``conftest.py`` plugin and ``scripts/conformance``.

The manifest lists every numbered normative statement of MQTT 5.0 (``mqtt5-normative.tsv``: id,
section, topic, applies_to, requirement, reason_code). It is looked up in
``$MQTTV5_SPEC_MANIFEST``, then ``tests/spec/mqtt5-normative.tsv``, then the shared copy.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ROOT", "Statement", "canonical_id", "load_manifest", "manifest_path"]

ROOT = Path(__file__).resolve().parents[2]
MANIFEST_ENV = "MQTTV5_SPEC_MANIFEST"
_CANDIDATES = (
    ROOT / "tests" / "spec" / "mqtt5-normative.tsv",
    Path("/work/shared/spec/mqtt5-normative.tsv"),
)
_SHORT = re.compile(r"MQTT-(\d+)\.(\d+)-(\d+)")  # MQTT-4.2-1
_ZERO = re.compile(r"MQTT-(\d+)\.(\d+)\.0-(\d+)")  # MQTT-4.2.0-1


@dataclass(frozen=True, slots=True)
class Statement:
    """One row of the manifest."""

    id: str
    section: str
    topic: str
    applies_to: str  # "server", "client" or "both"
    requirement: str
    reason_code: str

    @property
    def chapter(self) -> int:
        return int(self.id.removeprefix("MQTT-").split(".", 1)[0])


def manifest_path() -> Path | None:
    """The manifest to use, or None when there is none."""
    env = os.environ.get(MANIFEST_ENV)
    if env:
        return Path(env)
    return next((p for p in _CANDIDATES if p.is_file()), None)


def load_manifest(path: Path) -> dict[str, Statement]:
    """The manifest's rows by id, in the standard's order."""
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return {
        row["id"]: Statement(
            row["id"],
            row["section"],
            row["topic"],
            row["applies_to"],
            row["requirement"],
            row["reason_code"] or "",
        )
        for row in rows
    }


def canonical_id(spec_id: object, manifest: dict[str, Statement]) -> str | None:
    """The manifest id that ``spec_id`` names, or None.

    The standard's body tags the transport rule ``MQTT-4.2-1`` and its Appendix B
    ``MQTT-4.2.0-1``: either spelling names the one row (whichever the manifest uses).
    """
    if not isinstance(spec_id, str):
        return None
    if spec_id in manifest:
        return spec_id
    if m := _SHORT.fullmatch(spec_id):
        alias = f"MQTT-{m[1]}.{m[2]}.0-{m[3]}"
    elif m := _ZERO.fullmatch(spec_id):
        alias = f"MQTT-{m[1]}.{m[2]}-{m[3]}"
    else:
        return None
    return alias if alias in manifest else None
