"""The Bling v3 sandbox over real HTTP: what a connector author relies on.

Every test talks to a real uvicorn server on a loopback port with httpx, and checks
answers against ``/__sandbox/truth`` or against independent re-computations (check
digits, totals), never against the sandbox's own Python objects.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from erp_sync.sandbox.bling import BlingSandboxConfig, RunningSandbox, running
from erp_sync.sandbox.common import AccountSpec

SRC = Path(__file__).resolve().parents[2] / "src"
# A fixed anchor makes two servers produce byte-identical data: 2025-03-01 00:00 BRT.
ANCHOR = 1_740_798_000
BASE = {
    "port": 0,
    "rate_limit": 0,
    "products": 2500,
    "customers": 400,
    "orders": 600,
    "seed": 7,
    "anchor": ANCHOR,
}
LIST_PRODUCT_KEYS = {
    "id", "nome", "codigo", "preco", "precoCusto", "estoque", "tipo", "situacao", "formato",
    "descricaoCurta", "imagemURL",
}  # fmt: skip


def config(**overrides: Any) -> BlingSandboxConfig:
    return BlingSandboxConfig(**(BASE | overrides))


def token_pair(sb: RunningSandbox, client_id: str = "merxios-sandbox") -> dict[str, Any]:
    r = httpx.post(
        f"{sb.base_url}/oauth/token",
        auth=(client_id, sb.config.client_secret),
        data={"grant_type": "authorization_code", "code": sb.config.auth_code},
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def api(sb: RunningSandbox) -> httpx.Client:
    token = token_pair(sb)["access_token"]
    return httpx.Client(
        base_url=sb.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def admin(sb: RunningSandbox) -> httpx.Client:
    return httpx.Client(base_url=f"{sb.root_url}/__sandbox", timeout=60)


def truth(sb: RunningSandbox, stream: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{sb.root_url}/__sandbox/truth", params={"stream": stream}, timeout=60)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/x-ndjson")
    return [orjson.loads(line) for line in r.content.splitlines() if line]


def all_pages(client: httpx.Client, path: str, **params: Any) -> list[dict[str, Any]]:
    """Page until Bling's end marker, an empty ``data``; checks page sizes on the way."""
    out: list[dict[str, Any]] = []
    page = 1
    while True:
        r = client.get(path, params={"pagina": page, "limite": 100, **params})
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        if not data:
            return out
        assert len(data) <= 100
        out.extend(data)
        page += 1


def error_of(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"}
    err: dict[str, Any] = body["error"]
    assert {"type", "message", "description"} <= set(err)
    return err


def mod11(numbers: str, weights: list[int]) -> int:
    rest = sum(int(n) * w for n, w in zip(numbers, weights, strict=True)) % 11
    return 0 if rest < 2 else 11 - rest


def valid_cpf(doc: str) -> bool:
    if len(doc) != 11 or len(set(doc)) == 1:
        return False
    d1 = mod11(doc[:9], list(range(10, 1, -1)))
    return d1 == int(doc[9]) and mod11(doc[:10], list(range(11, 1, -1))) == int(doc[10])


def valid_cnpj(doc: str) -> bool:
    if len(doc) != 14 or len(set(doc)) == 1:
        return False
    w = [5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2]
    return mod11(doc[:12], w) == int(doc[12]) and mod11(doc[:13], [6, *w]) == int(doc[13])


def valid_gtin13(code: str) -> bool:
    digits = [int(c) for c in code]
    total = sum(d * (3 if k % 2 else 1) for k, d in enumerate(digits[:12]))
    return len(code) == 13 and (10 - total % 10) % 10 == digits[12]


def cents(value: float) -> Decimal:
    return Decimal(str(value)).quantize(Decimal("0.01"))


@pytest.fixture(scope="module")
def shared() -> Iterator[RunningSandbox]:
    """A read-only server: tests using it must not mutate it or change its knobs."""
    with running(config()) as sb:
        yield sb


@pytest.fixture(scope="module")
def client(shared: RunningSandbox) -> Iterator[httpx.Client]:
    with api(shared) as c:
        yield c


@pytest.fixture
def private() -> Iterator[RunningSandbox]:
    """A fresh server for tests that mutate data or change knobs."""
    with running(config(products=600, customers=120, orders=200)) as sb:
        yield sb


# ---------------------------------------------------------------------- OAuth2


def test_authorization_code_grant_returns_bling_token_response(shared: RunningSandbox) -> None:
    first, second = token_pair(shared), token_pair(shared)
    assert first["token_type"] == "Bearer"
    assert first["expires_in"] == 21600
    assert isinstance(first["scope"], str)
    # random, long, and a new pair on every exchange
    assert len(first["access_token"]) >= 32
    assert len(first["refresh_token"]) >= 32
    assert first["access_token"] != second["access_token"]
    assert first["refresh_token"] != second["refresh_token"]


def test_token_endpoint_refuses_bad_credentials_codes_and_bodies(shared: RunningSandbox) -> None:
    url = f"{shared.base_url}/oauth/token"
    good = {"grant_type": "authorization_code", "code": "sandbox-code"}
    r = httpx.post(url, auth=("merxios-sandbox", "wrong"), data=good)
    assert r.status_code == 401
    assert error_of(r)["type"] == "invalid_client"
    r = httpx.post(url, data=good)  # no HTTP Basic at all
    assert r.status_code == 401
    r = httpx.post(
        url,
        auth=("merxios-sandbox", "sandbox-secret"),
        data={"grant_type": "authorization_code", "code": "nope"},
    )
    assert r.status_code == 400
    assert error_of(r)["type"] == "invalid_grant"
    r = httpx.post(url, auth=("merxios-sandbox", "sandbox-secret"), json=good)
    assert r.status_code == 400
    assert error_of(r)["type"] == "invalid_request"
    r = httpx.post(url, auth=("merxios-sandbox", "sandbox-secret"), data={"grant_type": "password"})
    assert error_of(r)["type"] == "unsupported_grant_type"


def test_refresh_token_rotates_and_the_old_one_stops_working(shared: RunningSandbox) -> None:
    url = f"{shared.base_url}/oauth/token"
    auth = ("merxios-sandbox", "sandbox-secret")
    old = token_pair(shared)
    r = httpx.post(
        url, auth=auth, data={"grant_type": "refresh_token", "refresh_token": old["refresh_token"]}
    )
    assert r.status_code == 200, r.text
    new = r.json()
    assert new["refresh_token"] != old["refresh_token"]
    assert new["access_token"] != old["access_token"]
    assert new["expires_in"] == 21600
    reuse = httpx.post(
        url, auth=auth, data={"grant_type": "refresh_token", "refresh_token": old["refresh_token"]}
    )
    assert reuse.status_code == 400
    assert error_of(reuse)["type"] == "invalid_grant"
    # the rotated pair works, both for data and for the next refresh
    r = httpx.get(
        f"{shared.base_url}/depositos", headers={"Authorization": f"Bearer {new['access_token']}"}
    )
    assert r.status_code == 200
    r = httpx.post(
        url, auth=auth, data={"grant_type": "refresh_token", "refresh_token": new["refresh_token"]}
    )
    assert r.status_code == 200
    # a refresh token belongs to its client: another client cannot use it
    other = httpx.post(
        url,
        auth=("someone", "else"),
        data={"grant_type": "refresh_token", "refresh_token": r.json()["refresh_token"]},
    )
    assert other.status_code == 401


def test_missing_or_unknown_access_token_gets_bling_401(shared: RunningSandbox) -> None:
    for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic eDp5"}):
        r = httpx.get(f"{shared.base_url}/produtos", headers=headers)
        assert r.status_code == 401
        assert error_of(r)["type"] == "invalid_token"


def test_access_token_expires_after_its_ttl() -> None:
    with running(config(token_ttl=1, products=10, customers=5, orders=5)) as sb:
        pair = token_pair(sb)
        assert pair["expires_in"] == 1
        headers = {"Authorization": f"Bearer {pair['access_token']}"}
        assert httpx.get(f"{sb.base_url}/produtos", headers=headers).status_code == 200
        time.sleep(1.2)
        r = httpx.get(f"{sb.base_url}/produtos", headers=headers)
        assert r.status_code == 401
        err = error_of(r)
        assert err["type"] == "invalid_token"
        assert "expired" in err["description"]
        # the refresh token still gets a working pair
        r = httpx.post(
            f"{sb.base_url}/oauth/token",
            auth=("merxios-sandbox", "sandbox-secret"),
            data={"grant_type": "refresh_token", "refresh_token": pair["refresh_token"]},
        )
        assert r.status_code == 200


def test_expire_tokens_and_reject_refresh_knobs(private: RunningSandbox) -> None:
    pair = token_pair(private)
    headers = {"Authorization": f"Bearer {pair['access_token']}"}
    assert httpx.get(f"{private.base_url}/depositos", headers=headers).status_code == 200
    with admin(private) as a:
        assert a.post("/faults", json={"expire_tokens": True}).status_code == 200
        r = httpx.get(f"{private.base_url}/depositos", headers=headers)
        assert r.status_code == 401
        assert error_of(r)["type"] == "invalid_token"
        assert a.post("/faults", json={"reject_refresh": True}).json()["reject_refresh"] is True
        refresh = {"grant_type": "refresh_token", "refresh_token": pair["refresh_token"]}
        auth = ("merxios-sandbox", "sandbox-secret")
        r = httpx.post(f"{private.base_url}/oauth/token", auth=auth, data=refresh)
        assert r.status_code == 400
        assert error_of(r)["type"] == "invalid_grant"
        a.post("/faults", json={"reject_refresh": False})
        r = httpx.post(f"{private.base_url}/oauth/token", auth=auth, data=refresh)
        assert r.status_code == 200  # rejection did not consume the refresh token


# ------------------------------------------------------------- data and paging


def test_product_list_has_the_base_dto_and_detail_has_fiscal_fields(
    client: httpx.Client,
) -> None:
    listed = client.get("/produtos", params={"limite": 5, "criterio": 5}).json()["data"]
    assert len(listed) == 5
    for p in listed:
        assert set(p) == LIST_PRODUCT_KEYS
        assert isinstance(p["id"], int)
        assert isinstance(p["preco"], float | int)
        assert isinstance(p["precoCusto"], float | int)
        assert cents(p["preco"]) == Decimal(str(p["preco"]))  # at most 2 decimals
        assert p["situacao"] in ("A", "I")
        detail = client.get(f"/produtos/{p['id']}").json()["data"]
        assert detail["id"] == p["id"]
        assert detail["nome"] == p["nome"]
        assert detail["preco"] == p["preco"]
        assert valid_gtin13(detail["gtin"])
        assert len(detail["tributacao"]["ncm"]) == 8
        assert detail["tributacao"]["ncm"].isdigit()
        assert detail["unidade"] in {"UN", "CX", "KG", "PC", "M"}
        assert detail["marca"]
        assert detail["fornecedor"]["precoCusto"] == p["precoCusto"]
    assert client.get("/produtos/1").status_code == 404
    assert error_of(client.get("/produtos/1"))["type"] == "RESOURCE_NOT_FOUND"


def test_same_seed_and_anchor_give_identical_data_and_another_seed_does_not(
    client: httpx.Client,
) -> None:
    params = {"limite": 100, "pagina": 3, "criterio": 5}
    mine = client.get("/produtos", params=params).content
    with running(config()) as twin, api(twin) as c:
        assert c.get("/produtos", params=params).content == mine
    with running(config(seed=8)) as other, api(other) as c:
        assert c.get("/produtos", params=params).content != mine


def test_paging_is_exact_sorted_by_id_and_ends_with_an_empty_page(
    shared: RunningSandbox, client: httpx.Client
) -> None:
    listed = all_pages(client, "/produtos", criterio=5)
    ids = [p["id"] for p in listed]
    assert ids == sorted(ids)
    assert len(ids) == len(set(ids))
    assert ids == [int(p["externalId"]) for p in truth(shared, "products")]
    # a page far beyond the end is simply empty
    r = client.get("/produtos", params={"pagina": 10_000, "criterio": 5})
    assert r.json() == {"data": []}


def test_paging_parameters_are_validated(client: httpx.Client) -> None:
    for params, element in (
        ({"limite": 101}, "limite"),
        ({"limite": 0}, "limite"),
        ({"pagina": 0}, "pagina"),
        ({"pagina": "x"}, "pagina"),
        ({"criterio": 9}, "criterio"),
    ):
        r = client.get("/produtos", params=params)
        assert r.status_code == 400, params
        err = error_of(r)
        assert err["type"] == "VALIDATION_ERROR"
        assert [f["element"] for f in err["fields"]] == [element]
    assert len(client.get("/produtos", params={"limite": 100}).json()["data"]) == 100


def test_criterio_default_lists_active_only_and_5_includes_inactive(
    shared: RunningSandbox, client: httpx.Client
) -> None:
    products = truth(shared, "products")
    active = [int(p["externalId"]) for p in products if p["active"]]
    inactive = [int(p["externalId"]) for p in products if not p["active"]]
    assert inactive, "the catalogue must contain inactive products"
    assert [p["id"] for p in all_pages(client, "/produtos")] == active
    assert [p["id"] for p in all_pages(client, "/produtos", criterio=2)] == active
    by_3 = all_pages(client, "/produtos", criterio=3)
    assert [p["id"] for p in by_3] == inactive
    assert {p["situacao"] for p in by_3} == {"I"}
    assert len(all_pages(client, "/produtos", criterio=5)) == len(products)
    assert client.get("/produtos", params={"criterio": 4}).json() == {"data": []}


@pytest.mark.parametrize(
    ("path", "stream", "extra"),
    [
        ("/produtos", "products", {"criterio": 5}),
        ("/contatos", "customers", {}),
        ("/pedidos/vendas", "sales_orders", {}),
    ],
)
def test_change_time_window_returns_exactly_the_records_changed_in_it(
    shared: RunningSandbox, client: httpx.Client, path: str, stream: str, extra: dict[str, Any]
) -> None:
    records = truth(shared, stream)
    times = sorted({r["sourceUpdatedAt"] for r in records})
    start, end = times[len(times) // 5], times[len(times) // 5 * 2]  # inclusive bounds
    expected = [int(r["externalId"]) for r in records if start <= r["sourceUpdatedAt"] <= end]
    got = all_pages(client, path, dataAlteracaoInicial=start, dataAlteracaoFinal=end, **extra)
    assert [r["id"] for r in got] == expected
    assert expected


def test_window_longer_than_one_year_is_refused_naming_both_fields(client: httpx.Client) -> None:
    for path in ("/produtos", "/contatos", "/pedidos/vendas"):
        r = client.get(
            path,
            params={
                "dataAlteracaoInicial": "2023-01-01 00:00:00",
                "dataAlteracaoFinal": "2024-01-01 00:00:01",
            },
        )
        assert r.status_code == 400
        err = error_of(r)
        assert err["type"] == "VALIDATION_ERROR"
        assert {f["element"] for f in err["fields"]} == {
            "dataAlteracaoInicial",
            "dataAlteracaoFinal",
        }
    exactly_a_year = {
        "dataAlteracaoInicial": "2023-01-01 00:00:00",
        "dataAlteracaoFinal": "2024-01-01 00:00:00",
    }
    assert client.get("/produtos", params=exactly_a_year).status_code == 200
    # an open-ended window ends now: two years ago until now is too long
    r = client.get("/produtos", params={"dataAlteracaoInicial": "2020-01-01 00:00:00"})
    assert r.status_code == 400
    r = client.get("/produtos", params={"dataAlteracaoInicial": "01/02/2024"})
    assert r.status_code == 400
    assert error_of(r)["fields"][0]["element"] == "dataAlteracaoInicial"


def test_stock_balances_per_warehouse_match_truth(
    shared: RunningSandbox, client: httpx.Client
) -> None:
    lines = truth(shared, "stock_levels")
    by_product: dict[int, dict[int, dict[str, Any]]] = {}
    for line in lines:
        pid, wid = int(line["productExternalId"]), int(line["warehouseExternalId"])
        by_product.setdefault(pid, {})[wid] = line
    assert {len(w) for w in by_product.values()} == {3}
    ids = sorted(by_product)[:98]
    r = client.get("/estoques/saldos", params={"idsProdutos[]": [*ids, 999, ids[0]]})
    assert r.status_code == 200
    data = r.json()["data"]
    assert [e["produto"]["id"] for e in data] == ids  # unknown id left out, no duplicates
    for entry in data:
        expected = by_product[entry["produto"]["id"]]
        deps = {d["id"]: d for d in entry["depositos"]}
        assert set(deps) == set(expected)
        for wid, d in deps.items():
            assert d["saldoFisico"] == expected[wid]["quantity"]
            assert d["saldoVirtual"] == expected[wid]["available"]
            assert d["saldoVirtual"] <= d["saldoFisico"]
        assert entry["saldoFisicoTotal"] == pytest.approx(
            sum(d["saldoFisico"] for d in deps.values())
        )
        assert entry["saldoVirtualTotal"] == pytest.approx(
            sum(d["saldoVirtual"] for d in deps.values())
        )
    # the list's estoque.saldoVirtualTotal is the same number
    first = client.get("/produtos", params={"idsProdutos[]": ids[:1], "criterio": 5}).json()
    assert first["data"][0]["estoque"]["saldoVirtualTotal"] == data[0]["saldoVirtualTotal"]
    warehouses = client.get("/depositos").json()["data"]
    assert sum(w["padrao"] for w in warehouses) == 1
    one = client.get(f"/estoques/saldos/{warehouses[1]['id']}", params={"idsProdutos[]": ids[:3]})
    assert [e["saldoFisicoTotal"] for e in one.json()["data"]] == [
        by_product[i][warehouses[1]["id"]]["quantity"] for i in ids[:3]
    ]


def test_stock_balances_validate_the_id_list(shared: RunningSandbox, client: httpx.Client) -> None:
    first = int(truth(shared, "products")[0]["externalId"])
    for params in (
        {},
        {"idsProdutos[]": list(range(first, first + 101))},
        {"idsProdutos": [first]},  # without brackets: not a list for Bling
        {"idsProdutos[]": ["abc"]},
    ):
        r = client.get("/estoques/saldos", params=params)
        assert r.status_code == 400, params
        assert error_of(r)["type"] == "VALIDATION_ERROR"
    ok = client.get("/estoques/saldos", params={"idsProdutos[]": list(range(first, first + 100))})
    assert len(ok.json()["data"]) == 100


def test_contacts_have_valid_documents_and_detail_only_fields(
    shared: RunningSandbox, client: httpx.Client
) -> None:
    listed = all_pages(client, "/contatos")
    assert [c["id"] for c in listed] == [int(c["externalId"]) for c in truth(shared, "customers")]
    assert {"A", "I"} == {c["situacao"] for c in listed}
    for c in listed:
        assert set(c) == {
            "id",
            "nome",
            "codigo",
            "situacao",
            "numeroDocumento",
            "telefone",
            "celular",
        }
        assert valid_cpf(c["numeroDocumento"]) or valid_cnpj(c["numeroDocumento"])
    documents = [c["numeroDocumento"] for c in listed]
    assert len(set(documents)) == len(documents)
    for c in listed[:20]:
        detail = client.get(f"/contatos/{c['id']}").json()["data"]
        assert detail["tipo"] == ("F" if len(c["numeroDocumento"]) == 11 else "J")
        assert "@" in detail["email"]
        address = detail["endereco"]["geral"]
        assert len(address["uf"]) == 2
        assert address["municipio"]
        assert len(address["cep"]) == 9
        assert address["cep"][5] == "-"


def test_orders_reference_existing_records_and_totals_add_up(
    shared: RunningSandbox, client: httpx.Client
) -> None:
    products = {int(p["externalId"]) for p in truth(shared, "products")}
    customers = {int(c["externalId"]) for c in truth(shared, "customers")}
    listed = all_pages(client, "/pedidos/vendas")
    assert len(listed) == 600
    assert [o["numero"] for o in listed] == list(range(1, 601))
    for o in listed[:40]:
        assert o["contato"]["id"] in customers
        detail = client.get(f"/pedidos/vendas/{o['id']}").json()["data"]
        assert detail["itens"]
        line_total = Decimal(0)
        for item in detail["itens"]:
            assert item["produto"]["id"] in products
            value = (
                Decimal(str(item["quantidade"]))
                * Decimal(str(item["valor"]))
                * (100 - Decimal(item["desconto"]))
                / 100
            )
            line_total += value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
        assert cents(detail["totalProdutos"]) == line_total
        frete = cents(detail["transporte"]["frete"])
        assert cents(detail["total"]) == line_total + frete
        assert sum(cents(p["valor"]) for p in detail["parcelas"]) == cents(detail["total"])
        assert detail["situacao"]["id"] in (6, 9, 12, 15, 24)
    statuses = {o["situacao"]["id"] for o in listed}
    assert {6, 9} <= statuses
    only_open = all_pages(client, "/pedidos/vendas", **{"idsSituacoes[]": [6]})
    assert only_open
    assert [o["id"] for o in only_open] == [o["id"] for o in listed if o["situacao"]["id"] == 6]


# ------------------------------------------------------------------ limits


def test_rate_limit_answers_429_over_three_per_second_and_counts_them() -> None:
    with running(config(rate_limit=3, products=50, customers=10, orders=10)) as sb, api(sb) as c:
        statuses = [c.get("/depositos").status_code for _ in range(10)]
        assert statuses.count(200) == 3
        assert statuses.count(429) == 7
        r = c.get("/depositos")
        assert r.status_code == 429
        err = error_of(r)
        assert err["type"] == "TOO_MANY_REQUESTS"
        assert "retry-after" not in r.headers
        time.sleep(1.05)
        assert [c.get("/depositos").status_code for _ in range(3)] == [200] * 3
        with admin(sb) as a:
            stats = a.get("/stats").json()
        assert stats["rate_limited"] == 8
        assert stats["by_endpoint"]["GET /depositos"]["statuses"] == {"200": 6, "429": 8}


def test_a_client_pacing_itself_gets_no_429_and_uses_the_budget() -> None:
    with running(config(rate_limit=3, products=50, customers=10, orders=10)) as sb, api(sb) as c:
        with admin(sb) as a:
            a.post("/stats/reset")
        sent, last = 0, 0.0
        start = time.monotonic()
        while time.monotonic() - start < 2.0:
            # 0.35 s after the previous send, not on a fixed grid: a late request must
            # not be followed by a catch-up burst
            time.sleep(max(0.0, last + 0.35 - time.monotonic()))
            last = time.monotonic()
            assert c.get("/produtos", params={"limite": 1}).status_code == 200
            sent += 1
        with admin(sb) as a:
            stats = a.get("/stats").json()
        assert stats["rate_limited"] == 0
        assert stats["ok"] == stats["requests"] == sent
        # a steadily paced client can make at most rate x span + 1 requests in a span
        allowed = 3 * stats["first_to_last_seconds"] + 1
        assert stats["ok"] >= 0.9 * allowed


def test_daily_limit_is_enforced_per_account() -> None:
    with running(config(daily_limit=4, products=10, customers=5, orders=5)) as sb, api(sb) as c:
        assert [c.get("/depositos").status_code for _ in range(5)] == [200] * 4 + [429]
        err = error_of(c.get("/depositos"))
        assert err["type"] == "TOO_MANY_REQUESTS"
        assert "diário" in err["description"]
        with admin(sb) as a:
            assert a.get("/stats").json()["daily_used"] == 4


def test_each_account_has_its_own_credentials_data_and_limits() -> None:
    second = AccountSpec("acct-2", "secret-2", "code-2")
    cfg = config(rate_limit=3, products=30, customers=5, orders=5, extra_accounts=(second,))
    with running(cfg) as sb:
        url = f"{sb.base_url}/oauth/token"
        grant = {"grant_type": "authorization_code", "code": "code-2"}
        assert (
            httpx.post(url, auth=("merxios-sandbox", "sandbox-secret"), data=grant).status_code
            == 400
        )
        r = httpx.post(url, auth=("acct-2", "secret-2"), data=grant)
        assert r.status_code == 200
        mine = {"Authorization": f"Bearer {token_pair(sb)['access_token']}"}
        theirs = {"Authorization": f"Bearer {r.json()['access_token']}"}
        ids = []
        for headers in (mine, theirs):
            got = [httpx.get(f"{sb.base_url}/produtos", headers=headers) for _ in range(3)]
            assert [x.status_code for x in got] == [200] * 3  # 3/s each, not 3/s together
            ids.append({p["id"] for p in got[0].json()["data"]})
        assert not ids[0] & ids[1]
        assert httpx.get(f"{sb.base_url}/produtos", headers=mine).status_code == 429
        with admin(sb) as a:
            theirs_stats = a.get("/stats", params={"account": "acct-2"}).json()["by_endpoint"]
            assert theirs_stats["GET /produtos"]["statuses"] == {"200": 3}
            assert a.get("/stats", params={"account": "nobody"}).status_code == 404


# -------------------------------------------------------------------- faults


def test_injected_errors_have_the_shapes_seen_in_the_wild(private: RunningSandbox) -> None:
    with api(private) as c, admin(private) as a:
        a.post("/faults", json={"error_rate": 1.0})
        seen: dict[int, httpx.Response] = {}
        for _ in range(60):
            r = c.get("/produtos")
            assert r.status_code in (500, 502, 503)
            seen.setdefault(r.status_code, r)
        assert set(seen) == {500, 502, 503}
        assert error_of(seen[500])["type"] == "INTERNAL_SERVER_ERROR"
        assert seen[502].headers["content-type"].startswith("text/html")
        assert seen[503].headers["retry-after"] == "1"
        assert error_of(seen[503])["type"] == "SERVICE_UNAVAILABLE"
        assert a.get("/stats").json()["injected_errors"] == 60
        a.post("/faults", json={"error_rate": 0})
        assert c.get("/produtos").status_code == 200
        r = a.post("/faults", json={"error_rate": 2})
        assert r.status_code == 400
        assert a.get("/faults").json()["error_rate"] == 0


def test_latency_knob_delays_every_answer(private: RunningSandbox) -> None:
    with api(private) as c, admin(private) as a:
        a.post("/faults", json={"latency_ms": 250})
        started = time.monotonic()
        assert c.get("/depositos").status_code == 200
        assert time.monotonic() - started >= 0.25


def test_malformed_records_are_the_ones_truth_flags(private: RunningSandbox) -> None:
    with api(private) as c, admin(private) as a:
        a.post("/faults", json={"malformed_rate": 0.2})
        records = truth(private, "products")
        listed = all_pages(c, "/produtos", criterio=5)
        assert len(listed) == len(records)
        kinds_seen = set()
        for got, known in zip(listed, records, strict=True):
            broken = (
                "id" not in got
                or not isinstance(got["preco"], float | int)
                or not isinstance(got["nome"], str)
            )
            assert broken == known["malformed"], (got, known)
            if broken:
                kinds_seen.add(known["malformedKind"])
            else:
                assert got["id"] == int(known["externalId"])
        flagged = sum(r["malformed"] for r in records)
        assert 0.1 * len(records) < flagged < 0.3 * len(records)
        assert kinds_seen == {"missing_id", "preco_not_numeric", "nome_null", "preco_wrong_type"}
        summary = a.get("/truth/summary").json()["streams"]["products"]
        assert summary["malformed"] == flagged
        # contacts: broken documents fail the check-digit test, nothing else does
        contacts = truth(private, "customers")
        for got, known in zip(all_pages(c, "/contatos"), contacts, strict=True):
            broken = (
                "id" not in got
                or not isinstance(got["nome"], str)
                or not (valid_cpf(got["numeroDocumento"]) or valid_cnpj(got["numeroDocumento"]))
            )
            assert broken == known["malformed"]
        # and switching the knob off serves everything clean again
        a.post("/faults", json={"malformed_rate": 0})
        assert all("id" in p for p in all_pages(c, "/produtos", criterio=5))


# ----------------------------------------------------------------- mutations


def test_mutations_change_exactly_what_they_report(private: RunningSandbox) -> None:
    with api(private) as c, admin(private) as a:
        before = {int(p["externalId"]): p for p in truth(private, "products")}
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() - 3 * 3600 - 2))
        counts = {
            "price_changes": 7,
            "stock_changes": 5,
            "new_products": 4,
            "deleted_products": 3,
            "customer_changes": 6,
            "new_orders": 2,
        }
        r = a.post("/mutate", json=counts)
        assert r.status_code == 200, r.text
        changes = r.json()
        prod = changes["products"]
        assert len(prod["price_changed"]) == 7
        assert len(prod["created"]) == 4
        assert len(prod["deleted"]) == 3
        assert not set(prod["deleted"]) & set(prod["price_changed"])
        after = {int(p["externalId"]): p for p in truth(private, "products")}
        assert set(after) == (set(before) - set(prod["deleted"])) | set(prod["created"])
        for pid in prod["price_changed"]:
            assert after[pid]["listPrice"] != before[pid]["listPrice"]
            listed = c.get("/produtos", params={"idsProdutos[]": [pid], "criterio": 5})
            assert listed.json()["data"][0]["preco"] == after[pid]["listPrice"]
        unchanged = set(before) - set(prod["price_changed"]) - set(prod["deleted"])
        assert all(after[i] == before[i] for i in unchanged)
        for pid in prod["deleted"]:
            assert c.get(f"/produtos/{pid}").status_code == 404
        # an incremental window from just before the change finds exactly the changes
        recent = all_pages(c, "/produtos", criterio=5, dataAlteracaoInicial=stamp)
        assert {p["id"] for p in recent} == set(prod["price_changed"]) | set(prod["created"])
        assert max(prod["created"]) == all_pages(c, "/produtos", criterio=5)[-1]["id"]
        # stock changes are visible in the balances
        for change in changes["stock_levels"]["changed"]:
            entry = c.get(
                "/estoques/saldos", params={"idsProdutos[]": [change["product_id"]]}
            ).json()["data"]
            if change["product_id"] in prod["deleted"]:
                assert entry == []
                continue
            dep = {d["id"]: d for d in entry[0]["depositos"]}[change["warehouse_id"]]
            assert dep["saldoFisico"] == change["physical"]
            assert dep["saldoVirtual"] == change["available"]
        # customers and orders
        changed_contacts = all_pages(c, "/contatos", dataAlteracaoInicial=stamp)
        assert {x["id"] for x in changed_contacts} == set(changes["customers"]["changed"])
        new_orders = all_pages(c, "/pedidos/vendas", dataAlteracaoInicial=stamp)
        assert [o["id"] for o in new_orders] == changes["sales_orders"]["created"]
        for o in new_orders:
            assert o["situacao"]["id"] == 6
            detail = c.get(f"/pedidos/vendas/{o['id']}").json()["data"]
            for item in detail["itens"]:
                assert c.get(f"/produtos/{item['produto']['id']}").status_code == 200
        bad = a.post("/mutate", json={"price_changes": -1})
        assert bad.status_code == 400
        assert a.post("/mutate", json={"explode": 1}).status_code == 400


def test_mutations_are_deterministic_for_a_seed() -> None:
    results = []
    for _ in range(2):
        with running(config(products=300, customers=50, orders=60)) as sb, admin(sb) as a:
            body = a.post("/mutate", json={"price_changes": 5, "deleted_products": 2}).json()
            results.append((body["products"]["price_changed"], body["products"]["deleted"]))
    assert results[0] == results[1]


def test_mutate_every_keeps_changing_data_in_the_background() -> None:
    cfg = config(products=100, customers=20, orders=20, mutate_every=0.2)
    with running(cfg) as sb, admin(sb) as a:
        first = a.get("/truth/summary").json()["streams"]
        time.sleep(0.9)
        later = a.get("/truth/summary").json()["streams"]
    # each tick adds 2 products, deletes 1 and adds 5 orders
    assert later["products"]["count"] > first["products"]["count"]
    assert later["sales_orders"]["count"] >= first["sales_orders"]["count"] + 5


def test_truth_summary_counts_match_the_streams(private: RunningSandbox) -> None:
    with admin(private) as a:
        a.post("/mutate", json={"new_products": 3, "deleted_products": 2, "new_orders": 4})
        a.post("/faults", json={"malformed_rate": 0.1})
        summary = a.get("/truth/summary").json()["streams"]
    for stream in ("products", "stock_levels", "customers", "sales_orders"):
        lines = truth(private, stream)
        assert summary[stream]["count"] == len(lines)
        assert summary[stream]["malformed"] == sum(line["malformed"] for line in lines)
        assert summary[stream]["valid"] == len(lines) - summary[stream]["malformed"]
    products = truth(private, "products")
    valid_ids = sum(int(p["externalId"]) for p in products if not p["malformed"])
    assert summary["products"]["idSum"] == str(valid_ids)
    assert summary["products"]["count"] == 600 + 3 - 2
    assert summary["stock_levels"]["count"] == 3 * summary["products"]["count"]


def test_stats_count_requests_per_endpoint(private: RunningSandbox) -> None:
    with api(private) as c, admin(private) as a:
        a.post("/stats/reset")
        c.get("/produtos")
        c.get("/produtos", params={"limite": 500})
        c.get("/contatos")
        httpx.get(f"{private.base_url}/produtos")  # no token
        stats = a.get("/stats").json()
    assert stats["requests"] == 4
    assert stats["ok"] == 2
    assert stats["unauthorized"] == 1
    assert stats["by_endpoint"]["GET /produtos"]["statuses"] == {"200": 1, "400": 1, "401": 1}
    assert stats["by_endpoint"]["GET /contatos"]["requests"] == 1


def test_unknown_routes_answer_in_bling_shape(shared: RunningSandbox) -> None:
    r = httpx.get(f"{shared.base_url}/nao-existe")
    assert r.status_code == 404
    assert error_of(r)["type"] == "RESOURCE_NOT_FOUND"


# ---------------------------------------------------------- scale and the CLI


def test_a_million_products_cost_nothing_to_start_and_page_anywhere() -> None:
    with running(config(products=1_000_000, customers=10, orders=10)) as sb, api(sb) as c:
        last = c.get("/produtos", params={"pagina": 10_000, "criterio": 5}).json()["data"]
        assert len(last) == 100
        assert last[-1]["codigo"].endswith("-1000000")
        assert c.get("/produtos", params={"pagina": 10_001, "criterio": 5}).json() == {"data": []}
        # a narrow window deep in history is answered without a scan, ids still ordered
        window = c.get(
            "/produtos",
            params={
                "criterio": 5,
                "dataAlteracaoInicial": "2024-06-01 00:00:00",
                "dataAlteracaoFinal": "2024-06-01 00:10:00",
            },
        ).json()["data"]
        assert 0 < len(window) <= 100
        ids = [p["id"] for p in window]
        assert ids == sorted(ids)
        with admin(sb) as a:
            assert a.get("/truth/summary").json()["streams"]["products"]["count"] == 1_000_000


def test_cli_announces_one_line_and_serves_until_interrupted() -> None:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from erp_sync.cli.sandbox import sandbox_app; sandbox_app()",
            "bling",
            "--port",
            "0",
            "--products",
            "20",
            "--customers",
            "10",
            "--orders",
            "30",
            "--seed",
            "7",
            "--anchor",
            "2025-03-01",
            "--client-id",
            "cli-test",
            "--client-secret",
            "s3cret",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "client_id=cli-test" in line
        assert "client_secret=s3cret" in line
        assert "code=sandbox-code" in line
        base = line.split(" on ")[1].split(" ")[0]
        assert base.endswith("/Api/v3")
        r = httpx.post(
            f"{base}/oauth/token",
            auth=("cli-test", "s3cret"),
            data={"grant_type": "authorization_code", "code": "sandbox-code"},
        )
        assert r.status_code == 200
        token = r.json()["access_token"]
        data = httpx.get(f"{base}/produtos", headers={"Authorization": f"Bearer {token}"}).json()[
            "data"
        ]
        assert len(data) > 0
        orders = httpx.get(
            f"{base}/pedidos/vendas", headers={"Authorization": f"Bearer {token}"}
        ).content
        # the CLI's --anchor/--seed reproduce the same data as an in-process server
        with running(config(products=20, customers=10, orders=30)) as twin, api(twin) as c:
            assert c.get("/pedidos/vendas").content == orders
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert token not in out + err  # tokens are never printed or logged
