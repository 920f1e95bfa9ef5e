"""The canonical shape of ERP data, whatever the ERP (see ARCHITECTURE.md).

Connectors map raw ERP records to these models; ``validated`` checks a mapped record
(every connector's ``to_canonical`` calls it through ``map_stream``): a failure raises
``Invalid`` naming the field, and the engine quarantines the record with that reason.
Money and quantities are Decimal, never float.

The models are msgspec Structs: a first load makes one per record, and a pydantic model
cost the worker a quarter of its CPU there (bench/RESULTS.md, 2026-11-29 21:41–22:17).
Building one (``Product(...)``) checks nothing; ``validated`` checks types and lengths
(msgspec), strips whitespace from text, and checks what msgspec cannot express: digits of
money and quantities, and CPF/CNPJ check digits (``Check`` in a field's annotation).
They are array-like (``validated`` hands msgspec their values as a list); a Struct
given in place of another, such as an order's lines, is not checked by msgspec, hence
``validated`` checks each line itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from functools import cache
from types import UnionType
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin, get_type_hints

import msgspec
from msgspec import Meta

from erp_sync.kit.documents import normalize_document


@dataclass(frozen=True)
class Check:
    """A rule msgspec cannot express, run on the field's value (when not None) after
    the types and lengths are checked: returns the value to keep, or raises ValueError."""

    rule: Callable[[Any], Any]


def decimal_digits(max_digits: int, places: int) -> Check:
    whole = max_digits - places
    step = Decimal(1).scaleb(-places)

    def counts(value: Decimal) -> tuple[int, int]:
        _, digit_tuple, exponent = value.as_tuple()
        assert isinstance(exponent, int)  # finite
        if exponent >= 0:
            return len(digit_tuple) + exponent, 0
        return max(len(digit_tuple), -exponent), -exponent

    def rule(value: Decimal) -> Decimal:
        # As pydantic counts them (max_digits/decimal_places): trailing zeros do not count.
        # The usual case, cheaply: few enough whole digits, and no digit past ``places``
        # (then the total is within max_digits too). NaN and infinities fall through.
        try:
            if value.adjusted() < whole and value == value.quantize(step):
                return value
        except InvalidOperation:
            pass
        if not value.is_finite():
            raise ValueError("Input should be a finite number")
        total, decimals = counts(value.normalize())
        if total > max_digits:
            raise ValueError(f"Decimal input should have no more than {max_digits} digits in total")
        if decimals > places:
            raise ValueError(f"Decimal input should have no more than {places} decimal places")
        if total - decimals > whole:
            raise ValueError(
                f"Decimal input should have no more than {whole} digits before the decimal point"
            )
        return value

    return Check(rule)


def _document(value: str) -> str | None:
    return normalize_document(value) if value else None


ExternalId = Annotated[str, Meta(min_length=1, max_length=200)]
Text = Annotated[str, Meta(max_length=1000)]
ShortText = Annotated[str, Meta(max_length=120)]
Name = Annotated[str, Meta(min_length=1, max_length=500)]
Money = Annotated[Decimal, decimal_digits(18, 4)]
Quantity = Annotated[Decimal, decimal_digits(18, 6)]
# Digits of a valid CPF or CNPJ; blank means none.
Document = Annotated[str | None, Check(_document)]


class Canonical(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    externalId: ExternalId
    sourceUpdatedAt: datetime | None = None


class Product(Canonical, frozen=True, kw_only=True, array_like=True):
    sku: ShortText | None = None
    name: Name
    gtin: ShortText | None = None
    ncm: ShortText | None = None
    unit: ShortText | None = None
    brand: ShortText | None = None
    listPrice: Money | None = None
    costPrice: Money | None = None
    active: bool = True


class StockLevel(Canonical, frozen=True, kw_only=True, array_like=True):
    productExternalId: ExternalId
    warehouseId: ExternalId
    warehouseName: ShortText | None = None
    quantity: Quantity
    reserved: Quantity | None = None
    available: Quantity | None = None


class Customer(Canonical, frozen=True, kw_only=True, array_like=True):
    name: Name
    document: Document = None
    personType: ShortText | None = None  # "F" (person, CPF) or "J" (company, CNPJ)
    email: ShortText | None = None
    phone: ShortText | None = None
    street: Text | None = None
    number: ShortText | None = None
    complement: Text | None = None
    district: ShortText | None = None
    city: ShortText | None = None
    state: ShortText | None = None
    zipCode: ShortText | None = None
    country: ShortText | None = None
    active: bool = True


class SalesOrderLine(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    lineNumber: Annotated[int, Meta(ge=1)]
    productExternalId: ShortText | None = None
    sku: ShortText | None = None
    description: Text | None = None
    quantity: Quantity
    unitPrice: Money
    discount: Money | None = None
    total: Money


class SalesOrder(Canonical, frozen=True, kw_only=True, array_like=True):
    number: ShortText | None = None
    customerExternalId: ShortText | None = None
    customerName: Text | None = None
    status: ShortText | None = None
    orderDate: date | None = None
    currency: ShortText | None = None
    totalProducts: Money | None = None
    discount: Money | None = None
    shipping: Money | None = None
    total: Money
    lines: list[SalesOrderLine] = []


MODELS: dict[str, type[Canonical]] = {
    "products": Product,
    "stock_levels": StockLevel,
    "customers": Customer,
    "sales_orders": SalesOrder,
}


class Invalid(ValueError):
    """A record that breaks its canonical model: ``str()`` is ``field: what is wrong``."""


R = TypeVar("R", bound=msgspec.Struct)


def validated(record: R, at: str = "") -> R:
    """``record`` checked against its model: text stripped of surrounding whitespace,
    types and lengths, digits of money and quantities, documents normalised, each line of
    an order in turn. Returns the checked record (a new one); raises ``Invalid`` naming
    the first bad field (``at`` goes before its name: ``lines[2].``)."""
    model = type(record)
    # The models are array-like: msgspec checks a list of the values in field order,
    # cheaper than a dict of them.
    values = [v.strip() if type(v) is str else v for v in msgspec.structs.astuple(record)]
    try:
        checked = msgspec.convert(values, model)
    except msgspec.ValidationError as exc:
        raise Invalid(at + _where(str(exc), model.__struct_fields__)) from None
    for name, check in _checks(model):
        value = getattr(checked, name)
        if value is None:
            continue
        if check is None:  # a list of Structs (an order's lines): each is checked too
            kept = [validated(item, f"{at}{name}[{i}].") for i, item in enumerate(value)]
        else:
            try:
                kept = check.rule(value)
            except ValueError as exc:
                raise Invalid(f"{at}{name}: {exc}") from None
        if kept is not value:
            msgspec.structs.force_setattr(checked, name, kept)
    return checked


_AT = re.compile(r" - at `\$\[(\d+)\]`$")


def _where(message: str, fields: tuple[str, ...]) -> str:
    # msgspec says "Expected `str` of length <= 120 - at `$[2]`": the field's name first.
    found = _AT.search(message)
    if found is None:
        return message
    return f"{fields[int(found[1])]}: {message[: found.start()]}"


@cache
def _checks(model: type[msgspec.Struct]) -> list[tuple[str, Check | None]]:
    """(field, its Check) for each field with one, and (field, None) for each list of
    Structs: read once per model from its annotations."""
    found: list[tuple[str, Check | None]] = []
    for name, hint in get_type_hints(model, include_extras=True).items():
        if name not in model.__struct_fields__:
            continue
        # ``Money | None`` holds its Check one level down, in the union's arms.
        arms = [hint, *get_args(hint)] if get_origin(hint) in (Union, UnionType) else [hint]
        metadata = [m for arm in arms for m in getattr(arm, "__metadata__", ())]
        check = next((m for m in metadata if isinstance(m, Check)), None)
        if check is not None:
            found.append((name, check))
        elif get_origin(hint) is list:
            (item,) = get_args(hint)
            if isinstance(item, type) and issubclass(item, msgspec.Struct):
                found.append((name, None))
    return found
