"""Omie cursors: where a read stands, in a shape that survives a crash at any page.

| state                      | cursor                                                       |
|----------------------------|--------------------------------------------------------------|
| read finished              | ``{"since": U}``                                             |
| change-window read running | ``{"window_start": S, "page": n, "size": k, "until": U}``    |
| whole-list read running    | ``{"full": true, "page": n, "size": k, "until": U}``         |
|                            | (stock adds ``"local": id``)                                 |

``U`` is our clock (Brasília, ``YYYY-MM-DD HH:MM:SS``) when the read started; ``page``
the next page to ask for (the ones before it are written), ``size`` the
``registros_por_pagina`` the read pages with (the page numbers only mean something
with it). Stock reads go local by local (``local``: the Omie id of the local being
read; locals are read in id order). The next incremental read asks for changes from
``since - overlap`` on, so edits stamped while the last read ran are not missed and a
clock skew up to the overlap is harmless.

Change windows are open-ended (no ``filtrar_por_data_ate``): a record changed while we
page stays in the window, and Omie lists by id, so pages do not shift under us.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from erp_sync.connectors import brasilia
from erp_sync.connectors.brasilia import BRASILIA, SECOND, Done, fmt, now
from erp_sync.errors import ContractError

# Also the shared Brasília cursor time, which the connector reads through this module.
__all__ = [
    "BRASILIA",
    "SECOND",
    "Done",
    "InFull",
    "InWindow",
    "State",
    "fmt",
    "load",
    "now",
    "omie_date",
    "omie_time",
    "parse",
    "position",
]


def omie_date(moment: datetime) -> str:
    return moment.astimezone(BRASILIA).strftime("%d/%m/%Y")


def omie_time(moment: datetime) -> str:
    return moment.astimezone(BRASILIA).strftime("%H:%M:%S")


def parse(value: object, what: str) -> datetime:
    return brasilia.parse(value, what, "Omie")


@dataclass(frozen=True)
class InWindow:
    start: datetime
    page: int
    size: int
    until: datetime

    def dump(self) -> dict[str, Any]:
        return {
            "window_start": fmt(self.start),
            "page": self.page,
            "size": self.size,
            "until": fmt(self.until),
        }


@dataclass(frozen=True)
class InFull:
    page: int
    size: int
    until: datetime
    local: int | None = None  # stock: the local being read

    def dump(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "full": True,
            "page": self.page,
            "size": self.size,
            "until": fmt(self.until),
        }
        if self.local is not None:
            out["local"] = self.local
        return out


State = Done | InWindow | InFull


def _positive(value: object, what: str, limit: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ContractError(f"the stored Omie cursor's {what} is not a positive number: {value!r}")
    if limit is not None and value > limit:
        raise ContractError(f"the stored Omie cursor's {what} {value} is over {limit}")
    return value


def load(cursor: Mapping[str, Any] | None) -> State | None:
    """Parse a stored cursor; a shape we never wrote is a ContractError (fail loudly
    rather than silently re-read or skip a catalogue)."""
    if not cursor:
        return None
    if "since" in cursor and len(cursor) == 1:
        return Done(parse(cursor["since"], "since"))
    if cursor.get("full") is True:
        local = cursor.get("local")
        return InFull(
            _positive(cursor.get("page"), "page"),
            _positive(cursor.get("size"), "size", 500),
            parse(cursor.get("until"), "until"),
            None if local is None else _positive(local, "local"),
        )
    if "window_start" in cursor:
        state = InWindow(
            parse(cursor["window_start"], "window_start"),
            _positive(cursor.get("page"), "page"),
            _positive(cursor.get("size"), "size", 500),
            parse(cursor.get("until"), "until"),
        )
        if state.start > state.until:
            raise ContractError(f"the stored Omie cursor's window is out of order: {cursor}")
        return state
    raise ContractError(
        f"the stored cursor {dict(cursor)} is not an Omie cursor; run a full sync of the stream"
    )


def position(cursor: Mapping[str, Any] | None) -> tuple[str, int, str, int, int]:
    """A sort key: a later cursor of the same stream never sorts before an earlier one."""
    state = load(cursor)
    if state is None:
        return ("", 0, "", 0, 0)
    if isinstance(state, Done):
        return (fmt(state.since), 1, "", 0, 0)
    if isinstance(state, InFull):
        return (fmt(state.until), 0, "", state.local or 0, state.page)
    return (fmt(state.until), 0, fmt(state.start), 0, state.page)
