"""Redis clients that read their password at connect time.

``socket_timeout=None``: redis-py 8's default 5 s socket timeout breaks BullMQ's blocking
reads (idle workers wake up late, stalled jobs recover late); see ARCHITECTURE.md.

Secret rotation: every new connection asks :class:`RotatingPassword` for the password,
which re-reads the secret file. A refused AUTH (``WRONGPASS``/``NOAUTH``) is a
``redis.exceptions.AuthenticationError``, a subclass of redis-py's ``ConnectionError``:
redis-py's retry and BullMQ's worker loop treat it like a dropped connection, reconnect
and ask for the password again, so a process follows a rotated file without a restart.
"""

from __future__ import annotations

from collections.abc import Callable

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff, ExponentialBackoff
from redis.credentials import CredentialProvider
from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

PasswordProvider = Callable[[], str | None]

# BullMQ builds its clients with Retry(ExponentialBackoff(cap=20, base=1), 20): after Redis
# comes back (recreated with a new password, say) a worker waited up to 20 s more before
# trying again (measured in tests/reliability/test_secret_rotation.py). Ours: at most about
# 1 s between attempts, jittered so that many workers do not reconnect in lockstep, and
# enough attempts (about 1.5 min of refused logins; far longer while the port is closed,
# as each attempt then retries its connect too) that BullMQ rarely sees the error: it
# would then sleep its runRetryDelay (15 s) before trying again.
RECONNECT_BACKOFF_CAP_S = 1.0
RECONNECT_RETRIES = 120


class RotatingPassword(CredentialProvider):
    """Hands redis-py the password as it is *now* (a secret file may have been rotated)."""

    def __init__(self, password: PasswordProvider, username: str | None = None) -> None:
        self._password = password
        self._username = username

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        value = self._password()
        if not value:
            return ()  # type: ignore[return-value]  # no AUTH at all
        if self._username:
            return (self._username, value)
        return (value,)

    async def get_credentials_async(self) -> tuple[str] | tuple[str, str]:
        return self.get_credentials()


class _ReconnectRetry(Retry):
    """Marks a connection whose retry policy :func:`reconnect_promptly` already set."""


def reconnect_retry() -> Retry:
    return _ReconnectRetry(
        EqualJitterBackoff(cap=RECONNECT_BACKOFF_CAP_S, base=0.05),
        RECONNECT_RETRIES,
        (RedisConnectionError, RedisTimeoutError),  # AuthenticationError, BusyLoadingError too
    )


async def reconnect_promptly(conn: AbstractConnection) -> None:
    """A ``redis_connect_func`` for clients whose ``retry`` we cannot pass (BullMQ builds
    its own from our options dict, and a second ``retry`` keyword is a TypeError): on the
    first successful connect it swaps in :func:`reconnect_retry`, then does the normal
    handshake (AUTH with the current password, SELECT, CLIENT SETNAME)."""
    if not isinstance(conn.retry, _ReconnectRetry):
        conn.retry = reconnect_retry()
    await conn.on_connect()


def create_redis(
    url: str,
    password: PasswordProvider | None = None,
    *,
    single_connection: bool = False,
    connect_timeout: float = 5.0,
    socket_timeout: float | None = None,
    client_name: str | None = None,
    retries: int = 3,
) -> aioredis.Redis:
    """``retries=0``: one attempt, the error as it is (a probe that must answer quickly and
    say *why*, e.g. a refused password, rather than retry until its deadline)."""
    pool_kwargs: dict[str, object] = {
        "decode_responses": True,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "health_check_interval": 30,
        "retry": Retry(ExponentialBackoff(cap=5, base=0.1), retries),
        "retry_on_error": [BusyLoadingError, RedisConnectionError, RedisTimeoutError],
    }
    if client_name:
        pool_kwargs["client_name"] = client_name
    client = aioredis.from_url(url, single_connection_client=single_connection, **pool_kwargs)
    if password is not None:
        username = client.connection_pool.connection_kwargs.pop("username", None)
        url_password = client.connection_pool.connection_kwargs.pop("password", None)

        def current() -> str | None:
            return password() or url_password

        client.connection_pool.connection_kwargs["credential_provider"] = RotatingPassword(
            current, username
        )
    return client
