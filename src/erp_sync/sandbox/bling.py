"""A local Bling API v3 (``https://api.bling.com.br/Api/v3``) for connector work offline.

Point a connector's base URL at ``http://127.0.0.1:<port>/Api/v3`` and it talks to
this server exactly as it would to Bling: same paths, parameters, envelopes, field
names and types, same error bodies, same OAuth2 flow, same request limits. Data come
from ``common.Dataset`` (deterministic, lazy, any size); this module only renders them
in Bling's shape and enforces Bling's rules.

Sources: Bling's public OpenAPI 3 document (``ProdutosDadosBaseDTO``,
``ProdutosDadosDTO``, ``ContatosDadosBaseDTO``, ``VendasDadosBaseDTO``,
``VendasDadosDTO``, ``EstoquesSaldos*``, ``ErrorResponse``) for shapes, parameters and
types; Bling's published limits for OAuth lifetimes and request quotas. Where they are
silent the choice below is the most plausible one, and it is written down here
because a connector author must know it.

Endpoints (all need ``Authorization: Bearer <access_token>``, except the token one)
---------------------------------------------------------------------------------
``POST /oauth/token``
    HTTP Basic ``client_id:client_secret``; form body (``application/x-www-form-
    urlencoded``, anything else is refused). ``grant_type=authorization_code&code=...``
    (the demo code is printed at start and may be exchanged any number of times) or
    ``grant_type=refresh_token&refresh_token=...``. Answer: ``access_token``,
    ``refresh_token``, ``expires_in`` (default 21600 = 6 h), ``token_type: "Bearer"``,
    ``scope``. The refresh token CHANGES on every refresh and the old one is dead at
    once (400 ``invalid_grant``); refresh tokens live 30 days. An access token stays
    valid until it expires even after a refresh. Bad client credentials: 401
    ``invalid_client``. OAuth errors use Bling's error envelope with the OAuth code as
    ``type``: ``{"error": {"type": "invalid_grant", "message": "invalid_grant",
    "description": "..."}}``.
``GET /produtos``
    ``pagina`` (1-based), ``limite`` (1..100, default 100), ``criterio`` (1 últimos
    incluídos = DEFAULT, 2 ativos, 3 inativos, 4 excluídos, 5 todos), ``tipo``
    (T/P/PS return everything: every product here is ``tipo`` P, ``formato`` S; other
    values return nothing), ``dataAlteracaoInicial``/``Final``,
    ``dataInclusaoInicial``/``Final``, ``idsProdutos[]``.
    **Decision: criterio 1 (the default) and 2 return ACTIVE products only; a sync that
    must see inactive products sends ``criterio=5``.** Hard-deleted products are
    gone: ``criterio=4`` always returns ``{"data": []}``, and deletions are found only by
    comparing full id lists (``/__sandbox/truth`` says which ids exist).
    List items carry only the base DTO: id, nome, codigo, preco, precoCusto,
    estoque.saldoVirtualTotal, tipo, situacao (A/I), formato (S), descricaoCurta,
    imagemURL. GTIN, NCM, unidade, marca, pesos... come only from the detail.
``GET /produtos/{id}``
    The full ``ProdutosDadosDTO``: gtin (GTIN-13, valid check digit), unidade
    (UN/CX/KG/PC/M), marca, tributacao.ncm (8 digits, no dots), categoria, dimensoes,
    estoque, fornecedor.precoCusto/precoCompra. As in Bling's schema the detail has no
    top-level ``precoCusto`` (the list has it). Unknown or deleted id: 404.
``GET /estoques/saldos?idsProdutos[]=..``
    ``idsProdutos[]`` is required; 1..100 ids per call (the limit is our choice), the
    brackets are required (``idsProdutos=1`` is refused with 400, as a PHP back end
    would not read it as a list). Unknown/deleted ids are silently left out; entries
    come in ascending product id. Each entry: produto {id, codigo}, saldoFisicoTotal,
    saldoVirtualTotal, depositos[] {id, saldoFisico, saldoVirtual}; every product has a
    line in every warehouse (2-3), possibly 0. saldoVirtual = físico minus reserved.
    Stock changes do not change the product's change time, and there is no stock
    change filter: a sync re-reads balances for the ids it knows.
``GET /estoques/saldos/{idDeposito}``, ``GET /depositos``
    Balances in one warehouse; the warehouse list (id, descricao, situacao, padrao).
``GET /contatos`` / ``GET /contatos/{id}``
    ``criterio`` 1 todos (default) or 3 últimos incluídos = active and inactive; 2
    excluídos and 4 sem movimento = nothing. Date filters as for products. List items:
    id, nome, codigo, situacao (A/I), numeroDocumento, telefone, celular. tipo (F/J),
    email, fantasia, ie, endereco.geral {endereco, numero, complemento, bairro, cep
    "00000-000", municipio, uf} only in the detail. numeroDocumento is digits only
    (CPF 11 / CNPJ 14, valid check digits).
``GET /pedidos/vendas`` / ``GET /pedidos/vendas/{id}``
    Filters: ``dataAlteracaoInicial/Final``, ``dataInicial/dataFinal`` (order date,
    ``YYYY-MM-DD``), ``idsSituacoes[]``. List items: id, numero, numeroLoja, data,
    dataSaida, dataPrevista, totalProdutos, total, contato {id, nome, tipoPessoa,
    numeroDocumento}, situacao {id, valor}, loja {id}. Detail adds itens[] {id, codigo,
    unidade, quantidade, desconto (percent), valor (unit price), descricao, produto
    {id}, ...}, parcelas[], transporte.frete... total = totalProdutos + transporte.frete;
    a line's value (not sent, as in Bling) is quantidade x valor x (1 - desconto/100)
    rounded half-up to the cent, and totalProdutos is the sum of those. situacao ids:
    6 Em aberto (valor 0), 9 Atendido (1), 12 Cancelado (2), 15 Em andamento (3), 24
    Verificado (4). dataSaida is ``"0000-00-00"`` until an order is fulfilled (Bling's
    empty date). Lines may reference products deleted later.

Formats: ids are integers (11 digits); money and quantities are JSON numbers with at
most 2 (money) or 3 (quantities) decimals, never strings; date-times are Brasília local
time ``YYYY-MM-DD HH:MM:SS`` with no offset (UTC-03:00); dates ``YYYY-MM-DD``.
**No record carries its change time**: like Bling's DTOs, none has ``dataAlteracao``.
An incremental sync keeps the upper bound of its last ``dataAlteracao`` window
(server-local time) as its cursor and should overlap the next window by a few
seconds: changes are stamped to the second and windows are inclusive at both ends.
A window without ``...Final`` ends "now"; a window longer than one calendar year is
refused (400 ``VALIDATION_ERROR`` naming both fields); a bare date means the start
(Inicial) or the last second (Final) of that day.

Order and paging: every list is sorted by id ascending (= creation order), stable,
so paging while nothing changes is exact; a page past the end is ``{"data": []}``,
which is how a client knows it is done (there is no total count).

Errors: ``{"error": {"type", "message", "description", "fields"?}}`` with types
``VALIDATION_ERROR`` (400, ``fields[]`` of {code, msg, element, namespace}),
``RESOURCE_NOT_FOUND`` (404), ``invalid_token`` (401: missing, unknown or expired
access token), ``TOO_MANY_REQUESTS`` (429), and injected ``INTERNAL_SERVER_ERROR``
(500), a non-JSON HTML body (502) and ``SERVICE_UNAVAILABLE`` (503 with
``Retry-After: 1``). A 429 carries no Retry-After and no rate-limit headers (Bling is
not known to send them), so clients must pace themselves.

Limits per account: ``rate_limit`` requests in any sliding 1-second window (default
3) and ``daily_limit`` per Brasília day (default 120,000); rejected requests do not
count. Requests that fail authentication are not limited. The token endpoint and
``/__sandbox/*`` are never limited.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from erp_sync.sandbox.common import (
    DAY,
    ORDER_STATUS_BY_CLASS,
    PRODUCT_INACTIVE_CLASS,
    Account,
    AccountSpec,
    Breaks,
    Customer,
    Dataset,
    FaultAction,
    JSONBytes,
    Knobs,
    Order,
    Product,
    ProductHead,
    RecordSpace,
    SandboxConfig,
    SandboxCore,
    StockLine,
    Window,
    add_one_year,
    admin_routes,
    bad_gateway_page,
    fmt_date,
    money,
    parse_local,
    periodic_mutations_lifespan,
    qty,
    serve_forever,
    serve_in_thread,
)

API_PREFIX = "/Api/v3"
MAX_LIMIT = 100
MAX_IDS = 100
SCOPE = "98308 98309 98310 98313 98314 318257553 5990556 6631498"

# How each stream's malformed records are spoilt (see Breaks); kind k is the k-th way.
BREAKS = Breaks(
    {
        "products": [("drop", ("id",)), ("comma", ("preco",)), ("null", ("nome",)),
                     ("wrap", ("preco",))],
        "stock_levels": [("drop", ("produto",)), ("comma", ("saldoFisicoTotal",)),
                         ("null", ("depositos",)), ("wrap", ("saldoVirtualTotal",))],
        "customers": [("drop", ("id",)), ("null", ("nome",)), ("bump", ("numeroDocumento",)),
                      ("list", ("nome",))],
        "sales_orders": [("drop", ("id",)), ("comma", ("total",)), ("null", ("contato",)),
                         ("wrap", ("total",))],
    }
)  # fmt: skip
MALFORMED_KIND_NAMES: Mapping[str, Sequence[str]] = BREAKS.kind_names()
break_record = BREAKS.apply


@dataclass(frozen=True)
class BlingSandboxConfig(SandboxConfig):
    """Everything the CLI can set: the common settings, Bling's limits and its OAuth app."""

    port: int = 8901
    rate_limit: int = 3
    daily_limit: int = 120_000
    token_ttl: int = 21600
    refresh_ttl: int = 30 * DAY
    client_id: str = "merxios-sandbox"
    client_secret: str = "sandbox-secret"  # noqa: S105 - public demo credential
    auth_code: str = "sandbox-code"

    def knobs(self) -> Knobs:
        knobs = Knobs()
        knobs.update(
            {
                **self.base_knobs(),
                "rate_limit": self.rate_limit,
                "daily_limit": self.daily_limit,
                "token_ttl": self.token_ttl,
            }
        )
        return knobs


# ----------------------------------------------------------------------- errors


class BlingError(Exception):
    """An answer in Bling's error envelope; raised anywhere inside a handler."""

    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        description: str,
        fields: list[dict[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(description)
        self.status = status
        self.body: dict[str, Any] = {
            "type": type_,
            "message": message,
            "description": description,
        }
        if fields:
            self.body["fields"] = fields
        self.headers = dict(headers or {})

    def response(self) -> Response:
        return JSONBytes({"error": self.body}, status_code=self.status, headers=self.headers)


def validation_error(problems: Sequence[tuple[str, str]]) -> BlingError:
    return BlingError(
        400,
        "VALIDATION_ERROR",
        "Não foi possível realizar a requisição",
        "A requisição possui parâmetros inválidos.",
        [
            {"code": 4, "msg": msg, "element": element, "namespace": "GLOBAL"}
            for element, msg in problems
        ],
    )


def invalid(element: str, msg: str) -> NoReturn:
    raise validation_error([(element, msg)])


def not_found(what: str) -> BlingError:
    return BlingError(
        404,
        "RESOURCE_NOT_FOUND",
        "Recurso não encontrado",
        f"{what} não foi encontrado.",
    )


def oauth_error(status: int, code: str, description: str) -> BlingError:
    return BlingError(status, code, code, description)


# ------------------------------------------------------------------ parameters


def int_param(request: Request, name: str, default: int, lo: int, hi: int | None) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        invalid(name, f"O parâmetro {name} deve ser um número inteiro.")
    if value < lo or (hi is not None and value > hi):
        bound = f"entre {lo} e {hi}" if hi is not None else f"maior ou igual a {lo}"
        invalid(name, f"O parâmetro {name} deve estar {bound}.")
    return value


def paging(request: Request) -> tuple[int, int]:
    page = int_param(request, "pagina", 1, 1, None)
    limit = int_param(request, "limite", MAX_LIMIT, 1, MAX_LIMIT)
    return (page - 1) * limit, limit


def id_list(request: Request, name: str) -> list[int] | None:
    """Values of ``name[]``; refuses the bracket-less form a PHP server would misread."""
    if name in request.query_params:
        invalid(name, f"Informe os valores como {name}[]=1&{name}[]=2.")
    raw = request.query_params.getlist(f"{name}[]")
    if not raw:
        return None
    try:
        return [int(v) for v in raw]
    except ValueError:
        invalid(f"{name}[]", f"Os valores de {name}[] devem ser números inteiros.")


def date_window(
    request: Request, start_name: str, end_name: str, now: float, *, one_year_max: bool
) -> Window:
    q = request.query_params
    bounds: list[int | None] = []
    for name, end_of_day in ((start_name, False), (end_name, True)):
        raw = q.get(name)
        if raw is None or raw == "":
            bounds.append(None)
            continue
        try:
            bounds.append(parse_local(raw, end_of_day=end_of_day))
        except ValueError:
            invalid(name, f"Data inválida em {name}: use AAAA-MM-DD HH:MM:SS.")
    start, end = bounds
    if start is not None and end is not None and start > end:
        raise validation_error(
            [
                (start_name, f"{start_name} deve ser anterior a {end_name}."),
                (end_name, f"{end_name} deve ser posterior a {start_name}."),
            ]
        )
    if one_year_max and start is not None:
        effective_end = end if end is not None else int(now)
        if effective_end > add_one_year(start):
            msg = "O intervalo entre as datas não pode ser maior que um ano."
            raise validation_error([(start_name, msg), (end_name, msg)])
    return start, end


# ------------------------------------------------------------------- rendering


def product_base(p: ProductHead, available_milli: int) -> dict[str, Any]:
    """A list item; ``available_milli`` is the stock total (``Dataset.available_milli``)."""
    return {
        "id": p.id,
        "nome": p.name,
        "codigo": p.sku,
        "preco": money(p.price_cents),
        "precoCusto": money(p.cost_cents),
        "estoque": {"saldoVirtualTotal": qty(available_milli)},
        "tipo": "P",
        "situacao": "A" if p.active else "I",
        "formato": "S",
        "descricaoCurta": p.short_description,
        "imagemURL": "",
    }


def product_detail(p: Product, stock: list[StockLine]) -> dict[str, Any]:
    cost = money(p.cost_cents)
    return {
        "id": p.id,
        "nome": p.name,
        "codigo": p.sku,
        "preco": money(p.price_cents),
        "tipo": "P",
        "situacao": "A" if p.active else "I",
        "formato": "S",
        "descricaoCurta": p.short_description,
        "imagemURL": "",
        "unidade": p.unit,
        "pesoLiquido": p.weight_grams / 1000,
        "pesoBruto": round(p.weight_grams * 1.05) / 1000,
        "volumes": 1,
        "itensPorCaixa": 12 if p.unit == "CX" else 1,
        "gtin": p.gtin,
        "gtinEmbalagem": p.gtin,
        "tipoProducao": "T",
        "condicao": 1,
        "freteGratis": False,
        "marca": p.brand,
        "descricaoComplementar": "",
        "linkExterno": "",
        "observacoes": "",
        "descricaoEmbalagemDiscreta": "",
        "categoria": {"id": p.category_id},
        "estoque": {
            "minimo": p.min_stock,
            "maximo": p.max_stock,
            "crossdocking": 0,
            "localizacao": "",
            "saldoVirtualTotal": qty(sum(s.available_milli for s in stock)),
        },
        "actionEstoque": "",
        "dimensoes": {
            "largura": p.width_cm,
            "altura": p.height_cm,
            "profundidade": p.depth_cm,
            "unidadeMedida": 1,
        },
        "tributacao": {
            "origem": 0,
            "nFCI": "",
            "ncm": p.ncm,
            "cest": "",
            "codigoListaServicos": "",
            "spedTipoItem": "00",
            "codigoItem": "",
            "percentualTributos": 0,
            "valorBaseStRetencao": 0,
            "valorStRetencao": 0,
            "valorICMSSubstituto": 0,
            "codigoExcecaoTipi": "",
            "classeEnquadramentoIpi": "",
            "valorIpiFixo": 0,
            "codigoSeloIpi": "",
            "valorPisFixo": 0,
            "valorCofinsFixo": 0,
            "codigoANP": "",
            "descricaoANP": "",
            "percentualGLP": 0,
            "percentualGasNacional": 0,
            "percentualGasImportado": 0,
            "valorPartida": 0,
            "tipoArmamento": 0,
            "descricaoCompletaArmamento": "",
            "dadosAdicionais": "",
            "grupoProduto": {"id": 0},
        },
        "midia": {"video": {"url": ""}, "imagens": {"externas": [], "internas": []}},
        "linhaProduto": {"id": 0},
        "estrutura": {"tipoEstoque": "F", "lancamentoEstoque": "", "componentes": []},
        "camposCustomizados": [],
        "fornecedor": {
            "id": 0,
            "contato": {"id": 0, "nome": ""},
            "codigo": "",
            "precoCusto": cost,
            "precoCompra": cost,
        },
        "artigoPerigoso": False,
        "variacoes": [],
    }


def stock_entry(p: ProductHead, stock: list[StockLine]) -> dict[str, Any]:
    return {
        "produto": {"id": p.id, "codigo": p.sku},
        "saldoFisicoTotal": qty(sum(s.physical_milli for s in stock)),
        "saldoVirtualTotal": qty(sum(s.available_milli for s in stock)),
        "depositos": [
            {
                "id": s.warehouse.id,
                "saldoFisico": qty(s.physical_milli),
                "saldoVirtual": qty(s.available_milli),
            }
            for s in stock
        ],
    }


def contact_base(c: Customer) -> dict[str, Any]:
    return {
        "id": c.id,
        "nome": c.name,
        "codigo": c.code,
        "situacao": "A" if c.active else "I",
        "numeroDocumento": c.document,
        "telefone": c.phone,
        "celular": c.mobile,
    }


def contact_detail(c: Customer) -> dict[str, Any]:
    address = {
        "endereco": c.street,
        "cep": c.zip_code,
        "bairro": c.district,
        "municipio": c.city,
        "uf": c.state,
        "numero": c.number,
        "complemento": c.complement,
    }
    empty = dict.fromkeys(address, "")
    return contact_base(c) | {
        "fantasia": c.trade_name,
        "tipo": c.person_type,
        "indicadorIe": 1 if c.person_type == "J" else 9,
        "ie": c.state_registration,
        "rg": "",
        "inscricaoMunicipal": "",
        "orgaoEmissor": "",
        "email": c.email,
        "emailNotaFiscal": c.email,
        "orgaoPublico": "",
        "endereco": {"geral": address, "cobranca": empty},
        "vendedor": {"id": 0},
        "dadosAdicionais": {"dataNascimento": "0000-00-00", "sexo": "", "naturalidade": ""},
        "financeiro": {
            "limiteCredito": money(c.credit_limit_cents),
            "condicaoPagamento": "30",
            "categoria": {"id": 0},
        },
        "pais": {"nome": "BRASIL"},
        "tiposContato": [{"id": 1, "descricao": "Cliente"}],
        "pessoasContato": [],
    }


def order_base(o: Order) -> dict[str, Any]:
    shipped = o.status.name in ("Atendido", "Verificado")
    return {
        "id": o.id,
        "numero": o.number,
        "numeroLoja": o.store_number,
        "data": fmt_date(o.ordered_at),
        "dataSaida": fmt_date(o.ordered_at + DAY) if shipped else "0000-00-00",
        "dataPrevista": fmt_date(o.ordered_at + 7 * DAY),
        "totalProdutos": money(o.total_products_cents),
        "total": money(o.total_cents),
        "contato": {
            "id": o.customer.id,
            "nome": o.customer.name,
            "tipoPessoa": o.customer.person_type,
            "numeroDocumento": o.customer.document,
        },
        "situacao": {"id": o.status.id, "valor": o.status.value},
        "loja": {"id": 0},
    }


def order_detail(o: Order) -> dict[str, Any]:
    c = o.customer
    return order_base(o) | {
        "numeroPedidoCompra": "",
        "outrasDespesas": 0,
        "observacoes": "",
        "observacoesInternas": "",
        "desconto": {"valor": 0, "unidade": "REAL"},
        "categoria": {"id": 0},
        "notaFiscal": {"id": 0},
        "tributacao": {"totalICMS": 0, "totalIPI": 0},
        "itens": [
            {
                "id": line.id,
                "codigo": line.sku,
                "unidade": line.unit,
                "quantidade": qty(line.quantity_milli),
                "desconto": line.discount_pct,
                "valor": money(line.unit_price_cents),
                "aliquotaIPI": 0,
                "descricao": line.description,
                "descricaoDetalhada": "",
                "produto": {"id": line.product_id},
                "comissao": {"base": 0, "aliquota": 0, "valor": 0},
                "naturezaOperacao": {"id": 0},
            }
            for line in o.lines
        ],
        "parcelas": [
            {
                "id": part.id,
                "dataVencimento": fmt_date(part.due_at),
                "valor": money(part.value_cents),
                "observacoes": "",
                "caut": "",
                "formaPagamento": {"id": part.payment_method_id},
            }
            for part in o.installments
        ],
        "transporte": {
            "fretePorConta": 0,
            "frete": money(o.freight_cents),
            "quantidadeVolumes": 1,
            "pesoBruto": 0,
            "prazoEntrega": 0,
            "contato": {"id": 0, "nome": ""},
            "etiqueta": {
                "nome": c.name,
                "endereco": c.street,
                "numero": c.number,
                "complemento": c.complement,
                "municipio": c.city,
                "uf": c.state,
                "cep": c.zip_code,
                "bairro": c.district,
                "nomePais": "BRASIL",
            },
            "volumes": [],
        },
        "vendedor": {"id": o.seller_id},
        "intermediador": {"cnpj": "", "nomeUsuario": ""},
        "taxas": {"taxaComissao": 0, "custoFrete": 0, "valorBase": 0},
    }


# --------------------------------------------------------------------- the app


Handler = Callable[[Request, Account], Response]

PRODUCT_ACTIVE = frozenset(c for c in range(20) if c != PRODUCT_INACTIVE_CLASS)
PRODUCT_CRITERIA: dict[int, frozenset[int] | None] = {
    1: PRODUCT_ACTIVE,
    2: PRODUCT_ACTIVE,
    3: frozenset({PRODUCT_INACTIVE_CLASS}),
    4: frozenset(),
    5: None,
}
CONTACT_CRITERIA: dict[int, frozenset[int] | None] = {
    1: None,
    2: frozenset(),
    3: None,
    4: frozenset(),
}


class BlingSandbox:
    """Bling's HTTP surface over a SandboxCore."""

    def __init__(self, config: BlingSandboxConfig) -> None:
        self.config = config
        main = AccountSpec(config.client_id, config.client_secret, config.auth_code)
        self.core = SandboxCore(
            config.accounts(main),
            config.knobs(),
            MALFORMED_KIND_NAMES,
            refresh_ttl=config.refresh_ttl,
            fault_seed=config.seed,
        )

    # ---- request pipeline

    def guarded(self, name: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """Auth, rate limits, latency and injected failures, in Bling's order."""
        core = self.core

        async def endpoint(request: Request) -> Response:
            arrived = time.monotonic()
            knobs = core.knobs
            account, response, injected = None, None, False
            header = request.headers.get("authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                response = BlingError(
                    401, "invalid_token", "invalid_token", "Access token não informado."
                ).response()
            else:
                client_id, reason = core.tokens.check(token.strip())
                account = core.account(client_id) if client_id else None
                if account is None:
                    description = (
                        "The access token provided has expired"
                        if reason == "expired"
                        else "The access token provided is invalid"
                    )
                    response = BlingError(
                        401, "invalid_token", "invalid_token", description
                    ).response()
            if account is not None:
                if account.limiter.try_acquire(arrived, knobs.rate_limit):
                    response = BlingError(
                        429,
                        "TOO_MANY_REQUESTS",
                        "Limite de requisições atingido.",
                        f"Limite de {knobs.rate_limit} requisições por segundo excedido.",
                    ).response()
                elif not account.daily.try_acquire(core.clock(), knobs.daily_limit):
                    response = BlingError(
                        429,
                        "TOO_MANY_REQUESTS",
                        "Limite de requisições atingido.",
                        f"Limite diário de {knobs.daily_limit} requisições excedido.",
                    ).response()
                else:
                    status = core.pick_injected_error()
                    if status is not None:
                        injected = True
                        response = injected_failure(status)
                    else:
                        try:
                            response = handler(request, account)
                        except BlingError as exc:
                            response = exc.response()
            assert response is not None
            if knobs.latency_ms:
                await asyncio.sleep(knobs.latency_ms / 1000)
            stats_account = account or core.primary
            stats_account.stats.record(name, response.status_code, arrived, injected)
            return response

        return endpoint

    # ---- handlers

    def list_products(self, request: Request, account: Account) -> Response:
        offset, limit = paging(request)
        criterio = int_param(request, "criterio", 1, 1, 5)
        tipo = request.query_params.get("tipo", "T") or "T"
        now = self.core.clock()
        changed = date_window(
            request, "dataAlteracaoInicial", "dataAlteracaoFinal", now, one_year_max=True
        )
        created = date_window(
            request, "dataInclusaoInicial", "dataInclusaoFinal", now, one_year_max=True
        )
        ids = id_list(request, "idsProdutos")
        classes = PRODUCT_CRITERIA[criterio]
        data = account.data
        if tipo.upper() not in ("T", "P", "PS") or classes == frozenset():
            indices: list[int] = []
        elif ids is not None:
            indices = self._by_ids(
                data.products, ids, data.product_id_base, classes, changed, created
            )[offset : offset + limit]
        else:
            indices = data.products.select(classes, changed, created).page(offset, limit)
        rate = self.core.knobs.malformed_rate
        out = []
        for i in indices:
            # The head, not the whole Product: a list item shows only its first draws.
            p = data.product_head(i)
            record = product_base(p, data.available_milli(p))
            if data.is_malformed("products", i, rate):
                record = break_record("products", data.malformed_kind("products", i), record)
            out.append(record)
        return JSONBytes({"data": out})

    @staticmethod
    def _by_ids(
        space: RecordSpace,
        ids: list[int],
        base: int,
        classes: frozenset[int] | None,
        changed: Window,
        created: Window,
    ) -> list[int]:
        out = set()
        for pid in ids:
            i = pid - base
            if not space.exists(i):
                continue
            if classes is not None and space.class_of(i) not in classes:
                continue
            ok = True
            for (start, end), ts in (
                (changed, space.changed_at(i)),
                (created, space.created_at(i)),
            ):
                if (start is not None and ts < start) or (end is not None and ts > end):
                    ok = False
            if ok:
                out.add(i)
        return sorted(out)

    def get_product(self, request: Request, account: Account) -> Response:
        data = account.data
        i = data.product_index(request.path_params["id"])
        if i is None:
            raise not_found("O produto")
        p = data.product(i)
        record = product_detail(p, data.stock(p))
        if data.is_malformed("products", i, self.core.knobs.malformed_rate):
            record = break_record("products", data.malformed_kind("products", i), record)
        return JSONBytes({"data": record})

    def _stock_response(
        self, data: Dataset, ids: list[int] | None, warehouse: int | None
    ) -> Response:
        if ids is None:
            invalid("idsProdutos[]", "Informe ao menos um produto em idsProdutos[].")
        if len(ids) > MAX_IDS:
            invalid("idsProdutos[]", f"Informe no máximo {MAX_IDS} produtos por requisição.")
        rate = self.core.knobs.malformed_rate
        out = []
        for i in sorted({pid - data.product_id_base for pid in ids}):
            if not data.products.exists(i):
                continue
            p = data.product_head(i)
            stock = data.stock(p)
            if warehouse is not None:
                stock = [stock[warehouse]]
            record = stock_entry(p, stock)
            if warehouse is not None:
                del record["depositos"]
            if data.is_malformed("stock_levels", i, rate):
                kind = data.malformed_kind("stock_levels", i)
                record = break_record("stock_levels", kind, record)
            out.append(record)
        return JSONBytes({"data": out})

    def stock_balances(self, request: Request, account: Account) -> Response:
        return self._stock_response(account.data, id_list(request, "idsProdutos"), None)

    def stock_balances_warehouse(self, request: Request, account: Account) -> Response:
        data = account.data
        k = data.warehouse(request.path_params["id"])
        if k is None:
            raise not_found("O depósito")
        return self._stock_response(data, id_list(request, "idsProdutos"), k)

    def list_warehouses(self, request: Request, account: Account) -> Response:
        offset, limit = paging(request)
        rows = [
            {
                "id": w.id,
                "descricao": w.name,
                "situacao": 1,
                "padrao": w.default,
                "desconsiderarSaldo": False,
            }
            for w in account.data.warehouses
        ]
        return JSONBytes({"data": rows[offset : offset + limit]})

    def list_contacts(self, request: Request, account: Account) -> Response:
        offset, limit = paging(request)
        criterio = int_param(request, "criterio", 1, 1, 4)
        now = self.core.clock()
        changed = date_window(
            request, "dataAlteracaoInicial", "dataAlteracaoFinal", now, one_year_max=True
        )
        created = date_window(
            request, "dataInclusaoInicial", "dataInclusaoFinal", now, one_year_max=True
        )
        ids = id_list(request, "idsContatos")
        classes = CONTACT_CRITERIA[criterio]
        data = account.data
        if classes == frozenset():
            indices: list[int] = []
        elif ids is not None:
            indices = self._by_ids(
                data.customers, ids, data.customer_id_base, classes, changed, created
            )[offset : offset + limit]
        else:
            indices = data.customers.select(classes, changed, created).page(offset, limit)
        rate = self.core.knobs.malformed_rate
        out = []
        for i in indices:
            record = contact_base(data.customer(i))
            if data.is_malformed("customers", i, rate):
                record = break_record("customers", data.malformed_kind("customers", i), record)
            out.append(record)
        return JSONBytes({"data": out})

    def get_contact(self, request: Request, account: Account) -> Response:
        data = account.data
        i = data.customer_index(request.path_params["id"])
        if i is None:
            raise not_found("O contato")
        record = contact_detail(data.customer(i))
        if data.is_malformed("customers", i, self.core.knobs.malformed_rate):
            record = break_record("customers", data.malformed_kind("customers", i), record)
        return JSONBytes({"data": record})

    def list_orders(self, request: Request, account: Account) -> Response:
        offset, limit = paging(request)
        now = self.core.clock()
        changed = date_window(
            request, "dataAlteracaoInicial", "dataAlteracaoFinal", now, one_year_max=True
        )
        created = date_window(request, "dataInicial", "dataFinal", now, one_year_max=False)
        statuses = id_list(request, "idsSituacoes")
        classes: frozenset[int] | None = None
        if statuses is not None:
            wanted = set(statuses)
            classes = frozenset(c for c, s in enumerate(ORDER_STATUS_BY_CLASS) if s.id in wanted)
        data = account.data
        if classes == frozenset():
            indices: list[int] = []
        else:
            indices = data.orders.select(classes, changed, created).page(offset, limit)
        rate = self.core.knobs.malformed_rate
        out = []
        for i in indices:
            record = order_base(data.order(i))
            if data.is_malformed("sales_orders", i, rate):
                kind = data.malformed_kind("sales_orders", i)
                record = break_record("sales_orders", kind, record)
            out.append(record)
        return JSONBytes({"data": out})

    def get_order(self, request: Request, account: Account) -> Response:
        data = account.data
        i = data.order_index(request.path_params["id"])
        if i is None:
            raise not_found("O pedido de venda")
        record = order_detail(data.order(i))
        if data.is_malformed("sales_orders", i, self.core.knobs.malformed_rate):
            record = break_record("sales_orders", data.malformed_kind("sales_orders", i), record)
        return JSONBytes({"data": record})

    async def token(self, request: Request) -> Response:
        arrived = time.monotonic()
        account = None
        try:
            account = self._client(request)
            response = self._grant(account, await request.body(), request)
        except BlingError as exc:
            response = exc.response()
        (account or self.core.primary).stats.record(
            "POST /oauth/token", response.status_code, arrived
        )
        return response

    def _client(self, request: Request) -> Account:
        header = request.headers.get("authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            raise oauth_error(401, "invalid_client", "Credenciais do cliente não informadas.")
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise oauth_error(401, "invalid_client", "Credenciais do cliente inválidas.") from None
        client_id, _, secret = decoded.partition(":")
        account = self.core.accounts.get(client_id)
        if account is None or account.spec.client_secret != secret:
            raise oauth_error(401, "invalid_client", "Credenciais do cliente inválidas.")
        return account

    def _grant(self, account: Account, body: bytes, request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("application/x-www-form-urlencoded"):
            raise oauth_error(
                400, "invalid_request", "Envie o corpo como application/x-www-form-urlencoded."
            )
        form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        grant = form.get("grant_type")
        knobs, tokens = self.core.knobs, self.core.tokens
        if grant == "authorization_code":
            if form.get("code") != account.spec.auth_code:
                raise oauth_error(400, "invalid_grant", "Invalid authorization code")
            pair = tokens.issue(account.spec.client_id, knobs.token_ttl)
        elif grant == "refresh_token":
            refresh = form.get("refresh_token", "")
            if not refresh:
                raise oauth_error(400, "invalid_request", "refresh_token não informado.")
            if knobs.reject_refresh:
                raise oauth_error(400, "invalid_grant", "Invalid refresh token")
            rotated = tokens.rotate(refresh, account.spec.client_id, knobs.token_ttl)
            if rotated is None:
                raise oauth_error(400, "invalid_grant", "Invalid refresh token")
            pair = rotated
        elif grant is None:
            raise oauth_error(400, "invalid_request", "grant_type não informado.")
        else:
            raise oauth_error(400, "unsupported_grant_type", f"grant_type {grant} não suportado.")
        return JSONBytes(
            {
                "access_token": pair.access_token,
                "expires_in": pair.expires_in,
                "token_type": "Bearer",
                "scope": SCOPE,
                "refresh_token": pair.refresh_token,
            },
            headers={"Cache-Control": "no-store"},
        )

    # ---- assembly

    def app(self) -> Starlette:
        g = self.guarded
        p = API_PREFIX
        routes = [
            Route(f"{p}/oauth/token", self.token, methods=["POST"]),
            Route(f"{p}/produtos", g("GET /produtos", self.list_products), methods=["GET"]),
            Route(
                f"{p}/produtos/{{id:int}}",
                g("GET /produtos/{id}", self.get_product),
                methods=["GET"],
            ),
            Route(
                f"{p}/estoques/saldos",
                g("GET /estoques/saldos", self.stock_balances),
                methods=["GET"],
            ),
            Route(
                f"{p}/estoques/saldos/{{id:int}}",
                g("GET /estoques/saldos/{idDeposito}", self.stock_balances_warehouse),
                methods=["GET"],
            ),
            Route(f"{p}/depositos", g("GET /depositos", self.list_warehouses), methods=["GET"]),
            Route(f"{p}/contatos", g("GET /contatos", self.list_contacts), methods=["GET"]),
            Route(
                f"{p}/contatos/{{id:int}}",
                g("GET /contatos/{id}", self.get_contact),
                methods=["GET"],
            ),
            Route(
                f"{p}/pedidos/vendas", g("GET /pedidos/vendas", self.list_orders), methods=["GET"]
            ),
            Route(
                f"{p}/pedidos/vendas/{{id:int}}",
                g("GET /pedidos/vendas/{id}", self.get_order),
                methods=["GET"],
            ),
            *admin_routes(self.core, [self._expire_tokens_action()]),
        ]

        async def http_error(request: Request, exc: Exception) -> Response:
            status = exc.status_code if isinstance(exc, HTTPException) else 500
            if status == 404:
                return not_found("O recurso requisitado").response()
            return BlingError(
                status,
                "INVALID_REQUEST" if status < 500 else "INTERNAL_SERVER_ERROR",
                "Requisição inválida",
                str(getattr(exc, "detail", "")),
            ).response()

        app = Starlette(
            routes=routes,
            exception_handlers={HTTPException: http_error},
            lifespan=periodic_mutations_lifespan(self.core, self.config.mutate_every),
        )
        app.state.sandbox = self
        return app

    def _expire_tokens_action(self) -> FaultAction:
        """``{"expire_tokens": true}`` expires every access token now (refresh tokens live)."""
        tokens = self.core.tokens

        def check(value: object) -> None:
            if value is not None and not isinstance(value, bool):
                raise ValueError("expire_tokens must be true or false")

        def apply(value: object) -> dict[str, Any]:
            return {"expired_tokens": tokens.expire_all_access() if value else 0}

        return FaultAction("expire_tokens", check, apply)


def injected_failure(status: int) -> Response:
    """The three shapes upstream failures take in the wild (one is not even JSON)."""
    if status == 502:
        return bad_gateway_page()
    if status == 503:
        return BlingError(
            503,
            "SERVICE_UNAVAILABLE",
            "Serviço indisponível",
            "O serviço está temporariamente indisponível, tente novamente.",
            headers={"Retry-After": "1"},
        ).response()
    return BlingError(
        500,
        "INTERNAL_SERVER_ERROR",
        "Erro interno",
        "Ocorreu um erro inesperado ao processar a requisição.",
    ).response()


def create_app(config: BlingSandboxConfig) -> Starlette:
    """The Bling sandbox as an ASGI app (state lives in the app: run one worker)."""
    return BlingSandbox(config).app()


def banner(config: BlingSandboxConfig, port: int) -> str:
    base = f"http://{config.host}:{port}"
    return (
        f"Bling v3 sandbox on {base}{API_PREFIX} | client_id={config.client_id} "
        f"client_secret={config.client_secret} code={config.auth_code} | "
        f"admin {base}/__sandbox/stats | {config.products} products, "
        f"{config.customers} customers, {config.orders} orders | Ctrl-C stops"
    )


def serve(config: BlingSandboxConfig, announce: Callable[[str], None] = print) -> None:
    """Bind first (so the announced port is really ours), announce, serve until stopped."""
    app = create_app(config)  # invalid sizes fail here, before the port is taken
    serve_forever(app, config.host, config.port, lambda port: banner(config, port), announce)


@dataclass(frozen=True)
class RunningSandbox:
    base_url: str  # ends with /Api/v3: what a connector uses
    root_url: str  # for /__sandbox/...
    config: BlingSandboxConfig
    app: Starlette


@contextlib.contextmanager
def running(config: BlingSandboxConfig) -> Iterator[RunningSandbox]:
    """Serve in a background thread on ``config.port`` (0 = any free port); for tests."""
    app = create_app(config)
    with serve_in_thread(app, config.host, config.port, "Bling sandbox") as root:
        yield RunningSandbox(f"{root}{API_PREFIX}", root, config, app)
