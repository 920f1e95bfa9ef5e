"""Bling cursors: where a read stands, in a shape that survives a crash at any page.

Bling records carry no change time, so the cursor is a point in Bling's clock
(Brasília local time, ``YYYY-MM-DD HH:MM:SS``) plus, while a read is in progress, the
page to fetch next:

| state                         | cursor                                                        |
|-------------------------------|---------------------------------------------------------------|
| read finished                 | ``{"since": U}``                                              |
| windowed read in progress     | ``{"window_start": S, "window_end": E, "page": n, "until": U}`` |
| whole-list read in progress   | ``{"full": true, "page": n, "until": U}``                     |

``U`` is our clock when the read started; ``page`` is the next page to request. Window
reads go up from page 1 (the pages before ``page`` are written); whole-list reads go
down from the last page to page 1 (the pages after ``page`` are written), because Bling
pages by offset and, read downwards, a deletion meanwhile repeats a record instead of
skipping one. The next incremental read asks for changes from
``since - OVERLAP`` on, so edits stamped while the last read ran are not missed and a
clock skew up to the overlap is harmless.

A window whose end is ``U`` (the last one) is sent open-ended (no
``dataAlteracaoFinal``): a record changed while we page then stays in the window (its
new change time is later still), so pages do not shift under us; earlier windows of a
long backfill are closed, at most ``MAX_WINDOW`` long (Bling refuses more than a year).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from erp_sync.connectors import brasilia
from erp_sync.connectors.brasilia import SECOND, Done, fmt, now
from erp_sync.errors import ContractError

# Also the shared Brasília cursor time, which the connector reads through this module.
__all__ = [
    "MAX_WINDOW",
    "OVERLAP",
    "SECOND",
    "Done",
    "InFull",
    "InWindow",
    "State",
    "fmt",
    "load",
    "now",
    "parse",
    "position",
    "windows",
]

OVERLAP = timedelta(minutes=2)
# Bling refuses windows over one calendar year; stay clear of leap days and of a clock
# a little behind Bling's.
MAX_WINDOW = timedelta(days=360)


def parse(value: object, what: str) -> datetime:
    return brasilia.parse(value, what, "Bling")


@dataclass(frozen=True)
class InWindow:
    start: datetime
    end: datetime
    page: int
    until: datetime

    @property
    def open_ended(self) -> bool:
        return self.end >= self.until

    def dump(self) -> dict[str, Any]:
        return {
            "window_start": fmt(self.start),
            "window_end": fmt(self.end),
            "page": self.page,
            "until": fmt(self.until),
        }


@dataclass(frozen=True)
class InFull:
    page: int
    until: datetime

    def dump(self) -> dict[str, Any]:
        return {"full": True, "page": self.page, "until": fmt(self.until)}


State = Done | InWindow | InFull


def _page(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ContractError(f"the stored Bling cursor's page is not a page number: {value!r}")
    return value


def load(cursor: Mapping[str, Any] | None) -> State | None:
    """Parse a stored cursor; a shape we never wrote is a ContractError (fail loudly
    rather than silently re-read or skip a catalogue)."""
    if not cursor:
        return None
    if "since" in cursor and len(cursor) == 1:
        return Done(parse(cursor["since"], "since"))
    if cursor.get("full") is True:
        return InFull(_page(cursor.get("page")), parse(cursor.get("until"), "until"))
    if "window_start" in cursor:
        state = InWindow(
            parse(cursor["window_start"], "window_start"),
            parse(cursor.get("window_end"), "window_end"),
            _page(cursor.get("page")),
            parse(cursor.get("until"), "until"),
        )
        if not state.start <= state.end <= state.until:
            raise ContractError(f"the stored Bling cursor's window is out of order: {cursor}")
        return state
    raise ContractError(
        f"the stored cursor {dict(cursor)} is not a Bling cursor; run a full sync of the stream"
    )


def windows(start: datetime, until: datetime) -> Iterator[tuple[datetime, datetime]]:
    """Consecutive inclusive windows covering [start, until], each at most MAX_WINDOW."""
    while until - start > MAX_WINDOW:
        end = start + MAX_WINDOW - SECOND
        yield start, end
        start = end + SECOND
    yield start, until


def position(cursor: Mapping[str, Any] | None) -> tuple[str, int, str, int]:
    """A sort key: a later cursor of the same stream never sorts before an earlier one."""
    state = load(cursor)
    if state is None:
        return ("", 0, "", 0)
    if isinstance(state, Done):
        return (fmt(state.since), 1, "", 0)
    if isinstance(state, InFull):
        return (fmt(state.until), 0, "", -state.page)  # read downwards
    return (fmt(state.until), 0, fmt(state.start), state.page)
