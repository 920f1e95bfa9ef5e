"""BullMQ connection options built from settings.

A dict (not a client) so that BullMQ opens separate clients for commands and for the
worker's blocking reads. ``socket_timeout=None`` (a finite timeout breaks blocking reads,
see ARCHITECTURE.md) and a credential provider that re-reads the password file, so a
rotated Redis password is picked up on reconnect. ``redis_connect_func`` replaces BullMQ's
slow reconnect policy (up to 20 s between attempts) with ours (about 1 s), so workers come
back within a second or two of Redis, e.g. after it was recreated with a new password.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.connection import parse_url

from erp_sync.kit.redis import RotatingPassword, reconnect_promptly
from erp_sync.settings import Settings


def connection_opts(settings: Settings) -> dict[str, Any]:
    opts: dict[str, Any] = dict(parse_url(settings.redis_url))
    username = opts.pop("username", None)
    url_password = opts.pop("password", None)
    if opts.pop("connection_class", None) is not None:
        opts["ssl"] = True  # rediss://
    opts.update(
        {
            "socket_timeout": None,
            "socket_connect_timeout": 5,
            "socket_keepalive": True,
            "health_check_interval": 30,
            "redis_connect_func": reconnect_promptly,
        }
    )

    def password() -> str | None:
        return settings.current_redis_password() or url_password

    opts["credential_provider"] = RotatingPassword(password, username)
    return opts
