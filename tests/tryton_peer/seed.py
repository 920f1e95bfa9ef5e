#!/usr/bin/env python3
"""Seed the Tryton peer database with deterministic data (through proteus).

Run INSIDE the peer virtualenv, in-process (no HTTP server needed), by
``scripts/tryton-peer up`` right after ``trytond-admin`` created the database
and before the server starts::

    .tryton/venv/bin/python tests/tryton_peer/seed.py

What it creates (all deterministic, random.Random(SEED)):

* currency BRL, country Brazil (BR) with a few states (BR-SP, ...)
* company "Merxios Distribuidora Ltda" (BRL, America/Sao_Paulo, CNPJ)
* admin user attached to that company; user ``sync`` (read-only group)
* product categories, N_PRODUCTS templates P0001..P1000 (one variant each,
  variant code == template code), list/cost prices with 2 decimals; every
  ARCHIVE_EVERY-th template archived (active = False)
* stock: one done incoming move supplier -> WH storage per active product,
  except every NO_STOCK_EVERY-th product which stays at 0
* N_CUSTOMERS parties C0001..C0200 with an address, a CNPJ/CPF identifier,
  e-mail and phone contact mechanisms
* N_SALES confirmed sales (state "confirmed", NOT processed: the config
  uses [queue] worker = True and no worker runs)

Prints one JSON line with counts and timings.  Refuses to run twice (exits
0 with "already seeded" if a company exists).
"""

from __future__ import annotations

import datetime as dt
import os
import random
import sys
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peerlib

SEED = 20260101
N_PRODUCTS = int(os.environ.get("TRYTON_PEER_PRODUCTS", 1000))
N_CUSTOMERS = int(os.environ.get("TRYTON_PEER_CUSTOMERS", 200))
N_SALES = int(os.environ.get("TRYTON_PEER_SALES", 100))
ARCHIVE_EVERY = 25  # P0025, P0050, ... are archived (inactive)
NO_STOCK_EVERY = 20  # P0020, P0040, ... (active ones) have no stock
BATCH = 50
BASE_DATE = dt.date(2026, 1, 5)  # stock received; sales on the next days

COMPANY_NAME = "Merxios Distribuidora Ltda"
COMPANY_CNPJ = "11222333000181"

STATES = [
    ("BR-SP", "São Paulo", "São Paulo", "01310-100"),
    ("BR-RJ", "Rio de Janeiro", "Rio de Janeiro", "20040-002"),
    ("BR-MG", "Minas Gerais", "Belo Horizonte", "30130-010"),
    ("BR-PR", "Paraná", "Curitiba", "80010-000"),
    ("BR-RS", "Rio Grande do Sul", "Porto Alegre", "90010-150"),
    ("BR-BA", "Bahia", "Salvador", "40020-000"),
]

CATEGORIES = ["Ferragens", "Papelaria", "Elétricos", "Limpeza", "Embalagens"]
NOUNS = {
    "Ferragens": [
        "Parafuso",
        "Porca",
        "Arruela",
        "Prego",
        "Dobradiça",
        "Cadeado",
        "Trinco",
        "Bucha",
    ],
    "Papelaria": [
        "Caneta",
        "Lápis",
        "Caderno",
        "Borracha",
        "Grampeador",
        "Pasta",
        "Envelope",
        "Régua",
    ],
    "Elétricos": [
        "Lâmpada",
        "Tomada",
        "Interruptor",
        "Cabo",
        "Disjuntor",
        "Fita Isolante",
        "Plugue",
        "Extensão",
    ],
    "Limpeza": [
        "Detergente",
        "Esponja",
        "Vassoura",
        "Rodo",
        "Pano",
        "Desinfetante",
        "Balde",
        "Luva",
    ],
    "Embalagens": [
        "Caixa",
        "Saco",
        "Fita Adesiva",
        "Etiqueta",
        "Plástico Bolha",
        "Envelope Kraft",
        "Pote",
        "Bandeja",
    ],
}
QUALIFIERS = [
    "Premium",
    "Econômico",
    "Industrial",
    "Profissional",
    "Azul",
    "Preto",
    "Branco",
    "Reforçado",
    "Inox",
    "Mini",
    "Grande",
    "Compacto",
]
FIRST = [
    "Ana",
    "Bruno",
    "Carla",
    "Diego",
    "Eduarda",
    "Felipe",
    "Gabriela",
    "Henrique",
    "Isabela",
    "João",
    "Larissa",
    "Marcos",
    "Natália",
    "Otávio",
    "Paula",
    "Rafael",
    "Sofia",
    "Thiago",
    "Vitória",
    "Wagner",
]
LAST = [
    "Silva",
    "Santos",
    "Oliveira",
    "Souza",
    "Rodrigues",
    "Ferreira",
    "Alves",
    "Pereira",
    "Lima",
    "Gomes",
    "Costa",
    "Ribeiro",
    "Martins",
    "Carvalho",
    "Almeida",
]
BUSINESS = ["Comércio", "Distribuidora", "Atacadista", "Materiais", "Suprimentos", "Mercado"]
STREETS = [
    "Rua das Flores",
    "Avenida Paulista",
    "Rua XV de Novembro",
    "Avenida Brasil",
    "Rua da Consolação",
    "Rua Augusta",
    "Avenida Atlântica",
    "Rua dos Andradas",
    "Rua Sete de Setembro",
]


def log(msg):
    print(f"[seed {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def chunks(seq, size=BATCH):
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def money(rng, low, high):
    # always 2 decimals ("185.90", not "185.9")
    return (Decimal(rng.randint(low * 100, high * 100)) / 100).quantize(Decimal("0.01"))


def cnpj(n):
    from stdnum.br import cnpj as m

    base = f"{10000000 + n * 7919:08d}"[-8:] + "0001"
    return base + m.calc_check_digits(base)


def cpf(n):
    from stdnum.br import cpf as m

    base = f"{100000000 + n * 104729:09d}"[-9:]
    d1 = (sum((10 - i) * int(c) for i, c in enumerate(base)) * 10) % 11 % 10
    d2 = (sum((11 - i) * int(c) for i, c in enumerate(base + str(d1))) * 10) % 11 % 10
    number = base + f"{d1}{d2}"
    assert m.is_valid(number), number
    return number


def main():
    t_start = time.monotonic()
    timings = {}
    rng = random.Random(SEED)

    config = peerlib.connect_local()
    from proteus import Model

    timings["pool_init_s"] = round(time.monotonic() - t_start, 2)

    Company = Model.get("company.company")
    if Company.find([]):
        log("already seeded (a company exists); nothing to do")
        print(peerlib.dump({"seeded": False, "reason": "already seeded"}))
        return

    def raw(model):
        return Model.get(model)._proxy

    def ctx():
        return config.context

    def mark(name, t0):
        timings[name] = round(time.monotonic() - t0, 2)
        log(f"{name}: {timings[name]} s")

    # --- currency, country, company ------------------------------------
    t0 = time.monotonic()
    Currency = Model.get("currency.currency")
    brl = Currency.find([("code", "=", "BRL")])
    if brl:
        (brl,) = brl
    else:
        brl = Currency(
            name="Real brasileiro",
            code="BRL",
            symbol="R$",
            numeric_code="986",
            rounding=Decimal("0.01"),
            digits=2,
        )
        brl.save()

    Country = Model.get("country.country")
    Subdivision = Model.get("country.subdivision")
    brazil = Country.find([("code", "=", "BR")])
    if brazil:
        (brazil,) = brazil
    else:
        brazil = Country(name="Brazil", code="BR", code3="BRA", code_numeric="076")
        brazil.save()
    subdivisions = {}
    for code, name, _city, _zipc in STATES:
        sub = Subdivision.find([("code", "=", code)])
        if sub:
            (sub,) = sub
        else:
            sub = Subdivision(country=brazil, code=code, name=name, type="state")
            sub.save()
        subdivisions[code] = sub.id

    Party = Model.get("party.party")
    company_party = Party(name=COMPANY_NAME, code="MERXIOS")
    (address,) = company_party.addresses
    # Trap: with proteus, structured street fields (street_name, ...) make
    # the computed "street" readonly but proteus still sends it on save.
    address.street = "Avenida Paulista, 1000"
    address.city = "São Paulo"
    address.postal_code = "01310-100"
    address.country = brazil
    address.subdivision = Subdivision(subdivisions["BR-SP"])
    # Trap: CNPJ is stored as type "br_vat" (8.x aliases br_cnpj -> br_vat);
    # CPF stays "br_cpf".
    company_party.identifiers.new(type="br_vat", code=COMPANY_CNPJ)
    company_party.contact_mechanisms.new(type="email", value="contato@merxios.example.com")
    company_party.save()
    company = Company(party=company_party, currency=brl, timezone="America/Sao_Paulo")
    company.save()

    User = Model.get("res.user")
    (admin,) = User.find([("login", "=", "admin")])
    admin.companies.append(Company(company.id))
    admin.company = Company(company.id)
    admin.save()
    config._context = User._proxy.get_preferences(True, {})
    assert config.context.get("company") == company.id, config.context
    mark("company_s", t0)

    # --- products ----------------------------------------------------------
    t0 = time.monotonic()
    ModelData = raw("ir.model.data")
    unit_id = ModelData.get_id("product", "uom_unit", {})
    Category = raw("product.category")
    category_ids = dict(
        zip(CATEGORIES, Category.create([{"name": n} for n in CATEGORIES], ctx()), strict=True)
    )

    templates = []
    for i in range(1, N_PRODUCTS + 1):
        cat = CATEGORIES[(i - 1) % len(CATEGORIES)]
        noun = rng.choice(NOUNS[cat])
        qual = rng.choice(QUALIFIERS)
        cost = money(rng, 1, 400)
        markup = Decimal(rng.randint(120, 220)) / 100
        price = (cost * markup).quantize(Decimal("0.01"))
        code = f"P{i:04d}"
        templates.append(
            {
                "name": f"{noun} {qual} {i:04d}",
                "code": code,
                "type": "goods",
                "default_uom": unit_id,
                "salable": True,
                "sale_uom": unit_id,
                "list_price": price,
                "cost_price_method": "fixed",
                "categories": [("add", [category_ids[cat]])],
                "products": [
                    (
                        "create",
                        [
                            {
                                "cost_price": cost,
                                "description": f"{noun} {qual} - {cat}",
                            }
                        ],
                    )
                ],
            }
        )
    Template = raw("product.template")
    template_ids = []
    for batch in chunks(templates):
        template_ids.extend(Template.create(batch, ctx()))
    # Trap: every field of an inactive record is readonly (DeactivableMixin),
    # so a template cannot be *created* with active=False: create, then
    # archive with a write.
    archived = [tid for i, tid in enumerate(template_ids, 1) if i % ARCHIVE_EVERY == 0]
    Template.write(archived, {"active": False}, ctx())
    Product = raw("product.product")
    products = Product.search_read(
        [("template", "in", template_ids)],
        0,
        None,
        [("id", "ASC")],
        ["code", "active", "cost_price", "list_price_used"],
        dict(ctx(), active_test=False),
    )
    by_code = {p["code"]: p for p in products}
    assert len(by_code) == N_PRODUCTS, len(by_code)
    mark("products_s", t0)

    # --- stock -------------------------------------------------------------
    t0 = time.monotonic()
    Location = raw("stock.location")
    loc = {
        r["code"]: r["id"]
        for r in Location.search_read(
            [("code", "in", ["WH", "STO", "SUP", "CUS"])], 0, None, None, ["code"], ctx()
        )
    }
    moves = []
    for i in range(1, N_PRODUCTS + 1):
        if i % ARCHIVE_EVERY == 0 or i % NO_STOCK_EVERY == 0:
            continue
        p = by_code[f"P{i:04d}"]
        moves.append(
            {
                "product": p["id"],
                "unit": unit_id,
                "quantity": float(rng.randint(5, 500)),
                "from_location": loc["SUP"],
                "to_location": loc["STO"],
                "planned_date": BASE_DATE,
                "effective_date": BASE_DATE,
                "unit_price": p["cost_price"],
                "currency": brl.id,
                "company": company.id,
            }
        )
    Move = raw("stock.move")
    move_ids = []
    for batch in chunks(moves, 200):
        ids = Move.create(batch, ctx())
        Move.do(ids, ctx())
        move_ids.extend(ids)
    mark("stock_s", t0)

    # --- customers ---------------------------------------------------------
    t0 = time.monotonic()
    parties = []
    for i in range(1, N_CUSTOMERS + 1):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        code_state, _state_name, city, zipc = STATES[i % len(STATES)]
        if i % 3 == 0:  # a person, CPF
            name = f"{first} {last}"
            identifier = {"type": "br_cpf", "code": cpf(i)}
            email_local = f"{first}.{last}.{i}".lower()
        else:  # a company, CNPJ
            name = f"{last} {rng.choice(BUSINESS)} {i:04d} Ltda"
            identifier = {"type": "br_vat", "code": cnpj(i)}
            email_local = f"compras{i:04d}"
        email_local = (
            email_local.replace("ã", "a")
            .replace("á", "a")
            .replace("é", "e")
            .replace("í", "i")
            .replace("ó", "o")
            .replace("ô", "o")
            .replace("ú", "u")
            .replace("ç", "c")
        )
        parties.append(
            {
                "name": name,
                "code": f"C{i:04d}",
                "addresses": [
                    (
                        "create",
                        [
                            {
                                "street_name": rng.choice(STREETS),
                                "building_number": str(rng.randint(1, 3000)),
                                "city": city,
                                "postal_code": zipc,
                                "country": brazil.id,
                                "subdivision": subdivisions[code_state],
                            }
                        ],
                    )
                ],
                "identifiers": [("create", [identifier])],
                "contact_mechanisms": [
                    (
                        "create",
                        [
                            {"type": "email", "value": f"{email_local}@example.com.br"},
                            {
                                "type": "phone",
                                "value": f"+55 11 9{rng.randint(1000, 9999)}"
                                f"-{rng.randint(1000, 9999)}",
                            },
                        ],
                    )
                ],
            }
        )
    PartyRaw = raw("party.party")
    party_ids = []
    for batch in chunks(parties):
        party_ids.extend(PartyRaw.create(batch, ctx()))
    party_addresses = {
        r["id"]: r["addresses"][0] for r in PartyRaw.read(party_ids, ["addresses"], ctx())
    }
    mark("customers_s", t0)

    # --- sales ---------------------------------------------------------------
    t0 = time.monotonic()
    sellable = [p for c, p in sorted(by_code.items()) if p["active"]]
    sales = []
    for i in range(1, N_SALES + 1):
        party_id = party_ids[rng.randrange(len(party_ids))]
        addr = party_addresses[party_id]
        lines = []
        for product in rng.sample(sellable, rng.randint(1, 5)):
            lines.append(
                {
                    "type": "line",
                    "product": product["id"],
                    "quantity": float(rng.randint(1, 10)),
                    "unit": unit_id,
                    "unit_price": product["list_price_used"],
                    "description": product["code"],
                }
            )
        sales.append(
            {
                "company": company.id,
                "currency": brl.id,
                "party": party_id,
                "invoice_address": addr,
                "shipment_address": addr,
                "warehouse": loc["WH"],
                "sale_date": BASE_DATE + dt.timedelta(days=1 + i % 60),
                "reference": f"PED-{i:05d}",
                "description": f"Pedido de teste {i}",
                "lines": [("create", lines)],
            }
        )
    Sale = raw("sale.sale")
    sale_ids = []
    for batch in chunks(sales):
        ids = Sale.create(batch, ctx())
        Sale.quote(ids, ctx())
        Sale.confirm(ids, ctx())
        sale_ids.extend(ids)
    states = {r["state"] for r in Sale.read(sale_ids, ["state"], ctx())}
    assert states == {"confirmed"}, states
    mark("sales_s", t0)

    # --- read-only sync user ---------------------------------------------
    t0 = time.monotonic()
    sync_password = Path(peerlib.HOME / "sync_password")
    if sync_password.exists():
        create_sync_user(Model, config, company.id, sync_password.read_text().strip())
    mark("sync_user_s", t0)

    timings["total_s"] = round(time.monotonic() - t_start, 2)
    print(
        peerlib.dump(
            {
                "seeded": True,
                "company": company.id,
                "currency": brl.id,
                "products": len(template_ids),
                "archived_products": len(archived),
                "stock_moves": len(move_ids),
                "customers": len(party_ids),
                "sales": len(sale_ids),
                "timings": timings,
            }
        )
    )


# Models the read-only "sync" group may read.  A model with no
# ir.model.access row at all is readable by everybody already; for the
# others the union of the user's groups decides, so a read-only row here is
# enough.
SYNC_READ_MODELS = [
    "product.template",
    "product.product",
    "product.category",
    "product.list_price",
    "product.cost_price",
    "product.template-product.category",
    "product.uom",
    "product.uom.category",
    "product.identifier",
    "party.party",
    "party.address",
    "party.contact_mechanism",
    "party.identifier",
    "party.category",
    "stock.location",
    "stock.move",
    "stock.shipment.out",
    "stock.shipment.out.return",
    "stock.period",
    "stock.period.cache",
    "sale.sale",
    "sale.line",
    "sale.configuration",
    "company.company",
    "company.employee",
    "currency.currency",
    "currency.currency.rate",
    "country.country",
    "country.subdivision",
]


def create_sync_user(Model, config, company_id, password):
    Group = Model.get("res.group")
    User = Model.get("res.user")
    Access = Model.get("ir.model.access")
    IrModel = Model.get("ir.model")
    group = Group(name="Merxios Sync (read-only)")
    group.save()
    models = IrModel.find([("name", "in", SYNC_READ_MODELS)])
    found = {m.name for m in models}
    missing = set(SYNC_READ_MODELS) - found
    if missing:
        log(f"sync group: models not found (skipped): {sorted(missing)}")
    Access._proxy.create(
        [
            {
                "model": m.name,
                "group": group.id,
                "perm_read": True,
                "perm_write": False,
                "perm_create": False,
                "perm_delete": False,
            }
            for m in models
        ],
        config.context,
    )
    Company = Model.get("company.company")
    user = User(name="Merxios Sync", login="sync", password=password)
    user.groups.append(Group(group.id))
    user.companies.append(Company(company_id))
    user.company = Company(company_id)
    user.save()


if __name__ == "__main__":
    main()
