"""Worker, scheduler and queue commands."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from erp_sync.cli import common
from erp_sync.jobs import heartbeat, runs
from erp_sync.jobs.names import QUEUES, SYNC_QUEUE
from erp_sync.jobs.queues import STREAMS, JobQueues, open_queues
from erp_sync.jobs.service import trigger_sync
from erp_sync.models import JobRun
from erp_sync.runtime import Runtime

queues_app = typer.Typer(help="Queue status and control (runbook section 4).", no_args_is_help=True)


def _streams(value: str | None) -> list[str] | None:
    if not value:
        return None
    items = [s.strip() for s in value.split(",") if s.strip()]
    unknown = [s for s in items if s not in STREAMS]
    if unknown:
        common.fail(f"unknown stream {unknown[0]!r}; streams are {', '.join(STREAMS)}")
    return items


def reprocess(
    tenant: Annotated[str, typer.Option("--tenant", "-t", help="Tenant id")],
    streams: Annotated[
        str | None, typer.Option(help="Comma-separated streams (default: all)")
    ] = None,
    full: Annotated[
        bool, typer.Option("--full", help="Full sync: re-read everything, detect deletions")
    ] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job until it ends")] = False,
    timeout: Annotated[
        float, typer.Option(help="With --wait: give up after this many seconds")
    ] = 3600,
) -> None:
    """Queue a sync of one tenant now, outside its schedule (runbook section 6)."""
    chosen = _streams(streams)

    async def go(rt: Runtime) -> int:
        async with open_queues(rt.settings) as queues:
            result = await trigger_sync(rt, queues, tenant, streams=chosen, full=full)
            common.console.print(result.describe(tenant), markup=False)
            if not wait:
                return 0
            return await _follow(rt, queues, result.job_id, timeout)

    code = common.with_runtime(go)
    raise typer.Exit(code)


async def _follow(rt: Runtime, queues: JobQueues, job_id: str, timeout: float) -> int:
    """Show the job's progress until it finishes; exit code from its JobRun outcome."""
    deadline = time.monotonic() + timeout
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=common.console,
        transient=False,
    ) as bar:
        task = bar.add_task(f"job {job_id}", total=100, detail="waiting for a worker")
        state = "unknown"
        while time.monotonic() < deadline:
            job = await queues.get_job(SYNC_QUEUE, job_id)
            state = await queues.job_state(SYNC_QUEUE, job_id)
            progress = job.progress if job is not None else None
            if isinstance(progress, dict):
                pct = progress.get("percent")
                detail = progress.get("message") or ", ".join(
                    f"{k}={v}" for k, v in progress.items() if k not in ("percent",)
                )
                bar.update(
                    task,
                    completed=float(pct) if isinstance(pct, int | float) else None,
                    detail=str(detail)[:60],
                )
            else:
                bar.update(task, detail=state)
            if state in ("completed", "failed", "unknown"):
                break
            if state == "delayed" and job is not None and job.failedReason:
                bar.update(task, detail=f"retrying: {job.failedReason}"[:60])
            await asyncio.sleep(0.5)
        if state == "completed":
            bar.update(task, completed=100)
    async with rt.unit_of_work() as session:
        rows = await runs.list_runs(session, runs.RunFilter(job_id=job_id, limit=20))
    if not rows:
        common.console.print(f"job {job_id} ended {state} without a job run", markup=False)
        return 1 if state != "completed" else 0
    last = rows[0]
    _print_runs(list(reversed(rows)))
    if state not in ("completed", "failed"):
        common.console.print(f"gave up waiting: job {job_id} is still {state}", markup=False)
        return 1
    return 0 if last.status == "COMPLETED" and state == "completed" else 1


def _fmt_time(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _print_runs(rows: list[JobRun]) -> None:
    table = Table("startedAt", "tenantId", "status", "jobName", "attempt", "durationMs", "error")
    for r in rows:
        table.add_row(
            _fmt_time(r.startedAt),
            r.tenantId or "-",
            r.status,
            r.jobName,
            str(r.attempt),
            str(r.durationMs) if r.durationMs is not None else "-",
            (r.error or "")[:120],
        )
    common.console.print(table)


def jobruns(
    status: Annotated[str | None, typer.Option(help="RUNNING, COMPLETED or FAILED")] = None,
    tenant: Annotated[str | None, typer.Option("--tenant", "-t", help="Tenant id")] = None,
    job_name: Annotated[str | None, typer.Option(help="e.g. sync-tenant, jobrun-prune")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """List job runs, newest first (the runbook's section-5 query)."""
    if status is not None and status.upper() not in ("RUNNING", "COMPLETED", "FAILED"):
        common.fail(f"--status must be RUNNING, COMPLETED or FAILED, not {status!r}")

    async def go(rt: Runtime) -> list[JobRun]:
        async with rt.unit_of_work() as session:
            f = runs.RunFilter(
                status=status.upper() if status else None,
                tenant_id=tenant,
                job_name=job_name,
                limit=limit,
            )
            return list(await runs.list_runs(session, f))

    rows = common.with_runtime(go)
    if as_json:
        from erp_sync.jobs.schemas import JobRunOut

        common.print_json([JobRunOut.model_validate(r).model_dump(mode="json") for r in rows])
        return
    _print_runs(rows)
    if not rows:
        common.console.print("no job runs match")


def prune(
    days: Annotated[
        int | None, typer.Option(min=1, help="Keep this many days (default RETENTION_DAYS_JOBRUN)")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count what would go")] = False,
) -> None:
    """Delete job runs older than the retention (runbook section 7), in small batches."""
    from erp_sync.jobs.prune import prune_job_runs

    async def go(rt: Runtime) -> tuple[int, int]:
        kept = days if days is not None else rt.settings.retention_days_jobrun
        return await prune_job_runs(rt, kept, dry_run=dry_run), kept

    count, kept = common.with_runtime(go)
    if dry_run:
        common.console.print(
            f"{count} job runs are older than {kept} days and would be removed", markup=False
        )
    else:
        common.console.print(f"removed {count} job runs older than {kept} days", markup=False)


@queues_app.command("status")
def queues_status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Jobs per state in each queue, paused or not, and the live workers."""

    async def go(rt: Runtime) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
        async with open_queues(rt.settings) as queues:
            status = await queues.status()
        workers = await heartbeat.live_workers(rt.redis, rt.settings.queue_prefix)
        return status, workers

    status, workers = common.with_runtime(go)
    if as_json:
        common.print_json({"queues": status, "workers": workers})
        return
    states = ["waiting", "active", "delayed", "prioritized", "completed", "failed"]
    table = Table("queue", "paused", *states)
    for q in status:
        counts = q["counts"]
        assert isinstance(counts, dict)
        table.add_row(
            str(q["queue"]),
            "PAUSED" if q["paused"] else "no",
            *(str(counts.get(s, 0)) for s in states),
        )
    common.console.print(table)
    if workers:
        wt = Table("worker", "host", "pid", "queues", "concurrency", "running jobs", "up since")
        for w in workers:
            wt.add_row(
                str(w["id"]),
                str(w["host"]),
                str(w["pid"]),
                ",".join(w["queues"]),  # type: ignore[arg-type]
                str(w["concurrency"]),
                str(len(w["running"])),  # type: ignore[arg-type]
                datetime.fromtimestamp(float(w["startedAt"])).strftime("%Y-%m-%d %H:%M:%S"),  # type: ignore[arg-type]
            )
        common.console.print(wt)
    else:
        common.console.print("no live workers (start one with `erp-sync worker`)")


def _control(queue: str, pause: bool) -> None:
    if queue not in QUEUES:
        common.fail(f"unknown queue {queue!r}; the queues are {', '.join(QUEUES)}")

    async def go(rt: Runtime) -> None:
        async with open_queues(rt.settings) as queues:
            await (queues.pause(queue) if pause else queues.resume(queue))

    common.with_runtime(go)
    if pause:
        common.console.print(
            f"queue {queue} paused: running jobs finish, no new job starts", markup=False
        )
    else:
        common.console.print(f"queue {queue} resumed", markup=False)


@queues_app.command("pause")
def queues_pause(
    queue: Annotated[str, typer.Argument(help=f"One of: {', '.join(QUEUES)}")],
) -> None:
    """Pause a queue on every worker."""
    _control(queue, True)


@queues_app.command("resume")
def queues_resume(
    queue: Annotated[str, typer.Argument(help=f"One of: {', '.join(QUEUES)}")],
) -> None:
    """Resume a paused queue."""
    _control(queue, False)


def worker() -> None:
    """Process the sync and maintenance queues until SIGTERM (then finish running jobs)."""
    from erp_sync.jobs.worker import run_worker

    s = common.settings(service=True)
    common.run(run_worker(s))


def scheduler() -> None:
    """Keep one cron schedule per tenant in Redis, plus the daily job-run prune."""
    from erp_sync.jobs.scheduler import SchedulerService
    from erp_sync.jobs.worker import serve_until_signalled

    s = common.settings(service=True)
    service = SchedulerService(s)
    common.run(serve_until_signalled(service.start, service.stop))


def start(
    port: Annotated[int | None, typer.Option(help="API port (default PORT or 3000)")] = None,
) -> None:
    """API, worker and scheduler in one process, for one-machine installs."""
    s = common.settings(service=True)
    common.run(run_all(s, port or s.port))


async def run_all(settings: object, port: int) -> None:
    import contextlib
    import signal
    from collections.abc import Iterator

    import uvicorn

    from erp_sync.api.app import create_app
    from erp_sync.jobs.scheduler import SchedulerService
    from erp_sync.jobs.worker import WorkerService
    from erp_sync.settings import Settings

    assert isinstance(settings, Settings)

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # we own the signals here
            yield

    server = Server(
        uvicorn.Config(create_app(settings), host=settings.host, port=port, log_config=None)
    )
    worker = WorkerService(settings)
    sched = SchedulerService(settings)
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    await worker.start()
    await sched.start()
    try:
        await server.serve()
    finally:
        await sched.stop()
        await worker.stop()
