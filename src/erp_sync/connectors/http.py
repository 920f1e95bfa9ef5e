"""The one HTTP layer every connector uses: rate governed, outcome mapped once.

| outcome                                   | becomes                                  |
|-------------------------------------------|------------------------------------------|
| 401, 403                                  | ConfigError (stop, flag the connection)  |
| 408, 425, 429, 5xx, timeouts, resets      | RetryableError, Retry-After honoured     |
| other 4xx                                 | ContractError (the ERP refused our call) |
| body over the size limit, invalid JSON    | ContractError                            |

Retryable outcomes are retried here a few times (tenacity, honouring Retry-After; a 429
also holds every worker on the account through the governor) before the error goes up
to the job, whose own retries take over. A wait longer than ``max_retry_wait_s`` (a long
Retry-After, the governor's "daily quota used up" or "account busy") is not slept here:
the error goes up at once and the job's backoff takes over; so does a call that outlived
its whole deadline (``deadline_s``: a slow-loris answer). Nothing past this module
sees httpx errors: a base URL with an unsupported scheme or an invalid URL is a
ConfigError, an undecodable (e.g. corrupt gzip) body a ContractError, any other
transport failure UpstreamUnavailable.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlsplit

import httpx
import orjson
from pydantic import AfterValidator
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from erp_sync.connectors.governor import Governor
from erp_sync.errors import (
    ConfigError,
    ContractError,
    RateLimited,
    RetryableError,
    Timeout,
    UpstreamUnavailable,
)
from erp_sync.kit import metrics

MAX_BODY_BYTES = 32 * 1024 * 1024
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=30.0, pool=30.0)
# A slow-loris answer trickling bytes never trips the read timeout: bound the whole call.
REQUEST_DEADLINE_S = 180.0
RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524}


def http_base_url(value: str) -> str:
    """An ERP's base URL as a connection's settings give it: http(s) with a host, without
    the trailing slash."""
    value = value.strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ValueError(
            "must start with https:// (or http:// for a local sandbox) and name the server, "
            "e.g. https://erp.example.com.br"
        )
    return value


# A settings field holding an ERP's base URL (see http_base_url).
BaseUrl = Annotated[str, AfterValidator(http_base_url)]


class DeadlineExceeded(Timeout):
    """The whole call outlived its deadline (e.g. a slow-loris answer): retried by the
    job's backoff, not inline, where each attempt would take the whole deadline again."""


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        # "inf"/"nan" parse as floats; they would crash the governor's penalty.
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass(frozen=True)
class ErpResponse:
    status: int
    headers: httpx.Headers
    body: bytes

    def json(self) -> Any:
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            raise ContractError(
                f"the ERP answered HTTP {self.status} with a body that is not valid JSON"
            ) from None


ErrorDescriber = Callable[[ErpResponse], str]


def _default_describe(resp: ErpResponse) -> str:
    text = resp.body[:300].decode("utf-8", "replace").strip()
    return " ".join(text.split()) or "(empty body)"


class ErpHttp:
    def __init__(
        self,
        base_url: str,
        governor: Governor,
        *,
        provider: str,
        describe_error: ErrorDescriber = _default_describe,
        headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        max_body_bytes: int = MAX_BODY_BYTES,
        attempts: int = 4,
        max_retry_wait_s: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
        deadline_s: float = REQUEST_DEADLINE_S,
    ) -> None:
        self.provider = provider
        self.governor = governor
        self.describe_error = describe_error
        self.max_body_bytes = max_body_bytes
        self.attempts = attempts
        self.max_retry_wait_s = max_retry_wait_s
        self.deadline_s = deadline_s
        self.client = httpx.AsyncClient(
            base_url=base_url,
            timeout=timeout,
            headers={"User-Agent": "merxios-erp-sync", **(headers or {})},
            transport=transport,
            follow_redirects=False,
        )
        self.on_response: Callable[[int], None] | None = None

    async def aclose(self) -> None:
        await self.client.aclose()

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return float(min(self.max_retry_wait_s, retry_after))
        return float(min(self.max_retry_wait_s, 0.5 * 2 ** (state.attempt_number - 1)))

    def _retry_inline(self, exc: BaseException) -> bool:
        if not isinstance(exc, RetryableError) or isinstance(exc, DeadlineExceeded):
            return False
        # Waits beyond our inline budget (daily quota, long Retry-After) belong to the job.
        return exc.retry_after is None or exc.retry_after <= self.max_retry_wait_s

    async def request(
        self,
        method: str,
        url: str,
        *,
        governed: bool = True,
        ok: tuple[int, ...] = (),
        **kwargs: Any,
    ) -> ErpResponse:
        """Send with retries; return 2xx (and ``ok``) answers, raise mapped errors."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=self._wait,
            retry=retry_if_exception(self._retry_inline),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self.send_once(method, url, governed=governed, ok=ok, **kwargs)
        raise AssertionError("unreachable")  # pragma: no cover

    async def send_once(
        self,
        method: str,
        url: str,
        *,
        governed: bool = True,
        ok: tuple[int, ...] = (),
        **kwargs: Any,
    ) -> ErpResponse:
        if not governed:
            return await self._send_once(method, url, ok=ok, **kwargs)
        # In flight until the answer: the ERP counted the call somewhere in between.
        async with self.governor.request():
            return await self._send_once(method, url, ok=ok, **kwargs)

    async def _send_once(
        self, method: str, url: str, *, ok: tuple[int, ...], **kwargs: Any
    ) -> ErpResponse:
        try:
            async with asyncio.timeout(self.deadline_s):
                resp = await self._send(method, url, **kwargs)
        except TimeoutError:
            metrics.count_erp_request(self.governor.provider, "timeout")
            raise DeadlineExceeded(
                f"{self.provider} did not finish answering {method} {url} within "
                f"{self.deadline_s:g} s"
            ) from None
        except httpx.TimeoutException:
            metrics.count_erp_request(self.governor.provider, "timeout")
            raise Timeout(f"{self.provider} timed out on {method} {url}") from None
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise ConfigError(
                f"the {self.provider} base URL {self.client.base_url} cannot be used "
                f"({type(exc).__name__}: {exc}); fix the connection's settings"
            ) from None
        except httpx.DecodingError as exc:
            raise ContractError(
                f"{self.provider} answered {method} {url} with a body that cannot be decoded "
                f"({exc})"
            ) from None
        except httpx.HTTPError as exc:
            metrics.count_erp_request(self.governor.provider, "unreachable")
            raise UpstreamUnavailable(
                f"cannot reach {self.provider} ({type(exc).__name__}: {exc or 'connection failed'})"
            ) from None
        metrics.count_erp_request(self.governor.provider, resp.status)
        if self.on_response is not None:
            self.on_response(resp.status)
        if 200 <= resp.status < 300 or resp.status in ok:
            return resp
        await self._raise_for(resp, method, url)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send(self, method: str, url: str, **kwargs: Any) -> ErpResponse:
        async with self.client.stream(method, url, **kwargs) as r:
            declared = r.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > self.max_body_bytes:
                raise ContractError(
                    f"{self.provider} answered {method} {url} with {int(declared)} bytes, "
                    f"over our {self.max_body_bytes} byte limit"
                )
            chunks: list[bytes] = []
            size = 0
            async for chunk in r.aiter_bytes():
                size += len(chunk)
                if size > self.max_body_bytes:
                    raise ContractError(
                        f"{self.provider} answered {method} {url} with more than "
                        f"{self.max_body_bytes} bytes; refusing it"
                    )
                chunks.append(chunk)
            return ErpResponse(r.status_code, r.headers, b"".join(chunks))

    async def _raise_for(self, resp: ErpResponse, method: str, url: str) -> None:
        detail = self.describe_error(resp)
        where = f"{self.provider} answered {method} {url} with HTTP {resp.status}"
        retry_after = parse_retry_after(resp.headers.get("retry-after"))
        if resp.status in (401, 403):
            raise ConfigError(f"{where}: {detail}; check the connection's credentials")
        if resp.status == 429:
            await self.governor.penalize(retry_after if retry_after is not None else 1.0)
            raise RateLimited(f"{where}: {detail}", retry_after=retry_after or 1.0)
        if resp.status in RETRYABLE_STATUS or resp.status >= 500:
            raise UpstreamUnavailable(f"{where}: {detail}", retry_after=retry_after)
        raise ContractError(f"{where}: {detail}")
