"""Shared helpers for the deployment tests.

No database here: these tests run deploy/redis/entrypoint.sh against a real
redis-server on a free loopback port, and the real docker-compose against
docker-compose.prod.yml.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO_ROOT / "deploy" / "redis" / "entrypoint.sh"
COMPOSE_FILE = REPO_ROOT / "docker-compose.prod.yml"
SECRET_NAMES = ("redis_password", "postgres_password", "encryption_key", "api_token")

# Commands the entrypoint may run. In the argv-logging mode PATH holds only
# shims for these, so a new external command in the script fails the test
# loudly until it is listed here (and so gets its argv checked too).
SHIMMED_COMMANDS = ("cat", "sed", "id", "find", "chown", "setpriv", "redis-server")

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


def require_tool(name: str, install_hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not on PATH; install it: {install_hint}")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ReplyError(Exception):
    """An error reply from Redis (-ERR, -NOAUTH, -WRONGPASS...)."""


class RespClient:
    """Minimal RESP2 client: the tests must not depend on the app's stack."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.reader = self.sock.makefile("rb")

    def call(self, *args: str | bytes) -> Any:
        out = [b"*%d\r\n" % len(args)]
        for arg in args:
            raw = arg.encode() if isinstance(arg, str) else arg
            out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
        self.sock.sendall(b"".join(out))
        return self._read()

    def _read(self) -> Any:
        line = self.reader.readline()
        if not line:
            raise ConnectionError("redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise ReplyError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            return self.reader.read(size + 2)[:-2].decode()
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self._read() for _ in range(size)]
        raise ValueError(f"unexpected RESP line {line!r}")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def __enter__(self) -> RespClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class RedisRun:
    proc: subprocess.Popen[bytes]
    port: int
    password: str
    secret_file: Path
    data_dir: Path
    output: Path
    argv_log: Path | None

    def client(self) -> RespClient:
        return RespClient(self.port)

    def authed(self) -> RespClient:
        client = RespClient(self.port)
        assert client.call("AUTH", self.password) == "OK"
        return client

    def logged_argv(self) -> str:
        assert self.argv_log is not None
        return self.argv_log.read_text()

    def output_text(self) -> str:
        return self.output.read_text(errors="replace")


@dataclass
class RedisLauncher:
    """Starts deploy/redis/entrypoint.sh; every process is killed at teardown."""

    base: Path
    runs: list[RedisRun] = field(default_factory=list)
    _counter: int = 0

    def new_dir(self, name: str) -> Path:
        self._counter += 1
        path = self.base / f"{name}-{self._counter}"
        path.mkdir(mode=0o755)
        path.chmod(0o755)
        return path

    def write_secret(self, content: str | bytes, mode: int = 0o600) -> Path:
        path = self.new_dir("secret") / "redis_password"
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        path.chmod(mode)
        return path

    def shim_path(self, argv_log: Path) -> str:
        """A PATH of shims that log each command line, then exec the real tool."""
        shims = self.new_dir("shims")
        argv_log.touch()
        argv_log.chmod(0o666)  # the shim of redis-server may run as `nobody`
        for name in SHIMMED_COMMANDS:
            real = shutil.which(name)
            if real is None:
                continue
            shim = shims / name
            shim.write_text(
                "#!/bin/sh\n"
                f"printf '%s\\n' \"$0 $*\" >> {shlex.quote(str(argv_log))}\n"
                f'exec {shlex.quote(real)} "$@"\n'
            )
            shim.chmod(0o755)
        return str(shims)

    def env(self, secret_file: Path, data_dir: Path, **extra: str) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "REDIS_PASSWORD_FILE": str(secret_file),
            "REDIS_DATA_DIR": str(data_dir),
            "REDIS_RUN_AS": "",
        }
        env.update(extra)
        return env

    def run_to_exit(
        self, env: Mapping[str, str], args: Sequence[str] = (), timeout: float = 5.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the entrypoint expecting it to exit by itself (error cases)."""
        return subprocess.run(
            ["/bin/sh", str(ENTRYPOINT), *args],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,
        )

    def start(
        self,
        password: str | None = None,
        *,
        secret_file: Path | None = None,
        data_dir: Path | None = None,
        args: Sequence[str] = (),
        env_extra: Mapping[str, str] | None = None,
        log_argv: bool = False,
        prefix: Sequence[str] = (),
    ) -> RedisRun:
        if secret_file is None:
            assert password is not None
            secret_file = self.write_secret(password + "\n")
        elif password is None:
            password = secret_file.read_text().rstrip("\n")
        data_dir = data_dir or self.new_dir("data")
        port = free_port()
        output = self.new_dir("out") / "redis.log"
        env = self.env(secret_file, data_dir, **dict(env_extra or {}))
        argv_log = None
        if log_argv:
            argv_log = output.parent / "argv.log"
            env["PATH"] = self.shim_path(argv_log)
        with output.open("wb") as out:
            proc = subprocess.Popen(
                [
                    *prefix,
                    "/bin/sh",
                    str(ENTRYPOINT),
                    *args,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        run = RedisRun(proc, port, password, secret_file, data_dir, output, argv_log)
        self.runs.append(run)
        self._wait_ready(run)
        return run

    def _wait_ready(self, run: RedisRun) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if run.proc.poll() is not None:
                pytest.fail(f"entrypoint exited with {run.proc.returncode}:\n{run.output_text()}")
            try:
                with RespClient(run.port) as client:
                    # -LOADING while the AOF loads; NOAUTH means it serves.
                    try:
                        client.call("PING")
                        return
                    except ReplyError as err:
                        if str(err).startswith("NOAUTH"):
                            return
            except OSError:
                pass
            time.sleep(0.05)
        pytest.fail(f"redis not serving on {run.port} after {START_TIMEOUT}s:\n{run.output_text()}")

    def stop(self, run: RedisRun, sig: int = signal.SIGTERM) -> int:
        if run.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.proc.pid, sig)
            try:
                run.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(run.proc.pid, signal.SIGKILL)
                run.proc.wait(timeout=STOP_TIMEOUT)
        return run.proc.returncode

    def close(self) -> None:
        for run in self.runs:
            # Teardown must try every run, whatever one of them raises.
            with contextlib.suppress(Exception):
                self.stop(run)


@pytest.fixture
def redis_launcher() -> Iterator[RedisLauncher]:
    require_tool("redis-server", "apt-get install redis-server")
    # Not pytest's tmp_path: its parents are 0700, and the privilege-drop
    # test needs the data dir reachable by an unprivileged user.
    base = Path(tempfile.mkdtemp(prefix="erp-sync-redis-test-"))
    base.chmod(0o755)
    launcher = RedisLauncher(base)
    try:
        yield launcher
    finally:
        launcher.close()
        shutil.rmtree(base, ignore_errors=True)


# --- docker-compose --------------------------------------------------------


@dataclass
class ComposeRunner:
    """Runs the real `docker-compose ... config` (no Docker engine needed)."""

    command: list[str]
    workdir: Path

    def secrets_dir(self) -> Path:
        path = self.workdir / "secrets"
        if not path.exists():
            path.mkdir()
            for name in SECRET_NAMES:
                (path / name).write_text(f"test-{name}\n")
        return path

    def run(
        self,
        *args: str,
        compose_file: Path = COMPOSE_FILE,
        env: Mapping[str, str] | None = None,
        dotenv: str = "",
    ) -> subprocess.CompletedProcess[str]:
        env_file = self.workdir / f"env-{abs(hash(dotenv))}"
        env_file.write_text(dotenv)
        # Only PATH and HOME from the caller: variables such as
        # ENABLE_BULLBOARD or API_BIND_ADDRESS in the developer's shell would
        # change the interpolated result.
        full_env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
        full_env.update(env or {})
        return subprocess.run(
            [*self.command, "--env-file", str(env_file), "-f", str(compose_file), *args],
            cwd=REPO_ROOT,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def config(self, env: Mapping[str, str] | None = None, dotenv: str = "") -> dict[str, Any]:
        merged = {"MERXIOS_SECRETS_DIR": str(self.secrets_dir())}
        merged.update(env or {})
        result = self.run("config", env=merged, dotenv=dotenv)
        assert result.returncode == 0, result.stderr
        loaded = yaml.safe_load(result.stdout)
        assert isinstance(loaded, dict)
        return loaded


@pytest.fixture(scope="session")
def compose(tmp_path_factory: pytest.TempPathFactory) -> ComposeRunner:
    # ERP_SYNC_COMPOSE="docker compose" (or a v2 binary) checks the file with
    # Compose v2 instead; both versions must accept it.
    command = shlex.split(os.environ.get("ERP_SYNC_COMPOSE", "docker-compose"))
    require_tool(command[0], "apt-get install -y --no-install-recommends docker-compose")
    return ComposeRunner(command, tmp_path_factory.mktemp("compose"))


@pytest.fixture(scope="session")
def compose_config(compose: ComposeRunner) -> dict[str, Any]:
    """docker-compose.prod.yml as the real tool resolves it, default settings."""
    return compose.config()


def file_mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)
