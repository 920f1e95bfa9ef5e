"""docker-compose.prod.yml, the Dockerfiles and the systemd units.

The compose file is resolved by the real `docker-compose config` (Debian's
docker-compose 1.29; ERP_SYNC_COMPOSE="docker compose" checks it with
Compose v2), which needs no Docker engine. The resolved services are then
exercised: the Redis service's command and environment run the real
entrypoint and redis-server, its health check runs against that server, and
the app services' environment starts the real `erp-sync api`, whose health
checks (compose and Dockerfile) must pass.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import (
    COMPOSE_FILE,
    REPO_ROOT,
    SECRET_NAMES,
    ComposeRunner,
    RedisLauncher,
    free_port,
)

APP_SERVICES = ("migrate", "api", "worker", "scheduler")
LONG_RUNNING = ("postgres", "redis", "api", "worker", "scheduler")
DOCKERFILE = REPO_ROOT / "Dockerfile"
REDIS_DOCKERFILE = REPO_ROOT / "deploy" / "redis" / "Dockerfile"
SYSTEMD_DIR = REPO_ROOT / "deploy" / "systemd"
SECRET_WORDS = re.compile(r"PASSWORD|PASS\b|PASS_|TOKEN|KEY|SECRET", re.IGNORECASE)


# --- normalising v1 and v2 output --------------------------------------------


def duration_seconds(value: str | int | float) -> float:
    if isinstance(value, int | float):
        return float(value)
    if value.strip().isdigit():  # systemd: plain seconds
        return float(value)
    match = re.fullmatch(
        r"(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+)ms)?", value.strip()
    )
    assert match and value.strip(), f"not a duration: {value!r}"
    h, m, s, ms = match.groups()
    return int(h or 0) * 3600 + int(m or 0) * 60 + float(s or 0) + int(ms or 0) / 1000


def published_ports(service: dict[str, Any]) -> list[tuple[str, str, int, str]]:
    """(host_ip, published, target, protocol) from short (v1) or long (v2) syntax."""
    result = []
    for port in service.get("ports") or []:
        if isinstance(port, str):
            spec, _, proto = port.partition("/")
            parts = spec.rsplit(":", 2)
            host_ip = parts[0] if len(parts) == 3 else ""
            published = parts[-2] if len(parts) >= 2 else ""
            result.append((host_ip, published, int(parts[-1]), proto or "tcp"))
        else:
            result.append(
                (
                    str(port.get("host_ip", "")),
                    str(port.get("published", "")),
                    int(port["target"]),
                    str(port.get("protocol", "tcp")),
                )
            )
    return result


def secret_mounts(service: dict[str, Any]) -> dict[str, str]:
    mounts = {}
    for entry in service.get("secrets") or []:
        if isinstance(entry, str):
            mounts[entry] = f"/run/secrets/{entry}"
        else:
            target = entry.get("target") or entry["source"]
            if not target.startswith("/"):
                target = f"/run/secrets/{target}"
            mounts[entry["source"]] = target
    return mounts


def volume_mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source"""
    mounts = {}
    for entry in service.get("volumes") or []:
        if isinstance(entry, str):
            source, target = entry.split(":")[:2]
        else:
            source, target = entry.get("source", ""), entry["target"]
        mounts[target] = source
    return mounts


def healthcheck_disabled(service: dict[str, Any]) -> bool:
    check = service.get("healthcheck") or {}
    return bool(check.get("disable")) or check.get("test") in (["NONE"], "NONE")


def healthcheck_shell(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL", test
    # The resolved file keeps `$$`, which the engine runs as `$`.
    return str(test[1]).replace("$$", "$")


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def service(config: dict[str, Any], name: str) -> dict[str, Any]:
    assert name in config["services"], f"no service {name!r}"
    return dict(config["services"][name])


# --- the validator -----------------------------------------------------------


def test_the_real_compose_accepts_the_file(compose: ComposeRunner) -> None:
    result = compose.run("config", "-q", env={"MERXIOS_SECRETS_DIR": str(compose.secrets_dir())})
    assert result.returncode == 0, result.stderr
    assert "warn" not in result.stderr.lower(), result.stderr
    # `version:` is obsolete in Compose v2 (warning) and optional in 1.29.
    assert "version" not in yaml.safe_load(COMPOSE_FILE.read_text())


def test_the_validator_rejects_a_broken_file(compose: ComposeRunner, tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.prod.yml"
    broken.write_text(
        COMPOSE_FILE.read_text().replace("restart: unless-stopped", "restrat: unless-stopped", 1)
    )
    result = compose.run("config", "-q", compose_file=broken)
    assert result.returncode != 0
    assert "restrat" in result.stderr


def test_expected_services(compose_config: dict[str, Any]) -> None:
    assert set(compose_config["services"]) == {"postgres", "redis", *APP_SERVICES}


# --- secrets ------------------------------------------------------------------


def test_secrets_are_host_files_under_etc_merxios(compose: ComposeRunner) -> None:
    # Without MERXIOS_SECRETS_DIR: the runbook's paths.
    result = compose.run("config")
    assert result.returncode == 0, result.stderr
    top = yaml.safe_load(result.stdout)["secrets"]
    assert {name: top[name]["file"] for name in top} == {
        name: f"/etc/merxios/secrets/{name}" for name in SECRET_NAMES
    }


def test_no_secret_value_in_any_environment(compose_config: dict[str, Any]) -> None:
    for name, svc in compose_config["services"].items():
        mounts = secret_mounts(svc)
        for key, value in env_of(svc).items():
            if not SECRET_WORDS.search(key):
                continue
            assert key.endswith("_FILE"), f"{name}: {key} would show in docker inspect"
            assert value in mounts.values(), f"{name}: {key}={value} is not a mounted secret"


# --- postgres and redis ---------------------------------------------------------


def test_postgres_service(compose_config: dict[str, Any]) -> None:
    pg = service(compose_config, "postgres")
    image, _, tag = pg["image"].partition(":")
    assert image in ("postgres", "docker.io/library/postgres")
    assert int(re.match(r"\d+", tag).group()) >= 15  # type: ignore[union-attr]
    assert not pg.get("ports"), "PostgreSQL must not be published on the host"
    assert pg.get("network_mode") is None
    env = env_of(pg)
    assert "POSTGRES_PASSWORD" not in env
    assert env["POSTGRES_PASSWORD_FILE"] == secret_mounts(pg)["postgres_password"]
    assert (env["POSTGRES_USER"], env["POSTGRES_DB"]) == ("merxios", "merxios")
    assert volume_mounts(pg)["/var/lib/postgresql/data"] in compose_config["volumes"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])


def test_redis_service(compose_config: dict[str, Any]) -> None:
    redis = service(compose_config, "redis")
    assert redis["container_name"] == "Merxios_redis_prod"
    assert not redis.get("ports"), "Redis must not be published on the host"
    assert redis.get("network_mode") is None
    assert Path(redis["build"]["context"]).resolve() == REPO_ROOT / "deploy" / "redis"
    # The entrypoint's defaults: the secret and the data directory.
    assert secret_mounts(redis) == {"redis_password": "/run/secrets/redis_password"}
    assert volume_mounts(redis)["/data"] in compose_config["volumes"]
    assert "REDIS_PASSWORD_FILE" not in env_of(redis)
    assert "REDIS_DATA_DIR" not in env_of(redis)


def test_databases_have_no_route_out(compose_config: dict[str, Any]) -> None:
    networks = compose_config["networks"]
    for name in ("postgres", "redis"):
        attached = service(compose_config, name).get("networks") or {}
        assert attached, f"{name} on the default network"
        assert all(networks[n].get("internal") for n in attached), name


def test_redis_service_runs_with_bullmq_settings(
    compose_config: dict[str, Any], redis_launcher: RedisLauncher
) -> None:
    """The service's command and environment, through the real entrypoint."""
    redis = service(compose_config, "redis")
    command = redis.get("command") or []
    if isinstance(command, str):
        command = shlex.split(command)
    env = {k: v for k, v in env_of(redis).items() if v != ""}
    run = redis_launcher.start("mx-" + secrets.token_hex(12), args=command, env_extra=env)
    with run.authed() as client:
        assert client.call("CONFIG", "GET", "appendonly") == ["appendonly", "yes"]
        assert client.call("CONFIG", "GET", "maxmemory-policy") == [
            "maxmemory-policy",
            "noeviction",
        ]
    with run.client() as client, pytest.raises(Exception, match="NOAUTH"):
        client.call("PING")


def test_redis_healthcheck_passes_only_with_the_password(
    compose_config: dict[str, Any], redis_launcher: RedisLauncher
) -> None:
    shutil.which("redis-cli") or pytest.fail("redis-cli missing: apt-get install redis-tools")
    command = healthcheck_shell(service(compose_config, "redis"))
    assert " -a " not in command and "--pass" not in command and "requirepass" not in command

    run = redis_launcher.start("mx-" + secrets.token_hex(12))
    wrong = redis_launcher.write_secret("not-the-password\n")

    def check(secret: Path) -> int:
        env = {
            "PATH": os.environ["PATH"],
            "REDIS_PASSWORD_FILE": str(secret),
            "REDIS_PORT": str(run.port),
        }
        return subprocess.run(
            ["/bin/sh", "-c", command], env=env, capture_output=True, timeout=10
        ).returncode

    assert check(run.secret_file) == 0
    assert check(wrong) != 0
    redis_launcher.stop(run)
    assert check(run.secret_file) != 0


def test_redis_image_uses_the_entrypoint() -> None:
    stages = dockerfile_stages(REDIS_DOCKERFILE)
    final = stages[-1]
    assert re.fullmatch(r"redis:7(\.\d+)*(-[a-z0-9]+)?", final.base), final.base
    copies = [i for i in final.instructions if i.name == "COPY"]
    targets = {shlex.split(i.args)[-1] for i in copies if "entrypoint.sh" in i.args}
    entrypoint = json.loads(final.last("ENTRYPOINT").args)
    assert entrypoint[0] in targets


# --- app services -------------------------------------------------------------


def test_app_services_share_one_build(compose_config: dict[str, Any]) -> None:
    builds = {name: service(compose_config, name)["build"] for name in APP_SERVICES}
    images = {name: service(compose_config, name)["image"] for name in APP_SERVICES}
    for name, build in builds.items():
        assert Path(build["context"]).resolve() == REPO_ROOT, name
        assert build.get("dockerfile", "Dockerfile") == "Dockerfile", name
    assert len({json.dumps(b, sort_keys=True) for b in builds.values()}) == 1
    assert len(set(images.values())) == 1


def test_app_commands_and_restart(compose_config: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        assert service(compose_config, name)["command"] == [name]
    for name in LONG_RUNNING:
        assert service(compose_config, name)["restart"] == "unless-stopped", name
    assert service(compose_config, "migrate")["restart"] in ("no", False)


def test_app_environment(compose_config: dict[str, Any]) -> None:
    expected = {
        "APP_ENV": "production",
        "DATABASE_URL": "postgresql://merxios@postgres:5432/merxios",
        "DATABASE_PASSWORD_FILE": "/run/secrets/postgres_password",
        "REDIS_URL": "redis://redis:6379/0",
        "REDIS_PASSWORD_FILE": "/run/secrets/redis_password",
        "ENCRYPTION_KEY_FILE": "/run/secrets/encryption_key",
        "API_TOKEN_FILE": "/run/secrets/api_token",
    }
    for name in APP_SERVICES:
        svc = service(compose_config, name)
        env = env_of(svc)
        assert {k: env.get(k) for k in expected} == expected, name
        assert set(secret_mounts(svc)) == set(SECRET_NAMES), name
        assert svc.get("user") in (None, ""), f"{name} overrides the image's non-root user"
    api = env_of(service(compose_config, "api"))
    assert api["ENABLE_BULLBOARD"] == "false"
    assert "BULLBOARD_PASS" not in api


def test_bullboard_is_switched_on_from_dotenv(compose: ComposeRunner) -> None:
    """Runbook §4: ENABLE_BULLBOARD=true in .env, then `up -d api`."""
    config = compose.config(dotenv="ENABLE_BULLBOARD=true\n")
    assert env_of(config["services"]["api"])["ENABLE_BULLBOARD"] == "true"


def test_api_is_published_on_loopback_only(
    compose_config: dict[str, Any], compose: ComposeRunner
) -> None:
    assert published_ports(service(compose_config, "api")) == [("127.0.0.1", "3000", 3000, "tcp")]
    for name in ("postgres", "redis", "migrate", "worker", "scheduler"):
        assert not service(compose_config, name).get("ports"), name
    opened = compose.config(dotenv="API_BIND_ADDRESS=0.0.0.0\n")
    assert published_ports(opened["services"]["api"]) == [("0.0.0.0", "3000", 3000, "tcp")]


def test_start_order(compose_config: dict[str, Any]) -> None:
    def conditions(name: str) -> dict[str, str]:
        deps = service(compose_config, name).get("depends_on") or {}
        return {dep: spec["condition"] for dep, spec in deps.items()}

    assert conditions("migrate") == {"postgres": "service_healthy"}
    for name in ("api", "worker", "scheduler"):
        assert conditions(name) == {
            "postgres": "service_healthy",
            "redis": "service_healthy",
            "migrate": "service_completed_successfully",
        }, name
    for name in ("postgres", "redis", "api"):
        assert not healthcheck_disabled(service(compose_config, name)), name


def test_stop_grace_periods(compose_config: dict[str, Any]) -> None:
    worker = service(compose_config, "worker")
    grace = duration_seconds(worker["stop_grace_period"])
    assert grace >= 60
    # The worker gives up on running jobs before Docker's SIGKILL.
    assert float(env_of(worker)["WORKER_GRACE_SECONDS"]) + 10 <= grace
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"
    # The systemd example waits as long.
    unit = read_unit(SYSTEMD_DIR / "erp-sync-worker.service")
    assert duration_seconds(unit["Service"]["TimeoutStopSec"][-1]) == grace
    assert (
        unit["Service"]["Environment"].count(
            "WORKER_GRACE_SECONDS=" + str(env_of(worker)["WORKER_GRACE_SECONDS"])
        )
        == 1
    )
    for name in ("postgres", "redis", "api", "scheduler"):
        assert duration_seconds(service(compose_config, name)["stop_grace_period"]) >= 10, name


def test_logs_are_rotated(compose_config: dict[str, Any]) -> None:
    for name, svc in compose_config["services"].items():
        logging = svc.get("logging") or {}
        assert logging.get("driver") in ("json-file", "local"), name
        options = logging.get("options") or {}
        assert options.get("max-size") and int(options.get("max-file", 0)) >= 2, name


# --- the app under the compose environment -----------------------------------


def erp_sync_bin() -> Path:
    path = Path(sys.executable).parent / "erp-sync"
    if not path.exists():
        pytest.fail(f"{path} missing: install the project (pip install -e .)")
    return path


def container_env(svc: dict[str, Any], tmp_path: Path, port: int | None = None) -> dict[str, str]:
    """The service's environment with /run/secrets/* pointed at test files."""
    pytest.importorskip("erp_sync")
    from erp_sync.kit.crypto import generate_key

    contents = {
        "postgres_password": "pg-" + secrets.token_hex(8),
        "redis_password": "redis-" + secrets.token_hex(8),
        "encryption_key": generate_key(),
        "api_token": "token-" + secrets.token_hex(16),
    }
    secret_dir = tmp_path / "run-secrets"
    secret_dir.mkdir(exist_ok=True)
    for name, value in contents.items():
        (secret_dir / name).write_text(value + "\n")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    for key, value in env_of(svc).items():
        if value.startswith("/run/secrets/"):
            value = str(secret_dir / value.removeprefix("/run/secrets/"))
        env[key] = value
    if port is not None:
        env["PORT"] = str(port)
    return env


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_settings_accept_the_compose_environment(
    compose_config: dict[str, Any], tmp_path: Path, name: str
) -> None:
    env = container_env(service(compose_config, name), tmp_path)
    probe = (
        "import json; from erp_sync.settings import load_settings; s = load_settings(); "
        "print(json.dumps({'production': s.production, 'host': s.host, 'port': s.port, "
        "'redis': s.current_redis_password(), 'db': s.current_database_password()}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert loaded["production"] is True
    assert loaded["host"] == "0.0.0.0", "the API must listen on every interface in a container"
    assert loaded["port"] == 3000
    assert loaded["redis"] == (tmp_path / "run-secrets" / "redis_password").read_text().strip()
    assert loaded["db"] == (tmp_path / "run-secrets" / "postgres_password").read_text().strip()


@pytest.fixture(scope="module")
def cli_commands() -> set[str]:
    pytest.importorskip("erp_sync")
    import typer

    from erp_sync.cli.main import app

    group = typer.main.get_command(app)
    return set(getattr(group, "commands", {}))


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_commands_exist(
    compose_config: dict[str, Any], cli_commands: set[str], name: str
) -> None:
    command = service(compose_config, name)["command"]
    assert command[0] in cli_commands, f"`erp-sync {command[0]}` does not exist"


def dockerfile_healthcheck(path: Path) -> list[str]:
    check = dockerfile_stages(path)[-1].last("HEALTHCHECK").args
    exec_form = check[check.index("CMD") + 3 :].strip()
    return list(json.loads(exec_form))


def run_healthcheck(argv: list[str], port: int) -> int:
    assert argv[0] == "python", argv
    env = {"PATH": os.environ["PATH"], "PORT": str(port)}
    return subprocess.run(
        [sys.executable, *argv[1:]], env=env, capture_output=True, timeout=15
    ).returncode


@pytest.fixture
def api_process(compose_config: dict[str, Any], tmp_path: Path) -> Iterator[tuple[int, Any]]:
    port = free_port()
    env = container_env(service(compose_config, "api"), tmp_path, port=port)
    out = (tmp_path / "api.log").open("wb")
    proc = subprocess.Popen(
        [str(erp_sync_bin()), *service(compose_config, "api")["command"], "--host", "127.0.0.1"],
        env=env,
        cwd=tmp_path,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield port, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
        out.close()


def test_api_healthchecks_pass_against_the_real_api(
    compose_config: dict[str, Any], api_process: tuple[int, Any], tmp_path: Path
) -> None:
    port, proc = api_process
    compose_check = list(service(compose_config, "api")["healthcheck"]["test"])
    assert compose_check[0] == "CMD"
    deadline = time.monotonic() + 30
    while run_healthcheck(compose_check[1:], port) != 0:
        assert proc.poll() is None, (tmp_path / "api.log").read_text()[-2000:]
        assert time.monotonic() < deadline, "compose health check never passed"
        time.sleep(0.2)
    assert run_healthcheck(dockerfile_healthcheck(DOCKERFILE), port) == 0
    # `docker stop`: SIGTERM, and the API exits within its grace period.
    grace = duration_seconds(service(compose_config, "api")["stop_grace_period"])
    started = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=grace)
    assert time.monotonic() - started < grace


class _Status(http.server.BaseHTTPRequestHandler):
    status = 503

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("status", [200, 503])
def test_api_healthchecks_follow_the_status(compose_config: dict[str, Any], status: int) -> None:
    handler = type("Handler", (_Status,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    try:
        checks = [
            list(service(compose_config, "api")["healthcheck"]["test"])[1:],
            dockerfile_healthcheck(DOCKERFILE),
        ]
        for argv in checks:
            assert (run_healthcheck(argv, port) == 0) is (status == 200), argv
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    # Nobody listening: unhealthy.
    for argv in checks:
        assert run_healthcheck(argv, free_port()) != 0


# --- Dockerfiles (static: no engine here) -------------------------------------


class Instruction:
    def __init__(self, name: str, args: str) -> None:
        self.name, self.args = name, args

    def __repr__(self) -> str:
        return f"{self.name} {self.args}"


class Stage:
    def __init__(self, base: str, alias: str | None) -> None:
        self.base, self.alias = base, alias
        self.instructions: list[Instruction] = []

    def all(self, name: str) -> list[Instruction]:
        return [i for i in self.instructions if i.name == name]

    def last(self, name: str) -> Instruction:
        found = self.all(name)
        assert found, f"no {name} in stage {self.alias or self.base}"
        return found[-1]


def dockerfile_stages(path: Path) -> list[Stage]:
    text = re.sub(
        r"\\\n",
        " ",
        "\n".join(
            line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")
        ),
    )
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        name, _, rest = line.strip().partition(" ")
        name, rest = name.upper(), " ".join(rest.split())
        if name == "ARG" and not stages:
            key, _, default = rest.partition("=")
            args[key] = default
        elif name == "FROM":
            words = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), ""), rest).split()
            words = [w for w in words if not w.startswith("--")]
            alias = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], alias))
        else:
            assert stages, f"{name} before FROM"
            stages[-1].instructions.append(Instruction(name, rest))
    return stages


def test_dockerfile_is_multi_stage_without_compilers_in_the_final_image() -> None:
    stages = dockerfile_stages(DOCKERFILE)
    assert len(stages) >= 2
    builder, final = stages[0], stages[-1]
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", final.base), final.base
    assert "build-essential" in " ".join(i.args for i in builder.all("RUN"))
    assert "pip wheel" in " ".join(i.args for i in builder.all("RUN"))
    final_runs = " ".join(i.args for i in final.all("RUN"))
    for compiler in ("gcc", "g++", "build-essential", "clang", "make "):
        assert compiler not in final_runs, compiler
    copies = [i.args for i in final.all("COPY")]
    assert any(f"--from={builder.alias}" in c for c in copies), copies
    assert not any("--from" not in c for c in copies), "final stage copies sources, not the venv"


def test_dockerfile_runs_as_a_dedicated_user() -> None:
    final = dockerfile_stages(DOCKERFILE)[-1]
    user = final.last("USER").args.split(":")[0]
    assert user not in ("root", "0", ""), user
    creates = " ".join(i.args for i in final.all("RUN") if "useradd" in i.args)
    assert "merxios" in creates
    if user.isdigit():
        assert f"--uid {user}" in creates
    else:
        assert user == "merxios"
    # Nothing after USER switches back to root.
    after = final.instructions[final.instructions.index(final.last("USER")) :]
    assert not [i for i in after if i.name == "RUN"], after


def test_dockerfile_entrypoint_healthcheck_and_port() -> None:
    final = dockerfile_stages(DOCKERFILE)[-1]
    assert json.loads(final.last("ENTRYPOINT").args) == ["erp-sync"]
    assert json.loads(final.last("CMD").args) == ["api"]
    assert "3000" in final.last("EXPOSE").args.split()
    check = dockerfile_healthcheck(DOCKERFILE)
    assert "urllib" in check[-1] and "/health" in check[-1]


def test_build_context_has_the_sources_and_no_secrets() -> None:
    ignored = {
        line.strip().rstrip("/")
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for must in (".git", ".env", ".venv", "secrets"):
        assert must in ignored, must
    builder = dockerfile_stages(DOCKERFILE)[0]
    for copy in builder.all("COPY"):
        for source in shlex.split(copy.args)[:-1]:
            if source.startswith("--"):
                continue
            assert (REPO_ROOT / source).exists(), f"COPY {source}: missing"
            assert source.split("/")[0] not in ignored, f"COPY {source}: in .dockerignore"


# --- systemd units ---------------------------------------------------------------


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        assert current is not None, line
        current.setdefault(key, []).append(value)
    return sections


@pytest.mark.parametrize("command", ["api", "worker", "scheduler"])
def test_systemd_unit(command: str) -> None:
    unit = read_unit(SYSTEMD_DIR / f"erp-sync-{command}.service")["Service"]
    assert unit["ExecStart"][-1].split()[-2:] == [unit["ExecStart"][-1].split()[-2], command]
    assert unit["ExecStart"][-1].split()[-2].endswith("/erp-sync")
    assert unit["User"][-1] not in ("root", "0")
    assert unit["KillSignal"][-1] == "SIGTERM"
    assert unit["Restart"][-1] == "on-failure"
    assert unit["EnvironmentFile"]
    credentials = dict(c.split(":", 1) for c in unit["LoadCredential"])
    assert credentials == {name: f"/etc/merxios/secrets/{name}" for name in SECRET_NAMES}
    environment = " ".join(unit["Environment"]).split()
    for variable, name in (
        ("DATABASE_PASSWORD_FILE", "postgres_password"),
        ("REDIS_PASSWORD_FILE", "redis_password"),
        ("ENCRYPTION_KEY_FILE", "encryption_key"),
        ("API_TOKEN_FILE", "api_token"),
    ):
        assert f"{variable}=%d/{name}" in environment
    assert "APP_ENV=production" in environment


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_systemd_units_verify(tmp_path: Path) -> None:
    """systemd-analyze verify in a scratch root where ExecStart exists."""
    system_units = next(
        (p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()),
        None,
    )
    if system_units is None:
        pytest.skip("no systemd unit directory on this machine")
    root = tmp_path / "root"
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in SYSTEMD_DIR.glob("*.service"):
        shutil.copy(unit, root / "etc/systemd/system" / unit.name)
        for exe in read_unit(unit)["Service"].get("ExecStart", []) + read_unit(unit)["Service"].get(
            "ExecStartPre", []
        ):
            binary = root / exe.split()[0].lstrip("/")
            binary.parent.mkdir(parents=True, exist_ok=True)
            binary.write_text("#!/bin/sh\n")
            binary.chmod(0o755)
        for env_file in read_unit(unit)["Service"].get("EnvironmentFile", []):
            target = root / env_file.lstrip("-/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
        (root / "opt/merxios/app").mkdir(parents=True, exist_ok=True)
    names = sorted(u.name for u in SYSTEMD_DIR.glob("*.service"))
    assert names == [f"erp-sync-{c}.service" for c in ("api", "scheduler", "worker")]
    result = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", *names],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_app_reaches_the_hardened_redis_with_the_compose_environment(
    compose_config: dict[str, Any], redis_launcher: RedisLauncher, tmp_path: Path
) -> None:
    """`erp-sync health` with the worker's environment, the hostname `redis`
    pointed at the entrypoint's server: the app authenticates with the secret
    file, and only with the right one."""
    env = container_env(service(compose_config, "worker"), tmp_path)
    secret = Path(env["REDIS_PASSWORD_FILE"])
    run = redis_launcher.start(secret_file=secret)
    assert env["REDIS_URL"].startswith("redis://redis:6379/")
    env["REDIS_URL"] = env["REDIS_URL"].replace("redis:6379", f"127.0.0.1:{run.port}")
    # No PostgreSQL here: its line says DOWN, which this test does not judge.
    env["DATABASE_URL"] = f"postgresql://merxios@127.0.0.1:{free_port()}/merxios"

    def redis_line() -> str:
        result = subprocess.run(
            [str(erp_sync_bin()), "health"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        match = re.search(r"^redis\b.*$", result.stdout, re.MULTILINE)
        assert match, result.stdout + result.stderr
        return match.group()

    assert re.match(r"redis\s+up\b", redis_line())
    secret.write_text("not-the-password\n")
    assert re.match(r"redis\s+DOWN\b", redis_line())
