"""Who may use the admin pages, and proof that an action came from them.

- Off by default: without ENABLE_BULLBOARD every path under /admin/queues answers the
  same 404 as a path that does not exist.
- HTTP Basic auth against BULLBOARD_USER / BULLBOARD_PASS, compared in constant time.
- Wrong passwords are counted per client address in Redis (so the count holds across API
  processes); after ``MAX_FAILURES`` the client is refused with 429 until it has made no
  attempt for ``LOCK_SECONDS``, whatever it sends, so guessing cannot go on at speed.
- Basic credentials ride along on any request the browser makes, including one that a
  page from another site makes it send, so every POST must also carry a CSRF token
  (an HMAC of the user and a timestamp, keyed by the configured password, so every API
  process accepts every other's tokens) and, when the browser says where the request
  comes from (Origin, Sec-Fetch-Site), it must come from this very origin.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request, status
from starlette.datastructures import FormData

from erp_sync.jobs.queues import bounded
from erp_sync.kit.logging import get_logger
from erp_sync.runtime import Runtime
from erp_sync.settings import Settings

log = get_logger(__name__)

REALM = "ERP-Sync queues"
MAX_FAILURES = 10
LOCK_SECONDS = 15 * 60
CSRF_FIELD = "csrf"
CSRF_MAX_AGE_S = 12 * 3600


@dataclass(frozen=True)
class Admin:
    """The signed-in operator of one request."""

    user: str
    client: str
    key: bytes  # signs CSRF tokens and flash messages

    def csrf_token(self, now: float | None = None) -> str:
        issued = int(time.time() if now is None else now)
        return f"{issued}.{sign(self.key, 'csrf', f'{self.user}:{issued}')}"

    def csrf_valid(self, token: str, now: float | None = None) -> bool:
        issued_text, _, signature = token.partition(".")
        if not issued_text.isdigit() or not signature:
            return False
        issued = int(issued_text)
        current = time.time() if now is None else now
        if not current - CSRF_MAX_AGE_S <= issued <= current + 60:
            return False
        expected = sign(self.key, "csrf", f"{self.user}:{issued}")
        return hmac.compare_digest(signature.encode(), expected.encode())


@dataclass(frozen=True)
class Action:
    """A POST that passed the CSRF checks, with its form fields."""

    admin: Admin
    form: FormData

    def field(self, name: str, default: str = "") -> str:
        value = self.form.get(name)
        return value.strip() if isinstance(value, str) else default


def signing_key(settings: Settings) -> bytes:
    user = settings.bullboard_user or ""
    password = settings.bullboard_pass.get_secret_value() if settings.bullboard_pass else ""
    material = f"erp-sync admin v1\0{user}\0{password}".encode()
    return hashlib.sha256(material).digest()


def sign(key: bytes, purpose: str, value: str) -> str:
    return hmac.new(key, f"{purpose}\0{value}".encode(), hashlib.sha256).hexdigest()


def _runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _failures_key(settings: Settings, client: str) -> str:
    return f"{settings.queue_prefix}:erp-sync:admin:auth-failures:{client}"


def _digest(value: str) -> bytes:
    # Equal lengths for compare_digest, so not even the length of the secret leaks.
    return hashlib.sha256(value.encode()).digest()


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        raw = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    user, sep, password = text.partition(":")
    return (user, password) if sep else None


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        detail,
        headers={"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'},
    )


def _locked(retry_after: int) -> HTTPException:
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        "too many wrong passwords from this address; try again later",
        headers={"Retry-After": str(max(1, retry_after))},
    )


async def require_admin(request: Request) -> Admin:
    """The operator, or 404 (admin off), 429 (locked out), 401 (no or wrong credentials)."""
    rt = _runtime(request)
    settings = rt.settings
    if not settings.enable_bullboard or not settings.bullboard_user or not settings.bullboard_pass:
        raise HTTPException(status.HTTP_404_NOT_FOUND)  # the same answer as an unknown path
    client = _client(request)
    key = _failures_key(settings, client)
    failures = int(
        await bounded(rt.redis.get(key), "reading login failures", settings=settings) or 0
    )
    if failures >= MAX_FAILURES:
        ttl = int(await bounded(rt.redis.ttl(key), "reading login failures", settings=settings))
        raise _locked(ttl if ttl > 0 else LOCK_SECONDS)
    given = _basic_credentials(request)
    if given is None:
        raise _unauthorized("sign in with BULLBOARD_USER and BULLBOARD_PASS")
    user, password = given
    user_ok = hmac.compare_digest(_digest(user), _digest(settings.bullboard_user))
    pass_ok = hmac.compare_digest(
        _digest(password), _digest(settings.bullboard_pass.get_secret_value())
    )
    if user_ok and pass_ok:
        if failures:
            await bounded(rt.redis.delete(key), "clearing login failures", settings=settings)
        return Admin(user=user, client=client, key=signing_key(settings))
    pipe = rt.redis.pipeline(transaction=True)
    pipe.incr(key)
    pipe.expire(key, LOCK_SECONDS)  # a lock lasts LOCK_SECONDS after the last wrong try
    count, _ = await bounded(pipe.execute(), "counting login failures", settings=settings)
    log.warning("admin.login_failed", user=user[:64], client=client, failures=int(count))
    if int(count) >= MAX_FAILURES:
        log.warning("admin.login_locked", client=client, seconds=LOCK_SECONDS)
        raise _locked(LOCK_SECONDS)
    raise _unauthorized("wrong user name or password")


AdminDep = Annotated[Admin, Depends(require_admin)]


def _origin_problem(request: Request) -> str | None:
    """Why the browser's own provenance headers say this request is cross-site, if they do."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return f"Sec-Fetch-Site is {fetch_site}"
    origin = request.headers.get("origin")
    if origin is not None:
        host = request.headers.get("host", "")
        if origin == "null" or urlsplit(origin).netloc.lower() != host.lower():
            return f"Origin {origin} is not this site"
    return None


async def require_action(request: Request, admin: AdminDep) -> Action:
    """A state-changing POST from our own pages: right origin and a valid CSRF token."""
    problem = _origin_problem(request)
    form = await request.form()
    token = form.get(CSRF_FIELD)
    if problem is None and not (isinstance(token, str) and admin.csrf_valid(token)):
        problem = "missing or invalid CSRF token" if token else "missing CSRF token"
    if problem is not None:
        log.warning(
            "admin.csrf_refused",
            user=admin.user,
            client=admin.client,
            path=request.url.path,
            reason=problem,
        )
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"cross-site request refused ({problem}); reload the page and try again",
        )
    return Action(admin=admin, form=form)


ActionDep = Annotated[Action, Depends(require_action)]
