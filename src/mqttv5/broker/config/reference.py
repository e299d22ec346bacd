"""The configuration reference (docs/configuration.md), generated from the key declarations."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from .bridge import (
    BridgeSettings,
    BridgeTopic,
    MetricsSettings,
)
from .checking import (
    _BRIDGE_KINDS,
    _BROKER_KINDS,
    _LISTENER_KINDS,
    _METRICS_KINDS,
    _TOPIC_KINDS,
    _Kind,
    _show,
)
from .keys import (
    KeySpec,
)
from .listener import (
    ListenerSettings,
)
from .model import (
    BRIDGE_KEYS,
    BRIDGE_TOPIC_KEYS,
    BROKER_KEYS,
    LISTENER_KEYS,
    METRICS_KEYS,
    BrokerConfig,
)

# --- the reference --------------------------------------------------------------------------------

_TYPE_DOC: Final = {
    "int": "integer",
    "float": "number",
    "bool": "boolean",
    "str": "string",
    "list[int]": "array of integers",
    "list[str]": "array of strings",
    "listeners": "array of tables",
    "bridges": "array of tables",
    "topics": "array of tables",
    "metrics": "table",
}


def _type_doc(spec: KeySpec, kind: _Kind) -> str:
    text = _TYPE_DOC[kind.base]
    if spec.rule_doc is not None:
        text += f", {spec.rule_doc}"
    elif spec.minimum is not None and spec.maximum is not None:
        text += f", {spec.minimum}..{spec.maximum}"
    elif spec.minimum is not None:
        text += f", ≥ {spec.minimum}"
    elif spec.above is not None:
        text += f", > {spec.above:g}"
    if spec.choices:
        text += ": " + ", ".join(f"`{c}`" for c in spec.choices)
    return text


def _default_doc(spec: KeySpec, value: object) -> str:
    if spec.default_doc is not None:
        return spec.default_doc
    if value is None:
        return "unset"
    return f"`{_show(value)}`"


def _table(
    cls: type, specs: Mapping[str, KeySpec], kinds: Mapping[str, _Kind], rename: Mapping[str, str]
) -> list[str]:
    defaults = cls()
    lines = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for name, spec in specs.items():
        cells = [
            f"`{rename.get(name, name)}`",
            _type_doc(spec, kinds[name]),
            _default_doc(spec, getattr(defaults, name)),
            spec.doc,
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines


def config_reference_markdown() -> str:
    """The configuration reference in Markdown, generated from the declarations above.

    ``docs/configuration.md`` holds this text between its ``GENERATED`` markers; a test checks
    that it is up to date (regenerate with ``mqttv5 broker --print-config-reference``).
    """
    lines = [
        "## Top-level keys",
        "",
        *_table(
            BrokerConfig, BROKER_KEYS, _BROKER_KINDS, {"listeners": "listener", "bridges": "bridge"}
        ),
        "",
        "## `[[listener]]` keys",
        "",
        "Each `[[listener]]` table opens one socket. A key left unset inherits the top-level key "
        "of the same name.",
        "",
        *_table(ListenerSettings, LISTENER_KEYS, _LISTENER_KINDS, {}),
        "",
        "## `[[bridge]]` keys",
        "",
        "Each `[[bridge]]` table connects this broker to another one (mqttv5, Mosquitto or any "
        "MQTT 5.0 or 3.1.1 broker) and names the topics they share; see docs/bridges.md.",
        "",
        *_table(BridgeSettings, BRIDGE_KEYS, _BRIDGE_KINDS, {}),
        "",
        "### Bridge `topics` entries",
        "",
        "Each entry of a bridge's `topics` array is one rule, like a Mosquitto `topic` line: "
        '`topics = [{ pattern = "sensors/#", direction = "out", qos = 1 }]`.',
        "",
        *_table(BridgeTopic, BRIDGE_TOPIC_KEYS, _TOPIC_KINDS, {}),
        "",
        "## `[metrics]` keys",
        "",
        "A `[metrics]` table, even an empty one, opens an HTTP listener serving `/metrics` "
        "(Prometheus text format) and `/health`; `--metrics-port N` does the same from the "
        "command line. See docs/metrics.md.",
        "",
        *_table(MetricsSettings, METRICS_KEYS, _METRICS_KINDS, {}),
    ]
    return "\n".join(lines) + "\n"
