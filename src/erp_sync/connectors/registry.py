"""Connectors are discovered through the ``erp_sync.connectors`` entry-point group, so a
new ERP is a new package, not an edit of the engine."""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import entry_points

from erp_sync.connectors.base import Connector
from erp_sync.errors import ConfigError

GROUP = "erp_sync.connectors"


@lru_cache(maxsize=1)
def _load() -> tuple[dict[str, type[Connector]], dict[str, str]]:
    found: dict[str, type[Connector]] = {}
    broken: dict[str, str] = {}
    for ep in entry_points(group=GROUP):
        try:
            cls = ep.load()
        except Exception as exc:  # one broken plugin must not take the others down
            broken[ep.name] = f"{type(exc).__name__}: {exc}"
            continue
        if isinstance(cls, type) and issubclass(cls, Connector):
            found[ep.name] = cls
        else:
            broken[ep.name] = f"{ep.value} is not a Connector"
    return found, broken


def connectors() -> dict[str, type[Connector]]:
    return _load()[0]


def get_connector(provider: str) -> type[Connector]:
    found, broken = _load()
    if provider in found:
        return found[provider]
    if provider in broken:
        raise ConfigError(f"the {provider!r} connector cannot be loaded ({broken[provider]})")
    known = ", ".join(sorted(found)) or "none installed"
    raise ConfigError(f"unknown ERP provider {provider!r}; known providers: {known}")
