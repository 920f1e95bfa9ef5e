"""``erp-sync sandbox ...``: run a sandbox ERP server locally (all logic in erp_sync.sandbox)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

if TYPE_CHECKING:
    from erp_sync.sandbox.common import SandboxConfig

C = TypeVar("C", bound="SandboxConfig")

DEMO_SECRET = "sandbox-secret"  # noqa: S105 - a public demo credential, printed at start

# Options both sandboxes take (their defaults are each command's own).
Host = Annotated[str, typer.Option(help="Interface to bind")]
Port = Annotated[int, typer.Option(help="Port (0 = any free port)")]
Products = Annotated[int, typer.Option(help="Products at start")]
Seed = Annotated[int, typer.Option(help="Same seed, same data")]
HistoryDays = Annotated[int, typer.Option(help="Days of change history")]
Anchor = Annotated[
    str, typer.Option(help="YYYY-MM-DD ending the history (default today): same data any day")
]
LatencyMs = Annotated[int, typer.Option(help="Added to every API answer")]
ErrorRate = Annotated[float, typer.Option(help="Share of 500/502/503 answers")]
MalformedRate = Annotated[float, typer.Option(help="Share of broken records")]
MutateEvery = Annotated[
    float, typer.Option(help="Apply a small batch of changes every N seconds, 0 = off")
]

sandbox_app = typer.Typer(
    help="Local stand-ins for ERP APIs, for connector development, tests and benchmarks.",
    no_args_is_help=True,
)


@sandbox_app.callback()
def _group() -> None:
    """Local stand-ins for ERP APIs (the callback keeps ``sandbox bling`` a subcommand)."""


@sandbox_app.command()
def bling(
    ctx: typer.Context,
    host: Host = "127.0.0.1",
    port: Port = 8901,
    products: Products = 1000,
    customers: Annotated[int, typer.Option(help="Customers (contatos) at start")] = 300,
    orders: Annotated[int, typer.Option(help="Sales orders at start")] = 2000,
    warehouses: Annotated[int, typer.Option(help="Warehouses (depósitos), 1-3")] = 3,
    seed: Seed = 1,
    history_days: HistoryDays = 730,
    anchor: Anchor = "",
    latency_ms: LatencyMs = 0,
    error_rate: ErrorRate = 0.0,
    malformed_rate: MalformedRate = 0.0,
    rate_limit: Annotated[int, typer.Option(help="Requests/s per account, 0 = off")] = 3,
    daily_limit: Annotated[int, typer.Option(help="Requests/day per account, 0 = off")] = 120_000,
    token_ttl: Annotated[int, typer.Option(help="Access token lifetime, seconds")] = 21600,
    client_id: Annotated[str, typer.Option(help="OAuth client id")] = "merxios-sandbox",
    client_secret: Annotated[str, typer.Option(help="OAuth client secret")] = DEMO_SECRET,
    auth_code: Annotated[str, typer.Option(help="Authorization code to exchange")] = "sandbox-code",
    mutate_every: MutateEvery = 0.0,
) -> None:
    """Serve the Bling API v3 sandbox until Ctrl-C."""
    from erp_sync.sandbox.bling import BlingSandboxConfig, serve

    _serve(BlingSandboxConfig, serve, ctx.params)


@sandbox_app.command()
def omie(
    ctx: typer.Context,
    host: Host = "127.0.0.1",
    port: Port = 8902,
    products: Products = 1000,
    customers: Annotated[int, typer.Option(help="Customers (clientes) at start")] = 300,
    orders: Annotated[int, typer.Option(help="Sales orders (pedidos) at start")] = 2000,
    warehouses: Annotated[int, typer.Option(help="Stock locals (locais de estoque), 1-3")] = 3,
    seed: Seed = 1,
    history_days: HistoryDays = 730,
    anchor: Anchor = "",
    latency_ms: LatencyMs = 0,
    error_rate: ErrorRate = 0.0,
    malformed_rate: MalformedRate = 0.0,
    ip_limit: Annotated[int, typer.Option(help="Requests per window per IP, 0 = off")] = 960,
    method_limit: Annotated[
        int, typer.Option(help="Requests per window per (app key, method), 0 = off")
    ] = 240,
    method_concurrency: Annotated[
        int, typer.Option(help="Calls in flight per (app key, method), 0 = off")
    ] = 4,
    limit_window: Annotated[int, typer.Option(help="Rate limit window, seconds")] = 60,
    redundant_window: Annotated[
        int, typer.Option(help="Same call again within N s is refused (REDUNDANT), 0 = off")
    ] = 60,
    block_after: Annotated[
        int, typer.Option(help="Faults in a row on one method that block the app key, 0 = never")
    ] = 10,
    block_seconds: Annotated[int, typer.Option(help="How long a block lasts, seconds")] = 1800,
    app_key: Annotated[str, typer.Option(help="The app key to accept")] = "",
    app_secret: Annotated[str, typer.Option(help="Its app secret")] = "",
    mutate_every: MutateEvery = 0.0,
) -> None:
    """Serve the Omie API sandbox until Ctrl-C."""
    from erp_sync.sandbox.omie import DEMO_APP_KEY, DEMO_APP_SECRET, OmieSandboxConfig, serve

    # "" (the default) means the demo app key and secret.
    credentials = {"app_key": app_key or DEMO_APP_KEY, "app_secret": app_secret or DEMO_APP_SECRET}
    _serve(OmieSandboxConfig, serve, {**ctx.params, **credentials})


def _serve(
    config_type: Callable[..., C],
    serve: Callable[[C, Callable[[str], None]], None],
    options: Mapping[str, Any],
) -> None:
    """Serve one sandbox until Ctrl-C. Each option of its command is the config field of
    the same name (``--anchor`` a date, parsed here). A bad value exits 2, a port that
    cannot be taken 1."""
    from erp_sync.sandbox.common import parse_local

    anchor = options["anchor"]
    try:
        config = config_type(**{**options, "anchor": parse_local(anchor) if anchor else 0})
        config.knobs()  # validates the runtime knobs before binding anything
        serve(config, lambda line: typer.echo(line))
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:
        where = f"{options['host']}:{options['port']}"
        typer.echo(f"error: cannot listen on {where}: {exc.strerror or exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        pass
