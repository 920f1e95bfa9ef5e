"""Test-side helpers for the real Tryton peer (standard library only).

Our own virtualenv has no trytond: these helpers drive ``scripts/tryton-peer``
and ``tests/tryton_peer/edits.py`` (which runs in the peer's virtualenv) as
subprocesses, and speak Tryton's JSON-RPC with urllib.  Example::

    from tests.tryton_peer.harness import edit, peer_env, TrytonRPC

    env = peer_env()                       # runs `scripts/tryton-peer up`
    rpc = TrytonRPC.from_env(env)          # logs in as admin
    rows = rpc.call("model.product.product.search_read",
                    [["code", "=", "P0001"]], 0, 1, None,
                    ["code", "list_price_used"], rpc.context)
    edit("set-template-price", code="P0001", price="12.34")

See docs/tryton-peer.md.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import subprocess
import urllib.error
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "tryton-peer"
EDITS = Path(__file__).resolve().parent / "edits.py"


class PeerError(RuntimeError):
    """The peer could not be started, or an edit failed."""


def _parse_env(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.isidentifier():
            env[key] = value
    return env


def peer_env(start: bool = True, timeout: float = 900) -> dict[str, str]:
    """TRYTON_* settings of the peer; with start=True runs ``up`` first
    (idempotent: ~0.2 s when it already runs)."""
    cmd = [str(SCRIPT), "up" if start else "env"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode:
        raise PeerError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return _parse_env(proc.stdout)


def edit(command: str, *, env: dict[str, str] | None = None, **options: Any) -> dict[str, Any]:
    """Run an edits.py command in the peer's Python; return its JSON.

    Keyword options become ``--kebab-case`` flags: True -> a bare flag,
    a list -> the flag repeated (``line=["P0001:2", "P0002:1"]``).
    """
    env = env or peer_env(start=False)
    args = [env["TRYTON_PYTHON"], str(EDITS), command]
    for key, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif isinstance(value, list | tuple):
            for item in value:
                args += [flag, str(item)]
        else:
            args += [flag, str(value)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    try:
        data: dict[str, Any] = json.loads(proc.stdout)
    except ValueError:
        raise PeerError(
            f"edits.py {command}: no JSON ({proc.returncode}):\n{proc.stderr[-4000:]}"
        ) from None
    if proc.returncode or "error" in data:
        raise PeerError(f"edits.py {command}: {data.get('error')}")
    return data


# --- JSON-RPC -------------------------------------------------------------------


def decode(obj: dict[str, Any]) -> Any:
    """json object_hook for Tryton's typed values."""
    cls = obj.get("__class__")
    if cls == "Decimal":
        return Decimal(obj["decimal"])
    if cls == "datetime":
        return dt.datetime(
            obj["year"],
            obj["month"],
            obj["day"],
            obj["hour"],
            obj["minute"],
            obj["second"],
            obj["microsecond"],
        )
    if cls == "date":
        return dt.date(obj["year"], obj["month"], obj["day"])
    if cls == "time":
        return dt.time(obj["hour"], obj["minute"], obj["second"], obj["microsecond"])
    if cls == "timedelta":
        return dt.timedelta(seconds=obj["seconds"])
    if cls == "bytes":
        return base64.b64decode(obj["base64"])
    return obj


def encode(obj: Any) -> Any:
    """json default= for Tryton's typed values."""
    if isinstance(obj, Decimal):
        return {"__class__": "Decimal", "decimal": str(obj)}
    if isinstance(obj, dt.datetime):
        return {
            "__class__": "datetime",
            "year": obj.year,
            "month": obj.month,
            "day": obj.day,
            "hour": obj.hour,
            "minute": obj.minute,
            "second": obj.second,
            "microsecond": obj.microsecond,
        }
    if isinstance(obj, dt.date):
        return {"__class__": "date", "year": obj.year, "month": obj.month, "day": obj.day}
    if isinstance(obj, bytes):
        return {"__class__": "bytes", "base64": base64.b64encode(obj).decode()}
    raise TypeError(f"cannot encode {type(obj).__name__}")


class RPCError(RuntimeError):
    """A JSON-RPC answer with an "error" member (HTTP 200)."""

    def __init__(self, error: Any):
        super().__init__(error)
        self.error = error
        # ["UserError", [message, description, domain]],
        # ["UserWarning", [name, message, description]],
        # ["ConcurrencyException", message], or [str(exception), traceback]
        self.kind = error[0] if isinstance(error, list) and error else None


class TrytonRPC:
    """Minimal JSON-RPC client, enough to check the peer from tests."""

    def __init__(self, url: str, db: str):
        self.url = url if url.endswith("/") else url + "/"
        self.db = db
        self.rpc_url = f"{self.url}{db}/rpc/"
        self.authorization: str | None = None
        self.context: dict[str, Any] = {}

    @classmethod
    def from_env(cls, env: dict[str, str], user: str = "admin") -> TrytonRPC:
        rpc = cls(env["TRYTON_URL"], env["TRYTON_DB"])
        pw_file = env["TRYTON_PASSWORD_FILE" if user == "admin" else "TRYTON_SYNC_PASSWORD_FILE"]
        rpc.login(user, Path(pw_file).read_text().strip())
        return rpc

    def post(self, url: str, method: str, params: list[Any], timeout: float = 120) -> Any:
        body = json.dumps({"id": 1, "method": method, "params": params}, default=encode)
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"not an HTTP URL: {url}")
        request = urllib.request.Request(  # noqa: S310 (checked above)
            url, data=body.encode(), headers={"Content-Type": "application/json"}
        )
        if self.authorization:
            request.add_header("Authorization", self.authorization)
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            data = json.loads(response.read(), object_hook=decode)
        if data.get("error"):
            raise RPCError(data["error"])
        return data["result"]

    def login(self, user: str, password: str) -> None:
        # result: [user_id, session_token, bus_url_or_null]
        user_id, token = self.post(self.rpc_url, "common.db.login", [user, {"password": password}])[
            :2
        ]
        raw = f"{user}:{user_id}:{token}".encode()
        self.authorization = "Session " + base64.b64encode(raw).decode()
        self.context = self.call("model.res.user.get_preferences", True, {})

    def call(self, method: str, *params: Any, timeout: float = 120) -> Any:
        return self.post(self.rpc_url, method, list(params), timeout=timeout)

    def server_call(self, method: str, *params: Any) -> Any:
        """Database-less methods on POST /rpc/ (common.server.version, common.db.list)."""
        return self.post(self.url + "rpc/", method, list(params))


def http_status(exc: BaseException) -> int | None:
    return exc.code if isinstance(exc, urllib.error.HTTPError) else None


__all__ = [
    "EDITS",
    "SCRIPT",
    "PeerError",
    "RPCError",
    "TrytonRPC",
    "decode",
    "edit",
    "encode",
    "http_status",
    "peer_env",
]

if __name__ == "__main__":  # quick manual check
    e = peer_env(start=False)
    r = TrytonRPC.from_env(e)
    print(r.server_call("common.server.version"), r.context.get("company"))
    print(os.environ.get("TRYTON_PEER_HOME", "(default .tryton)"))
