"""Scenario 7, secrets at rest and in motion: a dump of the database (every table as
text), of Redis (every key of the test's prefix, job data included) and every log the
service's processes wrote contain no ERP password, token, app secret or admin password
in plain text.

It runs last (``scans_evidence``) and scans what the other scenarios of the session left
(their process logs, and the database and Redis dumps each took before cleaning up),
plus a run of its own made to put secrets in harm's way: an authorization code exchanged
on first use, tokens expired and rotated, a refresh the ERP refuses (the connection is
flagged with the ERP's error), credentials set through the API (and a malformed attempt),
admin logins with the right and a wrong password, a tenant API token used, leaked into
a URL and revoked, and DEBUG logging everywhere."""

from __future__ import annotations

import secrets
import time
from typing import Any

import httpx
import psycopg
import pytest

from erp_sync.jobs.names import SYNC_QUEUE
from erp_sync.jobs.queues import JobQueues
from erp_sync.jobs.service import trigger_sync
from erp_sync.kit.crypto import Box
from erp_sync.runtime import Runtime
from erp_sync.settings import Settings
from tests.conftest import API_TOKEN, ENCRYPTION_KEY
from tests.jobs.test_processes import worker_env
from tests.reliability.support import (
    EVIDENCE,
    Processes,
    add_bling_tenant,
    dump_evidence,
    sandbox_process,
)

pytestmark = [pytest.mark.slow, pytest.mark.scans_evidence]


def stored_credentials(db: str, tenant: str) -> dict[str, Any]:
    with psycopg.connect(db) as c:
        row = c.execute(
            'SELECT credentials FROM "ErpConnection" WHERE "tenantId" = %s', (tenant,)
        ).fetchone()
    assert row is not None and row[0]
    creds: dict[str, Any] = Box(ENCRYPTION_KEY).decrypt_json(row[0])
    return creds


def remember_stored_tokens(db: str, tenant: str) -> None:
    """Every pair the service obtained is stored (encrypted) before it is used: reading
    the store after each sync knows them all."""
    creds = stored_credentials(db, tenant)
    EVIDENCE.secret("an ERP access token", creds.get("access_token"))
    EVIDENCE.secret("an ERP refresh token", creds.get("refresh_token"))


async def run_to_end(rt: Runtime, queues: JobQueues, tenant: str) -> str:
    job = (await trigger_sync(rt, queues, tenant)).job_id
    deadline = time.monotonic() + 60
    while (state := await queues.job_state(SYNC_QUEUE, job)) not in ("completed", "failed"):
        assert time.monotonic() < deadline, state
        time.sleep(0.2)
    return state


async def test_no_secret_in_any_dump_or_log(
    rt: Runtime,
    fast: Settings,
    queues: JobQueues,
    clean_db: str,
    procs: Processes,
    outcome: dict[str, Any],
) -> None:
    outcome.update(scenario="7-secrets", title="Secrets at rest and in motion", runs=1)
    admin_pass = "adm-" + secrets.token_hex(12)
    for label, value in (
        ("the admin password", admin_pass),
        ("the API token", API_TOKEN),
        ("the encryption key", ENCRYPTION_KEY),
    ):
        EVIDENCE.secret(label, value)
    env = {
        **worker_env(fast),
        "LOG_LEVEL": "DEBUG",
        "ENABLE_BULLBOARD": "true",
        "BULLBOARD_USER": "ops",
        "BULLBOARD_PASS": admin_pass,
    }
    with sandbox_process(products=150, customers=20, orders=20) as sb:
        # As an operator stores it right after authorising the app: the code, no tokens.
        await add_bling_tenant(
            rt,
            "vault",
            sb.base_url,
            {"client_id": sb.client_id, "client_secret": sb.client_secret, "code": sb.auth_code},
        )
        procs.worker(env, name="secrets-worker")
        _, api = procs.api(env)
        assert await run_to_end(rt, queues, "vault") == "completed"
        remember_stored_tokens(clean_db, "vault")
        sb.admin("faults", {"expire_tokens": True})
        assert await run_to_end(rt, queues, "vault") == "completed"
        remember_stored_tokens(clean_db, "vault")
        # A refresh the ERP refuses: the job fails, the connection needs re-authorisation.
        sb.admin("faults", {"expire_tokens": True, "reject_refresh": True})
        assert await run_to_end(rt, queues, "vault") == "failed"

        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        password = EVIDENCE.secret("an ERP app secret", "erp-secret-" + secrets.token_hex(10))
        with httpx.Client(base_url=api, headers=headers, timeout=30) as http:
            http.post("/api/v1/tenants", json={"id": "other", "name": "Other"})
            r = http.put(
                "/api/v1/tenants/other/connection",
                json={
                    "provider": "bling",
                    "settings": {"base_url": "http://127.0.0.1:9/Api/v3"},
                    "credentials": {"client_id": "other", "client_secret": password},
                },
            )
            assert r.status_code == 200, r.text
            bad = http.put(
                "/api/v1/tenants/other/connection",
                json={"provider": "nope", "credentials": {"client_secret": password}},
            )
            assert bad.status_code == 422 and str(password) not in bad.text
            connection = http.get("/api/v1/tenants/vault/connection").json()
            # A tenant token: shown once, then used, pasted into a URL (the access log
            # writes URLs), and revoked. Stored as a hash; masked by its shape in logs.
            made = http.post("/api/v1/tenants/vault/tokens", json={"name": "storefront"})
            assert made.status_code == 201, made.text
            tenant_token = EVIDENCE.secret("a tenant API token", made.json()["token"])
            as_tenant = {"Authorization": f"Bearer {tenant_token}"}
            assert http.get("/api/v1/tenants/vault/status", headers=as_tenant).is_success
            http.get("/api/v1/tenants", params={"token": tenant_token}, headers=as_tenant)
            http.delete(f"/api/v1/tenants/vault/tokens/{made.json()['id']}")
            revoked = http.get("/api/v1/tenants/vault", headers=as_tenant)
            assert revoked.status_code == 401 and str(tenant_token) not in revoked.text
            listed = http.get("/api/v1/tenants/vault/tokens").text
            ok = http.get("/admin/queues", auth=("ops", admin_pass))
            wrong = http.get("/admin/queues", auth=("ops", admin_pass + "x"))
        assert ok.status_code == 200 and wrong.status_code == 401
        assert connection["status"] == "NEEDS_REAUTH", connection
        for text in (r.text, str(connection), ok.text, listed):
            assert not [s for s in EVIDENCE.secrets if len(s) >= 6 and s in text]

    dump_evidence(clean_db, fast.queue_prefix, "secrets")
    procs.kill_all()  # flushes nothing more, but the logs are complete now

    scanned, findings = EVIDENCE.scan()
    kinds = sorted(set(EVIDENCE.secrets.values()))
    outcome.update(
        faults=[f"{len(EVIDENCE.secrets)} secrets ({', '.join(kinds)})"],
        files_scanned=len(EVIDENCE.files),
        bytes_scanned=scanned,
        findings=findings[:20],
        rows_checked=0,
        data_lost=0,
        notes=(
            "database dumps: COPY of every table; Redis dumps: every key under each "
            "scenario's prefix, by type; logs: every worker and API process of the session"
        ),
    )
    assert len(EVIDENCE.files) >= 4, EVIDENCE.files
    assert not findings, "\n".join(findings[:20])
