"""A Bling sandbox shared by the tests that need *a* tenant with a working ERP connection
(queue, API and engine tests), started on first use."""

from __future__ import annotations

import atexit
import contextlib
import threading
from typing import Any

import httpx

from erp_sync.sandbox.bling import BlingSandboxConfig, RunningSandbox, running

_lock = threading.Lock()
_shared: RunningSandbox | None = None
_stack = contextlib.ExitStack()
atexit.register(_stack.close)

SMALL = {"products": 60, "customers": 20, "orders": 20, "rate_limit": 0}


def start_sandbox(**overrides: Any) -> contextlib.AbstractContextManager[RunningSandbox]:
    return running(BlingSandboxConfig(port=0, **{**SMALL, **overrides}))


def shared_sandbox() -> RunningSandbox:
    global _shared
    with _lock:
        if _shared is None:
            _shared = _stack.enter_context(start_sandbox())
        return _shared


def sandbox_credentials(sb: RunningSandbox) -> dict[str, Any]:
    """What an operator stores after authorising the app: client and the token pair."""
    cfg = sb.config
    r = httpx.post(
        f"{sb.base_url}/oauth/token",
        auth=(cfg.client_id, cfg.client_secret),
        data={"grant_type": "authorization_code", "code": cfg.auth_code},
        timeout=10,
    )
    r.raise_for_status()
    pair = r.json()
    from datetime import UTC, datetime, timedelta

    return {
        "client_id": cfg.client_id,
        "client_secret": cfg.client_secret,
        "access_token": pair["access_token"],
        "refresh_token": pair["refresh_token"],
        "expires_at": (datetime.now(UTC) + timedelta(seconds=int(pair["expires_in"]))).isoformat(),
    }


def connection_values(sb: RunningSandbox) -> tuple[dict[str, Any], dict[str, Any]]:
    settings: dict[str, Any] = {"base_url": sb.base_url}
    if not sb.config.rate_limit:
        settings["rate_limit_per_second"] = 0  # the sandbox's limits are off: so are ours
    return settings, sandbox_credentials(sb)
