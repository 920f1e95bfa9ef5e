"""The Grafana dashboard and the Prometheus alert rules in deploy/ query only series the
service exports, with labels those series have; promtool accepts and unit-tests the
rules."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import yaml

from erp_sync.jobs.names import SYNC_QUEUE
from erp_sync.jobs.queues import JobQueues
from erp_sync.jobs.service import trigger_sync
from erp_sync.runtime import Runtime
from erp_sync.settings import Settings
from tests.conftest import ROOT
from tests.jobs.helpers import add_tenant, wait_until
from tests.observability.support import Scrape

DASHBOARD = ROOT / "deploy" / "grafana" / "erp-sync.json"
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
DOC = ROOT / "docs" / "observability.md"

PROMQL_WORDS = {
    # aggregations, functions and keywords the files may use
    "sum", "min", "max", "avg", "count", "topk", "bottomk", "by", "without", "on",
    "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
    "rate", "irate", "increase", "delta", "histogram_quantile", "clamp_min", "clamp_max",
    "absent", "max_over_time", "min_over_time", "avg_over_time", "label_values", "time",
    "vector", "scalar",
}  # fmt: skip
IDENT = re.compile(r"(?<![\w.$])[a-zA-Z_:][\w:]*")
SELECTOR = re.compile(r"([a-zA-Z_:][\w:]*)?\s*\{([^}]*)\}")
MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def check_query(expr: str, exported: Scrape) -> set[str]:
    """The series ``expr`` reads; fails on a name or a label the service does not export."""
    used: set[str] = set()
    labels_used: list[tuple[str | None, set[str]]] = []

    def selector(m: re.Match[str]) -> str:
        labels_used.append((m.group(1), set(MATCHER.findall(m.group(2)))))
        return m.group(1) or ""

    rest = SELECTOR.sub(selector, expr)
    grouped: set[str] = set()
    for group in GROUPING.findall(rest):
        grouped |= {g.strip() for g in group.split(",") if g.strip()}
    rest = GROUPING.sub(" ", rest)
    rest = re.sub(r"\[[^\]]*\]", " ", rest)  # range selectors: [5m], [$__rate_interval]
    rest = re.sub(r'"[^"]*"', " ", rest)
    if rest.strip().startswith("label_values("):  # Grafana: label_values(metric, label)
        metric, label = (p.strip() for p in rest.strip()[13:-1].split(","))
        labels_used.append((metric, {label}))
        rest = metric
    names = exported.series_names()
    for ident in IDENT.findall(rest):
        if ident in PROMQL_WORDS:
            continue
        assert ident in names, f"{expr!r} reads {ident!r}, which /metrics does not export"
        used.add(ident)
    assert used, f"{expr!r} reads no series of ours"
    # Labels are checked where the scrape shows them (families with samples).
    seen = [exported.labels_of(s) for s in used]
    known = set().union(*(labels for labels in seen if labels is not None))
    for metric, labels in labels_used:
        have = exported.labels_of(metric) if metric else known
        if have is not None:
            assert labels <= have, f"{expr!r}: {metric} has labels {have}, not {labels - have}"
    if all(labels is not None for labels in seen):
        assert grouped <= known, f"{expr!r} groups by {grouped - known}"
    return used


@pytest.fixture
async def exported(
    rt: Runtime, settings: Settings, queues: JobQueues, start_worker: Callable[..., Any]
) -> Scrape:
    """/metrics after one real sync job, so that most families have samples (and their
    labels can be checked)."""
    from erp_sync.api.app import create_app

    await add_tenant(rt, "acme")
    await start_worker()
    job = await trigger_sync(rt, queues, "acme")

    async def completed() -> bool:
        return await queues.job_state(SYNC_QUEUE, job.job_id) == "completed"

    await wait_until(completed, timeout=60, what="the sync job to complete")
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
            r = await c.get("/metrics")
    assert r.status_code == 200
    return Scrape.parse(r.text)


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def test_dashboard_queries_only_what_the_service_exports(exported: Scrape) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    read: set[str] = set()
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["description"], panel
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            read |= check_query(target["expr"], exported)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            read |= check_query(variable["query"]["query"], exported)
    # what the dashboard is for: queue depth, failures, lag, ERP errors, records, waits
    for series in (
        "erp_sync_queue_jobs", "erp_sync_jobs_failed_total", "erp_sync_sync_lag_max_seconds",
        "erp_sync_tenants", "erp_sync_erp_requests_total", "erp_sync_records_inserted_total",
        "erp_sync_governor_wait_seconds_bucket", "erp_sync_workers_live",
    ):  # fmt: skip
        assert series in read, f"no panel shows {series}"


def test_alert_rules_query_only_what_the_service_exports(exported: Scrape) -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rules = {r["alert"]: r for g in groups for r in g["rules"]}
    doc = DOC.read_text().lower()
    for name, rule in rules.items():
        check_query(rule["expr"], exported)
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), name
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert f"### {name.lower()}" in doc and anchor == name.lower(), name
    # the four the issue asks for, with their durations
    assert rules["ErpSyncQueuePaused"]["for"] == "1h"
    assert rules["ErpSyncTenantsStale"]["for"] == "30m"
    assert "erp_sync_jobs_failed_total" in rules["ErpSyncJobFailureRate"]["expr"]
    assert "erp_sync_workers_live" in rules["ErpSyncNoLiveWorker"]["expr"]


def test_promtool_checks_the_rules_and_the_exposition(exported: Scrape) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: .ci/run installs Debian's prometheus package")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    for args, stdin in (
        (["check", "rules", str(RULES)], None),
        (["test", "rules", str(RULE_TESTS)], None),
        # naming and format lint of what /metrics serves (silent when all is well)
        (["check", "metrics"], exported.text),
    ):
        r = subprocess.run(
            [promtool, *args], input=stdin, capture_output=True, text=True, timeout=60,
            check=False,
        )  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        assert stdin is not None or "SUCCESS" in r.stdout, r.stdout
        assert not r.stderr.strip(), r.stderr
