from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from croniter import croniter
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from erp_sync.kit.documents import normalize_document


def validate_cron(value: str) -> str:
    value = " ".join(value.split())
    if len(value.split(" ")) != 5 or not croniter.is_valid(value):
        raise ValueError(
            f"{value!r} is not a valid cron expression (five fields: minute hour day month weekday)"
        )
    return value


TENANT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
TenantId = Annotated[str, StringConstraints(pattern=TENANT_ID_PATTERN, strip_whitespace=True)]
Cron = Annotated[str, AfterValidator(validate_cron)]
Document = Annotated[str, AfterValidator(normalize_document)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
Provider = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{1,39}$")]


class TenantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: TenantId | None = Field(default=None, description="Chosen id; a UUID when omitted")
    name: Name
    document: Document | None = Field(default=None, description="CNPJ or CPF")
    schedule: Cron | None = Field(default=None, description="Cron of the tenant's syncs")
    active: bool = True


class TenantUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    document: Document | None = None
    schedule: Cron | None = None
    active: bool | None = None


class ConnectionOut(BaseModel):
    provider: str
    settings: dict[str, Any]
    status: str
    lastError: str | None
    hasCredentials: bool
    updatedAt: datetime


class TenantOut(BaseModel):
    id: str
    name: str
    document: str | None
    active: bool
    schedule: str
    createdAt: datetime
    updatedAt: datetime
    connection: ConnectionOut | None = None


class TenantList(BaseModel):
    items: list[TenantOut]
    total: int


class ConnectionIn(BaseModel):
    """Credentials are write-only: stored encrypted, never returned, never logged."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    provider: Provider
    settings: dict[str, Any] = Field(default_factory=dict)
    credentials: dict[str, Any] | None = Field(
        default=None, description="Write-only; omit to keep the stored credentials"
    )
