"""Bling API v3 (https://developer.bling.com.br): see README.md and docs/connectors/bling.md."""

from erp_sync.connectors.bling.auth import BlingCredentials
from erp_sync.connectors.bling.connector import BlingConnector, BlingSettings

__all__ = ["BlingConnector", "BlingCredentials", "BlingSettings"]
