"""Scenario 5, API fuzzing: schemathesis (its CLI, a process of its own) reads the
OpenAPI document the API process serves and sends generated requests, valid and
invalid, to every operation, once with a tenant's token and once with the operator's
API_TOKEN: no answer may be a 5xx, and every answer must match what the document
declares (status code, content type, schema)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis as syncredis

from erp_sync.runtime import Runtime
from erp_sync.settings import Settings
from erp_sync.tokens import service as tokens
from erp_sync.tokens.schemas import TokenCreate
from tests.conftest import API_TOKEN, REDIS_URL, service_env
from tests.reliability.support import (
    EVIDENCE,
    OUTPUT,
    Processes,
    add_bling_tenant,
    dump_database,
    dump_redis,
)

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 25
CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance"
)


async def test_fuzzing_the_served_openapi_finds_no_5xx_and_no_schema_breach(
    rt: Runtime,
    settings: Settings,
    clean_db: str,
    procs: Processes,
    tmp_path: Path,
    outcome: dict[str, Any],
) -> None:
    # A fixed seed keeps CI reproducible; RELIABILITY_SEED explores other inputs.
    seed = int(os.environ.get("RELIABILITY_SEED") or 20261129) % 2**31
    outcome.update(scenario="5-api-fuzzing", title="API fuzzing (schemathesis)", seed=seed)
    # Something to find: tenants with and without a connection.
    await add_bling_tenant(
        rt,
        "acme",
        "http://127.0.0.1:9/Api/v3",
        {
            "client_id": "fuzz",
            "client_secret": EVIDENCE.secret("an ERP app secret", "fz-" + "9" * 24),
        },
    )
    admin_pass = EVIDENCE.secret("the admin password", "adm-" + os.urandom(12).hex())
    assert admin_pass
    env = service_env(
        settings, ENABLE_BULLBOARD="true", BULLBOARD_USER="ops", BULLBOARD_PASS=admin_pass
    )
    _, url = procs.api(env)
    # A tenant's token first (its answers: 404 for other tenants, 403 for operator
    # routes, must be declared too), then the operator's, which may delete "acme".
    async with rt.unit_of_work() as session:
        made = await tokens.create_token(session, "acme", TokenCreate(name="fuzz"))
    tenant_token = EVIDENCE.secret("a tenant API token", made.token)
    runs = []
    for who, token in (("tenant", tenant_token), ("operator", API_TOKEN)):
        report = tmp_path / f"schemathesis-{who}.json"
        command = [
            str(Path(sys.executable).parent / "schemathesis"), "run", f"{url}/openapi.json",
            "--header", f"Authorization: Bearer {token}",
            "--checks", CHECKS,
            "--max-examples", str(MAX_EXAMPLES),
            "--phases", "examples,coverage,fuzzing",
            "--seed", str(seed),
            "--workers", "1",
            "--request-timeout", "20",
            "--suppress-health-check", "all",
            "--report", "json", "--report-json-path", str(report),
            "--output-sanitize", "true",
        ]  # fmt: skip
        started = time.monotonic()
        result = subprocess.run(
            command, cwd=tmp_path, capture_output=True, text=True, timeout=240, check=False,
            env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false"},
        )  # fmt: skip
        elapsed = time.monotonic() - started
        output = result.stdout + result.stderr
        OUTPUT.mkdir(exist_ok=True)
        # The whole report, for a failure.
        (OUTPUT / f"schemathesis-{who}.txt").write_text(output)
        summary = orjson.loads(report.read_bytes()) if report.exists() else {}
        operations = re.search(r"Selected: (\d+)", output)
        cases = re.search(r"(\d+) generated", output)
        runs.append(
            {
                "who": who,
                "operations": int(operations.group(1)) if operations else None,
                "test_cases": int(cases.group(1)) if cases else None,
                "exit_code": result.returncode,
                "fuzz_seconds": round(elapsed, 1),
                "failures_reported": len(summary.get("failures") or []),
                "output": output,
            }
        )
    operator = runs[-1]
    outcome.update(
        runs=len(runs),
        faults=[
            f"schemathesis {CHECKS.replace(',', ', ')}; up to {MAX_EXAMPLES} examples per "
            f"operation, seed {seed}; once with a tenant's token, once with API_TOKEN"
        ],
        rows_checked=0,
        data_lost=0,
        operations=operator["operations"],
        test_cases=sum(r["test_cases"] or 0 for r in runs),
        exit_code=max(r["exit_code"] for r in runs),
        fuzz_seconds=round(sum(r["fuzz_seconds"] for r in runs), 1),
        failures_reported=sum(r["failures_reported"] for r in runs),
    )
    for r in runs:
        assert r["exit_code"] == 0, f"with the {r['who']} token:\n" + r["output"][-6000:]

    dump_database(clean_db, "api-fuzzing")
    with syncredis.Redis.from_url(REDIS_URL, decode_responses=True) as r:
        dump_redis(r, f"{settings.queue_prefix}:*", "api-fuzzing")
