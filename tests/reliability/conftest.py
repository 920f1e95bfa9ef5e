"""Fixtures of the reliability suite: child processes killed at the end, and each
scenario's outcome collected into test-output/reliability.json (rendered into
docs/reliability.md by `python -m tests.reliability.report`)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from tests.reliability.support import EVIDENCE, OUTPUT, RESULTS, Processes

_OUTCOMES: dict[str, dict[str, Any]] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "scans_evidence: reads what the other scenarios left; runs after them"
    )


def pytest_collection_modifyitems(session: pytest.Session, items: list[pytest.Item]) -> None:
    # The secrets scan reads the logs and dumps of every scenario that ran before it.
    last = [i for i in items if i.get_closest_marker("scans_evidence")]
    if last:
        items[:] = [i for i in items if i not in last] + last


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call":
        item.reliability_passed = report.passed  # type: ignore[attr-defined]


@pytest.fixture
def procs() -> Iterator[Processes]:
    group = Processes()
    try:
        yield group
    finally:
        group.kill_all()


@pytest.fixture
def outcome(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """A scenario fills this in; it is recorded whether the test passed or not."""
    data: dict[str, Any] = {}
    started = time.monotonic()
    yield data
    if "scenario" not in data:
        return
    data["passed"] = bool(getattr(request.node, "reliability_passed", False))
    data["duration_s"] = round(time.monotonic() - started, 1)
    data["test"] = request.node.nodeid
    data["finished_at"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    _OUTCOMES[str(data["scenario"])] = data


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if EVIDENCE.directory is not None:
        shutil.rmtree(EVIDENCE.directory, ignore_errors=True)
        EVIDENCE.directory = None
    if not _OUTCOMES:
        return
    OUTPUT.mkdir(exist_ok=True)
    previous: dict[str, Any] = {}
    if RESULTS.exists():
        try:
            previous = orjson.loads(RESULTS.read_bytes()).get("scenarios", {})
        except (orjson.JSONDecodeError, AttributeError):
            previous = {}
    scenarios = {**previous, **_OUTCOMES}
    RESULTS.write_bytes(
        orjson.dumps(
            {
                "written_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "commit": _commit(),
                "scenarios": scenarios,
            },
            option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS,
        )
    )
