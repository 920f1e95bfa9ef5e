#!/usr/bin/env python3
"""Make edits in the Tryton peer, for tests: CLI printing one JSON object.

Runs INSIDE the peer virtualenv.  From our own test suite (no trytond there)::

    out = subprocess.run(
        [os.environ["TRYTON_PYTHON"], "tests/tryton_peer/edits.py",
         "set-template-price", "--code", "P0001", "--price", "12.34"],
        capture_output=True, text=True, check=True)
    data = json.loads(out.stdout)

or use ``tests/tryton_peer/harness.py`` (``edit("set-template-price",
code="P0001", price="12.34")``).

By default every edit goes through the running server, with proteus over
XML-RPC and a session of the ``admin`` user, like any other client's edit
(the server's caches and locks see it).  ``--local`` edits in-process
instead (no server needed; ~1 s slower to start).

Exit status 0 and a JSON object on stdout; on error exit status 1 and
``{"error": "...", "type": "..."}`` on stdout.  Decimals come back as
strings ("12.34"), dates/datetimes as ISO 8601 strings.

Commands (``edits.py COMMAND --help`` for the options):

  show-product          read a product (prices, quantity, active, timestamps)
  set-template-price    change a template's list price (and cost price)
  set-cost-price        change a variant's cost price
  rename-product        change a template's name
  create-product        create a template + variant (optionally with stock)
  archive-product       archive (active=False) a template, or one variant
  unarchive-product     the reverse
  move-stock            a done stock move (receipt, or a loss through an inventory)
  set-stock             set the quantity in WH storage (a confirmed inventory)
  set-customer-address  change a customer's first address
  set-customer-email    change (or add) a customer's e-mail
  create-customer       create a party with address, tax id, e-mail
  create-sale           create a sale (draft, quotation or confirmed)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import sys
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peerlib

Model = None  # proteus.Model, set by connect()
WAREHOUSE_CODE = "WH"


# --- helpers -------------------------------------------------------------------


class EditError(Exception):
    pass


def _one(model, domain, what, inactive=True):
    Cls = Model.get(model)
    ctx = {"active_test": False} if inactive else {}
    with Cls._config.set_context(**ctx):
        found = Cls.find(domain)
    if len(found) != 1:
        raise EditError(f"{what}: {len(found)} records match {domain}")
    return found[0]


def template_by_code(code):
    return _one("product.template", [("code", "=", code)], f"product template {code}")


def product_by_code(code):
    return _one("product.product", [("code", "=", code)], f"product {code}")


def party_by_code(code):
    return _one("party.party", [("code", "=", code)], f"party {code}")


def location(code):
    return _one("stock.location", [("code", "=", code)], f"location {code}", inactive=False)


def company_currency():
    Company = Model.get("company.company")
    company = Company(Company._config.context["company"])
    return company, company.currency


def warehouse_quantity(product_id):
    wh = location(WAREHOUSE_CODE)
    Product = Model.get("product.product")
    with Product._config.set_context(locations=[wh.id], active_test=False):
        product = Product(product_id)
        return product.quantity, product.forecast_quantity


def product_info(product_id):
    Product = Model.get("product.product")
    with Product._config.set_context(active_test=False):
        p = Product(product_id)
        t = p.template
        qty, forecast = warehouse_quantity(p.id)
        return {
            "product_id": p.id,
            "template_id": t.id,
            "code": p.code,
            "name": t.name,
            "list_price": t.list_price,
            "list_price_used": p.list_price_used,
            "cost_price": p.cost_price,
            "template_active": t.active,
            "product_active": p.active,
            "categories": [c.name for c in t.categories],
            "quantity": qty,
            "forecast_quantity": forecast,
            "template_last_modified_at": t.last_modified_at,
            "product_last_modified_at": p.last_modified_at,
        }


def party_info(party_id):
    Party = Model.get("party.party")
    with Party._config.set_context(active_test=False):
        p = Party(party_id)
        return {
            "party_id": p.id,
            "code": p.code,
            "name": p.name,
            "active": p.active,
            "tax_identifier": p.tax_identifier.code if p.tax_identifier else None,
            "email": p.email,
            "phone": p.phone,
            "addresses": [
                {
                    "address_id": a.id,
                    "street": a.street,
                    "street_name": a.street_name,
                    "building_number": a.building_number,
                    "city": a.city,
                    "postal_code": a.postal_code,
                    "country": a.country.code if a.country else None,
                    "subdivision": a.subdivision.code if a.subdivision else None,
                    "last_modified_at": a.last_modified_at,
                }
                for a in p.addresses
            ],
            "last_modified_at": p.last_modified_at,
        }


# --- edits ---------------------------------------------------------------------


def show_product(code):
    return product_info(product_by_code(code).id)


def set_template_price(code, price, cost=None):
    template = template_by_code(code)
    template.list_price = Decimal(price)
    template.save()
    if cost is not None:
        set_cost_price(code, cost)
    product = product_by_code(code)
    return product_info(product.id)


def set_cost_price(code, price):
    """Change a variant's cost price.

    Trap: once a product has stock moves, writing cost_price is refused
    ("use the Modify Cost Price wizard"), so this runs that wizard
    (product.modify_cost_price), which also records a
    product.cost_price.revision.  The new price applies at once because the
    seeded products use the "fixed" cost price method and the date is today.
    """
    from proteus import Wizard

    product = product_by_code(code)
    modify = Wizard("product.modify_cost_price", [product])
    modify.form.cost_price = str(Decimal(price))
    modify.execute("modify")
    return product_info(product.id)


def rename_product(code, name):
    template = template_by_code(code)
    template.name = name
    template.save()
    return product_info(product_by_code(code).id)


def create_product(code, name, price, cost, category=None, quantity=None):
    Template = Model.get("product.template")
    Uom = Model.get("product.uom")
    (unit,) = Uom.find([("symbol", "=", "u")], limit=1)
    template = Template(
        name=name,
        code=code,
        type="goods",
        default_uom=unit,
        salable=True,
        list_price=Decimal(price),
    )
    if category:
        Category = Model.get("product.category")
        (cat,) = Category.find([("name", "=", category)], limit=1)
        template.categories.append(Category(cat.id))
    (product,) = template.products
    product.cost_price = Decimal(cost)
    template.save()
    product = product_by_code(code)
    if quantity:
        move_stock(code, quantity)
    return product_info(product.id)


def accept_warning(record, name):
    """What the Tryton client does when the user answers "Yes" to a warning:
    store a one-shot res.user.warning named like the server will ask for.
    Name = md5("model,id" of the records) + "." + warning name
    (res.user.warning.format)."""
    Warning = Model.get("res.user.warning")
    User = Model.get("res.user")
    (admin,) = User.find([("login", "=", "admin")])
    key = hashlib.md5(
        f"{record.__class__.__name__},{record.id}".encode(), usedforsecurity=False
    ).hexdigest()
    Warning(user=admin, name=f"{key}.{name}", always=False).save()


def archive_product(code, variant=False, active=False):
    """Archive the template (default: what "archive a product" means in the
    Tryton client) or, with variant=True, only the variant.

    Trap: archiving a product that still has stock raises the warning
    "deactivate_product_with_stock"; like a user answering "Yes" in the
    client, the warning is accepted and the write retried.
    """
    record = product_by_code(code) if variant else template_by_code(code)
    record.active = active
    if not active:
        accept_warning(record, "deactivate_product_with_stock")
    record.save()
    return product_info(product_by_code(code).id)


def move_stock(code, quantity, from_code=None, to_code=None, date=None):
    """A done stock move.

    quantity > 0 without --from/--to: receipt supplier (SUP) -> WH storage
    (STO).  quantity < 0 without --from/--to: the storage loses abs(quantity)
    through an inventory (a done move STO -> Lost and Found).

    Trap: a move *out of* a storage location must be assigned before "do",
    and "assign" is not callable over RPC for a bare move (only through
    shipments or an inventory), so explicit --from must not be a storage
    location.
    """
    quantity = float(quantity)
    if from_code is None and to_code is None:
        if quantity < 0:
            current, _ = warehouse_quantity(product_by_code(code).id)
            return set_stock(code, current + quantity, date=date)
        from_code, to_code = "SUP", "STO"
    elif from_code is None or to_code is None:
        raise EditError("give both --from and --to, or neither")
    product = product_by_code(code)
    company, currency = company_currency()
    Move = Model.get("stock.move")
    move = Move()
    move.product = product
    move.unit = product.default_uom
    move.quantity = abs(quantity)
    move.from_location = location(from_code)
    move.to_location = location(to_code)
    move.company = company
    move.effective_date = dt.date.fromisoformat(date) if date else dt.date.today()
    move.planned_date = move.effective_date
    move.unit_price = product.cost_price or Decimal(0)
    move.currency = currency
    move.save()
    try:
        move.click("do")
    except Exception:
        Move.delete([move])  # don't leave a draft move behind (forecasts)
        raise
    info = product_info(product.id)
    info["move_id"] = move.id
    info["move_state"] = Move(move.id).state
    return info


def set_stock(code, quantity, date=None):
    """Set the quantity in WH storage (STO) through a confirmed inventory."""
    product = product_by_code(code)
    company, _ = company_currency()
    Inventory = Model.get("stock.inventory")
    inventory = Inventory()
    inventory.location = location("STO")
    inventory.company = company
    inventory.date = dt.date.fromisoformat(date) if date else dt.date.today()
    inventory.empty_quantity = "keep"
    line = inventory.lines.new()
    line.product = product
    line.quantity = float(quantity)
    inventory.save()
    inventory.click("confirm")
    info = product_info(product.id)
    info["inventory_id"] = inventory.id
    info["inventory_state"] = Inventory(inventory.id).state
    return info


def set_customer_address(
    code, street_name=None, building_number=None, city=None, postal_code=None, state=None
):
    """Change the first address of a customer.

    Written through the raw proxy: with proteus objects, changing
    street_name recomputes the Function field "street" client-side and
    sends it too, which the server refuses (readonly once structured street
    fields are used).
    """
    party = party_by_code(code)
    if not party.addresses:
        raise EditError(f"party {code} has no address")
    values = {}
    if street_name is not None:
        values["street_name"] = street_name
    if building_number is not None:
        values["building_number"] = building_number
    if city is not None:
        values["city"] = city
    if postal_code is not None:
        values["postal_code"] = postal_code
    if state is not None:
        values["subdivision"] = _one(
            "country.subdivision", [("code", "=", state)], f"subdivision {state}", inactive=False
        ).id
    if not values:
        raise EditError("nothing to change")
    Address = Model.get("party.address")
    Address._proxy.write([party.addresses[0].id], values, Address._config.context)
    return party_info(party.id)


def set_customer_email(code, email):
    party = party_by_code(code)
    Mechanism = Model.get("party.contact_mechanism")
    mechanisms = Mechanism.find([("party", "=", party.id), ("type", "=", "email")])
    if mechanisms:
        mechanism = mechanisms[0]
        mechanism.value = email
    else:
        mechanism = Mechanism(party=party, type="email", value=email)
    mechanism.save()
    return party_info(party.id)


def create_customer(
    code,
    name,
    email=None,
    tax_id=None,
    street_name="Rua Nova",
    building_number="1",
    city="São Paulo",
    postal_code="01001-000",
    state="BR-SP",
):
    """Raw create (see set_customer_address for why not proteus objects)."""
    country = _one("country.country", [("code", "=", "BR")], "country BR", inactive=False)
    subdivision = _one(
        "country.subdivision", [("code", "=", state)], f"subdivision {state}", inactive=False
    )
    values = {
        "name": name,
        "code": code,
        "addresses": [
            (
                "create",
                [
                    {
                        "street_name": street_name,
                        "building_number": building_number,
                        "city": city,
                        "postal_code": postal_code,
                        "country": country.id,
                        "subdivision": subdivision.id,
                    }
                ],
            )
        ],
    }
    if tax_id:
        digits = "".join(c for c in tax_id if c.isdigit())
        # CNPJ is type "br_vat" in trytond 8 (alias of br_cnpj); CPF "br_cpf"
        values["identifiers"] = [
            (
                "create",
                [
                    {
                        "type": "br_vat" if len(digits) == 14 else "br_cpf",
                        "code": digits,
                    }
                ],
            )
        ]
    if email:
        values["contact_mechanisms"] = [("create", [{"type": "email", "value": email}])]
    Party = Model.get("party.party")
    (party_id,) = Party._proxy.create([values], Party._config.context)
    return party_info(party_id)


def create_sale(customer, lines, state="confirmed", reference=None):
    """lines: ["P0001:2", "P0002:1.5"] (code:quantity)."""
    Sale = Model.get("sale.sale")
    sale = Sale()
    sale.party = party_by_code(customer)
    if reference:
        sale.reference = reference
    for spec in lines:
        code, _, qty = spec.partition(":")
        line = sale.lines.new()
        line.product = product_by_code(code)
        line.quantity = float(qty or 1)
    sale.save()
    if state in ("quotation", "confirmed"):
        sale.click("quote")
    if state == "confirmed":
        sale.click("confirm")
    sale = Sale(sale.id)
    return {
        "sale_id": sale.id,
        "number": sale.number,
        "state": sale.state,
        "party": customer,
        "total_amount": sale.total_amount,
        "lines": [
            {
                "line_id": line.id,
                "product": line.product.code,
                "quantity": line.quantity,
                "unit_price": line.unit_price,
            }
            for line in sale.lines
        ],
        "last_modified_at": sale.last_modified_at,
    }


# --- CLI -----------------------------------------------------------------------


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--local", action="store_true", help="edit in-process instead of through the running server"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def cmd(name, func, help_):
        p = sub.add_parser(name, help=help_)
        p.set_defaults(func=func)
        return p

    p = cmd("show-product", show_product, "read a product")
    p.add_argument("--code", required=True)

    p = cmd("set-template-price", set_template_price, "change a template's list price")
    p.add_argument("--code", required=True)
    p.add_argument("--price", required=True)
    p.add_argument("--cost")

    p = cmd("set-cost-price", set_cost_price, "change a variant's cost price")
    p.add_argument("--code", required=True)
    p.add_argument("--price", required=True)

    p = cmd("rename-product", rename_product, "change a template's name")
    p.add_argument("--code", required=True)
    p.add_argument("--name", required=True)

    p = cmd("create-product", create_product, "create a template + variant")
    p.add_argument("--code", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--price", required=True)
    p.add_argument("--cost", required=True)
    p.add_argument("--category")
    p.add_argument("--quantity", type=float, help="initial stock received in WH")

    p = cmd("archive-product", archive_product, "archive a template (or a variant)")
    p.add_argument("--code", required=True)
    p.add_argument("--variant", action="store_true", help="archive only the variant")

    p = cmd(
        "unarchive-product",
        lambda **kw: archive_product(active=True, **kw),
        "unarchive a template (or a variant)",
    )
    p.add_argument("--code", required=True)
    p.add_argument("--variant", action="store_true")

    p = cmd("move-stock", move_stock, "a done stock move")
    p.add_argument("--code", required=True)
    p.add_argument(
        "--quantity",
        required=True,
        type=float,
        help="> 0: receipt SUP->STO, < 0: delivery STO->CUS (unless --from/--to)",
    )
    p.add_argument("--from", dest="from_code", help="location code, e.g. SUP, STO, CUS")
    p.add_argument("--to", dest="to_code")
    p.add_argument("--date", help="effective date YYYY-MM-DD (default today)")

    p = cmd("set-stock", set_stock, "set the quantity in WH storage (inventory)")
    p.add_argument("--code", required=True)
    p.add_argument("--quantity", required=True, type=float)
    p.add_argument("--date", help="inventory date YYYY-MM-DD (default today)")

    p = cmd("set-customer-address", set_customer_address, "change a customer's address")
    p.add_argument("--code", required=True)
    p.add_argument("--street-name")
    p.add_argument("--building-number")
    p.add_argument("--city")
    p.add_argument("--postal-code")
    p.add_argument("--state", help="subdivision code, e.g. BR-RJ")

    p = cmd("set-customer-email", set_customer_email, "change a customer's e-mail")
    p.add_argument("--code", required=True)
    p.add_argument("--email", required=True)

    p = cmd("create-customer", create_customer, "create a customer")
    p.add_argument("--code", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--email")
    p.add_argument("--tax-id", help="CNPJ (14 digits) or CPF (11 digits)")
    p.add_argument("--street-name", default="Rua Nova")
    p.add_argument("--building-number", default="1")
    p.add_argument("--city", default="São Paulo")
    p.add_argument("--postal-code", default="01001-000")
    p.add_argument("--state", default="BR-SP")

    p = cmd("create-sale", create_sale, "create a sale")
    p.add_argument("--customer", required=True, help="party code, e.g. C0001")
    p.add_argument(
        "--line", dest="lines", action="append", required=True, help="CODE:QTY, repeatable"
    )
    p.add_argument("--state", choices=["draft", "quotation", "confirmed"], default="confirmed")
    p.add_argument("--reference")
    return parser


@contextlib.contextmanager
def connect(local=False):
    global Model
    from proteus import Model as _Model

    Model = _Model
    if local:
        peerlib.connect_local()
        yield
        return
    from proteus import config

    state = peerlib.load_state()
    with config.set_xmlrpc_session(
        state["rpc_url"], username="admin", password=peerlib.admin_password(state)
    ):
        yield


def main(argv=None):
    args = vars(build_parser().parse_args(argv))
    func = args.pop("func")
    local = args.pop("local")
    args.pop("command")
    t0 = time.monotonic()
    try:
        with connect(local):
            result = func(**args)
    except Exception as e:  # report every failure as JSON
        message = str(e)
        if hasattr(e, "faultString"):  # xmlrpc.client.Fault
            message = e.faultString
        print(json.dumps({"error": message, "type": type(e).__name__}))
        return 1
    result["elapsed_s"] = round(time.monotonic() - t0, 3)
    print(peerlib.dump(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
