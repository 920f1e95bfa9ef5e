"""Omie JSON -> canonical models, and Omie's answers -> what they mean.

Raw shapes are validated strictly (pydantic): money and quantities must be JSON numbers
(Omie never sends strings; ``"12,50"`` or ``{"valor": 12.5}`` means a broken record),
ids positive integers, names non-empty, flags ``"S"``/``"N"``. A bad record raises
``ValidationError`` (or ``ValueError``) from ``to_canonical`` and the engine
quarantines it with the reason; the page goes on.

Omie answers every call with HTTP 200 and data, or with a fault body
``{"faultstring", "faultcode"}`` (usually HTTP 500; 403 for refused keys, 425 for a
blocked app key, sometimes 200). ``classify`` reads the fault once, here, into a
``Fault`` the client acts on; nothing else parses fault texts.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal
from zoneinfo import ZoneInfo

import orjson
from pydantic import Field, StrictInt, StrictStr

from erp_sync.canonical import (
    Canonical,
    Customer,
    Product,
    SalesOrder,
    SalesOrderLine,
    StockLevel,
)
from erp_sync.connectors.base import Mapper, map_stream
from erp_sync.connectors.http import ErpResponse
from erp_sync.connectors.raw import (
    Id,
    Name,
    Number,
    RawModel,
    is_id,
    stock_external_id,
    text_or_none,
    zip_code,
)
from erp_sync.kit.documents import digits

BRASILIA = ZoneInfo("America/Sao_Paulo")

# ------------------------------------------------------------------------------ faults


class FaultKind(enum.Enum):
    BLOCKED = "blocked"  # API bloqueada por consumo indevido (MISUSE_API_PROCESS, HTTP 425)
    NO_RECORDS = "no_records"  # Client-5113: an empty page, not an error
    REDUNDANT = "redundant"  # Client-6: the same call again within 60 s
    BAD_KEY = "bad_key"  # A chave de acesso não está preenchida ou não é válida
    BUSY = "busy"  # Client-1880: the same call is still being processed
    SERVER = "server"  # SOAP-ENV:Server: Omie failed; it may have processed the call
    REFUSED = "refused"  # any other client fault: our call is wrong


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    code: str
    text: str
    # Seconds Omie told us to wait ("Tente novamente em N segundos", "Aguarde N segundos").
    wait_s: float | None = None

    def describe(self) -> str:
        return f"{self.code}: {self.text}" if self.code else self.text


_SECONDS = re.compile(r"(\d+)\s*segundo", re.IGNORECASE)
_MINUTES = re.compile(r"(\d+)\s*minuto", re.IGNORECASE)


def _stated_wait(text: str) -> float | None:
    if m := _SECONDS.search(text):
        return float(m.group(1))
    if m := _MINUTES.search(text):
        return float(m.group(1)) * 60
    return None


def fault_of(body: Any, status: int) -> Fault | None:
    """The fault in an Omie answer body, or None when it carries data."""
    if not isinstance(body, dict) or ("faultstring" not in body and "faultcode" not in body):
        if status == 425:  # a block answered without the usual body
            return Fault(FaultKind.BLOCKED, "MISUSE_API_PROCESS", "HTTP 425")
        return None
    code = str(body.get("faultcode") or "").strip()
    text = " ".join(str(body.get("faultstring") or "").split())
    low = f"{code} {text}".lower()
    if status == 425 or "misuse_api_process" in low or "consumo indevido" in low:
        kind = FaultKind.BLOCKED
    elif code.endswith("Client-5113") or "não existem registros" in low:
        kind = FaultKind.NO_RECORDS
    elif code.endswith("Client-6") or "redundant" in low:
        kind = FaultKind.REDUNDANT
    elif "chave de acesso" in low or "app_key" in low or "app_secret" in low:
        kind = FaultKind.BAD_KEY
    elif code.endswith("Client-1880") or "requisição desse método" in low:
        kind = FaultKind.BUSY
    elif code.startswith("SOAP-ENV:Server"):
        kind = FaultKind.SERVER
    else:
        kind = FaultKind.REFUSED
    return Fault(kind, code, text, _stated_wait(text))


_TAGS = re.compile(r"<[^>]+>")


def describe_error(resp: ErpResponse) -> str:
    """An Omie answer as one readable sentence, e.g. ``SOAP-ENV:Client-6: ERROR: Consumo
    redundante detectado...``; a non-JSON body (a proxy's HTML page) as its text."""
    try:
        body = orjson.loads(resp.body)
    except orjson.JSONDecodeError:
        text = " ".join(_TAGS.sub(" ", resp.body[:2000].decode("utf-8", "replace")).split())
        return (text[:300] or "(empty body)") + (" (not JSON)" if text else "")
    fault = fault_of(body, resp.status)
    if fault is not None:
        return fault.describe()[:600]
    return " ".join(resp.body[:300].decode("utf-8", "replace").split()) or "(empty body)"


# ------------------------------------------------------------------------------ values


Flag = Literal["S", "N", ""]


def omie_datetime(day: str | None, clock: str | None) -> datetime | None:
    """``dd/mm/aaaa`` + ``HH:MM:SS`` (Brasília) -> an aware datetime; None when empty."""
    day = text_or_none(day)
    if day is None:
        return None
    moment = datetime.strptime(f"{day} {text_or_none(clock) or '00:00:00'}", "%d/%m/%Y %H:%M:%S")
    return moment.replace(tzinfo=BRASILIA)


def omie_date(day: str | None) -> date | None:
    day = text_or_none(day)
    return None if day is None else datetime.strptime(day, "%d/%m/%Y").date()


class _Info(RawModel):
    dInc: StrictStr | None = None
    hInc: StrictStr | None = None
    dAlt: StrictStr | None = None
    hAlt: StrictStr | None = None

    def changed_at(self) -> datetime | None:
        return omie_datetime(self.dAlt, self.hAlt) or omie_datetime(self.dInc, self.hInc)


# ---------------------------------------------------------------------------- products


class OmieProduct(RawModel):
    codigo_produto: Id
    descricao: Name
    codigo: StrictStr | None = None
    unidade: StrictStr | None = None
    ncm: StrictStr | None = None
    ean: StrictStr | None = None
    valor_unitario: Number
    marca: StrictStr | None = None
    inativo: Flag = "N"
    info: _Info | None = None


def product(raw: dict[str, Any]) -> Product:
    p = OmieProduct.model_validate(raw)
    ncm = digits(p.ncm) if p.ncm else ""  # Omie dots its NCMs: 7318.15.00
    return Product(
        externalId=str(p.codigo_produto),
        sourceUpdatedAt=p.info.changed_at() if p.info else None,
        sku=text_or_none(p.codigo),
        name=p.descricao,
        gtin=text_or_none(p.ean),
        ncm=ncm or None,
        unit=text_or_none(p.unidade),
        brand=text_or_none(p.marca),
        listPrice=p.valor_unitario,
        costPrice=None,  # not in Omie's product record (the stock position has nCMC)
        active=p.inativo != "S",
    )


# ------------------------------------------------------------------------------- stock

# The connector adds the local's name to each stock line (ListarPosEstoque has only its id).
LOCAL_NAME_KEY = "descricao_local_estoque"


class OmieStockLine(RawModel):
    nCodProd: Id
    codigo_local_estoque: Id
    fisico: Number
    reservado: Number
    nSaldo: Number
    descricao_local_estoque: StrictStr | None = None


def stock_level(raw: dict[str, Any]) -> StockLevel:
    s = OmieStockLine.model_validate(raw)
    return StockLevel(
        externalId=stock_external_id(s.nCodProd, s.codigo_local_estoque),
        productExternalId=str(s.nCodProd),
        warehouseId=str(s.codigo_local_estoque),
        warehouseName=text_or_none(s.descricao_local_estoque),
        quantity=s.fisico,
        reserved=s.reservado,
        available=s.fisico - s.reservado,
    )


# --------------------------------------------------------------------------- customers


class OmieCustomer(RawModel):
    codigo_cliente_omie: Id
    razao_social: Name
    nome_fantasia: StrictStr | None = None
    cnpj_cpf: StrictStr | None = None
    pessoa_fisica: Flag = ""
    email: StrictStr | None = None
    telefone1_ddd: StrictStr | None = None
    telefone1_numero: StrictStr | None = None
    telefone2_ddd: StrictStr | None = None
    telefone2_numero: StrictStr | None = None
    endereco: StrictStr | None = None
    endereco_numero: StrictStr | None = None
    complemento: StrictStr | None = None
    bairro: StrictStr | None = None
    cidade: StrictStr | None = None
    estado: StrictStr | None = None
    cep: StrictStr | None = None
    codigo_pais: StrictStr | None = None
    inativo: Flag = "N"
    info: _Info | None = None


_CITY_UF = re.compile(r"\s*\([A-Z]{2}\)\s*$")


def _phone(ddd: str | None, number: str | None) -> str | None:
    number = text_or_none(number)
    if number is None:
        return None
    ddd = text_or_none(ddd)
    return f"({ddd}) {number}" if ddd else number


def customer(raw: dict[str, Any]) -> Customer:
    c = OmieCustomer.model_validate(raw)
    doc = text_or_none(c.cnpj_cpf)
    if c.pessoa_fisica:
        person: str | None = "F" if c.pessoa_fisica == "S" else "J"
    else:
        person = {11: "F", 14: "J"}.get(len(digits(doc))) if doc else None
    city = text_or_none(c.cidade)
    country = text_or_none(c.codigo_pais)
    return Customer(
        externalId=str(c.codigo_cliente_omie),
        sourceUpdatedAt=c.info.changed_at() if c.info else None,
        name=c.razao_social,
        document=doc,  # the canonical model checks the digits and keeps digits only
        personType=person,
        email=text_or_none(c.email),
        phone=_phone(c.telefone1_ddd, c.telefone1_numero)
        or _phone(c.telefone2_ddd, c.telefone2_numero),
        street=text_or_none(c.endereco),
        number=text_or_none(c.endereco_numero),
        complement=text_or_none(c.complemento),
        district=text_or_none(c.bairro),
        # Omie's cidade reads "São Paulo (SP)"; the state has its own field.
        city=_CITY_UF.sub("", city) if city else None,
        state=text_or_none(c.estado),
        zipCode=zip_code(c.cep),
        # 1058 is Brazil in the Banco Central country table Omie uses.
        country="BR" if country in (None, "1058") else country,
        active=c.inativo != "S",
    )


# ------------------------------------------------------------------------ sales orders


class _Header(RawModel):
    codigo_pedido: Id
    numero_pedido: StrictStr | StrictInt | None = None
    codigo_cliente: StrictInt | None = None
    etapa: StrictStr | None = None


class _ItemProduct(RawModel):
    codigo_produto: StrictInt | None = None
    codigo: StrictStr | None = None
    descricao: StrictStr | None = None
    quantidade: Number
    valor_unitario: Number
    valor_desconto: Number = Decimal(0)
    valor_total: Number


class _Item(RawModel):
    produto: _ItemProduct


class _Freight(RawModel):
    valor_frete: Number = Decimal(0)


class _OrderInfo(RawModel):
    dInc: StrictStr | None = None
    hInc: StrictStr | None = None
    dAlt: StrictStr | None = None
    hAlt: StrictStr | None = None
    cancelado: Flag = "N"
    faturado: Flag = "N"


class _Totals(RawModel):
    valor_mercadorias: Number | None = None
    valor_descontos: Number | None = None
    valor_total_pedido: Number


class OmieOrder(RawModel):
    cabecalho: _Header
    det: list[_Item] = Field(default_factory=list)
    frete: _Freight | None = None
    infoCadastro: _OrderInfo | None = None
    total_pedido: _Totals


# Omie's built-in order stages (accounts may add their own, shown by number).
ORDER_STAGES = {
    "10": "Pedido de Venda",
    "20": "Separar Estoque",
    "30": "Em Separação",
    "40": "Separado",
    "50": "Faturar",
    "60": "Faturado",
    "70": "Entrega",
    "80": "Entregue",
}


def order_status(stage: str | None, info: _OrderInfo | None) -> str | None:
    if info is not None and info.cancelado == "S":
        return "Cancelado"
    if info is not None and info.faturado == "S":
        return "Faturado"
    stage = text_or_none(stage)
    return None if stage is None else ORDER_STAGES.get(stage, f"Etapa {stage}")


def sales_order(raw: dict[str, Any]) -> SalesOrder:
    o = OmieOrder.model_validate(raw)
    info = o.infoCadastro
    lines = [
        SalesOrderLine(
            lineNumber=n,
            productExternalId=str(item.produto.codigo_produto)
            if item.produto.codigo_produto
            else None,
            sku=text_or_none(item.produto.codigo),
            description=text_or_none(item.produto.descricao),
            quantity=item.produto.quantidade,
            unitPrice=item.produto.valor_unitario,
            discount=item.produto.valor_desconto,
            total=item.produto.valor_total,
        )
        for n, item in enumerate(o.det, start=1)
    ]
    totals = o.total_pedido
    if totals.valor_mercadorias is not None:
        products_total = totals.valor_mercadorias - (totals.valor_descontos or Decimal(0))
    else:
        products_total = sum((line.total for line in lines), Decimal(0))
    number = o.cabecalho.numero_pedido
    return SalesOrder(
        externalId=str(o.cabecalho.codigo_pedido),
        sourceUpdatedAt=(
            omie_datetime(info.dAlt, info.hAlt) or omie_datetime(info.dInc, info.hInc)
            if info
            else None
        ),
        number=str(number).strip() or None if number is not None else None,
        customerExternalId=str(o.cabecalho.codigo_cliente) if o.cabecalho.codigo_cliente else None,
        status=order_status(o.cabecalho.etapa, info),
        orderDate=omie_date(info.dInc) if info else None,
        currency="BRL",
        totalProducts=products_total,
        discount=totals.valor_descontos,
        shipping=o.frete.valor_frete if o.frete else None,
        total=totals.valor_total_pedido,
        lines=lines,
    )


MAPPERS: dict[str, Mapper] = {
    "products": product,
    "stock_levels": stock_level,
    "customers": customer,
    "sales_orders": sales_order,
}


def to_canonical(stream: str, raw: dict[str, Any]) -> Canonical:
    return map_stream("Omie", MAPPERS, stream, raw)


def _positive_int(value: object) -> int | None:
    return value if is_id(value) else None


def external_id(stream: str, raw: Any) -> str | None:
    """The record's Omie id, read even from a broken record when it is there."""
    if not isinstance(raw, dict):
        return None
    if stream == "products":
        value = _positive_int(raw.get("codigo_produto"))
    elif stream == "customers":
        value = _positive_int(raw.get("codigo_cliente_omie"))
    elif stream == "sales_orders":
        header = raw.get("cabecalho")
        value = _positive_int(header.get("codigo_pedido")) if isinstance(header, dict) else None
    elif stream == "stock_levels":
        pid = _positive_int(raw.get("nCodProd"))
        local = _positive_int(raw.get("codigo_local_estoque"))
        return stock_external_id(pid, local) if pid and local else None
    else:
        return None
    return str(value) if value else None
