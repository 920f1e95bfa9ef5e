"""Cursor time for the Brazilian ERPs (Bling, Omie): Brasília wall-clock time to the
second, ``YYYY-MM-DD HH:MM:SS``, as they stamp changes and as our cursors store it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from erp_sync.errors import ContractError

BRASILIA = ZoneInfo("America/Sao_Paulo")
FORMAT = "%Y-%m-%d %H:%M:%S"
SECOND = timedelta(seconds=1)


def fmt(moment: datetime) -> str:
    return moment.astimezone(BRASILIA).strftime(FORMAT)


def parse(value: object, what: str, provider: str) -> datetime:
    """A stored cursor's time, or a ContractError naming the provider and the field."""
    if not isinstance(value, str):
        raise ContractError(f"the stored {provider} cursor's {what} is not a date-time: {value!r}")
    try:
        return datetime.strptime(value, FORMAT).replace(tzinfo=BRASILIA)
    except ValueError:
        raise ContractError(
            f"the stored {provider} cursor's {what} {value!r} is not YYYY-MM-DD HH:MM:SS"
        ) from None


def now() -> datetime:
    """Our clock, to the second (the ERPs stamp changes to the second)."""
    return datetime.now(BRASILIA).replace(microsecond=0)


@dataclass(frozen=True)
class Done:
    """A finished read: the next one asks for the changes since ``since`` (less the
    provider's overlap)."""

    since: datetime

    def dump(self) -> dict[str, Any]:
        return {"since": fmt(self.since)}
