"""The error taxonomy (see STYLE.md). Nothing past the connector boundary sees httpx errors."""

from __future__ import annotations


class ErpSyncError(Exception):
    """Base of every error we raise on purpose. Its message is one plain sentence for the user."""


class DomainError(ErpSyncError):
    status_code = 400


class NotFound(DomainError):
    status_code = 404


class Conflict(DomainError):
    status_code = 409


class Forbidden(DomainError):
    status_code = 403


class Invalid(DomainError):
    status_code = 422

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class SyncError(ErpSyncError):
    pass


class RetryableError(SyncError):
    """Try again later; ``retry_after`` (seconds) comes from the ERP when it said so."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(RetryableError):
    pass


class UpstreamUnavailable(RetryableError):
    pass


class Timeout(RetryableError):
    pass


class PermanentError(SyncError):
    """Retrying will not help: fail the job at once."""


class ConfigError(PermanentError):
    """Bad configuration or credentials: stop, tell the operator what to fix."""


class DataError(PermanentError):
    """One record is bad: quarantine it and go on."""


class ContractError(PermanentError):
    """The ERP answered something we do not understand: fail, it is a bug or an API change."""
