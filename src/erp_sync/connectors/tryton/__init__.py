"""Tryton (https://www.tryton.org) over JSON-RPC: see README.md and docs/connectors/tryton.md."""

from erp_sync.connectors.tryton.connector import (
    TrytonConnector,
    TrytonCredentials,
    TrytonSettings,
)

__all__ = ["TrytonConnector", "TrytonCredentials", "TrytonSettings"]
