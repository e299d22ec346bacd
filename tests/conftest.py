"""Root conftest: the conformance plugin.

At collection every ``@pytest.mark.spec(...)`` id is checked against the MQTT 5.0 manifest (an
unknown id fails the run, naming the test). At the end of the session the spec ids of every
test, the component it exercises (from its path) and its outcome are written as JSON to
``$MQTTV5_CONFORMANCE_JSON`` (default ``.pytest_cache/conformance.json``) for
``scripts/conformance``; a partial run is written too, and marked as such.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conformance import canonical_id, load_manifest, manifest_path

# The component a test exercises, by the start of its path (first match wins). tests/protocol
# is the shared core (Connection, codec) that broker and client both run.
COMPONENTS = (
    ("tests/interop/test_broker_interop.py", "broker"),
    ("tests/interop/test_cli_mosquitto.py", "client"),
    ("tests/conformance/test_server_", "broker"),
    ("tests/conformance/test_client_", "client"),
    ("tests/broker/", "broker"),
    ("tests/faults/", "broker"),
    ("tests/client/", "client"),
    ("tests/protocol/", "both"),
    ("tests/transport/", "both"),
)


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(ConformancePlugin(config), "mqttv5-conformance")


class ConformancePlugin:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.manifest: Path | None = None
        self.specs: dict[str, dict[str, Any]] = {}  # nodeid -> component, ids
        self.outcomes: dict[str, str] = {}
        self.deselected = 0
        self.collect_errors = 0

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        path = manifest_path()
        manifest = load_manifest(path) if path is not None and path.is_file() else None
        self.manifest = path if manifest is not None else None
        problems = []
        for item in items:
            ids = [i for m in item.iter_markers("spec") for i in (m.args or [None])]
            if not ids:
                continue
            relpath = item.path.relative_to(self.config.rootpath).as_posix()
            component = next((c for p, c in COMPONENTS if relpath.startswith(p)), None)
            if component is None:
                problems.append(f"{item.nodeid}: no component for {relpath} (see COMPONENTS)")
            known = set()
            for spec_id in ids:
                canon = spec_id if manifest is None else canonical_id(spec_id, manifest)
                if spec_id is None:
                    problems.append(f"{item.nodeid}: @pytest.mark.spec() names no id")
                elif not isinstance(canon, str):
                    problems.append(f"{item.nodeid}: spec id {spec_id!r} is not in {path}")
                else:
                    known.add(canon)
            self.specs[item.nodeid] = {"component": component, "ids": sorted(known)}
        if problems:
            raise pytest.UsageError("bad @pytest.mark.spec markers:\n  " + "\n  ".join(problems))

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.deselected += len(items)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self.collect_errors += report.failed

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        xfail = hasattr(report, "wasxfail")
        if report.failed:
            self.outcomes[report.nodeid] = "failed"
        elif report.skipped:
            self.outcomes.setdefault(report.nodeid, "xfailed" if xfail else "skipped")
        elif report.when == "call":
            self.outcomes.setdefault(report.nodeid, "xpassed" if xfail else "passed")

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.specs and self.manifest is None:
            terminalreporter.write_line("conformance: no MQTT 5.0 manifest found; ids unchecked")

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        config = self.config
        if hasattr(config, "workerinput"):  # an xdist worker: the controller writes
            return
        here = config.invocation_params.dir
        args = sorted(str((here / a).resolve()) for a in config.args)
        whole = sorted(str(config.rootpath / p) for p in config.getini("testpaths"))
        complete = (
            args in (whole, [str(config.rootpath)])
            and not self.deselected
            and not self.collect_errors
            and len(self.outcomes) == session.testscollected
        )
        data = {
            "complete": complete,
            "exitstatus": int(exitstatus),
            "args": list(config.invocation_params.args),
            "collected": session.testscollected,
            "ran": len(self.outcomes),
            "deselected": self.deselected,
            "manifest": str(self.manifest) if self.manifest else None,
            "tests": [
                {"nodeid": nodeid, "outcome": self.outcomes.get(nodeid, "not run"), **spec}
                for nodeid, spec in self.specs.items()
            ],
        }
        env = os.environ.get("MQTTV5_CONFORMANCE_JSON")
        out = Path(env) if env else config.rootpath / ".pytest_cache" / "conformance.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


# Every test runs in its own empty working directory, removed afterwards: a broker started with
# the default `data_dir = "./mqttv5-data"` (in process or as a subprocess, which inherits the
# directory) never shares or leaves state. A hook, not a fixture, so Hypothesis tests are not
# given a function-scoped fixture.
_CWD_KEY = pytest.StashKey[tuple[str, str]]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    import tempfile

    here = os.getcwd()
    scratch = tempfile.mkdtemp(prefix="mqttv5-test-")
    item.stash[_CWD_KEY] = (here, scratch)
    os.chdir(scratch)


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    import shutil

    saved = item.stash.get(_CWD_KEY, None)
    if saved is not None:
        os.chdir(saved[0])
        shutil.rmtree(saved[1], ignore_errors=True)
