"""What the reliability scenarios share: real servers and processes of their own, the
sandbox's truth as a checksum, the evidence the secrets scan reads, and the outcomes
`docs/reliability.md` is rendered from (`python -m tests.reliability.report`).

Everything here starts real things (redis-server, a PostgreSQL cluster, `erp-sync`
processes, a sandbox ERP process) and stops them: every start is paired with a stop in a
fixture or a ``finally``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from glob import glob
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import redis as syncredis
from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError

from erp_sync.models import ErpConnection, Tenant
from erp_sync.runtime import Runtime
from tests.conftest import REDIS_URL, ROOT, free_port

OUTPUT = ROOT / "test-output"
RESULTS = OUTPUT / "reliability.json"
ERP_SYNC = [sys.executable, "-m", "erp_sync.cli.main"]


# -- evidence for the secrets scan (scenario 7) ----------------------------------------


@dataclass
class Evidence:
    """Secrets the scenarios handed to the service, and the files (process logs, database
    and Redis dumps) that must not contain any of them."""

    secrets: dict[str, str] = field(default_factory=dict)
    files: list[tuple[str, Path]] = field(default_factory=list)
    directory: Path | None = None

    def secret(self, label: str, value: str | None) -> str | None:
        if value:
            self.secrets.setdefault(value, label)
        return value

    def file(self, label: str, path: Path) -> Path:
        self.files.append((label, path))
        return path

    def path(self, name: str) -> Path:
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="erp-sync-reliability-"))
        stem, dot, ext = name.partition(".")
        n = 0
        while True:
            candidate = self.directory / (f"{stem}-{n}{dot}{ext}" if n else name)
            if not candidate.exists():
                candidate.touch()
                return candidate
            n += 1

    def scan(self) -> tuple[int, list[str]]:
        """(bytes scanned, findings): each finding names the secret and where it was."""
        findings: list[str] = []
        scanned = 0
        needles = [(s.encode(), label) for s, label in self.secrets.items() if len(s) >= 6]
        for label, path in self.files:
            if not path.exists():
                continue
            data = path.read_bytes()
            scanned += len(data)
            for needle, what in needles:
                at = data.find(needle)
                if at >= 0:
                    context = data[max(0, at - 80) : at + 80].decode("utf-8", "replace")
                    findings.append(f"{what} in {label} ({path.name}): ...{context}...")
        return scanned, findings


EVIDENCE = Evidence()


def dump_database(url: str, label: str) -> Path:
    """Every table of the database as text (COPY ... TO STDOUT), into one file."""
    path = EVIDENCE.path(f"db-{label}.txt")
    with psycopg.connect(url) as conn, path.open("wb") as out:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
            ).fetchall()
        ]
        for table in tables:
            out.write(f"-- {table}\n".encode())
            with conn.cursor().copy(f'COPY "{table}" TO STDOUT'.encode()) as copy:
                for chunk in copy:
                    out.write(bytes(chunk))
    return EVIDENCE.file(f"database dump ({label})", path)


def dump_redis(client: syncredis.Redis, pattern: str, label: str) -> Path:
    """Every key matching ``pattern``, whatever its type (job hashes hold the job data)."""
    path = EVIDENCE.path(f"redis-{label}.txt")
    with path.open("w") as out:
        for key in sorted(client.scan_iter(pattern, count=1000)):
            kind = client.type(key)
            value: Any
            if kind == "string":
                value = client.get(key)
            elif kind == "hash":
                value = client.hgetall(key)
            elif kind == "list":
                value = client.lrange(key, 0, -1)
            elif kind == "set":
                value = sorted(client.smembers(key))
            elif kind == "zset":
                value = client.zrange(key, 0, -1, withscores=True)
            elif kind == "stream":
                value = client.xrange(key)
            else:
                value = f"<{kind}>"
            out.write(f"{key} {kind} {value!r}\n")
    return EVIDENCE.file(f"Redis dump ({label})", path)


def dump_evidence(db: str, queue_prefix: str, label: str) -> None:
    """What a scenario leaves for the secrets scan: its database and its Redis keys (the
    shared test Redis, under the scenario's queue prefix)."""
    dump_database(db, label)
    with syncredis.Redis.from_url(REDIS_URL, decode_responses=True) as client:
        dump_redis(client, f"{queue_prefix}:*", label)


# -- processes ---------------------------------------------------------------------------


class Processes:
    """Child processes of one test, each logging to a file the secrets scan reads; all
    killed at the end."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = EVIDENCE.file(f"{name} log", EVIDENCE.path(f"{name}.log"))
        with log.open("ab") as out:
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append((name, proc, log))
        return proc

    def log_of(self, proc: subprocess.Popen[bytes]) -> str:
        for _, p, log in self.procs:
            if p is proc:
                return log.read_text(errors="replace")
        return ""

    def worker(self, env: dict[str, str], name: str = "worker") -> subprocess.Popen[bytes]:
        return self.spawn(name, [*ERP_SYNC, "worker"], env)

    def api(self, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        proc = self.spawn(
            "api", [*ERP_SYNC, "api", "--host", "127.0.0.1", "--port", str(port)], env
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    return proc, url
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the API did not start: " + self.log_of(proc)[-3000:])
            time.sleep(0.1)

    def kill_all(self) -> None:
        for _, proc, _ in self.procs:
            if proc.poll() is None:
                proc.kill()
        for _, proc, _ in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)


def peak_rss_kb(pid: int) -> int:
    """The process's peak resident set (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for pid {pid}")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


# -- a Redis server of the test's own --------------------------------------------------


class RedisServer:
    """redis-server on a free loopback port with AOF on (``appendfsync always``, as the
    production entrypoint), password from stdin; stop and start again on the same port
    and directory, as `docker restart` does."""

    def __init__(self, workdir: Path, password: str) -> None:
        self.workdir = workdir
        self.password = password
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[str] | None = None

    def client(self, password: str | None = None) -> syncredis.Redis:
        """A client logging in with ``password`` (default: the server's own)."""
        return syncredis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password if password is None else password,
            socket_timeout=5,
            decode_responses=True,
        )

    def start(self, password: str | None = None) -> None:
        """Start (again); with ``password``, under that one from now on (a Redis recreated
        with a new password, as the runbook's rotation does)."""
        if password is not None:
            self.password = password
        config = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {self.workdir}",
            "appendonly yes",
            "appendfsync always",
            'save ""',
            "maxmemory-policy noeviction",
            f"logfile {self.workdir / 'redis.log'}",
            f"requirepass {self.password}",
        ]
        self.proc = subprocess.Popen(
            ["redis-server", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n".join(config) + "\n")
        self.proc.stdin.close()
        deadline = time.monotonic() + 15
        while True:
            try:
                with self.client() as r:
                    r.ping()
                return
            except (RedisConnectionError, BusyLoadingError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = self.workdir / "redis.log"
                    raise AssertionError(
                        "redis-server did not start: "
                        + (log.read_text()[-2000:] if log.exists() else "no log")
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, as `docker stop` sends: Redis flushes its AOF and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def stats(self, password: str | None = None) -> dict[str, Any]:
        with self.client(password) as r:
            info: dict[str, Any] = r.info("stats")
        return info


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    workdir = Path(tempfile.mkdtemp(prefix="erp-sync-redis-"))
    server = RedisServer(workdir, "redis-" + secrets.token_hex(16))
    EVIDENCE.secret("the Redis password", server.password)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# -- a PostgreSQL cluster of the test's own -----------------------------------------------


def pg_bin(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if not found:
        raise AssertionError(f"PostgreSQL's {name} is not installed")
    return found


class PostgresCluster:
    """initdb + postgres on a free port; the local socket is trusted (the test's admin),
    127.0.0.1 needs a password. Restartable on the same data directory."""

    def __init__(self) -> None:
        self.initdb, self.postgres = pg_bin("initdb"), pg_bin("postgres")
        # PostgreSQL refuses to run as root: run it as `postgres` then.
        self.user: str | None = None
        if os.geteuid() == 0:
            pwd.getpwnam("postgres")
            self.user = "postgres"
        self.dir = Path(tempfile.mkdtemp(prefix="erp-sync-pg-"))
        if self.user:
            shutil.chown(self.dir, self.user)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def init(self) -> None:
        subprocess.run(
            [
                self.initdb, "-D", str(self.dir / "data"), "-U", "postgres",
                "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync",
            ],
            user=self.user, check=True, capture_output=True, timeout=120,
        )  # fmt: skip

    def start(self) -> None:
        log = open(self.dir / "postgres.log", "ab")  # noqa: SIM115 - closed below, kept by the child
        self.proc = subprocess.Popen(
            [
                self.postgres, "-D", str(self.dir / "data"), "-p", str(self.port),
                "-k", str(self.dir), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
            ],
            user=self.user, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                with self.admin():
                    return
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        "postgres did not start: " + (self.dir / "postgres.log").read_text()[-2000:]
                    ) from None
                time.sleep(0.1)

    def admin(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        return psycopg.connect(
            host=str(self.dir), port=self.port, user="postgres", dbname=dbname, autocommit=True
        )

    def stop(self) -> None:
        """Fast shutdown (SIGINT): sessions are cut, as in a restart of the server."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def postgres_cluster() -> Iterator[PostgresCluster]:
    pg = PostgresCluster()
    try:
        pg.init()
        pg.start()
        yield pg
    finally:
        pg.remove()


# -- a Bling sandbox in its own process ---------------------------------------------------


@dataclass
class SandboxProcess:
    root_url: str
    client_id: str
    client_secret: str
    auth_code: str

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/Api/v3"

    def credentials(self) -> dict[str, Any]:
        """What an operator stores after authorising the app: client and token pair."""
        r = httpx.post(
            f"{self.base_url}/oauth/token",
            auth=(self.client_id, self.client_secret),
            data={"grant_type": "authorization_code", "code": self.auth_code},
            timeout=10,
        )
        r.raise_for_status()
        pair = r.json()
        EVIDENCE.secret("an ERP access token", pair["access_token"])
        EVIDENCE.secret("an ERP refresh token", pair["refresh_token"])
        return {
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "access_token": pair["access_token"],
            "refresh_token": pair["refresh_token"],
            "expires_at": (
                datetime.now(UTC) + timedelta(seconds=int(pair["expires_in"]))
            ).isoformat(),
        }

    def truth(self, stream: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.root_url}/__sandbox/truth", params={"stream": stream}, timeout=120)
        r.raise_for_status()
        return [orjson.loads(line) for line in r.content.splitlines() if line]

    def admin(self, path: str, body: dict[str, Any]) -> Any:
        r = httpx.post(f"{self.root_url}/__sandbox/{path}", json=body, timeout=30)
        r.raise_for_status()
        return r.json()


@contextlib.contextmanager
def sandbox_process(**options: Any) -> Iterator[SandboxProcess]:
    """`erp-sync sandbox bling` in its own process (its CPU is not the test's), with a
    client secret and an authorization code of this run (scanned for by scenario 7)."""
    port = free_port()
    client_secret = "app-secret-" + secrets.token_hex(16)
    auth_code = "auth-code-" + secrets.token_hex(12)
    EVIDENCE.secret("the ERP app (client) secret", client_secret)
    EVIDENCE.secret("the ERP authorization code", auth_code)
    args = {"rate-limit": 0, **{k.replace("_", "-"): v for k, v in options.items()}}
    argv = [*ERP_SYNC, "sandbox", "bling", "--port", str(port)]
    argv += ["--client-secret", client_secret, "--auth-code", auth_code]
    for key, value in args.items():
        argv += [f"--{key}", str(value)]
    # Its own output is not the service's (it prints the demo secret by design): not scanned.
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{root}/__sandbox/info", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise AssertionError("the sandbox did not start")
            time.sleep(0.1)
        yield SandboxProcess(root, "merxios-sandbox", client_secret, auth_code)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def add_bling_tenant(
    rt: Runtime,
    tenant_id: str,
    base_url: str,
    credentials: dict[str, Any],
    **settings: Any,
) -> None:
    """A tenant with a Bling connection (rate limit off: the sandboxes' limits are off)."""
    async with rt.unit_of_work() as session:
        session.add(Tenant(id=tenant_id, name=f"Tenant {tenant_id}", schedule="*/15 * * * *"))
        await session.flush()
        session.add(
            ErpConnection(
                tenantId=tenant_id,
                provider="bling",
                settings={"base_url": base_url, "rate_limit_per_second": 0, **settings},
                credentials=rt.box.encrypt_json(credentials),
            )
        )


# -- the store against the sandbox's truth ---------------------------------------------------


def _money(value: Any) -> str:
    return "" if value is None else str(Decimal(str(value)).quantize(Decimal("0.01")))


def product_line(
    external_id: str, sku: Any, name: Any, list_price: Any, cost_price: Any, active: Any
) -> str:
    """A product's canonical values as the Bling list carries them (no detail fields)."""
    return "|".join(
        [external_id, sku or "", name or "", _money(list_price), _money(cost_price), str(active)]
    )


@dataclass(frozen=True)
class Digest:
    rows: int
    sha256: str
    lines: frozenset[str]

    @classmethod
    def of(cls, lines: Iterable[str]) -> Digest:
        ordered = sorted(lines)
        h = hashlib.sha256()
        for line in ordered:
            h.update(line.encode() + b"\n")
        return cls(len(ordered), h.hexdigest(), frozenset(ordered))

    def diff(self, other: Digest, limit: int = 5) -> str:
        missing = sorted(other.lines - self.lines)[:limit]
        extra = sorted(self.lines - other.lines)[:limit]
        return f"missing (first {limit}): {missing}; unexpected (first {limit}): {extra}"


def truth_products(sb: SandboxProcess) -> Digest:
    return Digest.of(
        product_line(
            t["externalId"], t["sku"], t["name"], t["listPrice"], t["costPrice"], t["active"]
        )
        for t in sb.truth("products")
        if not t["malformed"]
    )


def stored_products(db: str, tenant: str) -> Digest:
    with psycopg.connect(db) as c:
        rows = c.execute(
            'SELECT "externalId", sku, name, "listPrice", "costPrice", active FROM "Product" '
            'WHERE "tenantId" = %s AND "deletedAt" IS NULL',
            (tenant,),
        ).fetchall()
    return Digest.of(product_line(*r) for r in rows)


def duplicates(db: str, table: str, tenant: str) -> int:
    """Rows of the tenant beyond one per externalId (whatever the connection)."""
    with psycopg.connect(db) as c:
        row = c.execute(
            f'SELECT count(*) - count(DISTINCT "externalId") FROM "{table}" WHERE "tenantId" = %s',
            (tenant,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def jobrun_statuses(db: str) -> dict[str, int]:
    with psycopg.connect(db) as c:
        rows = c.execute('SELECT status, count(*) FROM "JobRun" GROUP BY status').fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll a plain (blocking) predicate until it is truthy, at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
