"""Turn an outage of PostgreSQL or Redis into one sentence for the user."""

from __future__ import annotations

import psycopg
import redis.exceptions as redis_exc
import sqlalchemy.exc as sa_exc


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    line = (text.splitlines() or [type(exc).__name__])[0]
    return line.removeprefix("connection failed: ").removeprefix("(psycopg.OperationalError) ")


def describe_outage(exc: BaseException) -> str | None:
    """One sentence when ``exc`` means a dependency is unreachable or refuses us, else None."""
    if isinstance(
        exc, redis_exc.AuthenticationError | redis_exc.AuthenticationWrongNumberOfArgsError
    ):
        return "Redis refused our password; check REDIS_PASSWORD / REDIS_PASSWORD_FILE."
    if isinstance(exc, redis_exc.ResponseError) and str(exc).startswith(("NOAUTH", "WRONGPASS")):
        return "Redis refused our password; check REDIS_PASSWORD / REDIS_PASSWORD_FILE."
    if isinstance(exc, redis_exc.ConnectionError | redis_exc.TimeoutError):
        return (
            f"cannot reach Redis ({_first_line(exc)}); "
            "check that it runs and that REDIS_URL is right."
        )
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return f"lost the connection to PostgreSQL ({_first_line(exc)}); try again when it is back."
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError | psycopg.OperationalError):
        return (
            f"cannot reach PostgreSQL ({_first_line(exc)}); "
            "check that it runs and that DATABASE_URL is right."
        )
    if isinstance(exc, sa_exc.ProgrammingError) and "does not exist" in str(exc):
        return "the database schema is missing or old; run `erp-sync migrate`."
    return None
