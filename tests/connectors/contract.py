"""The contract every connector passes, over real HTTP against its sandbox or a real ERP.

Use it from a connector's test module with a small harness::

    from tests.connectors.contract import ConnectorContract, Harness

    class MyHarness(Harness):
        ...  # connector(), expected_ids(), change(), server_errors(), ...

    class TestMyErpContract(ConnectorContract):
        @pytest.fixture
        async def harness(self, ...) -> AsyncIterator[Harness]:
            yield MyHarness(...)

What it proves, as a user would see it: the credentials check works and says when the
credentials are wrong; a full read of every stream ends and delivers every record once;
cursors only move forward, and a read resumed from the cursor of any page delivers
exactly the rest, and nothing after the last page (a crash repeats nothing and skips
nothing); a second incremental read returns the changed records, not the catalogue; and
ERP failures arrive as our error taxonomy (5xx -> RetryableError after retries, refused
credentials -> ConfigError, a refused request -> ContractError), never as an httpx error.
"""

from __future__ import annotations

import abc
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from erp_sync.connectors.base import Connector, Cursor, Page
from erp_sync.errors import ConfigError, ContractError, ErpSyncError, RetryableError

MAX_PAGES = 10_000


class Harness(abc.ABC):
    """What the contract needs to know about one connector and its test ERP."""

    #: streams to check (all the connector's streams, usually)
    streams: tuple[str, ...]
    #: streams whose incremental read returns only what changed since the cursor
    incremental_streams: tuple[str, ...]
    #: a stream with at least three pages, for the resume test
    paged_stream: str

    @abc.abstractmethod
    async def connector(
        self, *, valid_credentials: bool = True, fast_retries: bool = False
    ) -> Connector:
        """A new connector (as a new worker process would build it). ``fast_retries``:
        the same retry policy with waits cut to milliseconds."""

    @abc.abstractmethod
    async def expected_ids(self, stream: str) -> set[str]:
        """External ids a full read must deliver, from the ERP's own account of its data."""

    @abc.abstractmethod
    async def change(self, stream: str) -> set[str]:
        """Change (or create) a few records of ``stream`` in the ERP; their external ids."""

    @abc.abstractmethod
    def cursor_position(self, cursor: Cursor | None) -> Any:
        """A sort key for the stream's cursors."""

    @abc.abstractmethod
    def server_errors(self) -> contextlib.AbstractAsyncContextManager[None]:
        """While inside, the ERP answers every API call with a 5xx."""

    @abc.abstractmethod
    def credentials_refused(self) -> contextlib.AbstractAsyncContextManager[None]:
        """While inside, the ERP refuses the connection's credentials (e.g. access revoked)."""

    @abc.abstractmethod
    async def refused_request(self, connector: Connector) -> None:
        """Make ``connector`` send one request the ERP refuses with a 4xx (not 401/403)."""

    @abc.abstractmethod
    async def requests_seen(self) -> int:
        """API requests the ERP has received so far."""


@dataclass
class ReadResult:
    pages: list[Page] = field(default_factory=list)

    @property
    def records(self) -> list[dict[str, Any]]:
        return [r for p in self.pages for r in p.records]

    @property
    def cursors(self) -> list[Cursor]:
        return [p.cursor for p in self.pages if p.cursor is not None]

    @property
    def last_cursor(self) -> Cursor | None:
        cursors = self.cursors
        return cursors[-1] if cursors else None


async def read_all(
    connector: Connector,
    stream: str,
    cursor: Cursor | None,
    *,
    full: bool,
    stop_after: int | None = None,
) -> ReadResult:
    """Every page (or the first ``stop_after``, as a crash after that page would)."""
    result = ReadResult()
    pages = connector.read(stream, cursor, full=full)
    try:
        async for page in pages:
            result.pages.append(page)
            assert len(result.pages) < MAX_PAGES, f"{stream}: pagination does not end"
            if stop_after is not None and len(result.pages) >= stop_after:
                break
    finally:
        aclose: Callable[[], Awaitable[None]] | None = getattr(pages, "aclose", None)
        if aclose is not None:
            await aclose()
    return result


def ids_of(connector: Connector, stream: str, records: list[dict[str, Any]]) -> list[str]:
    out = []
    for raw in records:
        external_id = connector.external_id(stream, raw)
        assert external_id is not None, f"{stream}: a record without an id: {raw!r:.200}"
        out.append(external_id)
    return out


@contextlib.asynccontextmanager
async def closing(connector: Connector) -> AsyncIterator[Connector]:
    try:
        yield connector
    finally:
        await connector.aclose()


class ConnectorContract:
    """Subclass as ``Test<Erp>Contract`` and provide an async ``harness`` fixture."""

    @pytest.fixture
    def harness(self) -> Harness:  # pragma: no cover - overridden
        raise NotImplementedError("provide a harness fixture")

    async def test_check_passes_with_good_credentials(self, harness: Harness) -> None:
        async with closing(await harness.connector()) as connector:
            await connector.check()

    async def test_check_refuses_wrong_credentials(self, harness: Harness) -> None:
        async with closing(await harness.connector(valid_credentials=False)) as connector:
            with pytest.raises(ConfigError):
                await connector.check()

    async def test_full_read_ends_and_delivers_every_record_once(self, harness: Harness) -> None:
        async with closing(await harness.connector()) as connector:
            for stream in harness.streams:
                result = await read_all(connector, stream, None, full=True)
                ids = ids_of(connector, stream, result.records)
                assert len(ids) == len(set(ids)), f"{stream}: duplicates in one full read"
                assert set(ids) == await harness.expected_ids(stream), stream
                assert result.last_cursor is not None, f"{stream}: no cursor after a full read"

    async def test_cursor_only_moves_forward(self, harness: Harness) -> None:
        async with closing(await harness.connector()) as connector:
            for stream in harness.streams:
                first = await read_all(connector, stream, None, full=True)
                if stream in harness.incremental_streams:
                    await harness.change(stream)
                second = await read_all(connector, stream, first.last_cursor, full=False)
                positions = [harness.cursor_position(c) for c in first.cursors + second.cursors]
                for before, after in itertools.pairwise(positions):
                    assert after > before, f"{stream}: cursor moved from {before} to {after}"

    async def test_a_read_resumed_from_any_page_cursor_delivers_exactly_the_rest(
        self, harness: Harness
    ) -> None:
        stream = harness.paged_stream
        async with closing(await harness.connector()) as connector:
            whole = await read_all(connector, stream, None, full=True)
        pages_with_records = [p for p in whole.pages if p.records]
        assert len(pages_with_records) >= 3, "the resume test needs a stream of 3+ pages"
        all_ids = ids_of(connector, stream, whole.records)
        # After the last page too: the job wrote it but stopped before it learned the
        # read was over; the next one must not start the whole list again.
        for crash_after in (1, 2, len(whole.pages)):
            # A new process resumes from the cursor saved with the last written page.
            async with closing(await harness.connector()) as connector:
                done = await read_all(connector, stream, None, full=True, stop_after=crash_after)
                rest = await read_all(connector, stream, done.last_cursor, full=True)
            before = ids_of(connector, stream, done.records)
            after = ids_of(connector, stream, rest.records)
            assert not set(before) & set(after), "a resumed read repeated records"
            assert sorted(before + after) == sorted(all_ids), "a resumed read skipped records"

    async def test_second_incremental_read_returns_only_the_changes(self, harness: Harness) -> None:
        async with closing(await harness.connector()) as connector:
            for stream in harness.incremental_streams:
                first = await read_all(connector, stream, None, full=True)
                changed = await harness.change(stream)
                assert changed, f"{stream}: the harness changed nothing"
                second = await read_all(connector, stream, first.last_cursor, full=False)
                got = set(ids_of(connector, stream, second.records))
                assert got == changed, f"{stream}: expected {len(changed)} changes, got {len(got)}"
                third = await read_all(connector, stream, second.last_cursor, full=False)
                # Only the lookback window is read again: the changes just seen, no more.
                assert set(ids_of(connector, stream, third.records)) <= changed

    async def test_server_errors_become_retryable_after_retries(self, harness: Harness) -> None:
        async with closing(await harness.connector(fast_retries=True)) as connector:
            await connector.check()  # credentials settled before the outage
            seen = await harness.requests_seen()
            async with harness.server_errors():
                with pytest.raises(RetryableError):
                    await read_all(connector, harness.streams[0], None, full=True)
            assert await harness.requests_seen() - seen > 1, "no retry before giving up"

    async def test_refused_credentials_become_config_error(self, harness: Harness) -> None:
        async with closing(await harness.connector()) as connector:
            await connector.check()
            async with harness.credentials_refused():
                for stream in harness.streams:
                    with pytest.raises(ConfigError):
                        await read_all(connector, stream, None, full=True)

    async def test_a_refused_request_becomes_contract_error(self, harness: Harness) -> None:
        async with closing(await harness.connector()) as connector:
            with pytest.raises(ContractError) as info:
                await harness.refused_request(connector)
        assert isinstance(info.value, ErpSyncError)
        assert str(info.value), "the error must say what the ERP refused"
