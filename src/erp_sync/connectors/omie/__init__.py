"""Omie (https://developer.omie.com.br): see README.md and docs/connectors/omie.md."""

from erp_sync.connectors.omie.client import OmieBlocked
from erp_sync.connectors.omie.connector import OmieConnector, OmieCredentials, OmieSettings

__all__ = ["OmieBlocked", "OmieConnector", "OmieCredentials", "OmieSettings"]
