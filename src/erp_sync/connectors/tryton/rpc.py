"""Tryton's JSON-RPC over the one HTTP layer (ErpHttp): session login, typed values, and
every outcome mapped to the error taxonomy.

Wire facts (trytond 8.2, measured against the test peer; docs/tryton-peer.md):

- ``POST <url>/<database>/rpc/`` with ``{"id", "method", "params"}``; database-less
  methods (``common.server.version``) on ``POST <url>/rpc/``.
- ``common.db.login [login, {"password": ...}]`` answers ``[user_id, token, bus_url]``;
  later calls carry ``Authorization: Session base64(login:user_id:token)``. Basic auth
  would check the password (rate-limited, ~0.2 s) on every call.
- Decimal, datetime, date, time, timedelta and bytes travel as ``{"__class__": ...}``
  objects, both ways. Decimals keep their scale (``"12.3400"``); datetimes are naive
  UTC (trytond runs with ``TZ=UTC``).

| outcome                                           | becomes                            |
|---------------------------------------------------|------------------------------------|
| login: 401 (wrong login/password), 404 (no such database), 405 | ConfigError          |
| login: 429 (too many failed logins)               | RateLimited, wait = lockout window |
| login: ``LoginException`` (a second factor asked) | ConfigError                        |
| call: 401 (session expired, logged out)           | log in again once, then ConfigError|
| call: 403 (method not exposed)                    | ContractError                      |
| ``UserError`` "You are not allowed to access ..." | ConfigError (grant read access)    |
| other ``UserError``/``UserWarning``, unknown model/field | ContractError               |
| ``ConcurrencyException``, database locked/timeout | UpstreamUnavailable (retryable)    |
| 429, 5xx, 504 (trytond's request timeout), resets | retryable (ErpHttp, inline retries)|
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import itertools
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import orjson

from erp_sync.connectors.http import ErpHttp, ErpResponse
from erp_sync.errors import ConfigError, ContractError, RateLimited, UpstreamUnavailable

# Failed logins are counted per login name for the server's ``[session] timeout``
# (300 s by default); until that window passes, every login answers 429 (and each one
# extends the lockout), so the job waits that long instead of retrying inline.
LOGIN_LOCKOUT_S = 300.0
_RETRYABLE_SERVER_ERRORS = re.compile(
    r"database is locked|could not serialize|deadlock|timeout|timed out|"
    r"connection (?:refused|reset|closed)|server closed the connection|too many connections",
    re.IGNORECASE,
)
_UNKNOWN_MODEL = re.compile(r"^'([a-z_][a-z0-9_]*(?:\.[a-z0-9_]+)+)'$")


# ------------------------------------------------------------------------- values


def decode(value: Any) -> Any:
    """Tryton's typed JSON objects -> Python values, exactly (Decimal stays Decimal)."""
    if isinstance(value, list):
        return [decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    cls = value.get("__class__")
    if cls is None:
        return {k: decode(v) for k, v in value.items()}
    try:
        if cls == "Decimal":
            return Decimal(value["decimal"])
        if cls == "datetime":
            return datetime(
                value["year"], value["month"], value["day"],
                value.get("hour", 0), value.get("minute", 0), value.get("second", 0),
                value.get("microsecond", 0),
            )  # fmt: skip
        if cls == "date":
            return date(value["year"], value["month"], value["day"])
        if cls == "time":
            return time(
                value.get("hour", 0), value.get("minute", 0), value.get("second", 0),
                value.get("microsecond", 0),
            )  # fmt: skip
        if cls == "timedelta":
            return timedelta(seconds=value["seconds"])
        if cls == "bytes":
            return base64.b64decode(value["base64"])
    except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
        raise ContractError(f"Tryton sent a malformed {cls} value {value!r:.200} ({exc})") from None
    raise ContractError(f"Tryton sent a value of unknown type {cls!r}")


def _encode(value: Any) -> Any:
    if isinstance(value, Decimal):
        return {"__class__": "Decimal", "decimal": str(value)}
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return {
            "__class__": "datetime",
            "year": value.year, "month": value.month, "day": value.day,
            "hour": value.hour, "minute": value.minute, "second": value.second,
            "microsecond": value.microsecond,
        }  # fmt: skip
    if isinstance(value, date):
        return {"__class__": "date", "year": value.year, "month": value.month, "day": value.day}
    if isinstance(value, bytes):
        return {"__class__": "bytes", "base64": base64.b64encode(value).decode()}
    raise TypeError(f"cannot send a {type(value).__name__} to Tryton")


def encode(payload: Any) -> bytes:
    return orjson.dumps(payload, default=_encode, option=orjson.OPT_PASSTHROUGH_DATETIME)


def server_time(resp: ErpResponse) -> datetime | None:
    """The server's clock from the HTTP ``Date`` header (naive UTC, to the second)."""
    value = resp.headers.get("date")
    if not value:
        return None
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def describe_error(resp: ErpResponse) -> str:
    """A readable line from an error answer (trytond's are short HTML pages)."""
    text = resp.body[:2000].decode("utf-8", "replace")
    title = re.search(r"<title>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
    if title:
        text = title.group(1)
    text = " ".join(re.sub(r"<[^>]+>", " ", text).split())
    return text[:300] or "(empty body)"


def map_rpc_error(method: str, error: Any) -> Exception:
    """An ``"error"`` member of a JSON-RPC answer (HTTP 200) -> our taxonomy."""
    kind = error[0] if isinstance(error, list) and error else error
    args = error[1] if isinstance(error, list) and len(error) > 1 else None
    where = f"Tryton refused {method}"
    if kind == "UserError":
        message = args[0] if isinstance(args, list) and args else args
        detail = args[1] if isinstance(args, list) and len(args) > 1 and args[1] else ""
        text = " ".join(str(p) for p in (message, detail) if p)
        if "not allowed to" in str(message):
            return ConfigError(
                f"{where}: {text}; give the sync user read access to it in Tryton "
                "(Administration > Users > Groups)"
            )
        return ContractError(f"{where}: {text}")
    if kind == "UserWarning":
        return ContractError(f"{where} with a warning that needs confirmation: {args}")
    if kind == "LoginException":
        return ConfigError(
            f"Tryton asks for more than a password to log in ({args}); use a user that "
            "logs in with a password only"
        )
    if kind == "ConcurrencyException":
        return UpstreamUnavailable(f"{where}: concurrent modification ({args})")
    text = str(kind)
    if _RETRYABLE_SERVER_ERRORS.search(text):
        return UpstreamUnavailable(f"{where}: {text[:300]}")
    unknown = _UNKNOWN_MODEL.match(text)
    if unknown:
        return ContractError(
            f"{where}: the server does not know {unknown.group(1)} (is its module activated?)"
        )
    return ContractError(f"{where}: {text[:300]}")


# ------------------------------------------------------------------------- client


class TrytonRpc:
    """One Tryton session for one connector instance.

    Logins are cheap (~0.3 s), so every connector instance (one per job) opens its own
    session and ends it in ``aclose``; nothing is shared or stored. A login refused
    once is never tried again by this instance: each failed login makes the server
    sleep and counts towards its lockout (429).
    """

    def __init__(self, http: ErpHttp, database: str, login: str, password: str) -> None:
        self.http = http
        self.database = database
        self.login_name = login
        self._password = password
        self.path = f"/{quote(database, safe='')}/rpc/"
        self._ids = itertools.count(1)
        self._auth_lock = asyncio.Lock()
        self._authorization: str | None = None
        self._generation = 0
        self._refused: str | None = None
        self.user_id: int | None = None
        self.context: dict[str, Any] = {}
        self.logins = 0
        self.last_server_time: datetime | None = None

    # ------------------------------------------------------------------ transport

    async def _post(
        self,
        path: str,
        method: str,
        params: list[Any],
        *,
        headers: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (),
    ) -> ErpResponse:
        body = {"id": next(self._ids), "method": method, "params": params}
        return await self.http.request(
            "POST", path, content=encode(body), headers=dict(headers or {}), ok=ok
        )

    def _result(self, resp: ErpResponse, method: str) -> Any:
        now = server_time(resp)
        if now is not None:
            self.last_server_time = now
        data = resp.json()
        if not isinstance(data, dict) or not ("result" in data or "error" in data):
            raise ContractError(f"Tryton answered {method} with something not JSON-RPC")
        if data.get("error") is not None:
            raise map_rpc_error(method, decode(data["error"]))
        return decode(data["result"])

    # ---------------------------------------------------------------------- login

    @property
    def logged_in(self) -> bool:
        return self._authorization is not None

    async def _login(self) -> None:
        if self._refused is not None:
            raise ConfigError(self._refused)
        resp = await self._post(
            self.path,
            "common.db.login",
            [self.login_name, {"password": self._password}],
            ok=(401, 403, 404, 405, 429),
        )
        where = f"Tryton at {self.http.client.base_url} refused the login of {self.login_name!r}"
        if resp.status == 429:
            raise RateLimited(
                f"{where}: too many failed logins (HTTP 429); trying again after the "
                f"server's lockout window",
                retry_after=LOGIN_LOCKOUT_S,
            )
        if resp.status in (401, 403):
            self._refused = (
                f"{where} (HTTP {resp.status}): wrong login or password, or the user is "
                "inactive; set the connection's credentials again"
            )
            raise ConfigError(self._refused)
        if resp.status in (404, 405):
            self._refused = (
                f"Tryton at {self.http.client.base_url} has no database {self.database!r} "
                f"(HTTP {resp.status} on {self.path}); check the connection's url and database"
            )
            raise ConfigError(self._refused)
        try:
            result = self._result(resp, "common.db.login")
        except ConfigError as exc:
            self._refused = str(exc)
            raise
        if not isinstance(result, list) or len(result) < 2:
            raise ContractError(f"Tryton answered common.db.login with {result!r:.200}")
        user_id, token = result[0], result[1]
        if not isinstance(user_id, int) or not isinstance(token, str):
            raise ContractError("Tryton answered common.db.login without a user id and token")
        raw = f"{self.login_name}:{user_id}:{token}".encode()
        self._authorization = "Session " + base64.b64encode(raw).decode()
        self.user_id = user_id
        self._generation += 1
        self.logins += 1
        preferences = await self._call("model.res.user.get_preferences", [True, {}])
        if not isinstance(preferences, dict):
            raise ContractError("Tryton answered get_preferences without an object")
        if not preferences.get("company"):
            raise ConfigError(
                f"the Tryton user {self.login_name!r} has no current company: set one (and "
                "add it to the user's companies), or prices and quantities come back empty"
            )
        self.context = preferences

    async def ensure_login(self) -> None:
        async with self._auth_lock:
            if self._authorization is None:
                await self._login()

    async def _relogin(self, generation: int) -> None:
        async with self._auth_lock:
            if self._generation == generation:  # nobody else has logged in again since
                self._authorization = None
                await self._login()

    async def logout(self) -> None:
        """End the session (best effort, one short attempt)."""
        if self._authorization is None:
            return
        authorization, self._authorization = self._authorization, None
        body = {"id": next(self._ids), "method": "common.db.logout", "params": []}
        try:
            async with asyncio.timeout(5):
                await self.http.send_once(
                    "POST",
                    self.path,
                    governed=False,
                    ok=(401,),
                    content=encode(body),
                    headers={"Authorization": authorization},
                )
        except Exception:  # noqa: S110 - a session left behind expires on its own
            pass

    # ---------------------------------------------------------------------- calls

    async def _call(self, method: str, params: list[Any]) -> Any:
        """One call with the current session; a 401 costs one new login and one retry."""
        for attempt in (1, 2):
            generation = self._generation
            if self._authorization is None:
                await self.ensure_login()
                generation = self._generation
            headers = {"Authorization": self._authorization or ""}
            resp = await self._post(self.path, method, params, headers=headers, ok=(401, 403))
            if resp.status == 403:
                raise ContractError(
                    f"Tryton refused {method} with HTTP 403: the method is not exposed "
                    "over RPC on this server"
                )
            if resp.status != 401:
                return self._result(resp, method)
            if attempt == 1:
                await self._relogin(generation)
        raise ConfigError(
            f"Tryton refused a fresh session of {self.login_name!r} on {method} (HTTP 401); "
            "check the user and the connection's credentials"
        )

    async def call(self, method: str, *params: Any) -> Any:
        """A database call (``model.<name>.<method>``) with ``params`` as given."""
        await self.ensure_login()
        return await self._call(method, list(params))

    async def model(
        self, model: str, method: str, *args: Any, context: Mapping[str, Any] | None = None
    ) -> Any:
        """``model.<model>.<method>(*args, context)``: the user's context (company,
        language, ...) is always the last parameter, with ``context`` merged over it."""
        await self.ensure_login()
        return await self._call(
            f"model.{model}.{method}", [*args, {**self.context, **(context or {})}]
        )

    async def server_now(self) -> datetime | None:
        """The server's clock (from a database-less call's ``Date`` header)."""
        resp = await self._post("/rpc/", "common.server.version", [])
        self._result(resp, "common.server.version")
        return server_time(resp)
