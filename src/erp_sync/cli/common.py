"""What every CLI command shares: settings, logging, the runtime, one-line errors."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NoReturn, TypeVar

import typer
import uvloop
from pydantic import BaseModel, ValidationError
from rich.console import Console

from erp_sync.kit.logging import configure_logging, redact_text
from erp_sync.runtime import Runtime, runtime
from erp_sync.settings import Settings, get_settings

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
# Piped output (scripts, logs) gets wide tables instead of rich's 80-column default.
console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"error: {redact_text(message)}", markup=False)
    raise typer.Exit(code)


def parse_model(cls: type[M], **data: Any) -> M:
    """The options as ``cls``, or one line naming the field at fault (omitted: None)."""
    try:
        return cls(**{k: v for k, v in data.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        fail(f"{field}: {err['msg'].removeprefix('Value error, ')}")


def settings(*, service: bool = False) -> Settings:
    """Settings and logging. Long-running services log at LOG_LEVEL; one-shot commands
    keep their output to what they print unless LOG_LEVEL asks for more than INFO."""
    s = get_settings()
    level = s.log_level if service or s.log_level != "INFO" else "WARNING"
    configure_logging(level, json=s.production, secrets=s.secret_values())
    return s


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop: its event loop and sockets cost a sync's worker about a tenth less
    CPU per record than asyncio's (bench/RESULTS.md, 2026-11-29 evening)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def with_runtime(fn: Callable[[Runtime], Awaitable[T]], *, name: str = "erp-sync-cli") -> T:
    s = settings()

    async def go() -> T:
        async with runtime(s, name=name) as rt:
            return await fn(rt)

    return run(go())


def print_json(data: object) -> None:
    import orjson

    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
