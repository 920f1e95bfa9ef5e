"""The canonical models' check (``validated``): what a mapped record must satisfy before
it is written, and the reason a quarantined record is shown with."""

from __future__ import annotations

import random
from datetime import date
from decimal import Decimal
from typing import Annotated, Any

import pydantic
import pytest

from erp_sync.canonical import (
    Customer,
    Invalid,
    Product,
    SalesOrder,
    SalesOrderLine,
    StockLevel,
    validated,
)


def reason(record: Any) -> str:
    with pytest.raises(Invalid) as caught:
        validated(record)
    return str(caught.value)


def line(**fields: Any) -> SalesOrderLine:
    base: dict[str, Any] = {
        "lineNumber": 1, "quantity": Decimal(2), "unitPrice": Decimal("1.5"),
        "total": Decimal(3),
    }  # fmt: skip
    return SalesOrderLine(**{**base, **fields})


def test_text_is_stripped_and_blank_required_text_names_its_field() -> None:
    p = validated(Product(externalId=" 42 ", name="  Cimento  ", sku="  "))
    assert (p.externalId, p.name, p.sku) == ("42", "Cimento", "")
    assert reason(Product(externalId="   ", name="x")).startswith("externalId: ")
    assert reason(Product(externalId="1", name=" ")).startswith("name: ")
    assert reason(Product(externalId="1", name="x", sku="s" * 121)).startswith("sku: ")


@pytest.mark.parametrize(
    ("price", "why"),
    [
        ("1.23456", "no more than 4 decimal places"),
        ("123456789012345.6789", "no more than 18 digits in total"),
        ("100000000000000000", "no more than 14 digits before the decimal point"),
        ("NaN", "finite number"),
        ("Infinity", "finite number"),
    ],
)
def test_money_breaking_numeric_18_4_is_refused(price: str, why: str) -> None:
    assert reason(Product(externalId="1", name="x", listPrice=Decimal(price))) == (
        f"listPrice: Decimal input should have {why}"
        if "finite" not in why
        else "listPrice: Input should be a finite number"
    )


@pytest.mark.parametrize("price", ["1.50000", "12345678901234.5678", "-0", "0E-10", "26.31"])
def test_money_within_numeric_18_4_is_kept_as_sent(price: str) -> None:
    assert validated(Product(externalId="1", name="x", listPrice=Decimal(price))).listPrice == (
        Decimal(price)
    )


def test_quantities_allow_six_decimal_places() -> None:
    kept = validated(StockLevel(externalId="1:1", productExternalId="1", warehouseId="1",
                                quantity=Decimal("0.123456")))  # fmt: skip
    assert kept.quantity == Decimal("0.123456")
    assert reason(StockLevel(externalId="1:1", productExternalId="1", warehouseId="1",
                             quantity=Decimal("0.1234567"))).startswith("quantity: ")  # fmt: skip


def test_a_value_of_the_wrong_type_is_named() -> None:
    assert reason(Product(externalId="1", name="x", listPrice="12,50")).startswith("listPrice: ")  # type: ignore[arg-type]
    assert reason(Product(externalId="1", name="x", active=1)) == (  # type: ignore[arg-type]
        "active: Expected `bool`, got `int`"
    )


def test_a_bad_line_is_named_with_its_place_in_the_order() -> None:
    order = SalesOrder(externalId="9", total=Decimal(3), lines=[line(), line(lineNumber=0)])
    assert reason(order).startswith("lines[1].lineNumber: ")
    order = SalesOrder(externalId="9", total=Decimal(3), lines=[line(unitPrice=Decimal("0.00001"))])
    assert (
        reason(order)
        == "lines[0].unitPrice: Decimal input should have no more than 4 decimal places"
    )
    kept = validated(SalesOrder(externalId="9", total=Decimal(3), orderDate=date(2026, 11, 1),
                                lines=[line(sku=" A-1 ")]))  # fmt: skip
    assert kept.lines[0].sku == "A-1" and kept.orderDate == date(2026, 11, 1)


def test_documents_are_kept_as_digits_and_wrong_ones_refused() -> None:
    assert validated(
        Customer(externalId="1", name="x", document="11.444.777/0001-61")
    ).document == ("11444777000161")
    assert validated(Customer(externalId="1", name="x", document="  ")).document is None
    assert reason(Customer(externalId="1", name="x", document="11.444.777/0001-62")).startswith(
        "document: "
    )


def test_an_unknown_field_is_refused() -> None:
    with pytest.raises(TypeError):
        Product(externalId="1", name="x", colour="red")  # type: ignore[call-arg]


def test_digits_of_money_and_quantities_are_counted_as_pydantic_counts_them() -> None:
    # The models were pydantic's (max_digits/decimal_places) until 2026-11: a value stored
    # then is judged the same now. Edge values, then 4,000 drawn ones.
    class Before(pydantic.BaseModel):
        money: Annotated[Decimal, pydantic.Field(max_digits=18, decimal_places=4,
                                                 allow_inf_nan=False)]  # fmt: skip
        quantity: Annotated[Decimal, pydantic.Field(max_digits=18, decimal_places=6,
                                                    allow_inf_nan=False)]  # fmt: skip

    draw = random.Random(20261129)
    values = ["1.50000", "0E-10", "-0", "1E+13", "1E+14", "1E+20", "99999999999999.9999",
              "99999999999999.99995", "1234567890123.45670000", "1E-30", "NaN", "sNaN",
              "-Infinity", "1E+999999", "12345678901234567890123456789012"]  # fmt: skip
    values += [
        str(Decimal(draw.randint(-(10 ** draw.randint(0, 30)), 10 ** draw.randint(0, 30)))
            .scaleb(-draw.randint(-5, 12)))
        for _ in range(4000)
    ]  # fmt: skip
    for text in values:
        for field, model, extra in (
            ("money", Product, {"listPrice": Decimal(text)}),
            ("quantity", StockLevel, {"quantity": Decimal(text)}),
        ):
            try:
                Before(**{"money": Decimal(1), "quantity": Decimal(1), field: Decimal(text)})
                before = "ok"
            except pydantic.ValidationError as exc:
                before = exc.errors()[0]["msg"]
            fields = {"externalId": "1", "name": "x"} if model is Product else {
                "externalId": "1:1", "productExternalId": "1", "warehouseId": "1"}  # fmt: skip
            try:
                validated(model(**fields, **extra))
                now = "ok"
            except Invalid as exc:
                now = str(exc).split(": ", 1)[1]
            assert now == before, (text, field)
