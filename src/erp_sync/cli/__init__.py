"""The `erp-sync` command (``erp_sync.cli.main``)."""

import sys

from erp_sync.errors import ConfigError
from erp_sync.settings import export_metrics_environment

# Before any command module imports prometheus_client (through the worker, the engine,
# the connectors): it chooses its multiprocess mode once, at import.
try:
    export_metrics_environment()
except ConfigError as _exc:
    print(f"error: {_exc}", file=sys.stderr)
    sys.exit(2)
