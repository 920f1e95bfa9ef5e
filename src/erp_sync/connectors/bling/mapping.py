"""Bling v3 JSON -> canonical models, and Bling's error body -> one readable sentence.

Raw shapes are validated strictly (pydantic): money and quantities must be JSON numbers
(Bling never sends strings; ``"12,50"`` or ``{"valor": 12.5}`` means a broken record),
ids integers, names non-empty. A bad record raises ``ValidationError`` (or ``ValueError``)
from ``to_canonical`` and the engine quarantines it with the reason; the page goes on.
"""

from __future__ import annotations

import re
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

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
from erp_sync.connectors.raw import Id, Name, Number, RawModel, is_id, text_or_none, zip_code
from erp_sync.connectors.raw import stock_external_id as stock_external_id  # re-exported
from erp_sync.kit.documents import digits

CENT = Decimal("0.01")


# ----------------------------------------------------------------------------- products


class _Tributacao(RawModel):
    ncm: StrictStr | None = None


class _Fornecedor(RawModel):
    precoCusto: Number | None = None


class BlingProduct(RawModel):
    id: Id
    nome: Name
    codigo: StrictStr | None = None
    preco: Number
    # The list has precoCusto at the top; the detail only under fornecedor.
    precoCusto: Number | None = None
    situacao: Literal["A", "I"]
    gtin: StrictStr | None = None
    unidade: StrictStr | None = None
    marca: StrictStr | None = None
    tributacao: _Tributacao | None = None
    fornecedor: _Fornecedor | None = None


def product(raw: dict[str, Any]) -> Product:
    p = BlingProduct.model_validate(raw)
    cost = p.precoCusto
    if cost is None and p.fornecedor is not None:
        cost = p.fornecedor.precoCusto
    ncm = text_or_none(p.tributacao.ncm) if p.tributacao else None
    return Product(
        externalId=str(p.id),
        sku=text_or_none(p.codigo),
        name=p.nome,
        gtin=text_or_none(p.gtin),
        ncm=digits(ncm) or None if ncm else None,
        unit=text_or_none(p.unidade),
        brand=text_or_none(p.marca),
        listPrice=p.preco,
        costPrice=cost,
        active=p.situacao == "A",
    )


# ------------------------------------------------------------------------------- stock


class _StockProduct(RawModel):
    id: Id
    codigo: StrictStr | None = None


class _WarehouseBalance(RawModel):
    id: Id
    saldoFisico: Number
    saldoVirtual: Number
    descricao: StrictStr | None = None


class BlingStockEntry(RawModel):
    """One product's entry of ``GET /estoques/saldos``, as Bling sends it."""

    produto: _StockProduct
    saldoFisicoTotal: Number
    saldoVirtualTotal: Number
    depositos: list[_WarehouseBalance]


class BlingStockRow(RawModel):
    """One (product, warehouse) slice of an entry: the stream's record."""

    produto: _StockProduct
    deposito: _WarehouseBalance


def split_stock_entry(raw: Any, warehouse_names: dict[int, str]) -> list[Any]:
    """One record per (product, warehouse).

    An entry that does not validate still yields one record per warehouse, keyed
    ``product:warehouse`` and carrying the whole entry under ``"entry"``: each is
    quarantined under the key its row has, and a full sync's deletion sweep leaves the
    product's stored balances alone (stale, not deleted). Without a product id there is
    no key: the entry is passed on as it came."""
    try:
        BlingStockEntry.model_validate(raw)
    except ValueError:  # pydantic's ValidationError is a ValueError
        product = raw.get("produto") if isinstance(raw, dict) else None
        pid = product.get("id") if isinstance(product, dict) else None
        if not is_id(pid):
            return [raw]
        listed = raw.get("depositos")
        warehouses = set(warehouse_names)
        if isinstance(listed, list):
            warehouses |= {d["id"] for d in listed if isinstance(d, dict) and is_id(d.get("id"))}
        if not warehouses:
            return [raw]
        return [
            {"produto": product, "deposito": {"id": w}, "entry": raw} for w in sorted(warehouses)
        ]
    rows = []
    for balance in raw["depositos"]:
        name = warehouse_names.get(balance["id"])
        rows.append(
            {
                "produto": raw["produto"],
                "deposito": balance if name is None else {**balance, "descricao": name},
            }
        )
    return rows


def stock_level(raw: dict[str, Any]) -> StockLevel:
    if "entry" in raw:
        # A slice of an entry that failed to validate: say what is wrong with the entry.
        BlingStockEntry.model_validate(raw["entry"])
        raise ValueError("the product's stock entry is malformed")
    if "deposito" not in raw:
        BlingStockEntry.model_validate(raw)
        raise ValueError("a stock entry must be read one warehouse at a time")
    row = BlingStockRow.model_validate(raw)
    physical, available = row.deposito.saldoFisico, row.deposito.saldoVirtual
    return StockLevel(
        externalId=stock_external_id(row.produto.id, row.deposito.id),
        productExternalId=str(row.produto.id),
        warehouseId=str(row.deposito.id),
        warehouseName=text_or_none(row.deposito.descricao),
        quantity=physical,
        reserved=physical - available,
        available=available,
    )


# ---------------------------------------------------------------------------- customers


class _Address(RawModel):
    endereco: StrictStr | None = None
    numero: StrictStr | None = None
    complemento: StrictStr | None = None
    bairro: StrictStr | None = None
    cep: StrictStr | None = None
    municipio: StrictStr | None = None
    uf: StrictStr | None = None


class _Addresses(RawModel):
    geral: _Address | None = None


class _Country(RawModel):
    nome: StrictStr | None = None


class BlingContact(RawModel):
    id: Id
    nome: Name
    situacao: StrictStr | None = None
    numeroDocumento: StrictStr | None = None
    telefone: StrictStr | None = None
    celular: StrictStr | None = None
    tipo: StrictStr | None = None
    email: StrictStr | None = None
    endereco: _Addresses | None = None
    pais: _Country | None = None


# Contacts: A ativo, S sem movimentação (still a live customer), I inativo, E excluído.
_CONTACT_ACTIVE = {"A": True, "S": True, "I": False, "E": False}


def _country(value: str | None) -> str | None:
    value = text_or_none(value)
    if value is None:
        return None
    return "BR" if value.upper() in ("BRASIL", "BRAZIL") else value


def customer(raw: dict[str, Any]) -> Customer:
    c = BlingContact.model_validate(raw)
    active = True
    if c.situacao is not None:
        if c.situacao not in _CONTACT_ACTIVE:
            raise ValueError(f"situacao {c.situacao!r} is not one of A, S, I, E")
        active = _CONTACT_ACTIVE[c.situacao]
    doc = text_or_none(c.numeroDocumento)
    person = text_or_none(c.tipo)
    if person is None and doc is not None:
        person = {11: "F", 14: "J"}.get(len(digits(doc)))
    address = c.endereco.geral if c.endereco and c.endereco.geral else _Address()
    return Customer(
        externalId=str(c.id),
        name=c.nome,
        document=doc,  # the canonical model checks the digits and keeps digits only
        personType=person,
        email=text_or_none(c.email),
        phone=text_or_none(c.telefone) or text_or_none(c.celular),
        street=text_or_none(address.endereco),
        number=text_or_none(address.numero),
        complement=text_or_none(address.complemento),
        district=text_or_none(address.bairro),
        city=text_or_none(address.municipio),
        state=text_or_none(address.uf),
        zipCode=zip_code(address.cep),
        country=_country(c.pais.nome if c.pais else None),
        active=active,
    )


# ------------------------------------------------------------------------- sales orders


class _OrderContact(RawModel):
    id: Id
    nome: StrictStr | None = None


class _Status(RawModel):
    id: StrictInt
    valor: StrictInt | None = None


class _ItemProduct(RawModel):
    id: StrictInt | None = None


class _Item(RawModel):
    codigo: StrictStr | None = None
    descricao: StrictStr | None = None
    quantidade: Number
    valor: Number
    desconto: Number = Decimal(0)  # percent
    produto: _ItemProduct | None = None


class _Transport(RawModel):
    frete: Number | None = None


class _Discount(RawModel):
    valor: Number
    unidade: StrictStr | None = None


class BlingOrder(RawModel):
    id: Id
    numero: StrictInt | StrictStr | None = None
    data: StrictStr | None = None
    totalProdutos: Number | None = None
    total: Number
    contato: _OrderContact
    situacao: _Status | None = None
    itens: list[_Item] = Field(default_factory=list)
    transporte: _Transport | None = None
    desconto: _Discount | None = None


# Bling's built-in order situations (accounts may add their own, shown by id).
ORDER_STATUS = {
    6: "Em aberto",
    9: "Atendido",
    12: "Cancelado",
    15: "Em andamento",
    18: "Venda agenciada",
    21: "Em digitação",
    24: "Verificado",
}


def _date(value: str | None) -> date | None:
    value = text_or_none(value)
    if value is None or value.startswith("0000-00-00"):
        return None  # Bling's empty date
    return date.fromisoformat(value[:10])


def _cents(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def order_line(number: int, item: _Item) -> SalesOrderLine:
    # Bling does not send a line's value: quantidade x valor x (1 - desconto%), to the cent.
    gross = item.quantidade * item.valor
    total = _cents(gross * (1 - item.desconto / 100))
    product_id = item.produto.id if item.produto else None
    return SalesOrderLine(
        lineNumber=number,
        productExternalId=str(product_id) if product_id else None,
        sku=text_or_none(item.codigo),
        description=text_or_none(item.descricao),
        quantity=item.quantidade,
        unitPrice=item.valor,
        discount=_cents(gross) - total,
        total=total,
    )


def sales_order(raw: dict[str, Any]) -> SalesOrder:
    o = BlingOrder.model_validate(raw)
    discount: Decimal | None = None
    if o.desconto is not None:
        if (o.desconto.unidade or "REAL").upper() == "PERCENTUAL":
            discount = _cents((o.totalProdutos or Decimal(0)) * o.desconto.valor / 100)
        else:
            discount = o.desconto.valor
    status = None
    if o.situacao is not None:
        status = ORDER_STATUS.get(o.situacao.id, f"Situação {o.situacao.id}")
    return SalesOrder(
        externalId=str(o.id),
        number=str(o.numero) if o.numero not in (None, "") else None,
        customerExternalId=str(o.contato.id),
        customerName=text_or_none(o.contato.nome),
        status=status,
        orderDate=_date(o.data),
        currency="BRL",
        totalProducts=o.totalProdutos,
        discount=discount,
        shipping=o.transporte.frete if o.transporte else None,
        total=o.total,
        lines=[order_line(n, item) for n, item in enumerate(o.itens, start=1)],
    )


MAPPERS: dict[str, Mapper] = {
    "products": product,
    "stock_levels": stock_level,
    "customers": customer,
    "sales_orders": sales_order,
}


def to_canonical(stream: str, raw: dict[str, Any]) -> Canonical:
    return map_stream("Bling", MAPPERS, stream, raw)


# ------------------------------------------------------------------------------- errors

_TAGS = re.compile(r"<[^>]+>")


def describe_error(resp: ErpResponse) -> str:
    """``{"error": {"type", "message", "description", "fields"}}`` as one sentence, e.g.
    ``VALIDATION_ERROR: A requisição possui parâmetros inválidos. (dataAlteracaoInicial:
    O intervalo ...)``; a non-JSON body (a proxy's HTML page) as its text."""
    try:
        body = orjson.loads(resp.body)
    except orjson.JSONDecodeError:
        text = _TAGS.sub(" ", resp.body[:2000].decode("utf-8", "replace"))
        text = " ".join(text.split())
        return (text[:300] or "(empty body)") + (" (not JSON)" if text else "")
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        text = " ".join(resp.body[:300].decode("utf-8", "replace").split())
        return text or "(empty body)"
    kind = str(err.get("type") or "error")
    what = str(err.get("description") or err.get("message") or "").strip()
    out = f"{kind}: {what}" if what else kind
    fields = err.get("fields")
    if isinstance(fields, list) and fields:
        parts = []
        for f in fields[:5]:
            if isinstance(f, dict):
                element = f.get("element") or f.get("namespace") or "?"
                parts.append(f"{element}: {f.get('msg', '')}".strip())
        if parts:
            out += " (" + "; ".join(parts) + ")"
    return out[:600]
