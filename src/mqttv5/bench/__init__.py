"""``mqttv5 bench``: a load generator that is not the bottleneck.

:mod:`~mqttv5.bench.scenarios` plans a run and coordinates it, :mod:`~mqttv5.bench.workers` holds
the worker processes (raw MQTT connections, pre-encoded packets, minimal parsing on receive) and
:mod:`~mqttv5.bench.report` formats the result. The command line is :mod:`mqttv5.cli.bench`.
"""

from __future__ import annotations

from .report import Result, format_table
from .scenarios import SCENARIOS, BenchError, BenchOptions, run

__all__ = ["SCENARIOS", "BenchError", "BenchOptions", "Result", "format_table", "run"]
