"""Tryton cursors: where a read stands, in a shape that survives a crash at any page.

Every Tryton record has ``last_modified_at`` (= ``coalesce(write_date, create_date)``,
searchable and orderable), and ids only grow. A stream follows several models (e.g.
products: ``product.product`` and ``product.template``), each with its own keyset mark
``(last_modified_at, id)``: the next read asks for that model's records *after* the
mark, ordered by ``(last_modified_at, id)``, so a bulk write that gives a thousand
rows one timestamp pages cleanly.

- read finished: ``{"state": "done", "read_at": R, "marks": {model: [T, id], ...}}``;
- incremental read in progress: ``{"state": "incremental", "read_at": R, "step": i,
  "marks": {...}}``;
- whole-list read in progress: ``{"state": "full", "read_at": R, "after_id": n}``.

``R`` is the server's clock when the read started (its HTTP ``Date``). ``step`` is the
followed model being paged (the ones before it are finished). A whole-list read pages
by id (``id > after_id``), which nothing can shift.

**Overlap.** Tryton stamps a record with its *transaction's* start time, so a write
committed late can carry a time older than records a read already passed. When a read
finishes, each mark is moved back to ``R - overlap`` if it lies beyond that: the next
read re-reads what changed in the last ``overlap`` before this read started (the
engine's content hashes make the repeat free), and nothing older. A finished whole-list
read leaves every mark at ``R - overlap``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from erp_sync.errors import ContractError

Mark = tuple[datetime, int]
MICROSECOND = timedelta(microseconds=1)
EPOCH = datetime(1970, 1, 1)


def fmt(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds")


def _parse(value: object, what: str) -> datetime:
    if not isinstance(value, str):
        raise ContractError(f"the stored Tryton cursor's {what} is not a date-time: {value!r}")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ContractError(
            f"the stored Tryton cursor's {what} {value!r} is not ISO 8601"
        ) from None
    if moment.tzinfo is not None:
        raise ContractError(f"the stored Tryton cursor's {what} {value!r} must be naive UTC")
    return moment


def _id(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ContractError(f"the stored Tryton cursor's {what} is not a record id: {value!r}")
    return value


def _dump_marks(marks: Mapping[str, Mark]) -> dict[str, list[Any]]:
    return {model: [fmt(ts), rid] for model, (ts, rid) in marks.items()}


@dataclass(frozen=True)
class Done:
    read_at: datetime
    marks: dict[str, Mark]

    def dump(self) -> dict[str, Any]:
        return {"state": "done", "read_at": fmt(self.read_at), "marks": _dump_marks(self.marks)}


@dataclass(frozen=True)
class Incremental:
    read_at: datetime
    step: int
    model: str  # the followed model of ``step``, for readers of the stored cursor
    marks: dict[str, Mark]

    def dump(self) -> dict[str, Any]:
        return {
            "state": "incremental",
            "read_at": fmt(self.read_at),
            "step": self.step,
            "model": self.model,
            "marks": _dump_marks(self.marks),
        }


@dataclass(frozen=True)
class Full:
    read_at: datetime
    after_id: int

    def dump(self) -> dict[str, Any]:
        return {"state": "full", "read_at": fmt(self.read_at), "after_id": self.after_id}


State = Done | Incremental | Full


def _marks(value: object, models: Sequence[str]) -> dict[str, Mark]:
    if not isinstance(value, dict):
        raise ContractError(f"the stored Tryton cursor's marks are not an object: {value!r}")
    marks: dict[str, Mark] = {}
    for model, mark in value.items():
        if not isinstance(mark, list) or len(mark) != 2:
            raise ContractError(f"the stored Tryton cursor's mark of {model} is not [time, id]")
        marks[str(model)] = (_parse(mark[0], f"mark of {model}"), _id(mark[1], f"mark of {model}"))
    if not marks:
        raise ContractError("the stored Tryton cursor has no marks")
    # A model followed since a connector upgrade starts where the oldest mark stands.
    oldest = min(marks.values())
    return {model: marks.get(model, oldest) for model in models}


def load(cursor: Mapping[str, Any] | None, models: Sequence[str]) -> State | None:
    """Parse a stored cursor for a stream following ``models``; a shape we never wrote
    is a ContractError (fail loudly rather than silently re-read or skip a catalogue)."""
    if not cursor:
        return None
    state = cursor.get("state")
    if state == "done":
        return Done(_parse(cursor.get("read_at"), "read_at"), _marks(cursor.get("marks"), models))
    if state == "incremental":
        step = cursor.get("step")
        if (
            isinstance(step, bool)
            or not isinstance(step, int)
            or not 0 <= step < len(models)
            or cursor.get("model") != models[step]
        ):
            raise ContractError(
                f"the stored Tryton cursor's step {step!r} ({cursor.get('model')!r}) is not "
                "one of this stream's; run a full sync of the stream"
            )
        return Incremental(
            _parse(cursor.get("read_at"), "read_at"),
            step,
            models[step],
            _marks(cursor.get("marks"), models),
        )
    if state == "full":
        return Full(
            _parse(cursor.get("read_at"), "read_at"), _id(cursor.get("after_id"), "after_id")
        )
    raise ContractError(
        f"the stored cursor {dict(cursor)} is not a Tryton cursor; run a full sync of the stream"
    )


def finish(read_at: datetime, marks: Mapping[str, Mark], overlap: timedelta) -> Done:
    """The cursor of a finished read: each mark at most ``read_at - overlap``."""
    floor = (read_at - overlap, 0)
    return Done(read_at, {model: min(mark, floor) for model, mark in marks.items()})


def next_read_at(server_now: datetime, previous: State | None) -> datetime:
    """A new read's start: the server's clock, but always after the previous read's, so
    cursors only move forward (the ``Date`` header has one-second resolution)."""
    if previous is None:
        return server_now
    return max(server_now, previous.read_at + MICROSECOND)


def position(cursor: Mapping[str, Any] | None) -> tuple[str, int, int, str, int]:
    """A sort key: a later cursor of the same stream never sorts before an earlier one."""
    if not cursor:
        return ("", 0, 0, "", 0)
    read_at = fmt(_parse(cursor.get("read_at"), "read_at"))
    state = cursor.get("state")
    if state == "done":
        return (read_at, 1, 0, "", 0)
    if state == "full":
        return (read_at, 0, 0, "", _id(cursor.get("after_id"), "after_id"))
    if state == "incremental":
        model = str(cursor.get("model"))
        (ts, rid) = _marks(cursor.get("marks"), [model])[model]
        step = cursor.get("step")
        return (read_at, 0, step if isinstance(step, int) else 0, fmt(ts), rid)
    raise ContractError(f"the stored cursor {dict(cursor)} is not a Tryton cursor")
