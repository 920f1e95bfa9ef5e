"""`/admin/queues`: queue overview, jobs, job detail, failures, and the actions on them.

Server-rendered HTML that works without JavaScript; a few lines of inline script only
refresh the overview's numbers. Every change goes through BullMQ's own Queue and Job
methods, so Node's Bull Board keeps reading and controlling the same queues.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable
from typing import Any, TypeVar
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from pydantic import ValidationError

from erp_sync.admin.auth import CSRF_FIELD, Action, ActionDep, Admin, AdminDep, sign
from erp_sync.admin.views import (
    PAGE_SIZE,
    STATES,
    fmt_duration,
    fmt_time,
    job_view,
    short,
    worker_view,
)
from erp_sync.errors import DomainError, ErpSyncError
from erp_sync.jobs import heartbeat, runs
from erp_sync.jobs.names import PRUNE_JOB, SYNC_JOB, SYNC_QUEUE
from erp_sync.jobs.queues import JobQueues
from erp_sync.jobs.service import trigger_sync
from erp_sync.kit.logging import get_logger
from erp_sync.runtime import Runtime

log = get_logger(__name__)
T = TypeVar("T")

BASE = "/admin/queues"
REFRESH_SECONDS = 5
CLEAN_UNITS_MS = {"minutes": 60_000, "hours": 3_600_000, "days": 86_400_000}
CLEAN_BATCH = 1000
CLEAN_MAX_BATCHES = 200
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

router = APIRouter(tags=["admin"], include_in_schema=False)

_env = Environment(
    loader=PackageLoader("erp_sync.admin", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.globals.update(
    fmt_time=fmt_time,
    fmt_duration=fmt_duration,
    short=short,
    base=BASE,
    states=STATES,
    csrf_field=CSRF_FIELD,
    refresh_seconds=REFRESH_SECONDS,
)


# -- plumbing ---------------------------------------------------------------------------


def _rt(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def _queues(request: Request) -> JobQueues:
    queues: JobQueues = request.app.state.queues
    return queues


def _queue_name(request: Request, name: str) -> str:
    if name not in _queues(request).queues:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no queue named {name!r}")
    return name


def _security_headers(response: Response, nonce: str) -> Response:
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; "
        f"style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; "
        "connect-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    # same-origin keeps the Origin header on our own POSTs (no-referrer would make it "null").
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response


def _flash(request: Request, admin: Admin) -> dict[str, str] | None:
    text = request.query_params.get("flash")
    signature = request.query_params.get("sig", "")
    if not text or not secrets.compare_digest(signature, sign(admin.key, "flash", text)):
        return None  # only messages we wrote ourselves are shown
    kind, _, message = text.partition(":")
    return {"kind": "error" if kind == "error" else "ok", "text": message}


def _page(
    request: Request,
    admin: Admin,
    template: str,
    *,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    html = _env.get_template(template).render(
        user=admin.user,
        csrf=admin.csrf_token(),
        nonce=nonce,
        now=fmt_time(time.time() * 1000),
        flash=_flash(request, admin),
        queue_names=list(_queues(request).queues),
        **context,
    )
    response = HTMLResponse(html, status_code=status_code)
    _security_headers(response, nonce)
    return response


def _back(action: Action, default: str) -> str:
    """Where to go after an action: a path of ours from the form, never another site."""
    target = action.field("back") or default
    if (
        not target.startswith(BASE)
        or "//" in target
        or "\\" in target
        or any(ord(c) < 33 for c in target)
    ):
        return default
    return target


def _done(
    action: Action,
    default: str,
    message: str,
    *,
    error: bool = False,
    target: str | None = None,
) -> RedirectResponse:
    """303 back to a page of ours, with a signed one-line message for it to show."""
    text = f"{'error' if error else 'ok'}:{message}"
    target = target or _back(action, default)
    sep = "&" if "?" in target else "?"
    query = urlencode({"flash": text, "sig": sign(action.admin.key, "flash", text)})
    return RedirectResponse(f"{target}{sep}{query}", status_code=status.HTTP_303_SEE_OTHER)


def _audit(action: Action, what: str, **fields: Any) -> None:
    # WARNING, not INFO: an operator changing queues by hand must reach the logs even where
    # only warnings are kept (the CLI entry points log INFO lines only with LOG_LEVEL=DEBUG).
    log.warning(
        "admin.action", action=what, user=action.admin.user, client=action.admin.client, **fields
    )


async def _attempt(coro: Awaitable[T]) -> tuple[T | None, str | None]:
    """Run a BullMQ call for an action; its refusal becomes a message for the operator."""
    try:
        return await coro, None
    except ErpSyncError as exc:  # a queue that does not answer, ...
        return None, str(exc)
    except (TypeError, ValueError) as exc:  # bullmq's "job is not in the failed state", ...
        return None, str(exc).split(". ", 1)[0]
    except Exception as exc:
        if "locked" in str(exc):
            return None, str(exc)
        raise


# -- pages ------------------------------------------------------------------------------


async def _overview_data(request: Request) -> dict[str, Any]:
    rt, queues = _rt(request), _queues(request)
    items = await queues.status()
    workers = await queues.call(
        heartbeat.live_workers(rt.redis, rt.settings.queue_prefix), "reading worker heartbeats"
    )
    now = time.time()
    return {"queues": items, "workers": [worker_view(w, now) for w in workers]}


@router.get(BASE)
async def overview(request: Request, admin: AdminDep) -> HTMLResponse:
    """Every queue with its counts per state, paused or not, and the live workers."""
    return _page(request, admin, "overview.html", **await _overview_data(request))


@router.get(f"{BASE}/live")
async def overview_live(request: Request, admin: AdminDep) -> HTMLResponse:
    """The overview's live part alone, for the page's refresh script."""
    return _page(request, admin, "_live.html", **await _overview_data(request))


@router.get(f"{BASE}/failures")
async def failures(
    request: Request,
    admin: AdminDep,
    tenant: str = "",
    job_name: str = "",
    limit: int = 50,
) -> HTMLResponse:
    """The runbook's section-5 query: recent FAILED job runs, by tenant and job name."""
    tenant, job_name = tenant.strip()[:64], job_name.strip()[:100]
    limit = min(max(limit, 1), 500)
    async with _rt(request).unit_of_work() as session:
        rows = await runs.list_runs(
            session,
            runs.RunFilter(
                status="FAILED", tenant_id=tenant or None, job_name=job_name or None, limit=limit
            ),
        )
    return _page(
        request,
        admin,
        "failures.html",
        rows=rows,
        tenant=tenant,
        job_name=job_name,
        limit=limit,
        job_names=[SYNC_JOB, PRUNE_JOB],
    )


@router.get(f"{BASE}/queue/{{name}}")
async def queue_jobs(
    request: Request, admin: AdminDep, name: str, state: str = "failed", page: int = 1
) -> HTMLResponse:
    """One queue's jobs in one state, newest first, PAGE_SIZE a page."""
    name = _queue_name(request, name)
    if state not in STATES:
        state = "failed"
    page = max(page, 1)
    queues = _queues(request)
    q = queues.get(name)
    counts = next(s for s in await queues.status() if s["queue"] == name)
    start = (page - 1) * PAGE_SIZE
    # A paused queue keeps its waiting jobs in "wait" (BullMQ 5+) or "paused" (older).
    types = ["waiting", "paused"] if state == "waiting" else [state]
    oldest_first = state in ("waiting", "prioritized", "delayed", "active")
    jobs = await queues.call(
        q.getJobs(types, start, start + PAGE_SIZE - 1, oldest_first), f"listing {state} jobs"
    )
    return _page(
        request,
        admin,
        "queue.html",
        name=name,
        state=state,
        page=page,
        status=counts,
        jobs=[job_view(j, name, state) for j in jobs if j is not None],
        has_more=int(counts["counts"].get(state, 0)) > start + PAGE_SIZE,
        is_sync=name == SYNC_QUEUE,
    )


@router.get(f"{BASE}/queue/{{name}}/jobs/{{job_id}}")
async def job_detail(request: Request, admin: AdminDep, name: str, job_id: str) -> HTMLResponse:
    """A job as BullMQ has it (data masked), its logs, and its "JobRun" rows."""
    name = _queue_name(request, name)
    queues = _queues(request)
    job = await queues.get_job(name, job_id)
    async with _rt(request).unit_of_work() as session:
        job_runs = await runs.list_runs(session, runs.RunFilter(job_id=job_id, limit=100))
    if job is None:
        return _page(
            request,
            admin,
            "job.html",
            status_code=404,
            name=name,
            job_id=job_id,
            job=None,
            runs=job_runs,
        )
    state = await queues.job_state(name, job_id)
    view = job_view(job, name, state)
    logs = await queues.call(queues.get(name).getJobLogs(job_id), f"reading logs of job {job_id}")
    view.logs = [short(str(line), 2000) for line in logs.get("logs", [])]
    view.logs_total = int(logs.get("count", len(view.logs)))
    return _page(request, admin, "job.html", name=name, job_id=job_id, job=view, runs=job_runs)


# -- actions (POST, CSRF-checked, logged with the user) ---------------------------------


@router.post(f"{BASE}/queue/{{name}}/pause")
async def pause_queue(request: Request, action: ActionDep, name: str) -> RedirectResponse:
    name = _queue_name(request, name)
    _, error = await _attempt(_queues(request).pause(name))
    _audit(action, "queue.pause", queue=name, error=error)
    return _done(
        action, BASE, error or f"queue {name} paused: workers take no new jobs", error=bool(error)
    )


@router.post(f"{BASE}/queue/{{name}}/resume")
async def resume_queue(request: Request, action: ActionDep, name: str) -> RedirectResponse:
    name = _queue_name(request, name)
    _, error = await _attempt(_queues(request).resume(name))
    _audit(action, "queue.resume", queue=name, error=error)
    return _done(action, BASE, error or f"queue {name} resumed", error=bool(error))


@router.post(f"{BASE}/queue/{{name}}/retry-failed")
async def retry_failed(request: Request, action: ActionDep, name: str) -> RedirectResponse:
    name = _queue_name(request, name)
    queues = _queues(request)
    q = queues.get(name)
    before = int(await queues.call(q.getFailedCount(), f"counting failed jobs of {name}"))
    _, error = await _attempt(queues.call(q.retryJobs({"state": "failed"}), "retrying jobs"))
    _audit(action, "queue.retry_failed", queue=name, jobs=before, error=error)
    message = error or f"{before} failed job(s) of {name} sent back to waiting"
    return _done(action, f"{BASE}/queue/{name}?state=failed", message, error=bool(error))


@router.post(f"{BASE}/queue/{{name}}/clean")
async def clean_queue(request: Request, action: ActionDep, name: str) -> RedirectResponse:
    name = _queue_name(request, name)
    default = f"{BASE}/queue/{name}?state=completed"
    state, unit, age_text = action.field("state"), action.field("unit"), action.field("age")
    if state not in ("completed", "failed") or unit not in CLEAN_UNITS_MS:
        return _done(action, default, "choose completed or failed, and an age unit", error=True)
    if not age_text.isdigit() or int(age_text) > 10_000:
        return _done(action, default, "the age must be a whole number up to 10000", error=True)
    grace_ms = int(age_text) * CLEAN_UNITS_MS[unit]
    queues = _queues(request)
    q = queues.get(name)
    removed = 0
    for _ in range(CLEAN_MAX_BATCHES):
        batch = await queues.call(q.clean(grace_ms, CLEAN_BATCH, state), f"cleaning {name}")
        removed += len(batch or [])
        if len(batch or []) < CLEAN_BATCH:
            break
    _audit(action, "queue.clean", queue=name, state=state, older_than_ms=grace_ms, removed=removed)
    message = f"removed {removed} {state} job(s) of {name} older than {age_text} {unit}"
    return _done(action, default, message)


@router.post(f"{BASE}/queue/{{name}}/jobs/{{job_id}}/retry")
async def retry_job(
    request: Request, action: ActionDep, name: str, job_id: str
) -> RedirectResponse:
    name = _queue_name(request, name)
    queues = _queues(request)
    default = f"{BASE}/queue/{name}/jobs/{job_id}"
    job = await queues.get_job(name, job_id)
    if job is None:
        return _done(action, f"{BASE}/queue/{name}", f"job {job_id} no longer exists", error=True)
    state = await queues.job_state(name, job_id)
    if state not in ("failed", "completed"):
        return _done(
            action,
            default,
            f"job {job_id} is {state}; only failed or completed jobs can be retried",
            error=True,
        )
    _, error = await _attempt(queues.call(job.retry(state), f"retrying job {job_id}"))
    _audit(action, "job.retry", queue=name, job_id=job_id, previous_state=state, error=error)
    return _done(action, default, error or f"job {job_id} sent back to waiting", error=bool(error))


@router.post(f"{BASE}/queue/{{name}}/jobs/{{job_id}}/remove")
async def remove_job(
    request: Request, action: ActionDep, name: str, job_id: str
) -> RedirectResponse:
    name = _queue_name(request, name)
    queues = _queues(request)
    job = await queues.get_job(name, job_id)
    if job is None:
        return _done(action, f"{BASE}/queue/{name}", f"job {job_id} no longer exists", error=True)
    _, error = await _attempt(queues.call(job.remove(), f"removing job {job_id}"))
    _audit(action, "job.remove", queue=name, job_id=job_id, error=error)
    if error:
        return _done(action, f"{BASE}/queue/{name}/jobs/{job_id}", error, error=True)
    # From the job's own page, which is gone now, go back to the queue.
    listing = f"{BASE}/queue/{name}"
    from_job_page = action.field("back").startswith(f"{listing}/jobs/")
    return _done(
        action, listing, f"job {job_id} removed", target=listing if from_job_page else None
    )


@router.post(f"{BASE}/reprocess")
async def reprocess(request: Request, action: ActionDep) -> RedirectResponse:
    """Queue a sync of one tenant now, as `erp-sync reprocess` does (runbook section 6)."""
    tenant = action.field("tenant")
    full = action.field("full") in ("1", "on", "true")
    default = f"{BASE}/queue/{SYNC_QUEUE}?state=waiting"
    if not tenant:
        return _done(action, default, "name the tenant to reprocess", error=True)
    try:
        result = await trigger_sync(
            _rt(request), _queues(request), tenant, full=full, trigger="manual"
        )
    except (DomainError, ValidationError) as exc:
        message = (
            f"tenant id {tenant[:64]!r} is not valid"
            if isinstance(exc, ValidationError)
            else str(exc)
        )
        _audit(action, "tenant.reprocess", tenant_id=tenant[:64], full=full, error=message)
        return _done(action, default, message, error=True)
    _audit(action, "tenant.reprocess", tenant_id=tenant, full=full, job_id=result.job_id)
    return _done(action, default, result.describe(tenant))


# Last: anything else under /admin/queues (any method) is 404, the same whether the admin
# is off or on, and only after authentication when it is on: nothing to discover.
# (A route whose path matches but whose method does not would otherwise answer 405.)
@router.api_route(BASE + "{rest:path}", methods=ALL_METHODS)
async def not_found(request: Request, admin: AdminDep, rest: str) -> Response:
    if rest == "/" and request.method in ("GET", "HEAD"):
        return RedirectResponse(BASE, status_code=status.HTTP_307_TEMPORARY_REDIRECT)
    raise HTTPException(status.HTTP_404_NOT_FOUND)
