"""The one place that reads the environment.

Every secret also accepts ``<NAME>_FILE`` (Docker/systemd secrets). Invalid
configuration raises :class:`erp_sync.errors.ConfigError` with one sentence that
names the variable and the fix; entry points print it and exit.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from croniter import croniter
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from erp_sync.errors import ConfigError

DEFAULT_REDIS_PASSWORD_FILE = Path("/etc/merxios/secrets/redis_password")
DEFAULT_SCHEDULE = "*/15 * * * *"

# Secrets that accept <NAME>_FILE; the file wins over nothing, the variable wins over the file.
SECRET_NAMES = (
    "REDIS_PASSWORD",
    "DATABASE_PASSWORD",
    "BULLBOARD_PASS",
    "ENCRYPTION_KEY",
    "API_TOKEN",
)


def read_secret_file(path: Path, variable: str) -> str:
    """Read a secret file (trailing newline stripped), or explain what is wrong with it."""
    try:
        value = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(
            f"{variable} points to {path}, which does not exist; "
            f"create the file or unset {variable}."
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"{variable} points to {path}, which cannot be read ({exc.strerror}); "
            "fix its permissions or unset the variable."
        ) from None
    if not value:
        raise ConfigError(f"{variable} points to {path}, which is empty; write the secret into it.")
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
    )

    app_env: Literal["development", "production"] = "development"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    port: int = Field(default=3000, ge=1, le=65535)
    host: str = "0.0.0.0"

    database_url: str = "postgresql://postgres@127.0.0.1:5432/erp_sync"
    database_password: SecretStr | None = None
    database_password_file: Path | None = None

    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_password: SecretStr | None = None
    redis_password_file: Path | None = None
    # BullMQ's key prefix; "bull" is what Node BullMQ and Bull Board use by default.
    queue_prefix: str = "bull"

    enable_bullboard: bool = False
    bullboard_user: str | None = None
    bullboard_pass: SecretStr | None = None
    bullboard_pass_file: Path | None = None

    retention_days_jobrun: int = Field(default=90, ge=1)
    encryption_key: SecretStr | None = None
    encryption_key_file: Path | None = None
    api_token: SecretStr | None = None
    api_token_file: Path | None = None

    worker_concurrency: int = Field(default=4, ge=1, le=256)
    # Seconds a worker waits for running jobs after SIGTERM before it gives up on them.
    worker_grace_seconds: float = Field(default=30.0, ge=0)
    default_schedule: str = DEFAULT_SCHEDULE
    # Cron expressions are read in this time zone (Brazilian customers think in local time).
    schedule_tz: str = "America/Sao_Paulo"
    # How often the scheduler re-reads tenants and fixes the job schedulers in Redis.
    scheduler_interval_seconds: float = Field(default=60.0, gt=0)

    # Attempts per job and the capped exponential backoff between them.
    job_attempts: int = Field(default=5, ge=1, le=100)
    job_backoff_ms: int = Field(default=5000, ge=0)
    job_backoff_max_ms: int = Field(default=600_000, ge=0)
    # A job whose worker died is recovered after at most
    # job_lock_ms + 2 x stalled_interval_ms (60 s with these defaults).
    job_lock_ms: int = Field(default=30_000, ge=1000)
    stalled_interval_ms: int = Field(default=15_000, ge=500)
    max_stalled_count: int = Field(default=3, ge=0)
    heartbeat_ttl_seconds: int = Field(default=30, ge=2)
    # Fairness: a sync job works this long, then saves its cursor and re-enqueues the
    # rest behind the other tenants' jobs.
    sync_job_budget_seconds: float = Field(default=300.0, gt=0)
    # A tenant whose last N sync attempts all failed is paused until resumed (0 = never).
    auto_pause_after_failures: int = Field(default=10, ge=0)
    # A tenant is stale when its last complete sync is older than this many schedule
    # intervals.
    stale_factor: float = Field(default=3.0, gt=0)

    # Processes on one host that share this directory are served together by the API's
    # /metrics (prometheus_client multiprocess mode); unset, each process serves its own.
    prometheus_multiproc_dir: Path | None = None
    # `erp-sync worker` also serves its own metrics on this port (workers on other hosts).
    metrics_port: int | None = Field(default=None, ge=1, le=65535)

    @field_validator("prometheus_multiproc_dir", "metrics_port", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("log_level", "app_env", mode="before")
    @classmethod
    def _case_insensitive(cls, value: Any, info: Any) -> Any:
        if isinstance(value, str):
            return value.upper() if info.field_name == "log_level" else value.lower()
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url_is_postgres(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in {"postgres", "postgresql", "postgresql+psycopg", "postgresql+asyncpg"}:
            raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url_is_redis(cls, value: str) -> str:
        if urlsplit(value).scheme not in {"redis", "rediss", "unix"}:
            raise ValueError("must be a redis:// URL")
        return value

    @field_validator("schedule_tz")
    @classmethod
    def _tz_is_known(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"{value!r} is not a known time zone, e.g. America/Sao_Paulo"
            ) from None
        return value

    @field_validator("default_schedule")
    @classmethod
    def _schedule_is_cron(cls, value: str) -> str:
        if not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a valid cron expression")
        return value

    @model_validator(mode="before")
    @classmethod
    def _default_redis_password_file(cls, data: Any) -> Any:
        # The runbook's secret file is used when present and nothing else was said.
        if isinstance(data, dict):
            keys = {k.lower() for k in data}
            if (
                "redis_password" not in keys
                and "redis_password_file" not in keys
                and DEFAULT_REDIS_PASSWORD_FILE.is_file()
            ):
                data = {**data, "redis_password_file": DEFAULT_REDIS_PASSWORD_FILE}
        return data

    @model_validator(mode="after")
    def _load_secret_files(self) -> Settings:
        for name in SECRET_NAMES:
            attr = name.lower()
            path: Path | None = getattr(self, f"{attr}_file")
            if getattr(self, attr) is None and path is not None:
                setattr(self, attr, SecretStr(read_secret_file(path, f"{name}_FILE")))
        return self

    @model_validator(mode="after")
    def _check_consistency(self) -> Settings:
        if self.enable_bullboard and not (self.bullboard_user and self.bullboard_pass):
            raise ConfigError(
                "ENABLE_BULLBOARD=true needs BULLBOARD_USER and BULLBOARD_PASS "
                "(or BULLBOARD_PASS_FILE); set both or set ENABLE_BULLBOARD=false."
            )
        if self.production:
            if self.encryption_key is None:
                raise ConfigError(
                    "APP_ENV=production needs ENCRYPTION_KEY (or ENCRYPTION_KEY_FILE); "
                    "generate one with `erp-sync keygen`."
                )
            if self.api_token is None:
                raise ConfigError(
                    "APP_ENV=production needs API_TOKEN (or API_TOKEN_FILE); "
                    "generate one with `erp-sync keygen --token`."
                )
            if self.enable_bullboard and self.bullboard_pass is not None:
                if len(self.bullboard_pass.get_secret_value()) < 12:
                    raise ConfigError(
                        "BULLBOARD_PASS must be at least 12 characters in production; "
                        "choose a longer password."
                    )
        return self

    @property
    def production(self) -> bool:
        return self.app_env == "production"

    def current_redis_password(self) -> str | None:
        """The Redis password as of now: the secret file is re-read, so a rotated
        password is picked up without a restart."""
        if self.redis_password_file is not None and self.redis_password_file.is_file():
            try:
                return read_secret_file(self.redis_password_file, "REDIS_PASSWORD_FILE")
            except ConfigError:
                pass
        return self.redis_password.get_secret_value() if self.redis_password else None

    def current_database_password(self) -> str | None:
        if self.database_password_file is not None and self.database_password_file.is_file():
            try:
                return read_secret_file(self.database_password_file, "DATABASE_PASSWORD_FILE")
            except ConfigError:
                pass
        return self.database_password.get_secret_value() if self.database_password else None

    def sqlalchemy_url(self) -> str:
        """DATABASE_URL as SQLAlchemy wants it (psycopg 3 driver), without the password:
        the password is supplied per connection so that a rotated file is honoured."""
        parts = urlsplit(self.database_url)
        netloc = parts.netloc.rsplit("@", 1)
        host = netloc[-1]
        user = ""
        if len(netloc) == 2:
            user = netloc[0].split(":", 1)[0]
        new_netloc = f"{user}@{host}" if user else host
        return urlunsplit(("postgresql+psycopg", new_netloc, parts.path, parts.query, ""))

    def url_password(self) -> str | None:
        """The password written inside DATABASE_URL, if any."""
        netloc = urlsplit(self.database_url).netloc
        if "@" in netloc:
            userinfo = netloc.rsplit("@", 1)[0]
            if ":" in userinfo:
                from urllib.parse import unquote

                return unquote(userinfo.split(":", 1)[1])
        return None

    def libpq_url(self, database: str | None = None) -> str:
        """A plain postgresql:// URL (with the current password) for psycopg and tools."""
        parts = urlsplit(self.database_url)
        host = parts.netloc.rsplit("@", 1)[-1]
        user = ""
        if "@" in parts.netloc:
            user = parts.netloc.rsplit("@", 1)[0].split(":", 1)[0]
        password = self.current_database_password() or self.url_password()
        userinfo = user
        if password:
            userinfo = f"{user}:{quote(password, safe='')}"
        netloc = f"{userinfo}@{host}" if userinfo else host
        path = f"/{database}" if database is not None else parts.path
        return urlunsplit(("postgresql", netloc, path, parts.query, ""))

    def secret_values(self) -> list[str]:
        """Every configured secret, so the log redactor can mask them wherever they appear."""
        values = [
            self.current_redis_password(),
            self.current_database_password(),
            self.url_password(),
        ]
        for name in ("bullboard_pass", "encryption_key", "api_token"):
            secret: SecretStr | None = getattr(self, name)
            values.append(secret.get_secret_value() if secret else None)
        return [v for v in values if v and len(v) >= 4]


class _MetricsEnvironment(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    prometheus_multiproc_dir: Path | None = None

    @field_validator("prometheus_multiproc_dir", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value


def export_metrics_environment() -> Path | None:
    """Put PROMETHEUS_MULTIPROC_DIR (from the environment or .env) into ``os.environ``
    and create the directory. prometheus_client picks its multiprocess mode from that
    variable once, when first imported, and child processes (uvicorn workers) inherit
    it: entry points call this before importing anything that imports it."""
    import os

    try:
        directory = _MetricsEnvironment().prometheus_multiproc_dir
    except ValidationError:
        return None  # load_settings() reports it as one sentence
    if directory is None:
        # prometheus_client would take even an empty variable for a directory (the cwd).
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        return None
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"PROMETHEUS_MULTIPROC_DIR points to {directory}, which cannot be created "
            f"({exc.strerror}); create it writable for this user or unset the variable."
        ) from None
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    return directory


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "__root__"]
    variable = loc[0].upper() if loc else "configuration"
    message = str(first.get("msg", "is invalid")).removeprefix("Value error, ")
    value = first.get("input")
    shown = "" if "pass" in variable.lower() or "key" in variable.lower() else f" (got {value!r})"
    if isinstance(value, dict):
        shown = ""
    return f"{variable} {message}{shown}; fix it in the environment or .env file."


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment, turning validation errors into one sentence."""
    try:
        return Settings(**overrides)
    except ConfigError:
        raise
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
