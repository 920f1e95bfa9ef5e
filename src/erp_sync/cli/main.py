"""The `erp-sync` command."""

from __future__ import annotations

import secrets
import sys
from typing import Annotated

import typer

from erp_sync.cli import common
from erp_sync.cli import demo as demo_cli
from erp_sync.cli import jobs as jobs_cli
from erp_sync.cli import status as status_cli
from erp_sync.cli.sandbox import sandbox_app
from erp_sync.cli.tenants import tenants_app
from erp_sync.cli.tokens import tokens_app
from erp_sync.errors import ConfigError, ErpSyncError
from erp_sync.kit.crypto import generate_key
from erp_sync.kit.logging import redact_text
from erp_sync.kit.outages import describe_outage

app = typer.Typer(
    name="erp-sync",
    help="Merxios ERP-Sync: keeps each tenant's ERP data in PostgreSQL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(tenants_app, name="tenants")
app.add_typer(tokens_app, name="tokens")
app.add_typer(jobs_cli.queues_app, name="queues")
app.add_typer(sandbox_app, name="sandbox")
app.add_typer(status_cli.quarantine_app, name="quarantine")
app.command()(status_cli.status)
app.command()(demo_cli.demo)
for _command in (
    jobs_cli.worker,
    jobs_cli.scheduler,
    jobs_cli.start,
    jobs_cli.reprocess,
    jobs_cli.jobruns,
    jobs_cli.prune,
):
    app.command()(_command)


@app.command()
def api(
    host: Annotated[
        str | None, typer.Option(help="Interface to bind (default HOST or 0.0.0.0)")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default PORT or 3000)")] = None,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
) -> None:
    """Serve the HTTP API (health, tenants, job runs, admin) under uvicorn."""
    import uvicorn

    s = common.settings(service=True)
    uvicorn.run(
        "erp_sync.api.app:create_app",
        factory=True,
        host=host or s.host,
        port=port or s.port,
        workers=workers,
        log_config=None,
        access_log=not s.production,
        proxy_headers=True,
        timeout_graceful_shutdown=10,
    )


@app.command()
def migrate(
    create_database: Annotated[
        bool, typer.Option(help="Create the database first when it does not exist")
    ] = True,
) -> None:
    """Bring the database schema to the newest version (alembic upgrade head)."""
    from erp_sync.migrations import upgrade

    s = common.settings()
    revision = upgrade(s, create_database=create_database)
    common.console.print(f"database is at revision {revision}")


@app.command()
def health() -> None:
    """Check PostgreSQL and Redis like GET /health/ready; exit 0 when both answer."""
    from erp_sync.health import check_dependencies

    results = common.with_runtime(check_dependencies)
    for r in results:
        line = f"{r.name:<9} {'up' if r.ok else 'DOWN':<5} {r.latency_ms:8.1f} ms"
        if r.error:
            line += f"  {r.error}"
        common.console.print(line, markup=False)
    if not all(r.ok for r in results):
        raise typer.Exit(1)


@app.command()
def keygen(
    token: Annotated[bool, typer.Option("--token", help="Make an API_TOKEN instead")] = False,
) -> None:
    """Print a new ENCRYPTION_KEY (or, with --token, a new API_TOKEN)."""
    print(secrets.token_urlsafe(32) if token else generate_key())


def main() -> None:
    try:
        app()
    except ErpSyncError as exc:
        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        sys.exit(2 if isinstance(exc, ConfigError) else 1)
    except Exception as exc:
        message = describe_outage(exc)
        if message is None:
            raise  # a bug: keep the traceback
        print(f"error: {redact_text(message)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
