"""A hostile ERP: just enough of Bling's v3 dialect (``GET /produtos`` with ``pagina`` /
``limite``, bearer tokens, Bling's error envelope) to send what a broken or malicious
server sends. One path prefix per behaviour: ``/<case>/Api/v3/...``.

| case           | what ``GET /produtos`` answers                                            |
|----------------|----------------------------------------------------------------------------|
| wrong-types    | 250 products, 25 with money as strings, ids as strings, null names...     |
| missing-ids    | 250 products, 20 without an ``id``                                        |
| duplicate-ids  | pages that repeat ids (with other values) within the page                 |
| big-record     | one valid 10 MB page: a record whose name is 10 MB                         |
| oversized      | a 48 MB body, chunked (no Content-Length)                                  |
| invalid-utf8   | a page whose bytes are not UTF-8                                           |
| endless        | every page full of new records, whatever ``pagina`` says                  |
| same-page      | the same full page whatever ``pagina`` says (paging ignored)              |
| slow-loris     | headers at once, then one byte every 0.3 s, never ending                 |
| echo-token     | 400 whose description echoes the request's Authorization header          |
| echo-token-503 | the same as a 503 with Retry-After: 30 (a retryable failure)               |
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from erp_sync.sandbox.common import serve_in_thread

CATALOGUE = 250
MB = 1024 * 1024


def product(i: int) -> dict[str, Any]:
    return {
        "id": 10_000 + i,
        "nome": f"Produto {i}",
        "codigo": f"SKU-{i}",
        "preco": round(10 + i * 0.25, 2),
        "precoCusto": round(5 + i * 0.1, 2),
        "situacao": "A",
        "tipo": "P",
        "formato": "S",
    }


def broken(i: int) -> dict[str, Any]:
    """Every tenth product of the wrong-types catalogue is broken, five ways."""
    p = product(i)
    kind = (i // 10) % 5
    if kind == 0:
        p["preco"] = "12,50"
    elif kind == 1:
        p["id"] = f"{p['id']}"  # a string id
    elif kind == 2:
        p["nome"] = None
    elif kind == 3:
        p["situacao"] = 1
    else:
        p["preco"] = {"valor": 12.5}
    return p


def wrong_types(i: int) -> dict[str, Any]:
    return broken(i) if i % 10 == 0 else product(i)


def missing_id(i: int) -> dict[str, Any]:
    p = product(i)
    if i % 12 == 0:
        del p["id"]
    return p


WRONG_TYPES = sum(1 for i in range(1, CATALOGUE + 1) if i % 10 == 0)
MISSING_IDS = sum(1 for i in range(1, CATALOGUE + 1) if i % 12 == 0)


def listing(make: Any, request: Request) -> list[dict[str, Any]]:
    page = int(request.query_params.get("pagina", "1"))
    limit = int(request.query_params.get("limite", "100"))
    start = (page - 1) * limit + 1
    return [make(i) for i in range(start, min(CATALOGUE, start + limit - 1) + 1)]


def envelope(data: Any) -> Response:
    return Response(orjson.dumps({"data": data}), media_type="application/json")


class HostileErp:
    def __init__(self, token: str) -> None:
        self.token = token
        self.requests: dict[str, int] = {}
        self.big_page = orjson.dumps(
            {"data": [{**product(1), "nome": "X" * (10 * MB)}, product(2), product(3)]}
        )

    def authorised(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {self.token}"

    async def produtos(self, request: Request) -> Response:
        case = request.path_params["case"]
        self.requests[case] = self.requests.get(case, 0) + 1
        if not self.authorised(request):
            body = {"error": {"type": "invalid_token", "message": "invalid_token"}}
            return Response(orjson.dumps(body), status_code=401, media_type="application/json")
        limit = int(request.query_params.get("limite", "100"))
        page = int(request.query_params.get("pagina", "1"))
        if case == "wrong-types":
            return envelope(listing(wrong_types, request))
        if case == "missing-ids":
            return envelope(listing(missing_id, request))
        if case == "duplicate-ids":
            records = listing(product, request)
            if limit == 1:  # the connector's count probes
                return envelope(records)
            # Every record again with another name: the later occurrence must win.
            return envelope(
                [r for rec in records for r in (rec, {**rec, "nome": rec["nome"] + " (b)"})]
            )
        if case == "big-record":
            if limit == 1:
                return envelope([product(page)] if page <= 3 else [])
            return Response(self.big_page, media_type="application/json")
        if case == "oversized":
            if limit == 1:
                return envelope([product(page)] if page <= 3 else [])

            async def flood() -> AsyncIterator[bytes]:
                yield b'{"data": [{"id": 1, "nome": "'
                chunk = b"Y" * MB
                for _ in range(48):
                    yield chunk
                yield b'"}]}'

            return StreamingResponse(flood(), media_type="application/json")
        if case == "invalid-utf8":
            if limit == 1:
                return envelope([product(page)] if page <= 3 else [])
            body = orjson.dumps({"data": [product(1), product(2)]})
            return Response(body.replace(b"Produto 2", b"Produto \xff\xfe 2"),
                            media_type="application/json")  # fmt: skip
        if case == "endless":
            return envelope([product(page * 1000 + k) for k in range(limit)])
        if case == "same-page":
            return envelope([product(k) for k in range(1, 101)])
        if case == "slow-loris":

            async def trickle() -> AsyncIterator[bytes]:
                yield b'{"data": ['
                for _ in range(2000):  # ten minutes at most, should the client never give up
                    await asyncio.sleep(0.3)
                    yield b" "

            return StreamingResponse(trickle(), media_type="application/json")
        if case in ("echo-token", "echo-token-503"):
            header = request.headers.get("authorization", "")
            kind = "VALIDATION_ERROR" if case == "echo-token" else "SERVICE_UNAVAILABLE"
            body = {
                "error": {
                    "type": kind,
                    "message": "Requisição inválida",
                    "description": f"the header '{header}' is not accepted here",
                }
            }
            return Response(
                orjson.dumps(body),
                status_code=400 if case == "echo-token" else 503,
                headers={} if case == "echo-token" else {"Retry-After": "30"},
                media_type="application/json",
            )
        return Response(b'{"error": {"type": "RESOURCE_NOT_FOUND"}}', status_code=404)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{case}/Api/v3/produtos", self.produtos)])


@contextlib.contextmanager
def hostile_erp(token: str) -> Iterator[tuple[str, HostileErp]]:
    """Serve in a thread; yields (root URL, server) and stops it on exit."""
    erp = HostileErp(token)
    with serve_in_thread(erp.app(), "127.0.0.1", 0, "hostile ERP") as root:
        yield root, erp
