"""A local Omie API (``https://app.omie.com.br/api/v1``) for connector work offline.

Point a connector's base URL at ``http://127.0.0.1:<port>/api/v1`` and it talks to this
server as it would to Omie: same call envelope, parameter and field names, formats,
faults and consumption rules. Data come from ``common.Dataset`` (deterministic, lazy,
any size, shared with the Bling sandbox: the same seed gives the same products, ids
and all); this module only renders them in Omie's shape and enforces Omie's rules.

Sources: Omie's API pages (``ListarProdutos``, ``ListarClientes``, ``ListarPedidos``,
``ListarPosEstoque``, ``ListarLocaisEstoque``) for envelopes and field names; Omie's
help centre ("Limites de Consumo da API do Omie", "Tratando os erros de API") for the
limits; fault texts as integrators quote them from production logs. Where those are
silent or disagree, the choice below is the most plausible one, written down here
because a connector author must know it.

The call
--------
Every call is ``POST /api/v1/<module>/<service>/`` (trailing slash) with a JSON body
``{"call": "<Method>", "app_key": "...", "app_secret": "...", "param": [{...}]}``.
Served:

| service              | call                  | list key                    |
|----------------------|-----------------------|-----------------------------|
| ``geral/produtos``   | ``ListarProdutos``    | ``produto_servico_cadastro`` |
| ``geral/clientes``   | ``ListarClientes``    | ``clientes_cadastro``        |
| ``produtos/pedido``  | ``ListarPedidos``     | ``pedido_venda_produto``     |
| ``estoque/consulta`` | ``ListarPosEstoque``  | ``produtos``                 |
| ``estoque/local``    | ``ListarLocaisEstoque`` | ``locaisEncontrados``      |

Products, customers and orders page with ``pagina`` (from 1) and
``registros_por_pagina`` (1..500, default 50) and answer ``pagina``,
``total_de_paginas``, ``registros`` (on this page), ``total_de_registros``; stock and
locals use ``nPagina``/``nRegPorPagina`` and answer ``nPagina``, ``nTotPaginas``,
``nRegistros``, ``nTotRegistros``. Lists are sorted by Omie id ascending (= creation
order) and stable while nothing changes. **A page past the end, or an empty result, is
not an empty list but a fault**: HTTP 500 ``SOAP-ENV:Client-5113`` ``"ERROR: Não
existem registros para a página [N]!"``.

Change windows (products, customers, orders): ``filtrar_por_data_de`` /
``filtrar_por_data_ate`` (``dd/mm/aaaa``) with ``filtrar_por_hora_de`` /
``filtrar_por_hora_ate`` (``HH:MM:SS``, default the whole day), Brasília time, both
ends inclusive; ``filtrar_apenas_inclusao: "S"`` filters on the creation time,
anything else on the change time (**decision**: Omie without either flag also matches
records *created* in the window; with an open-ended window, as a sync uses, both
readings give the same records). Records carry ``info`` (products, customers) or
``infoCadastro`` (orders) with ``dInc``/``hInc``/``dAlt``/``hAlt``, to the second.
Other filters (``apenas_importado_api``, ``ordenar_por``, ``etapa``...) are accepted
and ignored.

Stock: ``ListarPosEstoque`` with ``dDataPosicao`` (``dd/mm/aaaa``, required; the
sandbox has one position, today's), ``cExibeTodos`` (``"S"``: every product; default
``"N"``: only products with a balance, found by a scan: slow on huge catalogues) and
``codigo_local_estoque`` (a local's id; absent or 0 = the default local, as on Omie).
One line per product: ``nCodProd``, ``cCodInt``, ``cCodigo``, ``cDescricao``,
``nPrecoUnitario``, ``fisico``, ``reservado``, ``nSaldo`` (= fisico), ``nPendente``,
``nCMC`` (the cost price), ``estoque_minimo``, ``codigo_local_estoque``. Locals come
from ``ListarLocaisEstoque``. The deprecated ``quantidade_estoque`` of a product is
always 0, as on Omie. Stock changes do not move a product's change time.

Formats: ids are integers (11 digits); money and quantities JSON numbers; flags
``"S"``/``"N"``; dates ``dd/mm/aaaa``; NCM dotted (``7318.15.00``); CPF/CNPJ
formatted (``123.456.789-09``, ``12.345.678/0001-90``); a customer's ``cidade`` is
``"Nome (UF)"``; phones split into ``telefone1_ddd`` + ``telefone1_numero``
(``telefone2_*`` is the mobile). An order's line has ``valor_mercadoria`` (quantity x
unit price), ``valor_desconto``, ``valor_total``; ``total_pedido.valor_total_pedido``
= lines' totals + ``frete.valor_frete``. Order stage (``cabecalho.etapa``) "10" is an
open order, "20" being separated, "50" to be invoiced, "60" invoiced
(``infoCadastro.faturado: "S"``); a cancelled order keeps its stage and has
``infoCadastro.cancelado: "S"``.

Faults and limits (every fault is ``{"faultstring", "faultcode"}``)
---------------------------------------------------------------------
- Wrong or missing ``app_key``/``app_secret``: **HTTP 403** ``SOAP-ENV:Server``
  ``"ERROR: A chave de acesso não está preenchida ou não é válida."`` (Omie documents
  faults as HTTP 500; integrators observed 403 for this one). Never limited.
- Malformed envelope, unknown call or bad parameter: HTTP 500 ``SOAP-ENV:Client``.
- ``ip_limit`` requests (default 960) per ``limit_window`` seconds (default 60) per
  client IP, ``method_limit`` (240) per window and ``method_concurrency`` (4) calls in
  flight per (app key, method): beyond either, **HTTP 429** ``SOAP-ENV:Client-429``
  "Too many requests", no ``Retry-After``. Sliding windows; rejected calls do not
  count.
- The same call with the same ``param`` again within ``redundant_window`` seconds
  (60) of one the API answered (with data or a fault) is refused: HTTP 500
  ``SOAP-ENV:Client-6`` ``"ERROR: Consumo redundante detectado. Aguarde N segundos
  para tentar novamente (REDUNDANT)."``.
- ``block_after`` (10) faults in a row on one method of an app key (redundant calls,
  429s, bad requests; not "no records") block the whole app key for
  ``block_seconds`` (1800): every call then gets **HTTP 425** ``MISUSE_API_PROCESS``
  ``"ERROR: API bloqueada por consumo indevido. Tente novamente em N segundos."`` (N
  counts down). Calls during a block do not extend it.
- Injected failures (``error_rate``), before any of the above is recorded: 500
  ``SOAP-ENV:Server`` (``"ERROR: Erro interno..."``), 502 HTML, 503 with
  ``Retry-After: 1``. They are not "answered" for the redundancy rule.

Admin: the shared ``/__sandbox/*`` endpoints (``?account=<app_key>``); ``POST
/__sandbox/faults`` also takes ``{"block_for": N}`` (block every app key for N
seconds now; 0 lifts blocks) and ``{"revoke_keys": true|false}`` (refuse every app
key, as after the user regenerated them in Omie). ``/__sandbox/stats`` adds
``counters`` (``redundant``, ``blocked`` answers, ``blocks`` started, ``ip_limited``,
``method_limited``, ``concurrency_limited``, ``no_records``, ``bad_requests``) and
``peaks`` (``"in_flight <Method>"``: the most calls of one method in flight at once).
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from erp_sync.sandbox.common import (
    BRT_OFFSET_SECONDS,
    Account,
    AccountSpec,
    BaseKnobs,
    Breaks,
    Customer,
    Dataset,
    FaultAction,
    JSONBytes,
    Order,
    Product,
    SandboxConfig,
    SandboxCore,
    SlidingWindowLimiter,
    StockLine,
    Window,
    admin_routes,
    bad_gateway_page,
    money,
    periodic_mutations_lifespan,
    qty,
    serve_forever,
    serve_in_thread,
)

API_PREFIX = "/api/v1"
MAX_PAGE = 500
DEFAULT_PAGE = 50
DEMO_APP_KEY = "3417551238741"
DEMO_APP_SECRET = "5bd2f3f1d0a94c07b8e2a6c4f9e1d3a7"  # noqa: S105 - public demo credential

# How each stream's malformed records are spoilt (see Breaks); kind k is the k-th way.
BREAKS = Breaks(
    {
        "products": [("drop", ("codigo_produto",)), ("comma", ("valor_unitario",)),
                     ("null", ("descricao",)), ("wrap", ("valor_unitario",))],
        "stock_levels": [("drop", ("nCodProd",)), ("comma", ("fisico",)),
                         ("null", ("reservado",)), ("wrap", ("nSaldo",))],
        "customers": [("drop", ("codigo_cliente_omie",)), ("null", ("razao_social",)),
                      ("bump", ("cnpj_cpf",)), ("list", ("razao_social",))],
        "sales_orders": [("drop", ("cabecalho", "codigo_pedido")),
                         ("comma", ("total_pedido", "valor_total_pedido")),
                         ("null", ("cabecalho",)),
                         ("wrap", ("total_pedido", "valor_total_pedido"))],
    }
)  # fmt: skip
MALFORMED_KIND_NAMES: Mapping[str, Sequence[str]] = BREAKS.kind_names()
break_record = BREAKS.apply

# Common order statuses -> (etapa, cancelado, faturado).
ORDER_STAGE = {
    "Em aberto": ("10", "N", "N"),
    "Em andamento": ("20", "N", "N"),
    "Verificado": ("50", "N", "N"),
    "Atendido": ("60", "N", "S"),
    "Cancelado": ("10", "S", "N"),
}


@dataclass
class OmieKnobs(BaseKnobs):
    """Omie's consumption rules, changeable at runtime (``POST /__sandbox/faults``)."""

    ip_limit: int = 960  # per limit_window per client IP; 0 = off
    method_limit: int = 240  # per limit_window per (app key, method); 0 = off
    method_concurrency: int = 4  # calls in flight per (app key, method); 0 = off
    limit_window: int = 60  # seconds
    redundant_window: int = 60  # seconds; 0 = off
    block_after: int = 10  # faults in a row on one method; 0 = never block
    block_seconds: int = 1800

    INTS: ClassVar[tuple[str, ...]] = (
        "latency_ms",
        "ip_limit",
        "method_limit",
        "method_concurrency",
        "limit_window",
        "redundant_window",
        "block_after",
        "block_seconds",
    )
    MINIMA: ClassVar[Mapping[str, tuple[int, str]]] = {
        "limit_window": (1, "limit_window must be at least 1 second"),
        "block_seconds": (1, "block_seconds must be at least 1 second"),
    }
    ACTIONS: ClassVar[tuple[str, ...]] = ("block_for", "revoke_keys")


@dataclass(frozen=True)
class OmieSandboxConfig(SandboxConfig):
    """Everything the CLI can set: the common settings, Omie's consumption rules and the
    app key. Extra accounts are more app keys (client_id = app_key, client_secret =
    app_secret), each with its own data and its own per-method limits; the IP limit is
    shared."""

    port: int = 8902
    ip_limit: int = 960
    method_limit: int = 240
    method_concurrency: int = 4
    limit_window: int = 60
    redundant_window: int = 60
    block_after: int = 10
    block_seconds: int = 1800
    app_key: str = DEMO_APP_KEY
    app_secret: str = DEMO_APP_SECRET

    def knobs(self) -> OmieKnobs:
        knobs = OmieKnobs()
        knobs.update(
            {
                **self.base_knobs(),
                "ip_limit": self.ip_limit,
                "method_limit": self.method_limit,
                "method_concurrency": self.method_concurrency,
                "limit_window": self.limit_window,
                "redundant_window": self.redundant_window,
                "block_after": self.block_after,
                "block_seconds": self.block_seconds,
            }
        )
        return knobs


# ----------------------------------------------------------------------- faults


class OmieFault(Exception):
    """An answer in Omie's fault shape, raised anywhere inside a call."""

    def __init__(
        self,
        status: int,
        faultcode: str,
        faultstring: str,
        *,
        counter: str | None = None,
        misuse: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(faultstring)
        self.status = status
        self.faultcode = faultcode
        self.faultstring = faultstring
        self.counter = counter  # stats counter to bump
        self.misuse = misuse  # counts towards the block
        self.headers = dict(headers or {})

    def response(self) -> Response:
        return JSONBytes(
            {"faultstring": self.faultstring, "faultcode": self.faultcode},
            status_code=self.status,
            headers=self.headers,
        )


def bad_request(message: str) -> OmieFault:
    return OmieFault(
        500, "SOAP-ENV:Client", f"ERROR: {message}", counter="bad_requests", misuse=True
    )


def no_records(page: int) -> OmieFault:
    return OmieFault(
        500,
        "SOAP-ENV:Client-5113",
        f"ERROR: Não existem registros para a página [{page}]!",
        counter="no_records",
    )


def too_many(counter: str, detail: str) -> OmieFault:
    return OmieFault(
        429,
        "SOAP-ENV:Client-429",
        f"ERROR: Too many requests. {detail}",
        counter=counter,
        misuse=True,
    )


INVALID_KEY = OmieFault(
    403, "SOAP-ENV:Server", "ERROR: A chave de acesso não está preenchida ou não é válida."
)


def injected_failure(status: int) -> Response:
    """The shapes an unstable Omie answers with (one is a proxy's HTML page)."""
    if status == 502:
        return bad_gateway_page()
    if status == 503:
        return OmieFault(
            503,
            "SOAP-ENV:Server",
            "ERROR: Serviço temporariamente indisponível. Tente novamente.",
            headers={"Retry-After": "1"},
        ).response()
    return OmieFault(
        500,
        "SOAP-ENV:Server",
        "ERROR: Erro interno ao processar a requisição. Tente novamente em alguns instantes.",
    ).response()


# ------------------------------------------------------------------- parameters


def fmt_date(ts: int) -> str:
    return time.strftime("%d/%m/%Y", time.gmtime(ts + BRT_OFFSET_SECONDS))


def fmt_time(ts: int) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ts + BRT_OFFSET_SECONDS))


def parse_date_time(date: str, clock: str) -> int:
    """``dd/mm/aaaa`` + ``HH:MM[:SS]`` in Brasília time -> epoch seconds (ValueError)."""
    day = time.strptime(date.strip(), "%d/%m/%Y")
    clock = clock.strip()
    parsed = time.strptime(clock, "%H:%M:%S" if clock.count(":") == 2 else "%H:%M")
    seconds = parsed.tm_hour * 3600 + parsed.tm_min * 60 + parsed.tm_sec
    return calendar.timegm(day) - BRT_OFFSET_SECONDS + seconds


def int_param(param: Mapping[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = param.get(name, default)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)  # Omie accepts numbers sent as strings
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"O parâmetro [{name}] deve ser um número inteiro.")
    if not lo <= value <= hi:
        raise bad_request(f"O parâmetro [{name}] deve estar entre {lo} e {hi}.")
    return value


def flag(param: Mapping[str, Any], name: str, default: str = "N") -> bool:
    value = param.get(name, default)
    if value in ("", None):
        value = default
    if value not in ("S", "N"):
        raise bad_request(f'O parâmetro [{name}] deve ser "S" ou "N".')
    return bool(value == "S")


def change_window(param: Mapping[str, Any]) -> tuple[Window, bool]:
    """The change (or, with ``filtrar_apenas_inclusao``, creation) window asked for."""
    bounds: list[int | None] = []
    for date_name, time_name, default_time in (
        ("filtrar_por_data_de", "filtrar_por_hora_de", "00:00:00"),
        ("filtrar_por_data_ate", "filtrar_por_hora_ate", "23:59:59"),
    ):
        date = param.get(date_name)
        if date in (None, ""):
            bounds.append(None)
            continue
        clock = param.get(time_name) or default_time
        if not isinstance(date, str) or not isinstance(clock, str):
            raise bad_request(f"Data/hora inválida em [{date_name}]/[{time_name}].")
        try:
            bounds.append(parse_date_time(date, clock))
        except ValueError:
            raise bad_request(
                f"Data/hora inválida em [{date_name}]/[{time_name}]: use dd/mm/aaaa e HH:MM:SS."
            ) from None
    start, end = bounds
    if start is not None and end is not None and start > end:
        raise bad_request("A data inicial deve ser anterior à data final.")
    flag(param, "filtrar_apenas_alteracao")  # the default reading; validated all the same
    return (start, end), flag(param, "filtrar_apenas_inclusao")


def page_of(total: int, page: int, size: int) -> int:
    """Offset of ``page``; a page past the end is Omie's "no records" fault."""
    offset = (page - 1) * size
    if offset >= total:
        raise no_records(page)
    return offset


# ------------------------------------------------------------------- rendering


def dotted_ncm(ncm: str) -> str:
    return f"{ncm[:4]}.{ncm[4:6]}.{ncm[6:]}" if len(ncm) == 8 else ncm


def formatted_document(doc: str) -> str:
    if len(doc) == 11:
        return f"{doc[:3]}.{doc[3:6]}.{doc[6:9]}-{doc[9:]}"
    if len(doc) == 14:
        return f"{doc[:2]}.{doc[2:5]}.{doc[5:8]}/{doc[8:12]}-{doc[12:]}"
    return doc


def split_phone(phone: str) -> tuple[str, str]:
    """``(11) 3456-7890`` -> (``11``, ``3456-7890``)."""
    if phone.startswith("(") and ") " in phone:
        ddd, _, number = phone[1:].partition(") ")
        return ddd, number
    return "", phone


def info(created: int, changed: int) -> dict[str, Any]:
    return {
        "dInc": fmt_date(created),
        "hInc": fmt_time(created),
        "uInc": "WEBSERVICE",
        "dAlt": fmt_date(changed),
        "hAlt": fmt_time(changed),
        "uAlt": "WEBSERVICE",
        "cImpAPI": "N",
    }


def integration_code(p: Product) -> str:
    return f"PRD{p.slot + 1:08d}"


def product_record(p: Product) -> dict[str, Any]:
    return {
        "codigo_produto": p.id,
        "codigo_produto_integracao": integration_code(p),
        "codigo": p.sku,
        "descricao": p.name,
        "descr_detalhada": p.short_description,
        "unidade": p.unit,
        "ncm": dotted_ncm(p.ncm),
        "ean": p.gtin,
        "valor_unitario": money(p.price_cents),
        "marca": p.brand,
        "modelo": "",
        "inativo": "N" if p.active else "S",
        "bloqueado": "N",
        "bloquear_exclusao": "N",
        "importado_api": "N",
        "codigo_familia": p.category_id,
        "descricao_familia": p.category,
        "tipoItem": "00",
        "cest": "",
        "origem_mercadoria": "0",
        "peso_liq": p.weight_grams / 1000,
        "peso_bruto": round(p.weight_grams * 1.05) / 1000,
        "altura": p.height_cm,
        "largura": p.width_cm,
        "profundidade": p.depth_cm,
        "estoque_minimo": p.min_stock,
        "quantidade_estoque": 0,  # deprecated: Omie always sends 0 here
        "obs_internas": "",
        "recomendacoes_fiscais": {"origem_mercadoria": 0, "id_preco_tabelado": 0},
        "info": info(p.created_at, p.updated_at),
    }


def stock_record(p: Product, line: StockLine) -> dict[str, Any]:
    return {
        "nCodProd": p.id,
        "cCodInt": integration_code(p),
        "cCodigo": p.sku,
        "cDescricao": p.name,
        "nPrecoUnitario": money(p.price_cents),
        "nSaldo": qty(line.physical_milli),
        "fisico": qty(line.physical_milli),
        "reservado": qty(line.reserved_milli),
        "nPendente": 0,
        "nCMC": money(p.cost_cents),
        "estoque_minimo": p.min_stock,
        "codigo_local_estoque": line.warehouse.id,
    }


def customer_record(c: Customer) -> dict[str, Any]:
    ddd1, phone1 = split_phone(c.phone)
    ddd2, phone2 = split_phone(c.mobile)
    return {
        "codigo_cliente_omie": c.id,
        "codigo_cliente_integracao": c.code,
        "razao_social": c.name,
        "nome_fantasia": c.trade_name or c.name,
        "cnpj_cpf": formatted_document(c.document),
        "pessoa_fisica": "S" if c.person_type == "F" else "N",
        "inscricao_estadual": c.state_registration,
        "contribuinte": "S" if c.state_registration else "N",
        "email": c.email,
        "telefone1_ddd": ddd1,
        "telefone1_numero": phone1,
        "telefone2_ddd": ddd2,
        "telefone2_numero": phone2,
        "contato": "",
        "endereco": c.street,
        "endereco_numero": c.number,
        "complemento": c.complement,
        "bairro": c.district,
        "cidade": f"{c.city} ({c.state})",
        "estado": c.state,
        "cep": c.zip_code,
        "codigo_pais": "1058",
        "inativo": "N" if c.active else "S",
        "bloquear_faturamento": "N",
        "valor_limite_credito": money(c.credit_limit_cents),
        "tags": [],
        "info": info(c.created_at, c.updated_at),
    }


def order_record(o: Order) -> dict[str, Any]:
    stage, cancelled, invoiced = ORDER_STAGE[o.status.name]
    lines = []
    gross_total = discount_total = 0
    for n, line in enumerate(o.lines, start=1):
        gross = (line.quantity_milli * line.unit_price_cents + 500) // 1000
        discount = gross - line.total_cents
        gross_total += gross
        discount_total += discount
        lines.append(
            {
                "ide": {"codigo_item": line.id, "codigo_item_integracao": str(n)},
                "produto": {
                    "codigo_produto": line.product_id,
                    "codigo": line.sku,
                    "descricao": line.description,
                    "unidade": line.unit,
                    "quantidade": qty(line.quantity_milli),
                    "valor_unitario": money(line.unit_price_cents),
                    "tipo_desconto": "P",
                    "percentual_desconto": line.discount_pct,
                    "valor_desconto": money(discount),
                    "valor_mercadoria": money(gross),
                    "valor_total": money(line.total_cents),
                    "cfop": "5.102",
                },
                "inf_adic": {"peso_bruto": 0, "peso_liquido": 0},
            }
        )
    return {
        "cabecalho": {
            "codigo_pedido": o.id,
            "codigo_pedido_integracao": "",
            "numero_pedido": str(o.number),
            "codigo_cliente": o.customer.id,
            "data_previsao": fmt_date(o.ordered_at + 7 * 86400),
            "etapa": stage,
            "codigo_parcela": "999",
            "qtde_parcelas": len(o.installments),
            "origem_pedido": "API",
            "quantidade_itens": len(o.lines),
        },
        "det": lines,
        "frete": {
            "modalidade": "0" if o.freight_cents else "9",
            "valor_frete": money(o.freight_cents),
        },
        "infoCadastro": {
            "dInc": fmt_date(o.ordered_at),
            "hInc": fmt_time(o.ordered_at),
            "uInc": "WEBSERVICE",
            "dAlt": fmt_date(o.updated_at),
            "hAlt": fmt_time(o.updated_at),
            "uAlt": "WEBSERVICE",
            "cancelado": cancelled,
            "faturado": invoiced,
            "cImpAPI": "S",
        },
        "lista_parcelas": {
            "parcela": [
                {
                    "numero_parcela": k,
                    "data_vencimento": fmt_date(part.due_at),
                    "valor": money(part.value_cents),
                    "percentual": round(100 * part.value_cents / max(o.total_cents, 1), 2),
                }
                for k, part in enumerate(o.installments, start=1)
            ]
        },
        "total_pedido": {
            "valor_mercadorias": money(gross_total),
            "valor_descontos": money(discount_total),
            "valor_total_pedido": money(o.total_cents),
            "base_calculo_icms": 0,
            "valor_icms": 0,
        },
        "informacoes_adicionais": {
            "codigo_categoria": "1.01.01",
            "consumidor_final": "S",
            "enviar_email": "N",
            "numero_pedido_cliente": o.store_number,
            "codVend": o.seller_id,
        },
    }


# -------------------------------------------------------------- consumption rules


@dataclass
class AppKeyState:
    """What Omie remembers about one app key's consumption."""

    limiters: dict[str, SlidingWindowLimiter] = field(default_factory=dict)
    in_flight: dict[str, int] = field(default_factory=dict)
    answered: dict[bytes, float] = field(default_factory=dict)  # call fingerprint -> when
    streak: dict[str, int] = field(default_factory=dict)  # faults in a row per method
    blocked_until: float = 0.0

    def limiter(self, call: str, window: float) -> SlidingWindowLimiter:
        current = self.limiters.get(call)
        if current is None or current.window != window:
            current = self.limiters[call] = SlidingWindowLimiter(window)
        return current


Handler = Callable[[Mapping[str, Any], Account], dict[str, Any]]


@dataclass(frozen=True)
class Method:
    service: str
    call: str
    handler: Handler


class OmieSandbox:
    """Omie's HTTP surface over a SandboxCore."""

    def __init__(self, config: OmieSandboxConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        main = AccountSpec(config.app_key, config.app_secret)
        self.core: SandboxCore[OmieKnobs] = SandboxCore(
            config.accounts(main),
            config.knobs(),
            MALFORMED_KIND_NAMES,
            fault_seed=config.seed,
            clock=clock,
        )
        self.states: dict[str, AppKeyState] = {k: AppKeyState() for k in self.core.accounts}
        self.ip_limiters: dict[str, SlidingWindowLimiter] = {}
        self.revoked = False  # every app key refused, as after the user regenerated them
        self.methods: dict[str, dict[str, Method]] = {}
        for method in (
            Method("geral/produtos", "ListarProdutos", self.list_products),
            Method("geral/clientes", "ListarClientes", self.list_customers),
            Method("produtos/pedido", "ListarPedidos", self.list_orders),
            Method("estoque/consulta", "ListarPosEstoque", self.list_stock),
            Method("estoque/local", "ListarLocaisEstoque", self.list_locals),
        ):
            self.methods.setdefault(method.service, {})[method.call] = method

    # ---- the request pipeline

    async def endpoint(self, request: Request) -> Response:
        arrived = time.monotonic()
        service = f"{request.path_params['module']}/{request.path_params['service']}"
        knobs = self.core.knobs
        account: Account | None = None
        call = "?"
        in_flight: tuple[AppKeyState, str] | None = None
        injected = False
        try:
            try:
                body = orjson.loads(await request.body())
            except orjson.JSONDecodeError:
                raise bad_request("JSON request with SyntaxError.") from None
            if not isinstance(body, dict):
                raise bad_request("Invalid JSON Object.")
            call = str(body.get("call") or "?")
            account = self._authenticate(body)
            state = self.states[account.spec.client_id]
            self._check_block(state, arrived)
            methods = self.methods.get(service)
            if methods is None:
                raise bad_request(f"Serviço [{service}] não encontrado.")
            method = methods.get(call)
            if method is None:
                raise bad_request(f"Método [{call}] não encontrado no serviço [{service}].")
            param = self._param(body)
            self._check_limits(request, state, call, arrived)
            state.in_flight[call] = state.in_flight.get(call, 0) + 1
            in_flight = (state, call)
            account.stats.peak(f"in_flight {call}", state.in_flight[call])
            status = self.core.pick_injected_error()
            if status is not None:
                injected = True
                response = injected_failure(status)
            else:
                self._check_redundant(state, call, param, arrived)
                response = JSONBytes(method.handler(param, account))
                state.streak[call] = 0
        except OmieFault as fault:
            response = fault.response()
            target = account or self.core.primary
            if fault.counter:
                target.stats.bump(fault.counter)
            if account is not None:
                state = self.states[account.spec.client_id]
                if fault.misuse:
                    self._count_misuse(account, state, call, arrived)
                elif fault.counter == "no_records":
                    state.streak[call] = 0
        try:
            if knobs.latency_ms:
                await asyncio.sleep(knobs.latency_ms / 1000)
        finally:
            if in_flight is not None:
                in_flight[0].in_flight[in_flight[1]] -= 1
        (account or self.core.primary).stats.record(
            f"{service} {call}", response.status_code, arrived, injected
        )
        return response

    def _authenticate(self, body: Mapping[str, Any]) -> Account:
        key, secret = body.get("app_key"), body.get("app_secret")
        key = str(key) if isinstance(key, int | str) and not isinstance(key, bool) else ""
        account = self.core.accounts.get(key) if key and not self.revoked else None
        if account is None or not isinstance(secret, str) or secret != account.spec.client_secret:
            raise INVALID_KEY
        return account

    def _check_block(self, state: AppKeyState, now: float) -> None:
        if state.blocked_until > now:
            left = math.ceil(state.blocked_until - now)
            raise OmieFault(
                425,
                "MISUSE_API_PROCESS",
                f"ERROR: API bloqueada por consumo indevido. Tente novamente em {left} segundos.",
                counter="blocked",
            )

    @staticmethod
    def _param(body: Mapping[str, Any]) -> Mapping[str, Any]:
        param = body.get("param")
        if not isinstance(param, list) or len(param) != 1 or not isinstance(param[0], dict):
            raise bad_request('Informe "param" como uma lista com um objeto: [{...}].')
        return param[0]

    def _check_limits(self, request: Request, state: AppKeyState, call: str, now: float) -> None:
        knobs = self.core.knobs
        window = float(knobs.limit_window)
        if knobs.method_concurrency and state.in_flight.get(call, 0) >= knobs.method_concurrency:
            raise too_many(
                "concurrency_limited",
                f"Limite de {knobs.method_concurrency} requisições simultâneas para o método "
                f"[{call}] excedido.",
            )
        ip = request.client.host if request.client else "?"
        ip_limiter = self.ip_limiters.get(ip)
        if ip_limiter is None or ip_limiter.window != window:
            ip_limiter = self.ip_limiters[ip] = SlidingWindowLimiter(window)
        if ip_limiter.try_acquire(now, knobs.ip_limit):
            raise too_many(
                "ip_limited",
                f"Limite de {knobs.ip_limit} requisições por {knobs.limit_window} s por IP "
                "excedido.",
            )
        if state.limiter(call, window).try_acquire(now, knobs.method_limit):
            ip_limiter.undo()
            raise too_many(
                "method_limited",
                f"Limite de {knobs.method_limit} requisições por {knobs.limit_window} s para o "
                f"método [{call}] excedido.",
            )

    def _check_redundant(
        self, state: AppKeyState, call: str, param: Mapping[str, Any], now: float
    ) -> None:
        window = self.core.knobs.redundant_window
        if not window:
            return
        fingerprint = call.encode() + b"\0" + orjson.dumps(param, option=orjson.OPT_SORT_KEYS)
        answered = state.answered
        last = answered.get(fingerprint)
        if last is not None and now - last < window:
            left = max(1, math.ceil(window - (now - last)))
            raise OmieFault(
                500,
                "SOAP-ENV:Client-6",
                f"ERROR: Consumo redundante detectado. Aguarde {left} segundos para tentar "
                "novamente (REDUNDANT).",
                counter="redundant",
                misuse=True,
            )
        if len(answered) > 50_000:
            for key in [k for k, t in answered.items() if now - t >= window]:
                del answered[key]
        answered[fingerprint] = now

    def _count_misuse(self, account: Account, state: AppKeyState, call: str, now: float) -> None:
        knobs = self.core.knobs
        streak = state.streak[call] = state.streak.get(call, 0) + 1
        if knobs.block_after and streak >= knobs.block_after and state.blocked_until <= now:
            state.blocked_until = now + knobs.block_seconds
            state.streak.clear()
            account.stats.bump("blocks")

    def _block_action(self) -> FaultAction:
        def check(value: object) -> None:
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise ValueError("block_for must be a non-negative integer (seconds)")

        def apply(value: object) -> dict[str, Any]:
            if value is None:
                return {}
            assert isinstance(value, int)
            until = time.monotonic() + value if value else 0.0
            for state in self.states.values():
                state.blocked_until = until
                state.streak.clear()
            return {"blocked_for": value}

        return FaultAction("block_for", check, apply)

    def _revoke_action(self) -> FaultAction:
        def check(value: object) -> None:
            if value is not None and not isinstance(value, bool):
                raise ValueError("revoke_keys must be true or false")

        def apply(value: object) -> dict[str, Any]:
            if isinstance(value, bool):
                self.revoked = value
            return {"revoked_keys": self.revoked}

        return FaultAction("revoke_keys", check, apply)

    # ---- calls

    def _selection_page(
        self, param: Mapping[str, Any], account: Account, stream: str
    ) -> tuple[list[int], int, int, int]:
        """(indices, page, size, total) for a windowed list call."""
        page = int_param(param, "pagina", 1, 1, 10**9)
        size = int_param(param, "registros_por_pagina", DEFAULT_PAGE, 1, MAX_PAGE)
        span, by_creation = change_window(param)
        data = account.data
        space = {
            "products": data.products,
            "customers": data.customers,
            "sales_orders": data.orders,
        }[stream]
        selection = (
            space.select(None, created=span) if by_creation else space.select(None, changed=span)
        )
        offset = page_of(selection.count, page, size)
        return selection.page(offset, size), page, size, selection.count

    @staticmethod
    def _envelope(
        page: int, size: int, total: int, key: str, records: list[dict[str, Any]]
    ) -> dict[str, Any]:
        return {
            "pagina": page,
            "total_de_paginas": math.ceil(total / size),
            "registros": len(records),
            "total_de_registros": total,
            key: records,
        }

    def _maybe_broken(
        self, data: Dataset, stream: str, i: int, record: dict[str, Any]
    ) -> dict[str, Any]:
        if data.is_malformed(stream, i, self.core.knobs.malformed_rate):
            return break_record(stream, data.malformed_kind(stream, i), record)
        return record

    def list_products(self, param: Mapping[str, Any], account: Account) -> dict[str, Any]:
        indices, page, size, total = self._selection_page(param, account, "products")
        data = account.data
        records = [
            self._maybe_broken(data, "products", i, product_record(data.product(i)))
            for i in indices
        ]
        return self._envelope(page, size, total, "produto_servico_cadastro", records)

    def list_customers(self, param: Mapping[str, Any], account: Account) -> dict[str, Any]:
        indices, page, size, total = self._selection_page(param, account, "customers")
        data = account.data
        records = [
            self._maybe_broken(data, "customers", i, customer_record(data.customer(i)))
            for i in indices
        ]
        return self._envelope(page, size, total, "clientes_cadastro", records)

    def list_orders(self, param: Mapping[str, Any], account: Account) -> dict[str, Any]:
        indices, page, size, total = self._selection_page(param, account, "sales_orders")
        data = account.data
        records = [
            self._maybe_broken(data, "sales_orders", i, order_record(data.order(i)))
            for i in indices
        ]
        return self._envelope(page, size, total, "pedido_venda_produto", records)

    def list_stock(self, param: Mapping[str, Any], account: Account) -> dict[str, Any]:
        page = int_param(param, "nPagina", 1, 1, 10**9)
        size = int_param(param, "nRegPorPagina", DEFAULT_PAGE, 1, MAX_PAGE)
        position = param.get("dDataPosicao")
        if not isinstance(position, str) or not position.strip():
            raise bad_request("O parâmetro [dDataPosicao] é obrigatório (dd/mm/aaaa).")
        try:
            parse_date_time(position, "00:00:00")
        except ValueError:
            raise bad_request("Data inválida em [dDataPosicao]: use dd/mm/aaaa.") from None
        show_all = flag(param, "cExibeTodos")
        data = account.data
        local = param.get("codigo_local_estoque") or 0
        if isinstance(local, str) and local.isdigit():
            local = int(local)
        if isinstance(local, bool) or not isinstance(local, int):
            raise bad_request("O parâmetro [codigo_local_estoque] deve ser um número.")
        k = 0 if local == 0 else data.warehouse(local)
        if k is None:
            raise bad_request(f"Local de estoque [{local}] não cadastrado.")
        selection = data.products.select(None)
        if show_all:
            total = selection.count
            offset = page_of(total, page, size)
            indices = selection.page(offset, size)
        else:
            moving = [
                i
                for i in selection.all()
                if (line := data.stock(data.product(i))[k]).physical_milli or line.reserved_milli
            ]
            total = len(moving)
            offset = page_of(total, page, size)
            indices = moving[offset : offset + size]
        records = []
        for i in indices:
            p = data.product(i)
            record = stock_record(p, data.stock(p)[k])
            records.append(self._maybe_broken(data, "stock_levels", i, record))
        return {
            "nPagina": page,
            "nTotPaginas": math.ceil(total / size),
            "nRegistros": len(records),
            "nTotRegistros": total,
            "dDataPosicao": position,
            "produtos": records,
        }

    def list_locals(self, param: Mapping[str, Any], account: Account) -> dict[str, Any]:
        page = int_param(param, "nPagina", 1, 1, 10**9)
        size = int_param(param, "nRegPorPagina", DEFAULT_PAGE, 1, MAX_PAGE)
        rows = [
            {
                "codigo_local_estoque": w.id,
                "codigo": f"LOC{k + 1:02d}",
                "descricao": w.name,
                "tipo": "PRO",
                "padrao": "S" if w.default else "N",
                "inativo": "N",
                "dispVenda": "S",
            }
            for k, w in enumerate(account.data.warehouses)
        ]
        offset = page_of(len(rows), page, size)
        chunk = rows[offset : offset + size]
        return {
            "nPagina": page,
            "nTotPaginas": math.ceil(len(rows) / size),
            "nRegistros": len(chunk),
            "nTotRegistros": len(rows),
            "locaisEncontrados": chunk,
        }

    # ---- assembly

    def app(self) -> Starlette:
        routes = [
            Route(f"{API_PREFIX}/{{module}}/{{service}}/", self.endpoint, methods=["POST"]),
            *admin_routes(self.core, [self._block_action(), self._revoke_action()]),
        ]

        async def http_error(request: Request, exc: Exception) -> Response:
            status = exc.status_code if isinstance(exc, HTTPException) else 500
            detail = str(getattr(exc, "detail", "")) or "Requisição inválida."
            return OmieFault(status, "SOAP-ENV:Client", f"ERROR: {detail}").response()

        app = Starlette(
            routes=routes,
            exception_handlers={HTTPException: http_error},
            lifespan=periodic_mutations_lifespan(self.core, self.config.mutate_every),
        )
        app.state.sandbox = self
        return app


def create_app(config: OmieSandboxConfig) -> Starlette:
    """The Omie sandbox as an ASGI app (state lives in the app: run one worker)."""
    return OmieSandbox(config).app()


def banner(config: OmieSandboxConfig, port: int) -> str:
    base = f"http://{config.host}:{port}"
    return (
        f"Omie sandbox on {base}{API_PREFIX} | app_key={config.app_key} "
        f"app_secret={config.app_secret} | admin {base}/__sandbox/stats | "
        f"{config.products} products, {config.customers} customers, {config.orders} orders "
        "| Ctrl-C stops"
    )


def serve(config: OmieSandboxConfig, announce: Callable[[str], None] = print) -> None:
    """Bind first (so the announced port is really ours), announce, serve until stopped."""
    app = create_app(config)  # invalid sizes fail here, before the port is taken
    serve_forever(app, config.host, config.port, lambda port: banner(config, port), announce)


@dataclass(frozen=True)
class RunningOmieSandbox:
    base_url: str  # ends with /api/v1: what a connector uses
    root_url: str  # for /__sandbox/...
    config: OmieSandboxConfig
    app: Starlette

    @property
    def sandbox(self) -> OmieSandbox:
        sandbox: OmieSandbox = self.app.state.sandbox
        return sandbox


@contextlib.contextmanager
def running(config: OmieSandboxConfig) -> Iterator[RunningOmieSandbox]:
    """Serve in a background thread on ``config.port`` (0 = any free port); for tests."""
    app = create_app(config)
    with serve_in_thread(app, config.host, config.port, "Omie sandbox") as root:
        yield RunningOmieSandbox(f"{root}{API_PREFIX}", root, config, app)
