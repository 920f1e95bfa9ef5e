"""Connectors are discovered through the ``erp_sync.connectors`` entry-point group, so a
new ERP is a new package, not an edit of the engine."""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import entry_points

from erp_sync.connectors.base import Connector
from erp_sync.errors import ConfigError

GROUP = "erp_sync.connectors"


@lru_cache(maxsize=1)
def connectors() -> dict[str, type[Connector]]:
    found: dict[str, type[Connector]] = {}
    for ep in entry_points(group=GROUP):
        cls = ep.load()
        if isinstance(cls, type) and issubclass(cls, Connector):
            found[ep.name] = cls
    return found


def get_connector(provider: str) -> type[Connector]:
    try:
        return connectors()[provider]
    except KeyError:
        known = ", ".join(sorted(connectors())) or "none installed"
        raise ConfigError(f"unknown ERP provider {provider!r}; known providers: {known}") from None
