"""Redis clients that read their password at connect time.

``socket_timeout=None``: redis-py 8's default 5 s socket timeout breaks BullMQ's blocking
reads (idle workers wake up late, stalled jobs recover late); see ARCHITECTURE.md.
"""

from __future__ import annotations

from collections.abc import Callable

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.credentials import CredentialProvider
from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

PasswordProvider = Callable[[], str | None]


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


def create_redis(
    url: str,
    password: PasswordProvider | None = None,
    *,
    single_connection: bool = False,
    connect_timeout: float = 5.0,
    socket_timeout: float | None = None,
    client_name: str | None = None,
) -> aioredis.Redis:
    pool_kwargs: dict[str, object] = {
        "decode_responses": True,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "health_check_interval": 30,
        "retry": Retry(ExponentialBackoff(cap=5, base=0.1), 3),
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
