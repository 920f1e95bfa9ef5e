"""deploy/redis/entrypoint.sh against the real redis-server binary.

Each test starts the entrypoint on a free loopback port with its own secret
file and data directory; the `redis_launcher` fixture kills every process it
started.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import ENTRYPOINT, RedisLauncher, ReplyError, file_mode, require_tool

HOST_SECRET = "/etc/merxios/secrets/redis_password"


def unique_password() -> str:
    return "mx-" + secrets.token_hex(16)


def config_get(client, name: str) -> str:  # type: ignore[no-untyped-def]
    reply = client.call("CONFIG", "GET", name)
    assert reply[0] == name, reply
    return str(reply[1])


# --- the server it starts --------------------------------------------------


def test_refuses_clients_without_the_password(redis_launcher: RedisLauncher) -> None:
    run = redis_launcher.start(unique_password())
    with run.client() as client:
        with pytest.raises(ReplyError, match=r"^NOAUTH"):
            client.call("PING")
        with pytest.raises(ReplyError, match=r"^NOAUTH"):
            client.call("SET", "bull:sync:id", "1")
        with pytest.raises(ReplyError, match=r"^WRONGPASS"):
            client.call("AUTH", "not-the-password")
        assert client.call("AUTH", run.password) == "OK"
        assert client.call("PING") == "PONG"


def test_bullmq_settings_reach_the_server(redis_launcher: RedisLauncher) -> None:
    run = redis_launcher.start(unique_password())
    with run.authed() as client:
        assert config_get(client, "appendonly") == "yes"
        assert config_get(client, "appendfsync") == "everysec"
        assert config_get(client, "maxmemory-policy") == "noeviction"
        assert config_get(client, "protected-mode") == "yes"
        assert config_get(client, "maxmemory") == "0"
        assert os.path.realpath(config_get(client, "dir")) == os.path.realpath(run.data_dir)


def test_jobs_survive_a_restart_through_the_aof(redis_launcher: RedisLauncher) -> None:
    run = redis_launcher.start(unique_password())
    with run.authed() as client:
        assert client.call("SET", "bull:sync:42", "queued") == "OK"
    # docker stop: SIGTERM to PID 1, which is redis-server itself (exec).
    assert redis_launcher.stop(run) == 0, run.output_text()

    aof_dir = run.data_dir / "appendonlydir"
    aof_files = sorted(aof_dir.iterdir())
    assert any(p.name.endswith(".manifest") for p in aof_files)
    # umask 0077: the AOF holds queue payloads, for the redis user only.
    assert all(file_mode(p) & 0o077 == 0 for p in aof_files), [
        (p.name, oct(file_mode(p))) for p in aof_files
    ]
    # Without the RDB snapshot, only the AOF can bring the key back.
    (run.data_dir / "dump.rdb").unlink(missing_ok=True)

    again = redis_launcher.start(secret_file=run.secret_file, data_dir=run.data_dir)
    with again.authed() as client:
        assert client.call("GET", "bull:sync:42") == "queued"


def test_noeviction_refuses_writes_instead_of_dropping_jobs(
    redis_launcher: RedisLauncher,
) -> None:
    run = redis_launcher.start(unique_password(), env_extra={"REDIS_MAXMEMORY": "4mb"})
    blob = "x" * 100_000
    with run.authed() as client:
        assert config_get(client, "maxmemory") == str(4 * 1024 * 1024)
        written, refused = 0, None
        for i in range(200):  # 20 MB at most; the cap is 4 MB
            try:
                client.call("SET", f"job:{i}", blob)
            except ReplyError as exc:
                refused = str(exc)
                break
            written += 1
        assert refused is not None and refused.startswith("OOM"), refused
        assert written > 0
        # Every job written before the cap is still there.
        assert client.call("EXISTS", *[f"job:{i}" for i in range(written)]) == written


def test_password_with_config_metacharacters(redis_launcher: RedisLauncher) -> None:
    password = "p@ss \"quoted\" \\back\\slash\\x41 #hash $HOME `id` ;semi 'single' é!"
    run = redis_launcher.start(password)
    with run.authed() as client:
        assert config_get(client, "requirepass") == password


def test_runbook_ping_command(redis_launcher: RedisLauncher) -> None:
    """Runbook §3B: redis-cli -a $(sudo cat /etc/merxios/secrets/redis_password) ping."""
    require_tool("redis-cli", "apt-get install redis-tools")
    # Runbook §2 writes the secret with `echo`, so with a trailing newline.
    secret = redis_launcher.write_secret("NOVA_SENHA_COMPLEXA_123!\n")
    run = redis_launcher.start(secret_file=secret)
    result = subprocess.run(
        ["/bin/sh", "-c", 'redis-cli -p "$PORT" -a $(cat "$SECRET") ping'],
        env={"PATH": os.environ["PATH"], "PORT": str(run.port), "SECRET": str(secret)},
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "PONG"


def test_extra_args_from_env_and_argv(redis_launcher: RedisLauncher) -> None:
    run = redis_launcher.start(
        unique_password(),
        args=["--hz", "20"],
        env_extra={"REDIS_EXTRA_ARGS": "--databases 4 --tcp-keepalive 60"},
    )
    with run.authed() as client:
        assert config_get(client, "databases") == "4"
        assert config_get(client, "tcp-keepalive") == "60"
        assert config_get(client, "hz") == "20"
        assert config_get(client, "appendonly") == "yes"


# --- the password stays off every command line -----------------------------


def test_password_is_on_no_command_line(redis_launcher: RedisLauncher) -> None:
    password = unique_password()
    run = redis_launcher.start(password, log_argv=True)

    # Every external command the entrypoint ran, short-lived ones included,
    # went through a logging shim (PATH holds nothing else).
    logged = run.logged_argv()
    for command in ("cat", "sed", "redis-server"):
        assert f"/{command} " in logged, logged
    assert password not in logged

    # Every process running now, as ps and /proc show them.
    needle = password.encode()
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            cmdline = (proc_dir / "cmdline").read_bytes()
        except OSError:
            continue
        assert needle not in cmdline, f"password in the argv of pid {proc_dir.name}"
    ps = subprocess.run(
        ["ps", "-eww", "-o", "pid=,args="], capture_output=True, text=True, timeout=10
    )
    assert ps.returncode == 0
    assert password not in ps.stdout

    # The server is the process started (exec chain), and its environment
    # holds only the secret's path.
    server_argv = (Path("/proc") / str(run.proc.pid) / "cmdline").read_bytes()
    assert b"redis-server" in server_argv
    assert needle not in (Path("/proc") / str(run.proc.pid) / "environ").read_bytes()
    assert password not in run.output_text()

    with run.authed() as client:
        assert client.call("PING") == "PONG"


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_started_as_root_it_drops_to_the_service_user(redis_launcher: RedisLauncher) -> None:
    require_tool("setpriv", "apt-get install util-linux")
    user = pwd.getpwnam("nobody")
    password = unique_password()
    secret = redis_launcher.write_secret(password + "\n", mode=0o600)  # root-only
    data_dir = redis_launcher.new_dir("data")
    (data_dir / "left-by-root").write_text("old volume content")

    run = redis_launcher.start(
        secret_file=secret,
        data_dir=data_dir,
        env_extra={"REDIS_RUN_AS": user.pw_name},
        log_argv=True,
    )

    status = (Path("/proc") / str(run.proc.pid) / "status").read_text()
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert uids == [str(user.pw_uid)] * 4, status
    assert (data_dir / "left-by-root").stat().st_uid == user.pw_uid
    with run.authed() as client:
        assert client.call("SET", "k", "v") == "OK"
    assert (data_dir / "appendonlydir").stat().st_uid == user.pw_uid
    logged = run.logged_argv()
    assert "/setpriv " in logged and password not in logged
    assert password.encode() not in (Path("/proc") / str(run.proc.pid) / "cmdline").read_bytes()


# --- a bad secret file: one clear line, non-zero exit, no server -----------


def _marker_server(launcher: RedisLauncher) -> tuple[Path, Path]:
    """A stand-in redis-server that only records that it was started."""
    directory = launcher.new_dir("fake-server")
    marker = directory / "started"
    fake = directory / "redis-server"
    fake.write_text(f"#!/bin/sh\ntouch '{marker}'\n")
    fake.chmod(0o755)
    return fake, marker


def _assert_fails_clearly(
    launcher: RedisLauncher, env: dict[str, str], marker: Path, expected: str
) -> str:
    started = time.monotonic()
    result = launcher.run_to_exit(env)
    assert time.monotonic() - started < 5
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("redis entrypoint: "), lines[0]
    assert expected in lines[0], lines[0]
    assert not marker.exists(), "redis-server was started anyway"
    return lines[0]


def test_missing_secret_file(redis_launcher: RedisLauncher) -> None:
    fake, marker = _marker_server(redis_launcher)
    missing = redis_launcher.new_dir("secret") / "redis_password"
    env = redis_launcher.env(missing, redis_launcher.new_dir("data"), REDIS_SERVER_BIN=str(fake))
    _assert_fails_clearly(
        redis_launcher,
        env,
        marker,
        f"secret file {missing} is missing; create it on the host at {HOST_SECRET}",
    )


@pytest.mark.skipif(
    os.path.exists("/run/secrets/redis_password"), reason="this host has the real secret"
)
def test_missing_secret_message_in_the_container_layout(redis_launcher: RedisLauncher) -> None:
    fake, marker = _marker_server(redis_launcher)
    env = redis_launcher.env(
        Path("/unused"), redis_launcher.new_dir("data"), REDIS_SERVER_BIN=str(fake)
    )
    del env["REDIS_PASSWORD_FILE"]
    result = redis_launcher.run_to_exit(env)
    assert result.returncode != 0
    assert result.stderr.strip() == (
        "redis entrypoint: secret file /run/secrets/redis_password is missing; "
        "create it on the host at /etc/merxios/secrets/redis_password"
    )
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param(b"", "is empty; write the password into " + HOST_SECRET, id="empty"),
        pytest.param(b"\n", "is empty", id="only-newline"),
        pytest.param(b"hunter2\r\n", "control character", id="crlf"),
        pytest.param(b"hunter2\nhunter3\n", "control character", id="two-lines"),
        pytest.param(b" hunter2\n", "leading or trailing blanks", id="leading-blank"),
        pytest.param(b"hunter2 \n", "leading or trailing blanks", id="trailing-blank"),
    ],
)
def test_bad_secret_content(redis_launcher: RedisLauncher, content: bytes, expected: str) -> None:
    fake, marker = _marker_server(redis_launcher)
    secret = redis_launcher.write_secret(content)
    env = redis_launcher.env(secret, redis_launcher.new_dir("data"), REDIS_SERVER_BIN=str(fake))
    line = _assert_fails_clearly(redis_launcher, env, marker, expected)
    assert "hunter" not in line, "the refused secret was echoed back"


def test_secret_path_is_a_directory(redis_launcher: RedisLauncher) -> None:
    # What Docker leaves when the host file was missing at container creation.
    fake, marker = _marker_server(redis_launcher)
    directory = redis_launcher.new_dir("secret")
    env = redis_launcher.env(directory, redis_launcher.new_dir("data"), REDIS_SERVER_BIN=str(fake))
    _assert_fails_clearly(redis_launcher, env, marker, "is a directory")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the script as another user")
def test_unreadable_secret_file(redis_launcher: RedisLauncher) -> None:
    setpriv = require_tool("setpriv", "apt-get install util-linux")
    fake, marker = _marker_server(redis_launcher)
    secret = redis_launcher.write_secret("root-only\n", mode=0o600)
    data_dir = redis_launcher.new_dir("data")
    env = redis_launcher.env(secret, data_dir, REDIS_SERVER_BIN=str(fake))
    nobody = pwd.getpwnam("nobody")
    started = time.monotonic()
    result = subprocess.run(
        [
            setpriv,
            f"--reuid={nobody.pw_uid}",
            f"--regid={nobody.pw_gid}",
            "--clear-groups",
            "/bin/sh",
            str(ENTRYPOINT),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=5,
        stdin=subprocess.DEVNULL,
    )
    assert time.monotonic() - started < 5
    assert result.returncode != 0
    assert result.stderr.strip() == (
        f"redis entrypoint: secret file {secret} is not readable by uid {nobody.pw_uid}; "
        f"check the permissions of {HOST_SECRET} on the host"
    )
    assert not marker.exists()


def test_invalid_maxmemory_is_refused(redis_launcher: RedisLauncher) -> None:
    fake, marker = _marker_server(redis_launcher)
    secret = redis_launcher.write_secret("pw\n")
    env = redis_launcher.env(
        secret,
        redis_launcher.new_dir("data"),
        REDIS_SERVER_BIN=str(fake),
        REDIS_MAXMEMORY='1gb\nrequirepass ""',
    )
    _assert_fails_clearly(redis_launcher, env, marker, "REDIS_MAXMEMORY")


# --- the script itself -------------------------------------------------------


def test_script_is_posix_sh() -> None:
    result = subprocess.run(["sh", "-n", str(ENTRYPOINT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert ENTRYPOINT.read_text().startswith("#!/bin/sh\n")
    assert os.access(ENTRYPOINT, os.X_OK), "entrypoint.sh lost its executable bit"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_script_passes_shellcheck() -> None:
    result = subprocess.run(
        ["shellcheck", "--shell=sh", str(ENTRYPOINT)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the user is looked up only when started as root")
def test_unknown_service_user_is_refused(redis_launcher: RedisLauncher) -> None:
    fake, marker = _marker_server(redis_launcher)
    secret = redis_launcher.write_secret("pw\n")
    env = redis_launcher.env(
        secret,
        redis_launcher.new_dir("data"),
        REDIS_SERVER_BIN=str(fake),
        REDIS_RUN_AS="no-such-user-merxios",
    )
    _assert_fails_clearly(redis_launcher, env, marker, "REDIS_RUN_AS=no-such-user-merxios")
