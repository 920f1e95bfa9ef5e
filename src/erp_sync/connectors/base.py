"""The connector protocol (dlt-like): a stream is an async iterator of pages, each with
the cursor that covers it; the engine saves page and cursor in one transaction."""

from __future__ import annotations

import abc
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError

from erp_sync.canonical import Canonical, validated
from erp_sync.connectors.governor import Governor
from erp_sync.errors import ConfigError, DataError

STREAMS = ("products", "stock_levels", "customers", "sales_orders")
Mapper = Callable[[dict[str, Any]], Canonical]


def map_stream(provider: str, mappers: Mapping[str, Mapper], stream: str, raw: Any) -> Canonical:
    """``raw`` mapped by its stream's mapper and checked against its canonical model
    (``validated``: a broken rule raises ``Invalid``). A stream the ERP lacks, or a record
    that is not a JSON object, is a DataError (the engine quarantines the record with it)."""
    mapper = mappers.get(stream)
    if mapper is None:
        raise DataError(f"{provider} has no stream {stream!r}")
    if not isinstance(raw, dict):
        raise DataError(f"a {provider} record is an object, not a {type(raw).__name__}")
    return validated(mapper(raw))


# A cursor is a small JSON object owned by the connector (e.g. {"since": "...", "id": 12});
# the engine stores it opaquely in "SyncState".cursor.
Cursor = dict[str, Any]
Lock = Callable[[str], contextlib.AbstractAsyncContextManager[None]]


@dataclass(frozen=True)
class Page:
    records: list[dict[str, Any]]
    # Covers every record up to and including this page; None keeps the previous cursor.
    cursor: Cursor | None = None


@dataclass(frozen=True)
class RateLimits:
    """The ERP's published limits for one account; the governor enforces them across
    every worker process."""

    per_second: float | None = None
    per_minute: float | None = None
    per_day: int | None = None
    concurrency: int | None = None


@dataclass
class ConnectorContext:
    settings: Mapping[str, Any]
    credentials: dict[str, Any]
    governor: Governor
    # Persist rotated credentials (e.g. a new OAuth refresh token) *before* using them.
    save_credentials: Callable[[dict[str, Any]], Awaitable[None]]
    # Read the stored credentials again (another process may have rotated them).
    reload_credentials: Callable[[], Awaitable[dict[str, Any]]]
    # A lock shared by every worker process, e.g. around an OAuth refresh.
    lock: Lock
    log: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


class Connector(abc.ABC):
    provider: ClassVar[str]
    streams: ClassVar[tuple[str, ...]] = STREAMS
    limits: ClassVar[RateLimits] = RateLimits()
    settings_model: ClassVar[type[BaseModel] | None] = None
    credentials_model: ClassVar[type[BaseModel] | None] = None
    # Part of the engine's content hash: bump when to_canonical changes its output, so
    # the next sync rewrites every row in the new shape.
    mapping_version: ClassVar[str] = ""

    def __init__(self, ctx: ConnectorContext) -> None:
        self.ctx = ctx

    @classmethod
    def account_key(cls, settings: Mapping[str, Any], credentials: Mapping[str, Any]) -> str:
        """What the ERP counts its quotas by (an account, an app key). Connections sharing
        it share one rate budget."""
        return str(settings.get("account") or credentials.get("client_id") or "default")

    @classmethod
    def rate_limits(cls, settings: Mapping[str, Any]) -> RateLimits:
        """The limits the governor enforces for a connection: the ERP's published ones,
        unless the connection's settings say otherwise (``rate_limit_per_second``: a plan
        with a higher quota, or a local sandbox with limits off, 0 = unlimited)."""
        override = settings.get("rate_limit_per_second")
        if override is None:
            return cls.limits
        rate = float(override)
        return RateLimits(
            per_second=rate or None,
            per_minute=None if not rate else cls.limits.per_minute,
            per_day=None if not rate else cls.limits.per_day,
            concurrency=cls.limits.concurrency,
        )

    @classmethod
    def validate_config(
        cls, settings: Mapping[str, Any], credentials: Mapping[str, Any] | None
    ) -> None:
        """Refuse settings/credentials of the wrong shape when a connection is set."""
        for model, data, what in (
            (cls.settings_model, settings, "settings"),
            (cls.credentials_model, credentials, "credentials"),
        ):
            if model is None or data is None:
                continue
            try:
                model.model_validate(dict(data))
            except ValidationError as exc:
                err = exc.errors()[0]
                loc = ".".join(str(p) for p in err["loc"])
                raise ConfigError(f"{cls.provider} {what}.{loc}: {err['msg']}") from None

    @abc.abstractmethod
    async def check(self) -> None:
        """Prove the credentials work (one cheap call); raise ConfigError if not."""

    @abc.abstractmethod
    def read(self, stream: str, cursor: Cursor | None, *, full: bool) -> AsyncIterator[Page]:
        """Pages of raw records changed since ``cursor`` (all records when ``full``).
        Incremental reads re-read a small lookback window: the engine's upserts make the
        repeat harmless, and late ERP edits are not missed.

        With ``full``, the engine passes no cursor to begin a whole-list read, and the
        cursor of the last page it wrote to continue one (the next job of a long sync,
        or a resume after a crash). The cursor of a whole-list read's last page then
        yields nothing more: that read is over, and a new one would re-read every
        record (a job can stop right after writing a stream's last page)."""

    @abc.abstractmethod
    def to_canonical(self, stream: str, raw: dict[str, Any]) -> Canonical:
        """Map one raw record; raise ValueError/ValidationError/DataError when it is bad
        (the engine quarantines it with the reason)."""

    def external_id(self, stream: str, raw: dict[str, Any]) -> str | None:
        """The record's ERP id, when it can be read even from a bad record."""
        value = raw.get("id")
        return str(value) if isinstance(value, str | int) and not isinstance(value, bool) else None

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
