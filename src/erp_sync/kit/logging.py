"""Structured logging (structlog), JSON in production, with secrets masked.

Three nets catch secrets: values under sensitive-looking keys are masked; every
registered secret string (configured passwords, decrypted ERP credentials) is replaced
wherever it appears; and so is every match of a registered secret pattern (secrets we
mint but never hold in plain text, such as tenant API tokens). All three apply inside
messages from other libraries too (uvicorn, bullmq), routed through the same processors.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

MASK = "***"
_SENSITIVE_KEY = re.compile(
    r"pass(word)?|secret|token|credential|authorization|api[_-]?key|app_key|cookie|encryption",
    re.IGNORECASE,
)
_secrets: set[str] = set()
# (marker, pattern): the cheap substring test spares the regex on most lines.
_patterns: list[tuple[str, re.Pattern[str]]] = []
_secrets_lock = threading.Lock()


def register_secret(*values: str | None) -> None:
    """Mask these strings in every later log line."""
    with _secrets_lock:
        for value in values:
            if value and len(value) >= 4:
                _secrets.add(value)


def register_secret_pattern(marker: str, pattern: str) -> None:
    """Mask every match of ``pattern`` in every later log line; ``marker`` is a literal
    every match contains (the regex runs only on text that holds it)."""
    compiled = re.compile(pattern)
    with _secrets_lock:
        if all(p.pattern != compiled.pattern for _, p in _patterns):
            _patterns.append((marker, compiled))


def register_secrets_in(data: Any, *, sensitive: bool = False) -> None:
    """Register the string leaves of a credentials object that sit under a sensitive key
    (password, token, secret, ...); logins and URLs are not secrets and stay readable."""
    if isinstance(data, dict):
        for key, value in data.items():
            register_secrets_in(value, sensitive=sensitive or bool(_SENSITIVE_KEY.search(str(key))))
    elif isinstance(data, list | tuple):
        for value in data:
            register_secrets_in(value, sensitive=sensitive)
    elif isinstance(data, str) and sensitive:
        register_secret(data)


def redact_text(text: str) -> str:
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
        patterns = list(_patterns)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    for marker, pattern in patterns:
        if marker in text:
            text = pattern.sub(MASK, text)
    return text


def _redact(value: Any, key: str | None = None) -> Any:
    if key is not None and _SENSITIVE_KEY.search(key) and value not in (None, "", False):
        if not isinstance(value, bool | int | float):
            return MASK
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v) for v in value]
    return value


def redact_processor(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        if key.startswith("_"):
            continue
        event_dict[key] = _redact(event_dict[key], None if key == "event" else key)
    return event_dict


def configure_logging(
    level: str = "INFO",
    *,
    json: bool = False,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    register_secret(*secrets)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_processor,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    )
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared[:-2],
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared[:-2],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact_processor,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Whatever an earlier uvicorn.Config set on its loggers (its own handlers, a level,
    # no propagation), their lines now go through the root handler and its masking.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.setLevel(logging.NOTSET)
        lg.propagate = True
    # httpx logs every request URL at INFO; URLs may carry tokens in query strings.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)


bind_contextvars = structlog.contextvars.bind_contextvars
bound_contextvars = structlog.contextvars.bound_contextvars
clear_contextvars = structlog.contextvars.clear_contextvars
