"""What every connector's raw (ERP-side) models share.

Raw records are validated strictly: money and quantities sent as JSON numbers become
``Decimal`` exactly (``Number``), ids are positive integers (``Id``; ``is_id`` for a
record that did not validate), names non-empty (``Name``), and optional text is
stripped, empty meaning absent (``text_or_none``). ``RawModel`` is the base config:
unknown fields ignored (ERPs add fields freely), instances frozen. A connector whose
ERP differs (Tryton's exact decimals, its dotted aliases) says so in its own mapping.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, TypeGuard

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, StrictStr

from erp_sync.kit.documents import digits


def brief_repr(value: Any) -> str:
    """``repr`` cut to 40 characters: a quarantine reason names the bad value, not a page."""
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def number_to_decimal(value: int | float) -> Decimal:
    # str() of a float is its shortest round-trip form: 25.11 -> Decimal("25.11").
    number = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    if not number.is_finite():
        raise ValueError("must be a finite number")
    return number


def json_number(value: Any) -> Decimal:
    # A string ("12,50") or an object means a broken record, never something to parse.
    if isinstance(value, bool) or not isinstance(value, int | float):
        shown = brief_repr(value)
        raise ValueError(f"must be a JSON number, got {type(value).__name__} {shown}")
    return number_to_decimal(value)


Number = Annotated[Decimal, BeforeValidator(json_number)]
Id = Annotated[StrictInt, Field(gt=0)]
Name = Annotated[StrictStr, Field(min_length=1)]


def is_id(value: object) -> TypeGuard[int]:
    """What ``Id`` accepts, for reading a key out of a record that failed to validate."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


class RawModel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


def text_or_none(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value or None


def zip_code(value: str | None) -> str | None:
    """A CEP as its 8 digits (``01310-100`` -> ``01310100``); anything else as sent."""
    value = text_or_none(value)
    if value is None:
        return None
    only = digits(value)
    return only if len(only) == 8 else value


def stock_external_id(product_id: object, warehouse_id: object) -> str:
    # One stock level per (product, warehouse): its key in every connector.
    return f"{product_id}:{warehouse_id}"
