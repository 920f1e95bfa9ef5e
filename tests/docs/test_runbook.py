"""The runbooks (docs/runbook.pt-BR.md, docs/runbook.md) run as written.

- Every ```sql block runs against a migrated database holding real rows: the section-5
  SELECT returns the FAILED runs newest first, the section-7 DELETE removes exactly the
  rows older than 30 days. The blocks are the seed runbook's SQL byte for byte.
- Every `erp-sync ...` command line (in code blocks, behind `docker-compose ... exec api`
  or `run --rm ... api`, and in inline code) parses with the real Typer app: the
  subcommands exist, the options exist, values have the right type.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import typer.main
from typer.core import TyperGroup

from erp_sync.cli.main import app
from tests.conftest import ROOT
from tests.models.test_runbook_sql import RUNBOOK_SECTION_5, RUNBOOK_SECTION_7

RUNBOOKS = [ROOT / "docs" / "runbook.pt-BR.md", ROOT / "docs" / "runbook.md"]
FENCE = re.compile(
    r"^(?P<indent>[ ]*)```(?P<lang>[\w-]*)[ ]*\n(?P<body>.*?)^(?P=indent)```[ ]*$",
    re.MULTILINE | re.DOTALL,
)
SHELL_OPERATORS = {"|", "||", "&&", ";", ">", ">>", "<", "&"}
# Services of docker-compose.prod.yml whose image runs `erp-sync <command>`.
APP_SERVICES = {"api", "worker", "scheduler", "migrate"}


@dataclass(frozen=True)
class Block:
    lang: str
    body: str


def blocks_and_prose(text: str) -> tuple[list[Block], str]:
    """Fenced blocks (dedented like the list item they sit in) and the text around them."""
    blocks = []
    for m in FENCE.finditer(text):
        cut = len(m["indent"])
        body = "".join(line[cut:] for line in m["body"].splitlines(keepends=True))
        blocks.append(Block(m["lang"], body))
    return blocks, FENCE.sub("", text)


def runbook(path: Path) -> str:
    return path.read_text(encoding="utf-8")


# -- SQL --------------------------------------------------------------------------------


def sql_blocks(path: Path) -> list[str]:
    blocks, _ = blocks_and_prose(runbook(path))
    return [b.body.rstrip("\n") for b in blocks if b.lang == "sql"]


@pytest.mark.parametrize("path", RUNBOOKS, ids=lambda p: p.name)
def test_the_sql_blocks_are_the_seed_runbooks_verbatim(path: Path) -> None:
    assert sql_blocks(path) == [RUNBOOK_SECTION_5, RUNBOOK_SECTION_7]


def _select(path: Path) -> str:
    (sql,) = [s for s in sql_blocks(path) if s.lstrip().upper().startswith("SELECT")]
    return sql


def _delete(path: Path) -> str:
    (sql,) = [s for s in sql_blocks(path) if s.lstrip().upper().startswith("DELETE")]
    return sql


@pytest.fixture
def conn(clean_db: str) -> Any:
    with psycopg.connect(clean_db, autocommit=True) as c:
        c.execute("""INSERT INTO "Tenant" (id, name) VALUES ('acme', 'Acme'), ('beta', 'Beta')""")
        yield c


def add_run(
    conn: psycopg.Connection[Any],
    tenant: str,
    status: str,
    age: timedelta,
    error: str | None = None,
    job_name: str = "sync-tenant",
) -> int:
    started = datetime.now(UTC) - age
    finished = None if status == "RUNNING" else started + timedelta(seconds=2)
    row = conn.execute(
        """INSERT INTO "JobRun" ("tenantId", "jobName", "jobId", queue, status, attempt,
               trigger, error, "durationMs", "startedAt", "finishedAt")
           VALUES (%s, %s, %s, 'sync', %s, 1, 'cron', %s, %s, %s, %s) RETURNING id""",
        (
            tenant,
            job_name,
            f"sync-{tenant}-{age.total_seconds():.0f}",
            status,
            error,
            None if status == "RUNNING" else 2000,
            started,
            finished,
        ),
    ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("path", RUNBOOKS, ids=lambda p: p.name)
def test_section_5_select_lists_the_newest_failures_first(
    conn: psycopg.Connection[Any], path: Path
) -> None:
    failed: list[tuple[timedelta, tuple[object, ...]]] = []
    for i in range(60):
        age = timedelta(hours=i + 1)
        add_run(conn, "acme", "FAILED", age, f"ERP answered 503 ({i})")
        failed.append((age, ("acme", "FAILED", "sync-tenant", f"ERP answered 503 ({i})", 2000)))
    age = timedelta(minutes=30)
    add_run(conn, "beta", "FAILED", age, "bling refused the token")
    failed.append((age, ("beta", "FAILED", "sync-tenant", "bling refused the token", 2000)))
    # Newer than every failure, and not failures: the query must leave them out.
    add_run(conn, "acme", "COMPLETED", timedelta(minutes=1))
    add_run(conn, "beta", "RUNNING", timedelta(seconds=5))

    rows = conn.execute(_select(path).encode()).fetchall()

    expected = [r for _, r in sorted(failed, key=lambda item: item[0])][:50]
    assert rows == expected
    assert rows[0][3] == "bling refused the token"  # newest first


@pytest.mark.parametrize("path", RUNBOOKS, ids=lambda p: p.name)
def test_section_7_delete_removes_exactly_the_rows_older_than_30_days(
    conn: psycopg.Connection[Any], path: Path
) -> None:
    kept: list[int] = []
    old: list[int] = []
    for days, status in [
        (0.01, "RUNNING"),
        (1, "COMPLETED"),
        (10, "FAILED"),
        (29.9, "COMPLETED"),
        (30.1, "FAILED"),
        (45, "COMPLETED"),
        (400, "COMPLETED"),
    ]:
        run_id = add_run(conn, "acme", status, timedelta(days=days), job_name="sync-tenant")
        (kept if days < 30 else old).append(run_id)
    add_run(conn, "beta", "COMPLETED", timedelta(days=90), job_name="jobrun-prune")
    removed = conn.execute(_delete(path).encode()).rowcount
    assert removed == len(old) + 1
    left = [r[0] for r in conn.execute(b'SELECT id FROM "JobRun" ORDER BY id').fetchall()]
    assert left == kept


# -- erp-sync command lines --------------------------------------------------------------


@dataclass(frozen=True)
class Invocation:
    args: tuple[str, ...]
    source: str  # the line or inline code it came from
    inline: bool  # inline code may name a command without its required arguments


def _split(text: str) -> list[str] | None:
    try:
        return shlex.split(text, comments=True)
    except ValueError:  # e.g. an unbalanced quote in prose
        return None


def _until_operator(tokens: list[str]) -> list[str]:
    out = []
    for t in tokens:
        if t in SHELL_OPERATORS or t.startswith((">", "<", "|")):
            break
        out.append(t.rstrip(";"))
        if t.endswith(";"):
            break
    return out


def invocations_in(text: str, inline: bool) -> list[Invocation]:
    tokens = _split(text)
    if tokens is None:
        return []
    found: list[Invocation] = []
    for i, token in enumerate(tokens):
        if " " in token:  # a script handed to `sh -c '...'`
            found += invocations_in(token, inline)
        elif token == "erp-sync" or token.endswith("/erp-sync"):
            args = _until_operator(tokens[i + 1 :])
            if args and (args[0].startswith("$") or args[0] == "..."):
                continue  # a shell function forwarding "$@", or a placeholder
            if not args and inline:
                continue  # prose naming the command itself
            found.append(Invocation(tuple(args), text.strip(), inline))
    # `docker-compose ... run [--options] SERVICE ARGS`: the image's entrypoint is erp-sync.
    if tokens and tokens[0] in ("docker-compose", "docker") and "run" in tokens:
        rest = tokens[tokens.index("run") + 1 :]
        while rest and rest[0].startswith("-"):
            rest = rest[1:]
        if rest and rest[0] in APP_SERVICES and "erp-sync" not in rest:
            found.append(Invocation(tuple(_until_operator(rest[1:])), text.strip(), inline))
    return found


def invocations(path: Path) -> list[Invocation]:
    blocks, prose = blocks_and_prose(runbook(path))
    found: list[Invocation] = []
    for block in blocks:
        if block.lang in ("bash", "sh", "shell", ""):
            for line in block.body.splitlines():
                found += invocations_in(line, inline=False)
    for span in re.findall(r"`([^`\n]+)`", prose):
        found += invocations_in(span, inline=True)
    return found


def parse(inv: Invocation) -> str | None:
    """Parse like `erp-sync` would, without running anything; the problem, or None."""
    cmd: Any = typer.main.get_command(app)
    path = ["erp-sync"]
    rest = list(inv.args)
    while isinstance(cmd, TyperGroup):
        if not rest:
            return f"`{' '.join(path)}` needs a subcommand"
        name = rest.pop(0)
        sub = cmd.commands.get(name)
        if sub is None:
            return f"`{' '.join(path)}` has no command {name!r}"
        path.append(name)
        cmd = sub
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # --help prints the usage
            cmd.make_context(" ".join(path), rest)
    except Exception as exc:  # the vendored click's UsageError family, or Exit for --help
        kind = type(exc).__name__
        if kind == "Exit" and getattr(exc, "exit_code", 1) == 0:
            return None  # --help
        if kind == "MissingParameter" and inv.inline:
            return None  # prose naming a command, e.g. `erp-sync tenants set-connection`
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        return f"{kind}: {message}"
    return None


@pytest.mark.parametrize("path", RUNBOOKS, ids=lambda p: p.name)
def test_every_erp_sync_command_line_parses(path: Path) -> None:
    found = invocations(path)
    commands = {inv.args[0] for inv in found if inv.args}
    # The runbook's sections really use the CLI (a broken extractor would find nothing).
    assert {"health", "queues", "jobruns", "reprocess", "prune", "migrate"} <= commands
    assert len([inv for inv in found if not inv.inline]) >= 12
    problems = [f"{inv.source!r}: {p}" for inv in found if (p := parse(inv))]
    assert not problems, "\n".join(problems)


def test_the_parser_rejects_what_the_cli_would_reject() -> None:
    # Guards the check above: it must fail on typos, unknown options and bad values.
    def bad(line: str) -> str | None:
        (inv,) = invocations_in(line, inline=False)
        return parse(inv)

    assert bad("erp-sync jobruns --status FAILED --limit 50") is None
    assert bad("erp-sync reprocess --tenant acme --wait --help") is None
    assert "no command 'jobrun'" in (bad("erp-sync jobrun --status FAILED") or "")
    assert "No such option" in (bad("erp-sync prune --older-than 30") or "")
    assert "valid integer" in (bad("erp-sync jobruns --limit fifty") or "")
    assert "Missing" in (bad("erp-sync reprocess --streams products") or "")
    assert "no command 'stop'" in (bad("erp-sync queues stop sync") or "")
    assert bad("docker-compose -f docker-compose.prod.yml run --rm --no-deps api helth")


def test_both_languages_document_the_same_commands() -> None:
    pt, en = (sorted({inv.args for inv in invocations(p)}) for p in RUNBOOKS)
    assert pt == en


def test_both_languages_have_the_seven_sections_of_the_seed_runbook() -> None:
    for path in RUNBOOKS:
        numbers = re.findall(r"^## (\d)\. ", runbook(path), re.MULTILINE)
        assert numbers == [str(n) for n in range(1, 8)], path.name
