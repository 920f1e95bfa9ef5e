"""Records that failed validation: kept with the reason, their page lands without them."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from sqlalchemy import delete, func
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from erp_sync.models import QuarantinedRecord


def record_key(external_id: str | None, raw: Any) -> str:
    if external_id:
        return external_id[:200]
    payload = orjson.dumps(raw, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return "hash:" + hashlib.blake2b(payload, digest_size=16).hexdigest()


async def quarantine(
    session: AsyncSession,
    tenant_id: str,
    connection_id: str,
    stream: str,
    items: list[tuple[str | None, Any, str]],
) -> None:
    """Store (externalId, raw, reason) triples; a repeat bumps the occurrence count."""
    if not items:
        return
    rows: dict[str, dict[str, Any]] = {}
    for external_id, raw, reason in items:
        key = record_key(external_id, raw)
        rows[key] = {
            "tenantId": tenant_id,
            "connectionId": connection_id,
            "stream": stream,
            "recordKey": key,
            "externalId": external_id[:200] if external_id else None,
            "raw": raw if isinstance(raw, dict) else {"value": raw},
            "reason": reason[:2000],
        }
    stmt = insert(QuarantinedRecord).values(list(rows.values()))
    stmt = stmt.on_conflict_do_update(
        index_elements=["tenantId", "connectionId", "stream", "recordKey"],
        set_={
            "raw": stmt.excluded.raw,
            "reason": stmt.excluded.reason,
            "lastSeenAt": func.now(),
            "occurrences": QuarantinedRecord.occurrences + 1,
        },
    )
    await session.execute(stmt)


async def release(
    session: AsyncSession, tenant_id: str, connection_id: str, stream: str, external_ids: list[str]
) -> int:
    """Records that now arrive valid leave the quarantine."""
    if not external_ids:
        return 0
    result = await session.execute(
        delete(QuarantinedRecord).where(
            QuarantinedRecord.tenantId == tenant_id,
            QuarantinedRecord.connectionId == connection_id,
            QuarantinedRecord.stream == stream,
            QuarantinedRecord.recordKey.in_(external_ids),
        )
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
