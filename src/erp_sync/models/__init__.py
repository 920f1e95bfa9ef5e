from erp_sync.models.base import Base
from erp_sync.models.jobrun import JOB_STATUSES, TRIGGERS, JobRun
from erp_sync.models.store import (
    Customer,
    Product,
    QuarantinedRecord,
    SalesOrder,
    SalesOrderLine,
    StockLevel,
    SyncSeen,
    SyncState,
)
from erp_sync.models.tenant import CONNECTION_STATUSES, ErpConnection, Tenant
from erp_sync.models.token import ApiToken

__all__ = [
    "CONNECTION_STATUSES",
    "JOB_STATUSES",
    "TRIGGERS",
    "ApiToken",
    "Base",
    "Customer",
    "ErpConnection",
    "JobRun",
    "Product",
    "QuarantinedRecord",
    "SalesOrder",
    "SalesOrderLine",
    "StockLevel",
    "SyncSeen",
    "SyncState",
    "Tenant",
]
