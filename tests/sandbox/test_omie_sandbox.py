"""The Omie sandbox over real HTTP: what a connector author relies on.

Every test talks to a real uvicorn server on a loopback port with httpx and checks
answers against ``/__sandbox/truth`` or independent re-computations (check digits,
totals), never against the sandbox's Python objects.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from erp_sync.sandbox.bling import BlingSandboxConfig
from erp_sync.sandbox.bling import running as running_bling
from erp_sync.sandbox.common import AccountSpec
from erp_sync.sandbox.omie import (
    DEMO_APP_KEY,
    DEMO_APP_SECRET,
    OmieSandboxConfig,
    RunningOmieSandbox,
    running,
)
from tests.sandbox.test_bling_sandbox import valid_cnpj, valid_cpf, valid_gtin13

SRC = Path(__file__).resolve().parents[2] / "src"
ANCHOR = 1_740_798_000  # 2025-03-01 00:00 BRT: the same data on any day
BASE = {
    "port": 0,
    "products": 1234,
    "customers": 180,
    "orders": 240,
    "seed": 7,
    "anchor": ANCHOR,
    "redundant_window": 0,  # the read-only tests page freely; the rule has its own tests
}
PRODUCT_KEYS = {
    "codigo_produto",
    "codigo_produto_integracao",
    "codigo",
    "descricao",
    "unidade",
    "ncm",
    "ean",
    "valor_unitario",
    "marca",
    "inativo",
    "bloqueado",
    "info",
}


def config(**overrides: Any) -> OmieSandboxConfig:
    return OmieSandboxConfig(**(BASE | overrides))


class Omie:
    """A bare Omie client: one POST per call, the answer as it came."""

    def __init__(
        self, sb: RunningOmieSandbox, key: str = DEMO_APP_KEY, secret: str = DEMO_APP_SECRET
    ):
        self.sb, self.key, self.secret = sb, key, secret
        self.http = httpx.Client(base_url=sb.base_url, timeout=30)

    def post(self, service: str, call: str, **param: Any) -> httpx.Response:
        body = {"call": call, "app_key": self.key, "app_secret": self.secret, "param": [param]}
        return self.http.post(f"/{service}/", json=body)

    def ok(self, service: str, call: str, **param: Any) -> dict[str, Any]:
        r = self.post(service, call, **param)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def all(self, service: str, call: str, key: str, size: int = 500, **param: Any) -> list[Any]:
        out: list[Any] = []
        page = 1
        while True:
            r = self.post(service, call, pagina=page, registros_por_pagina=size, **param)
            if r.status_code == 500 and r.json()["faultcode"] == "SOAP-ENV:Client-5113":
                return out
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["pagina"] == page
            assert body["registros"] == len(body[key]) <= size
            assert body["total_de_paginas"] == -(-body["total_de_registros"] // size)
            out.extend(body[key])
            page += 1


def fault(r: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = r.json()
    assert set(body) == {"faultstring", "faultcode"}, body
    return body


def admin(sb: RunningOmieSandbox, method: str, path: str, body: Any = None, **params: Any) -> Any:
    r = httpx.request(
        method, f"{sb.root_url}/__sandbox/{path}", json=body, params=params, timeout=60
    )
    assert r.status_code == 200, r.text
    return r.json()


def truth(sb: RunningOmieSandbox, stream: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{sb.root_url}/__sandbox/truth", params={"stream": stream}, timeout=60)
    assert r.status_code == 200
    return [orjson.loads(line) for line in r.content.splitlines() if line]


def brt(day: str, clock: str) -> str:
    """Omie's dd/mm/aaaa + HH:MM:SS as the truth's YYYY-MM-DD HH:MM:SS."""
    d, m, y = day.split("/")
    return f"{y}-{m}-{d} {clock}"


def money(value: float) -> Decimal:
    return Decimal(str(value))


@pytest.fixture(scope="module")
def shared() -> Iterator[RunningOmieSandbox]:
    """A read-only server: tests using it must not mutate it or change its knobs."""
    with running(config()) as sb:
        yield sb


@pytest.fixture(scope="module")
def omie(shared: RunningOmieSandbox) -> Omie:
    return Omie(shared)


@pytest.fixture
def private() -> Iterator[RunningOmieSandbox]:
    """A fresh server for tests that mutate data, change knobs or use the limits."""
    with running(config(products=300, customers=60, orders=80, redundant_window=60)) as sb:
        yield sb


# ---------------------------------------------------------------------- the call


def test_products_page_like_omie_and_equal_the_truth(
    omie: Omie, shared: RunningOmieSandbox
) -> None:
    listed = omie.all("geral/produtos", "ListarProdutos", "produto_servico_cadastro", size=500)
    first = omie.ok("geral/produtos", "ListarProdutos", pagina=1, registros_por_pagina=500)
    assert (first["total_de_registros"], first["total_de_paginas"]) == (1234, 3)
    want = {t["externalId"]: t for t in truth(shared, "products")}
    assert [str(p["codigo_produto"]) for p in listed] == sorted(want, key=int)
    for p in listed:
        assert set(p) >= PRODUCT_KEYS
        t = want[str(p["codigo_produto"])]
        assert isinstance(p["codigo_produto"], int)
        assert (p["codigo"], p["descricao"], p["unidade"], p["marca"]) == (
            t["sku"],
            t["name"],
            t["unit"],
            t["brand"],
        )
        assert p["ncm"].replace(".", "") == t["ncm"] and p["ncm"][4] == "."
        assert p["ean"] == t["gtin"] and valid_gtin13(p["ean"])
        assert money(p["valor_unitario"]) == money(t["listPrice"])
        assert p["inativo"] == ("N" if t["active"] else "S")
        assert p["quantidade_estoque"] == 0  # deprecated, as on Omie
        info = p["info"]
        assert brt(info["dAlt"], info["hAlt"]) == t["sourceUpdatedAt"]
    assert any(p["inativo"] == "S" for p in listed) and any(p["inativo"] == "N" for p in listed)


def test_a_page_past_the_end_is_omies_no_records_fault(omie: Omie) -> None:
    r = omie.post("geral/produtos", "ListarProdutos", pagina=4, registros_por_pagina=500)
    assert r.status_code == 500
    assert fault(r) == {
        "faultcode": "SOAP-ENV:Client-5113",
        "faultstring": "ERROR: Não existem registros para a página [4]!",
    }


def test_change_window_filters_to_the_second(omie: Omie, shared: RunningOmieSandbox) -> None:
    products = truth(shared, "products")
    cut = products[1000]["sourceUpdatedAt"]  # "YYYY-MM-DD HH:MM:SS"
    day = f"{cut[8:10]}/{cut[5:7]}/{cut[:4]}"
    got = omie.all(
        "geral/produtos",
        "ListarProdutos",
        "produto_servico_cadastro",
        filtrar_por_data_de=day,
        filtrar_por_hora_de=cut[11:],
        filtrar_apenas_alteracao="S",
    )
    assert {str(p["codigo_produto"]) for p in got} == {
        t["externalId"] for t in products if t["sourceUpdatedAt"] >= cut
    }
    closed = omie.all(
        "geral/produtos",
        "ListarProdutos",
        "produto_servico_cadastro",
        filtrar_por_data_ate=day,
        filtrar_por_hora_ate=cut[11:],
    )
    assert {str(p["codigo_produto"]) for p in closed} == {
        t["externalId"] for t in products if t["sourceUpdatedAt"] <= cut
    }


def test_stock_is_listed_per_local_and_equals_the_truth(
    omie: Omie, shared: RunningOmieSandbox
) -> None:
    locals_ = omie.ok("estoque/local", "ListarLocaisEstoque", nPagina=1, nRegPorPagina=50)
    rows = locals_["locaisEncontrados"]
    assert locals_["nTotRegistros"] == len(rows) == 3
    assert [r["padrao"] for r in rows] == ["S", "N", "N"]
    want = {
        (t["productExternalId"], t["warehouseExternalId"]): t for t in truth(shared, "stock_levels")
    }
    names = {str(r["codigo_local_estoque"]): r["descricao"] for r in rows}
    seen = 0
    for row in rows:
        page = 1
        while True:
            r = omie.post(
                "estoque/consulta",
                "ListarPosEstoque",
                nPagina=page,
                nRegPorPagina=500,
                dDataPosicao="01/03/2025",
                cExibeTodos="S",
                codigo_local_estoque=row["codigo_local_estoque"],
            )
            if r.status_code == 500:
                assert fault(r)["faultcode"] == "SOAP-ENV:Client-5113"
                break
            body = r.json()
            assert body["nPagina"] == page and body["nTotRegistros"] == 1234
            for line in body["produtos"]:
                t = want[(str(line["nCodProd"]), str(line["codigo_local_estoque"]))]
                assert t["warehouseName"] == names[str(line["codigo_local_estoque"])]
                assert money(line["fisico"]) == money(t["quantity"])
                assert money(line["fisico"]) - money(line["reservado"]) == money(t["available"])
                assert line["nSaldo"] == line["fisico"]
                seen += 1
            page += 1
    assert seen == len(want) == 1234 * 3
    # Without a local (or 0): the default local; without cExibeTodos: only lines with stock.
    default = omie.ok(
        "estoque/consulta",
        "ListarPosEstoque",
        nPagina=1,
        nRegPorPagina=500,
        dDataPosicao="01/03/2025",
        cExibeTodos="S",
    )
    assert {line["codigo_local_estoque"] for line in default["produtos"]} == {
        rows[0]["codigo_local_estoque"]
    }
    moving = omie.ok(
        "estoque/consulta",
        "ListarPosEstoque",
        nPagina=1,
        nRegPorPagina=500,
        dDataPosicao="01/03/2025",
    )
    assert 0 < moving["nTotRegistros"] < 1234
    assert all(line["fisico"] or line["reservado"] for line in moving["produtos"])
    r = omie.post("estoque/consulta", "ListarPosEstoque", nPagina=1, nRegPorPagina=10)
    assert r.status_code == 500 and "dDataPosicao" in fault(r)["faultstring"]


def test_customers_are_formatted_like_omie_and_equal_the_truth(
    omie: Omie, shared: RunningOmieSandbox
) -> None:
    listed = omie.all("geral/clientes", "ListarClientes", "clientes_cadastro", size=100)
    want = {t["externalId"]: t for t in truth(shared, "customers")}
    assert len(listed) == len(want) == 180
    for c in listed:
        t = want[str(c["codigo_cliente_omie"])]
        doc = c["cnpj_cpf"]
        digits = "".join(ch for ch in doc if ch.isdigit())
        assert digits == t["document"]
        if c["pessoa_fisica"] == "S":
            assert valid_cpf(digits) and doc[3] == "." and doc[11] == "-"
        else:
            assert valid_cnpj(digits) and doc[10] == "/"
        assert c["razao_social"] == t["name"]
        assert f"({c['telefone1_ddd']}) {c['telefone1_numero']}" == t["phone"]
        assert c["cidade"] == f"{t['city']} ({t['state']})" and c["estado"] == t["state"]
        assert c["cep"] == t["zipCode"] and c["codigo_pais"] == "1058"
        assert c["inativo"] == ("N" if t["active"] else "S")


def test_orders_carry_lines_and_totals_that_add_up(omie: Omie, shared: RunningOmieSandbox) -> None:
    listed = omie.all("produtos/pedido", "ListarPedidos", "pedido_venda_produto", size=100)
    want = {t["externalId"]: t for t in truth(shared, "sales_orders")}
    stages = {
        "Em aberto": "10",
        "Em andamento": "20",
        "Verificado": "50",
        "Atendido": "60",
        "Cancelado": "10",
    }
    assert len(listed) == len(want) == 240
    for o in listed:
        head, info, totals = o["cabecalho"], o["infoCadastro"], o["total_pedido"]
        t = want[str(head["codigo_pedido"])]
        assert head["numero_pedido"] == t["number"]
        assert str(head["codigo_cliente"]) == t["customerExternalId"]
        assert head["etapa"] == stages[t["status"]]
        assert info["cancelado"] == ("S" if t["status"] == "Cancelado" else "N")
        assert info["faturado"] == ("S" if t["status"] == "Atendido" else "N")
        assert brt(info["dInc"], "00:00:00")[:10] == t["orderDate"]
        lines_total = sum((money(d["produto"]["valor_total"]) for d in o["det"]), Decimal(0))
        assert lines_total == money(t["totalProducts"])
        assert money(totals["valor_mercadorias"]) - money(totals["valor_descontos"]) == lines_total
        assert lines_total + money(o["frete"]["valor_frete"]) == money(totals["valor_total_pedido"])
        assert money(totals["valor_total_pedido"]) == money(t["total"])
        for d, tl in zip(o["det"], t["lines"], strict=True):
            p = d["produto"]
            assert str(p["codigo_produto"]) == tl["productExternalId"]
            assert money(p["valor_mercadoria"]) - money(p["valor_desconto"]) == money(
                p["valor_total"]
            )
            assert money(p["valor_total"]) == money(tl["total"])


def test_the_same_data_as_the_bling_sandbox_for_the_same_seed(shared: RunningOmieSandbox) -> None:
    bling = BlingSandboxConfig(
        port=0, rate_limit=0, products=1234, customers=180, orders=240, seed=7, anchor=ANCHOR
    )
    with running_bling(bling) as other:
        r = httpx.get(
            f"{other.root_url}/__sandbox/truth", params={"stream": "products"}, timeout=60
        )
        theirs = [orjson.loads(line) for line in r.content.splitlines() if line]
    assert theirs == truth(shared, "products")


# ------------------------------------------------------------------------- faults


def test_wrong_key_or_secret_is_a_403_fault_that_costs_no_budget(
    private: RunningOmieSandbox,
) -> None:
    admin(private, "POST", "faults", {"method_limit": 2})
    for key, secret in ((DEMO_APP_KEY, "wrong"), ("999", DEMO_APP_SECRET), ("", "")):
        r = Omie(private, key, secret).post("geral/produtos", "ListarProdutos", pagina=1)
        assert r.status_code == 403
        assert fault(r) == {
            "faultcode": "SOAP-ENV:Server",
            "faultstring": "ERROR: A chave de acesso não está preenchida ou não é válida.",
        }
    good = Omie(private)
    assert good.post("geral/produtos", "ListarProdutos", pagina=1).status_code == 200
    assert good.post("geral/produtos", "ListarProdutos", pagina=2).status_code == 200
    admin(private, "POST", "faults", {"revoke_keys": True})
    assert good.post("geral/clientes", "ListarClientes", pagina=1).status_code == 403
    assert admin(private, "POST", "faults", {"revoke_keys": False})["revoked_keys"] is False
    assert admin(private, "GET", "stats")["unauthorized"] == 4


def test_the_same_call_within_the_window_is_redundant(private: RunningOmieSandbox) -> None:
    admin(private, "POST", "faults", {"redundant_window": 2})
    omie = Omie(private)
    assert (
        omie.post("geral/produtos", "ListarProdutos", pagina=1, registros_por_pagina=5).status_code
        == 200
    )
    r = omie.post("geral/produtos", "ListarProdutos", registros_por_pagina=5, pagina=1)
    assert r.status_code == 500
    body = fault(r)
    assert body["faultcode"] == "SOAP-ENV:Client-6"
    assert body["faultstring"].startswith("ERROR: Consumo redundante detectado. Aguarde ")
    assert body["faultstring"].endswith(" segundos para tentar novamente (REDUNDANT).")
    # another page, another method or another app key is not the same call
    assert (
        omie.post("geral/produtos", "ListarProdutos", pagina=2, registros_por_pagina=5).status_code
        == 200
    )
    assert (
        omie.post("geral/clientes", "ListarClientes", pagina=1, registros_por_pagina=5).status_code
        == 200
    )
    time.sleep(2.1)
    assert (
        omie.post("geral/produtos", "ListarProdutos", pagina=1, registros_por_pagina=5).status_code
        == 200
    )
    # an answered fault counts too: a bad call repeated is redundant
    assert omie.post("geral/produtos", "ListarProdutos", pagina=0).status_code == 500
    again = omie.post("geral/produtos", "ListarProdutos", pagina=0)
    assert fault(again)["faultcode"] == "SOAP-ENV:Client-6"
    assert admin(private, "GET", "stats")["counters"]["redundant"] == 2


def test_faults_in_a_row_block_the_app_key_for_the_stated_time(private: RunningOmieSandbox) -> None:
    admin(private, "POST", "faults", {"block_after": 3, "block_seconds": 2})
    omie = Omie(private)
    assert omie.post("geral/produtos", "ListarProdutos", pagina=1).status_code == 200
    for _ in range(3):  # ignoring the redundant-call error three times
        assert omie.post("geral/produtos", "ListarProdutos", pagina=1).status_code == 500
    for service, call in (
        ("geral/produtos", "ListarProdutos"),
        ("geral/clientes", "ListarClientes"),
    ):
        r = omie.post(service, call, pagina=5)
        assert r.status_code == 425
        body = fault(r)
        assert body["faultcode"] == "MISUSE_API_PROCESS"
        assert body["faultstring"] in (
            "ERROR: API bloqueada por consumo indevido. Tente novamente em 2 segundos.",
            "ERROR: API bloqueada por consumo indevido. Tente novamente em 1 segundos.",
        )
    stats = admin(private, "GET", "stats")
    assert stats["counters"]["blocks"] == 1 and stats["counters"]["blocked"] == 2
    time.sleep(2.1)  # calls during the block did not extend it
    assert (
        omie.post("geral/clientes", "ListarClientes", pagina=2, registros_por_pagina=5).status_code
        == 200
    )
    # "no records" is an answer, not misuse: it never leads to a block
    for page in range(50, 56):
        assert omie.post("geral/produtos", "ListarProdutos", pagina=page).status_code == 500
    assert (
        omie.post("geral/clientes", "ListarClientes", pagina=3, registros_por_pagina=5).status_code
        == 200
    )
    # the admin can block (and unblock) at once
    assert admin(private, "POST", "faults", {"block_for": 600})["blocked_for"] == 600
    assert (
        omie.post("geral/clientes", "ListarClientes", pagina=4, registros_por_pagina=5).status_code
        == 425
    )
    admin(private, "POST", "faults", {"block_for": 0})
    assert (
        omie.post("geral/clientes", "ListarClientes", pagina=4, registros_por_pagina=5).status_code
        == 200
    )


def test_rate_limits_per_method_and_per_ip(private: RunningOmieSandbox) -> None:
    admin(
        private,
        "POST",
        "faults",
        {"method_limit": 3, "ip_limit": 5, "limit_window": 2, "block_after": 0},
    )
    omie = Omie(private)
    statuses = [
        omie.post("geral/produtos", "ListarProdutos", pagina=p).status_code for p in range(1, 5)
    ]
    assert statuses == [200, 200, 200, 429]
    assert omie.post("geral/clientes", "ListarClientes", pagina=1).status_code == 200
    assert (
        omie.post("geral/clientes", "ListarClientes", pagina=2, registros_por_pagina=5).status_code
        == 200
    )
    r = omie.post("geral/clientes", "ListarClientes", pagina=3)  # the IP's 5 are used
    assert r.status_code == 429 and fault(r)["faultcode"] == "SOAP-ENV:Client-429"
    stats = admin(private, "GET", "stats")
    assert stats["rate_limited"] == 2
    assert stats["counters"]["method_limited"] == 1 and stats["counters"]["ip_limited"] == 1
    time.sleep(2.05)
    assert omie.post("geral/produtos", "ListarProdutos", pagina=4).status_code == 200


def test_at_most_n_calls_of_a_method_in_flight(private: RunningOmieSandbox) -> None:
    admin(private, "POST", "faults", {"latency_ms": 400, "block_after": 0})
    omie = Omie(private)
    with ThreadPoolExecutor(6) as pool:
        statuses = list(
            pool.map(
                lambda p: omie.post("geral/produtos", "ListarProdutos", pagina=p).status_code,
                range(1, 7),
            )
        )
    assert sorted(statuses) == [200, 200, 200, 200, 429, 429]
    stats = admin(private, "GET", "stats")
    assert stats["peaks"]["in_flight ListarProdutos"] == 4
    assert stats["counters"]["concurrency_limited"] == 2


def test_bad_calls_are_client_faults(private: RunningOmieSandbox) -> None:
    omie = Omie(private)
    r = omie.http.post("/geral/produtos/", content=b"{not json")
    assert r.status_code == 500 and "SyntaxError" in fault(r)["faultstring"]
    body = {
        "call": "ListarProdutos",
        "app_key": DEMO_APP_KEY,
        "app_secret": DEMO_APP_SECRET,
        "param": {"pagina": 1},
    }
    assert fault(omie.http.post("/geral/produtos/", json=body))["faultcode"] == "SOAP-ENV:Client"
    for bad in (
        {"registros_por_pagina": 501},
        {"pagina": "x"},
        {"filtrar_por_data_de": "2025-03-01"},
        {"filtrar_apenas_alteracao": "Y"},
    ):
        r = omie.post("geral/produtos", "ListarProdutos", **bad)
        assert r.status_code == 500 and fault(r)["faultcode"] == "SOAP-ENV:Client", bad
    r = omie.post("geral/produtos", "IncluirProduto")
    assert "IncluirProduto" in fault(r)["faultstring"]
    assert omie.post("geral/nada", "ListarNada").status_code == 500


def test_injected_failures_take_omies_three_shapes(private: RunningOmieSandbox) -> None:
    admin(private, "POST", "faults", {"error_rate": 1.0, "redundant_window": 60})
    omie = Omie(private)
    seen: dict[int, int] = {}
    for page in range(1, 31):
        r = omie.post("geral/produtos", "ListarProdutos", pagina=1, registros_por_pagina=page)
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        if r.status_code == 500:
            assert fault(r)["faultcode"] == "SOAP-ENV:Server"
        elif r.status_code == 503:
            assert r.headers["retry-after"] == "1"
        else:
            assert r.status_code == 502 and "Bad Gateway" in r.text
    assert set(seen) == {500, 502, 503}
    admin(private, "POST", "faults", {"error_rate": 0})
    # an injected failure was not "answered": the same call goes through at once
    assert (
        omie.post("geral/produtos", "ListarProdutos", pagina=1, registros_por_pagina=1).status_code
        == 200
    )
    stats = admin(private, "GET", "stats")
    assert stats["injected_errors"] == 30 and "redundant" not in stats["counters"]


def test_malformed_records_are_broken_as_the_truth_says(private: RunningOmieSandbox) -> None:
    admin(private, "POST", "faults", {"malformed_rate": 0.2, "redundant_window": 0})
    omie = Omie(private)
    listed = {
        "products": omie.all("geral/produtos", "ListarProdutos", "produto_servico_cadastro"),
        "customers": omie.all("geral/clientes", "ListarClientes", "clientes_cadastro"),
        "sales_orders": omie.all("produtos/pedido", "ListarPedidos", "pedido_venda_produto"),
    }
    by_kind = {
        "missing_codigo_produto": lambda r: "codigo_produto" not in r,
        "valor_unitario_not_numeric": lambda r: isinstance(r["valor_unitario"], str),
        "descricao_null": lambda r: r["descricao"] is None,
        "valor_unitario_wrong_type": lambda r: isinstance(r["valor_unitario"], dict),
        "missing_codigo_cliente_omie": lambda r: "codigo_cliente_omie" not in r,
        "razao_social_null": lambda r: r["razao_social"] is None,
        "cnpj_cpf_bad_check_digits": lambda r: (
            not (valid_cpf(d := "".join(c for c in r["cnpj_cpf"] if c.isdigit())) or valid_cnpj(d))
        ),
        "razao_social_wrong_type": lambda r: isinstance(r["razao_social"], list),
        "missing_codigo_pedido": lambda r: "codigo_pedido" not in r["cabecalho"],
        "valor_total_pedido_not_numeric": lambda r: isinstance(
            r["total_pedido"]["valor_total_pedido"], str
        ),
        "cabecalho_null": lambda r: r["cabecalho"] is None,
        "valor_total_pedido_wrong_type": lambda r: isinstance(
            r["total_pedido"]["valor_total_pedido"], dict
        ),
    }
    for stream, records in listed.items():
        lines = truth(private, stream)
        assert len(records) == len(lines)
        broken = 0
        for record, t in zip(records, lines, strict=True):  # both in id order
            if t["malformed"]:
                broken += 1
                assert by_kind[t["malformedKind"]](record), (stream, t["malformedKind"])
        assert 0 < broken < len(lines)


def test_mutations_show_up_in_a_change_window(private: RunningOmieSandbox) -> None:
    admin(private, "POST", "faults", {"redundant_window": 0})
    omie = Omie(private)
    before = time.time() - 1
    changed = admin(
        private,
        "POST",
        "mutate",
        {"price_changes": 5, "new_products": 2, "customer_changes": 3, "new_orders": 2},
    )
    stamp = time.strftime("%d/%m/%Y %H:%M:%S", time.gmtime(before - 3 * 3600)).split()
    window = {
        "filtrar_por_data_de": stamp[0],
        "filtrar_por_hora_de": stamp[1],
        "filtrar_apenas_alteracao": "S",
    }
    products = omie.all("geral/produtos", "ListarProdutos", "produto_servico_cadastro", **window)
    want = changed["products"]["price_changed"] + changed["products"]["created"]
    assert sorted(p["codigo_produto"] for p in products) == sorted(want)
    customers = omie.all("geral/clientes", "ListarClientes", "clientes_cadastro", **window)
    assert sorted(c["codigo_cliente_omie"] for c in customers) == sorted(
        changed["customers"]["changed"]
    )
    orders = omie.all("produtos/pedido", "ListarPedidos", "pedido_venda_produto", **window)
    assert sorted(o["cabecalho"]["codigo_pedido"] for o in orders) == sorted(
        changed["sales_orders"]["created"]
    )
    assert all(o["cabecalho"]["etapa"] == "10" for o in orders)
    created = omie.all(
        "geral/produtos",
        "ListarProdutos",
        "produto_servico_cadastro",
        filtrar_apenas_inclusao="S",
        filtrar_por_data_de=stamp[0],
        filtrar_por_hora_de=stamp[1],
    )
    assert sorted(p["codigo_produto"] for p in created) == sorted(changed["products"]["created"])


def test_extra_app_keys_have_their_own_data_and_limits() -> None:
    extra = AccountSpec("2000000000002", "ffffffffffffffffffffffffffffffff")
    with running(
        config(products=20, customers=5, orders=5, method_limit=1, extra_accounts=(extra,))
    ) as sb:
        mine, theirs = Omie(sb), Omie(sb, extra.client_id, extra.client_secret)
        a = mine.ok("geral/produtos", "ListarProdutos", pagina=1, registros_por_pagina=1)
        b = theirs.ok("geral/produtos", "ListarProdutos", pagina=1, registros_por_pagina=1)
        assert (
            a["produto_servico_cadastro"][0]["codigo_produto"]
            != b["produto_servico_cadastro"][0]["codigo_produto"]
        )
        assert mine.post("geral/produtos", "ListarProdutos", pagina=2).status_code == 429
        stats = admin(sb, "GET", "stats", account=extra.client_id)
        assert stats["ok"] == 1 and stats["rate_limited"] == 0


def test_the_cli_serves_the_omie_sandbox() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from erp_sync.cli.sandbox import sandbox_app; sandbox_app()",
            "omie",
            "--port",
            "0",
            "--products",
            "7",
            "--anchor",
            "2025-03-01",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("Omie sandbox on http://127.0.0.1:"), line
        base = line.split(" on ")[1].split(" ")[0]
        assert base.endswith("/api/v1") and f"app_key={DEMO_APP_KEY}" in line
        r = httpx.post(
            f"{base}/geral/produtos/",
            json={
                "call": "ListarProdutos",
                "app_key": DEMO_APP_KEY,
                "app_secret": DEMO_APP_SECRET,
                "param": [{"pagina": 1}],
            },
            timeout=10,
        )
        assert r.json()["total_de_registros"] == 7
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
    bad = subprocess.run(
        [
            sys.executable,
            "-c",
            "from erp_sync.cli.sandbox import sandbox_app; sandbox_app()",
            "omie",
            "--port",
            "0",
            "--limit-window",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert bad.returncode == 2 and "limit_window must be at least 1 second" in bad.stderr


def test_knobs_are_validated_before_anything_changes(private: RunningOmieSandbox) -> None:
    r = httpx.post(
        f"{private.root_url}/__sandbox/faults", json={"method_limit": 5, "block_seconds": 0}
    )
    assert r.status_code == 400 and "block_seconds" in r.json()["error"]
    assert admin(private, "GET", "faults")["method_limit"] == 240
    r = httpx.post(f"{private.root_url}/__sandbox/faults", json={"block_for": -1})
    assert r.status_code == 400
    r = httpx.post(f"{private.root_url}/__sandbox/faults", json={"rate_limit": 1})
    assert r.status_code == 400 and "unknown knob" in r.json()["error"]
