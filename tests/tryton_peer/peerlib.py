"""Shared helpers for the Tryton peer programs (seed.py, edits.py).

This module runs INSIDE the peer's virtualenv (``.tryton/venv``), where
``trytond`` and ``proteus`` are installed.  It is not imported by our own
test suite (which has no trytond); see ``harness.py`` for that side.

The peer's state (database name, backend, config file, URL, ...) is read
from ``<TRYTON_PEER_HOME>/peer.json``, written by ``scripts/tryton-peer up``.
``TRYTON_PEER_HOME`` defaults to ``<repo>/.tryton``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HOME = Path(os.environ.get("TRYTON_PEER_HOME") or REPO / ".tryton")


def load_state() -> dict:
    path = HOME / "peer.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        sys.exit(f"{path} not found: run scripts/tryton-peer up first")


def admin_password(state: dict | None = None) -> str:
    state = state or load_state()
    return Path(state["admin_password_file"]).read_text().strip()


def database_uri(state: dict) -> str:
    """URI handed to proteus.config.set_trytond().

    Trap: proteus *overwrites* TRYTOND_DATABASE_URI with what it is given,
    so a bare database name would replace the config file's URI.  Give it
    the backend URI with the database name as path.
    """
    return state["database_uri"].rstrip("/") + "/" + state["db"]


def connect_local(user: str = "admin"):
    """In-process trytond through proteus (no HTTP).

    Used by the seeding program, which runs before the server is started.
    """
    state = load_state()
    os.environ.setdefault("TRYTOND_CONFIG", state["config"])
    from proteus import config

    return config.set_trytond(database=database_uri(state), user=user, config_file=state["config"])


def connect_rpc(user: str = "admin", password: str | None = None):
    """proteus over XML-RPC against the running peer server.

    Edits made this way go through the server itself, so its caches and
    (on SQLite) its write lock see them like any other client's edit.
    """
    from urllib.parse import quote

    from proteus import config

    state = load_state()
    if password is None:
        password = admin_password(state)
    host = state["url"].split("://", 1)[1].rstrip("/")
    url = f"http://{quote(user, safe='')}:{quote(password, safe='')}@{host}/{state['db']}/"
    return config.set_xmlrpc(url)


def to_jsonable(value):
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def dump(obj) -> str:
    return json.dumps(to_jsonable(obj), sort_keys=True)
