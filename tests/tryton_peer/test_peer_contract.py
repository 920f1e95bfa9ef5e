"""The Tryton peer keeps the facts docs/tryton-peer.md states (JSON-RPC shape,
seed data, edits). The first run builds the peer (about 1.5-2.5 minutes; .ci/run
starts it in the background early); later runs reuse it."""

from __future__ import annotations

import datetime as dt
import urllib.error
from decimal import Decimal
from typing import Any

import pytest

from tests.tryton_peer.harness import RPCError, TrytonRPC, edit, peer_env

pytestmark = [pytest.mark.slow]

FIELDS = ["code", "name", "list_price_used", "cost_price"]


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return peer_env()


@pytest.fixture(scope="module")
def rpc(env: dict[str, str]) -> TrytonRPC:
    return TrytonRPC.from_env(env)


def test_server_and_context(rpc: TrytonRPC) -> None:
    assert rpc.server_call("common.server.version") == "8.2"
    assert rpc.db in rpc.server_call("common.db.list")
    company = rpc.context["company"]
    assert company
    (row,) = rpc.call(
        "model.company.company.read", [company], ["currency.code", "party.name"], rpc.context
    )
    assert row["currency."]["code"] == "BRL"


def test_products_prices_need_company_in_context(rpc: TrytonRPC) -> None:
    rows = rpc.call(
        "model.product.product.search_read", [], 0, None, [["id", "ASC"]], FIELDS, rpc.context
    )
    assert len(rows) >= 950
    assert rows[0]["code"] == "P0001"
    assert all(isinstance(r["list_price_used"], Decimal) for r in rows)
    no_company = {k: v for k, v in rpc.context.items() if k != "company"}
    (row,) = rpc.call(
        "model.product.product.search_read",
        [["code", "=", "P0001"]],
        0,
        1,
        None,
        ["list_price_used", "cost_price"],
        no_company,
    )
    assert row["list_price_used"] is None
    assert row["cost_price"] is None


def test_archived_products_need_active_test_false(rpc: TrytonRPC) -> None:
    domain = [["code", "=", "P0025"]]
    assert rpc.call("model.product.product.search_count", domain, 0, None, rpc.context) == 0
    (row,) = rpc.call(
        "model.product.product.search_read",
        domain,
        0,
        None,
        None,
        ["active", "template.active", "last_modified_at"],
        {**rpc.context, "active_test": False},
    )
    # the variant's own flag stays true: the template carries the archive
    assert bool(row["active"]) is True
    assert bool(row["template."]["active"]) is False
    assert isinstance(row["last_modified_at"], dt.datetime)


def test_stock_quantity_per_warehouse(rpc: TrytonRPC) -> None:
    (wh,) = rpc.call("model.stock.location.search", [["code", "=", "WH"]], 0, 1, None, rpc.context)
    rows = rpc.call(
        "model.product.product.search_read",
        [["code", "in", ["P0001", "P0020"]]],
        0,
        None,
        [["code", "ASC"]],
        ["code", "quantity"],
        {**rpc.context, "locations": [wh]},
    )
    quantities = {r["code"]: r["quantity"] for r in rows}
    assert quantities["P0001"] > 0
    assert quantities["P0020"] == 0  # every 20th product has no stock


def test_customers_and_sales(rpc: TrytonRPC) -> None:
    assert rpc.call("model.party.party.search_count", [["code", "like", "C%"]], 0, None, {}) >= 200
    confirmed = rpc.call(
        "model.sale.sale.search_count", [["state", "=", "confirmed"]], 0, None, rpc.context
    )
    assert confirmed >= 100


def test_error_shapes(rpc: TrytonRPC, env: dict[str, str]) -> None:
    with pytest.raises(RPCError) as err:
        rpc.call("model.product.template.write", [1], {"name": None}, rpc.context)
    assert err.value.kind == "UserError"
    anonymous = TrytonRPC(env["TRYTON_URL"], env["TRYTON_DB"])
    with pytest.raises(urllib.error.HTTPError) as http:
        anonymous.call("model.product.product.search_count", [], 0, None, {})
    assert http.value.code == 401


def test_sync_user_reads_but_cannot_write(env: dict[str, str]) -> None:
    sync = TrytonRPC.from_env(env, user="sync")
    assert sync.call("model.sale.sale.search_count", [], 0, None, sync.context) >= 100
    with pytest.raises(RPCError) as err:
        sync.call("model.product.template.write", [1], {"name": "x"}, sync.context)
    assert err.value.kind == "UserError"


def test_edit_template_price_is_seen_over_rpc(rpc: TrytonRPC, env: dict[str, str]) -> None:
    before = edit("show-product", env=env, code="P0999")
    try:
        after = edit("set-template-price", env=env, code="P0999", price="12.34")
        assert after["list_price_used"] == "12.34"
        assert after["template_last_modified_at"] >= before["template_last_modified_at"]
        row: dict[str, Any] = rpc.call(
            "model.product.product.search_read",
            [["code", "=", "P0999"]],
            0,
            1,
            None,
            FIELDS,
            rpc.context,
        )[0]
        assert row["list_price_used"] == Decimal("12.34")
    finally:
        edit("set-template-price", env=env, code="P0999", price=before["list_price"])
