"""What every sandbox ERP shares, whatever dialect it speaks.

A sandbox must serve a million-record catalogue from a laptop, reproduce the same
data on every run, change it on demand, misbehave on demand, and afterwards say
exactly what it holds, so that a sync can be checked record by record. Everything
here is ERP-agnostic; a dialect module (``bling``, ``omie``...) only renders the
canonical records in its ERP's JSON and enforces its ERP's request rules. Shared too:
the settings every sandbox starts with (``SandboxConfig``) and its runtime knobs
(``BaseKnobs``), both extended per dialect, request statistics, the admin endpoints
(``admin_routes``, with per-dialect ``FaultAction``s) and the server plumbing
(``serve_forever``, ``serve_in_thread``, ``periodic_mutations_lifespan``).

How the data stays cheap and deterministic
------------------------------------------
Record *i* of a stream is a pure function of ``(seed, stream, i)``: a splitmix64 hash
seeds a tiny random stream from which every field is drawn, so a record costs a few
microseconds and nothing is stored. Changes made later (price changes, new records,
deletions...) live in sparse override maps keyed by index, so memory grows with the
number of *changes*, not with the size of the catalogue.

Base change times grow with the index (``Timeline``), all in the past. A filter on the
change time is therefore an index range found by arithmetic, and records changed later
(whose new time is "now") are kept in a small sorted side list. Status-like attributes
that filters need (active/inactive, order status) come from a *class* that is an
affine function of the index modulo a small period (``ClassScheme``), so the number of,
say, inactive records in any index range is also arithmetic. ``RecordSpace`` combines
both to answer "page *p* of the records matching this filter, sorted by id" in
O(log n) plus the page size, with no scan, for any catalogue size.

Everything is served from one event loop (one uvicorn worker), so no locks: state
changes only between awaits.

Times: ERPs in Brazil speak local Brasília time without an offset. All wall-clock
values here are epoch seconds; ``fmt_datetime`` renders them at UTC-03:00 (Brazil has
had no daylight saving time since 2019).
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import importlib.util
import random
import secrets
import socket
import threading
import time
import unicodedata
from bisect import bisect_left, insort
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from itertools import starmap
from math import gcd
from operator import mul, sub
from typing import Any, ClassVar, Generic, Literal, NamedTuple, TypeVar

import orjson
import uvicorn
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

T = TypeVar("T")

# --------------------------------------------------------------------------- hashing

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_TWO64 = float(1 << 64)
_FULL_CAP = 1 << 64  # a fresh hash holds 64 bits of draws


def mix64(x: int) -> int:
    """splitmix64 finaliser: a cheap, well-spread 64-bit hash of an integer."""
    x = (x + _GOLDEN) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


class Draw:
    """A short deterministic random stream for one record.

    ``random.Random`` costs ~10 µs to seed; this costs one hash per key, and each
    64-bit hash is spent over several small draws (mixed-radix digits), which is what
    keeps a 100-record page around a millisecond. The modulo bias is below 1/1024.
    """

    __slots__ = ("_acc", "_cap", "_state")

    def __init__(self, key: int, i: int, extra: int = 0) -> None:
        state = mix64(key ^ i)
        if extra:
            state = mix64(state ^ extra)
        self._state = state
        self._acc = mix64(state)
        self._cap = _FULL_CAP

    @classmethod
    def resume(cls, state: int, acc: int, cap: int) -> Draw:
        """The stream at a point reached by drawing inline (``Dataset._product_draws``)."""
        d = cls.__new__(cls)
        d._state, d._acc, d._cap = state, acc, cap
        return d

    # between, pick and chance repeat below's body: a method call is a large share of
    # a draw's cost, and records make millions of draws.
    def below(self, n: int) -> int:
        """Integer in [0, n)."""
        cap = self._cap
        if cap < n << 10:
            self._state, self._acc, cap = _refill(self._state)
        self._acc, r = divmod(self._acc, n)
        self._cap = cap // n
        return r

    def between(self, lo: int, hi: int) -> int:
        """Integer in [lo, hi]."""
        n = hi - lo + 1
        cap = self._cap
        if cap < n << 10:
            self._state, self._acc, cap = _refill(self._state)
        self._acc, r = divmod(self._acc, n)
        self._cap = cap // n
        return lo + r

    def pick(self, options: Sequence[T]) -> T:
        n = len(options)
        cap = self._cap
        if cap < n << 10:
            self._state, self._acc, cap = _refill(self._state)
        self._acc, r = divmod(self._acc, n)
        self._cap = cap // n
        return options[r]

    def chance(self, percent: int) -> bool:
        return self.below(100) < percent


def _refill(state: int) -> tuple[int, int, int]:
    """A ``Draw``'s next (state, acc, cap) once its hash is spent."""
    state = (state + _GOLDEN) & _MASK64
    return state, mix64(state), _FULL_CAP


def unit_interval(*keys: int) -> float:
    """A uniform float in [0, 1) fixed by the keys: used for per-record fault flags."""
    state = 0
    for key in keys:
        state = mix64(state ^ (key & _MASK64))
    return state / _TWO64


# ------------------------------------------------------------------------------ time

BRT_OFFSET_SECONDS = -3 * 3600
DAY = 86400


def fmt_datetime(ts: int) -> str:
    """Epoch seconds as Brasília local time, ``YYYY-MM-DD HH:MM:SS``."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts + BRT_OFFSET_SECONDS))


def fmt_date(ts: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts + BRT_OFFSET_SECONDS))


def parse_local(value: str, *, end_of_day: bool = False) -> int:
    """Parse ``YYYY-MM-DD HH:MM:SS`` or ``YYYY-MM-DD`` (Brasília time) to epoch seconds.

    A bare date means the start of that day, or its last second with ``end_of_day``,
    so that ``dataFinal=2024-05-31`` includes the whole of the 31st. Raises ValueError.
    """
    value = value.strip()
    if len(value) == 10:
        parsed = time.strptime(value, "%Y-%m-%d")
        base = calendar.timegm(parsed) - BRT_OFFSET_SECONDS
        return base + (DAY - 1 if end_of_day else 0)
    parsed = time.strptime(value, "%Y-%m-%d %H:%M:%S")
    return calendar.timegm(parsed) - BRT_OFFSET_SECONDS


def local_midnight(ts: float) -> int:
    """Epoch seconds of the Brasília midnight that starts the day containing ``ts``."""
    local = int(ts) + BRT_OFFSET_SECONDS
    return local - local % DAY - BRT_OFFSET_SECONDS


def add_one_year(ts: int) -> int:
    """The same local wall-clock time one calendar year later (29 Feb -> 28 Feb)."""
    t = time.gmtime(ts + BRT_OFFSET_SECONDS)
    year, day = t.tm_year + 1, t.tm_mday
    if t.tm_mon == 2 and day == 29 and not calendar.isleap(year):
        day = 28
    later = calendar.timegm((year, t.tm_mon, day, t.tm_hour, t.tm_min, t.tm_sec, 0, 0, 0))
    return later - BRT_OFFSET_SECONDS


# --------------------------------------------------------------------------- numbers


def money(cents: int) -> float:
    """Cents as the JSON number the ERPs send (never a string)."""
    return cents / 100


def qty(milli: int) -> float:
    """Thousandths of a unit as a JSON number."""
    return milli / 1000


def comma_decimal(value: float) -> str:
    """``12.5`` as ``"12,50"``: a number the way a broken record carries it."""
    return f"{float(value):.2f}".replace(".", ",")


# ------------------------------------------------------ Brazilian-looking vocabulary


@dataclass(frozen=True, slots=True)
class Category:
    id_offset: int
    name: str
    sku_prefix: str
    items: tuple[tuple[str, str], ...]  # (noun, NCM)
    qualifiers: tuple[str, ...]
    specs: tuple[str, ...]
    units: tuple[str, ...]
    brands: tuple[str, ...]
    price_cents: tuple[int, int]
    weight_grams: tuple[int, int]


CATEGORIES: tuple[Category, ...] = (
    Category(
        1,
        "Fixação",
        "FIX",
        (
            ("Parafuso Sextavado", "73181500"),
            ("Parafuso Philips", "73181500"),
            ("Porca Sextavada", "73181600"),
            ("Arruela Lisa", "73182200"),
            ("Bucha de Nylon", "39269090"),
            ("Rebite de Alumínio", "76169900"),
            ("Barra Roscada", "73181500"),
        ),
        ("Inox", "Zincado", "Galvanizado", "Aço Carbono", "Latão", "Bicromatizado"),
        ("M4", "M5", "M6", "M8", "M10", "M12", '1/4"', '5/16"', '3/8"'),
        ("UN", "CX", "PC"),
        ("Ciser", "Belenus", "Fischer", "Tramontina", "Vonder"),
        (10, 4_500),
        (2, 800),
    ),
    Category(
        2,
        "Ferramentas",
        "FER",
        (
            ("Chave de Fenda", "82054000"),
            ("Chave Philips", "82054000"),
            ("Alicate Universal", "82032090"),
            ("Martelo de Unha", "82052000"),
            ("Trena", "90178010"),
            ("Serrote", "82021000"),
            ("Chave Inglesa", "82041100"),
            ("Jogo de Chaves Allen", "82041100"),
        ),
        ("Profissional", "Emborrachado", "Cromo Vanádio", "Isolado 1000V", "Reforçado"),
        ('6"', '8"', '10"', "3 m", "5 m", "8 m", "12 peças"),
        ("UN", "PC"),
        ("Tramontina", "Vonder", "Gedore", "Stanley", "Irwin"),
        (800, 25_000),
        (80, 2_500),
    ),
    Category(
        3,
        "Elétrica",
        "ELE",
        (
            ("Cabo Flexível", "85444200"),
            ("Disjuntor Bipolar", "85362000"),
            ("Tomada 2P+T", "85366910"),
            ("Interruptor Simples", "85365090"),
            ("Fita Isolante", "39191010"),
            ("Lâmpada LED Bulbo", "85395000"),
            ("Extensão Elétrica", "85444200"),
        ),
        ("Branco", "Preto", "Antichama", "Bivolt", "10A", "20A"),
        ("2,5 mm²", "4 mm²", "9 W", "12 W", "5 m", "20 m", "100 m"),
        ("UN", "M", "CX"),
        ("Pial Legrand", "Tramontina", "Sil", "Steck", "Philips"),
        (250, 68_000),
        (20, 9_000),
    ),
    Category(
        4,
        "Hidráulica",
        "HID",
        (
            ("Tubo PVC Soldável", "39172300"),
            ("Joelho 90°", "39174090"),
            ("Registro de Gaveta", "84818019"),
            ("Torneira de Parede", "84818019"),
            ("Engate Flexível", "39173900"),
            ("Caixa Sifonada", "39229000"),
        ),
        ("Marrom", "Branco", "Cromado", "Reforçado"),
        ("20 mm", "25 mm", "32 mm", '1/2"', '3/4"', "40 cm"),
        ("UN", "PC", "M"),
        ("Tigre", "Amanco", "Krona", "Docol", "Deca"),
        (190, 32_000),
        (30, 3_000),
    ),
    Category(
        5,
        "Construção",
        "CON",
        (
            ("Cimento CP II", "25232910"),
            ("Argamassa AC-I", "32149000"),
            ("Cal Hidratada", "25222000"),
            ("Rejunte Flexível", "32149000"),
            ("Tinta Acrílica", "32091010"),
            ("Massa Corrida", "32149000"),
        ),
        ("Cinza", "Branco Neve", "Fosco", "Semibrilho", "Premium"),
        ("1 kg", "5 kg", "20 kg", "50 kg", "3,6 L", "18 L"),
        ("UN", "KG", "CX"),
        ("Votoran", "Quartzolit", "Suvinil", "Coral", "Cimento Itambé"),
        (350, 59_000),
        (1_000, 50_000),
    ),
    Category(
        6,
        "Mercearia",
        "MER",
        (
            ("Arroz Tipo 1", "10063021"),
            ("Feijão Carioca", "07133319"),
            ("Café Torrado e Moído", "09012100"),
            ("Açúcar Cristal", "17019900"),
            ("Óleo de Soja", "15079011"),
            ("Farinha de Trigo", "11010010"),
            ("Macarrão Espaguete", "19021900"),
        ),
        ("Tradicional", "Extra Forte", "Integral", "Premium", "Orgânico"),
        ("250 g", "500 g", "1 kg", "5 kg", "900 ml"),
        ("UN", "KG", "CX"),
        ("Camil", "Pilão", "União", "Liza", "Dona Benta", "Renata", "Kicaldo"),
        (199, 4_990),
        (250, 5_000),
    ),
)

FIRST_NAMES = (
    "Ana",
    "Maria",
    "João",
    "José",
    "Pedro",
    "Paulo",
    "Lucas",
    "Gabriel",
    "Rafael",
    "Mariana",
    "Juliana",
    "Fernanda",
    "Camila",
    "Beatriz",
    "Larissa",
    "Carlos",
    "Marcos",
    "Luiz",
    "Antônio",
    "Francisco",
    "Rodrigo",
    "Thiago",
    "Bruno",
    "Aline",
    "Patrícia",
    "Vanessa",
    "Letícia",
    "Eduardo",
    "Gustavo",
    "Felipe",
    "Renata",
    "Cláudia",
    "Sérgio",
)
LAST_NAMES = (
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
    "Lopes",
    "Soares",
    "Fernandes",
    "Vieira",
    "Barbosa",
    "Rocha",
    "Dias",
    "Nascimento",
    "Andrade",
    "Moreira",
    "Nunes",
    "Marques",
    "Machado",
    "Mendes",
    "Freitas",
    "Cardoso",
    "Teixeira",
)
COMPANY_PREFIXES = (
    "Comercial",
    "Distribuidora",
    "Mercado",
    "Casa",
    "Auto Peças",
    "Materiais de Construção",
    "Ferragens",
    "Supermercado",
    "Atacadão",
    "Madeireira",
    "Papelaria",
    "Eletro",
    "Empório",
    "Construtora",
    "Agropecuária",
)
COMPANY_CORES = (
    "Horizonte",
    "São Jorge",
    "Bom Preço",
    "Nova Era",
    "Santa Luzia",
    "Progresso",
    "Aliança",
    "Estrela",
    "Boa Vista",
    "Dois Irmãos",
    "Pioneira",
    "Central",
    "União",
    "Real",
    "Paraná",
    "Gaúcha",
    "Mineira",
    "Nordeste",
    "Ipiranga",
    "Vale Verde",
)
COMPANY_SUFFIXES = ("Ltda", "ME", "EIRELI", "S.A.", "EPP", "Ltda")
# (city, UF, phone area code, first 5 CEP digits)
CITIES: tuple[tuple[str, str, int, int], ...] = (
    ("São Paulo", "SP", 11, 1000),
    ("Campinas", "SP", 19, 13000),
    ("Ribeirão Preto", "SP", 16, 14000),
    ("Sorocaba", "SP", 15, 18000),
    ("Rio de Janeiro", "RJ", 21, 20000),
    ("Niterói", "RJ", 21, 24000),
    ("Belo Horizonte", "MG", 31, 30000),
    ("Uberlândia", "MG", 34, 38400),
    ("Curitiba", "PR", 41, 80000),
    ("Londrina", "PR", 43, 86000),
    ("Porto Alegre", "RS", 51, 90000),
    ("Caxias do Sul", "RS", 54, 95000),
    ("Bento Gonçalves", "RS", 54, 95700),
    ("Florianópolis", "SC", 48, 88000),
    ("Joinville", "SC", 47, 89200),
    ("Salvador", "BA", 71, 40000),
    ("Recife", "PE", 81, 50000),
    ("Fortaleza", "CE", 85, 60000),
    ("Goiânia", "GO", 62, 74000),
    ("Brasília", "DF", 61, 70000),
    ("Manaus", "AM", 92, 69000),
    ("Belém", "PA", 91, 66000),
    ("Vitória", "ES", 27, 29000),
    ("Natal", "RN", 84, 59000),
    ("João Pessoa", "PB", 83, 58000),
    ("Maceió", "AL", 82, 57000),
    ("Teresina", "PI", 86, 64000),
    ("São Luís", "MA", 98, 65000),
    ("Cuiabá", "MT", 65, 78000),
    ("Campo Grande", "MS", 67, 79000),
)
STREETS = (
    "Rua das Flores",
    "Avenida Brasil",
    "Rua XV de Novembro",
    "Rua Sete de Setembro",
    "Avenida Paulista",
    "Rua Dom Pedro II",
    "Rua Tiradentes",
    "Avenida Getúlio Vargas",
    "Rua Marechal Deodoro",
    "Rua Santos Dumont",
    "Avenida Rio Branco",
    "Rua Barão do Rio Branco",
    "Rua José Bonifácio",
    "Avenida Independência",
    "Rua Voluntários da Pátria",
    "Avenida das Indústrias",
)
DISTRICTS = (
    "Centro",
    "Jardim América",
    "Vila Nova",
    "Boa Vista",
    "Santa Cecília",
    "Distrito Industrial",
    "São José",
    "Bela Vista",
    "Jardim Europa",
    "Cidade Nova",
    "Vila Mariana",
    "Santo Antônio",
)
COMPLEMENTS = ("", "", "", "Sala 12", "Apto 34", "Galpão 2", "Loja 1", "Bloco B")
WAREHOUSE_NAMES = ("Depósito Geral", "Loja Centro", "CD Cajamar")


def slug(text: str) -> str:
    """ASCII lowercase letters and digits only, for e-mail addresses and domains."""
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(ch for ch in plain.lower() if ch.isalnum())


def _mod11_digit(numbers: str, weights: Sequence[int]) -> str:
    if len(numbers) != len(weights):
        raise ValueError("one weight per digit")
    rest = sum(map(mul, map(int, numbers), weights)) % 11  # map: no per-digit bytecode
    return "0" if rest < 2 else str(11 - rest)


def cpf_with_check_digits(base9: str) -> str:
    """The 11-digit CPF whose first nine digits are ``base9``."""
    first = _mod11_digit(base9, range(10, 1, -1))
    return base9 + first + _mod11_digit(base9 + first, range(11, 1, -1))


_CNPJ_W1 = (5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2)


def cnpj_with_check_digits(base12: str) -> str:
    """The 14-digit CNPJ whose first twelve digits are ``base12``."""
    first = _mod11_digit(base12, _CNPJ_W1)
    return base12 + first + _mod11_digit(base12 + first, (6, *_CNPJ_W1))


def gtin13_with_check_digit(body12: str) -> str:
    total = sum(int(d) * (3 if k % 2 else 1) for k, d in enumerate(body12))
    return body12 + str((10 - total % 10) % 10)


_GTIN_W131 = tuple(n // 100 + 3 * (n // 10 % 10) + n % 10 for n in range(1000))
_GTIN_W313 = tuple(3 * (n // 100) + n // 10 % 10 + 3 * (n % 10) for n in range(1000))
_GTIN_789 = 7 + 3 * 8 + 9


def gtin13_789(item: int) -> str:
    """GTIN-13 ``789`` + 9-digit item + check digit, with table lookups (hot path)."""
    a, rest = divmod(item, 1_000_000)
    b, c = divmod(rest, 1000)
    total = _GTIN_789 + _GTIN_W313[a] + _GTIN_W131[b] + _GTIN_W313[c]
    return f"789{item:09d}{(10 - total % 10) % 10}"


def bump_last_digit(digits: str) -> str:
    """The last digit one up (9 wraps to 0): a valid CPF/CNPJ so changed fails its check."""
    return digits[:-1] + str((int(digits[-1]) + 1) % 10)


# ------------------------------------------------------------- malformed records

# How a field of a malformed record is spoilt, and the name of that kind of break.
Spoil = Literal["drop", "comma", "null", "wrap", "list", "bump"]
_KIND_NAME: Mapping[Spoil, str] = {
    "drop": "missing_{}",
    "comma": "{}_not_numeric",  # 12.5 -> "12,50"
    "null": "{}_null",
    "wrap": "{}_wrong_type",  # 12.5 -> {"valor": 12.5}
    "list": "{}_wrong_type",  # "Nome" -> ["Nome"]
    "bump": "{}_bad_check_digits",  # a CPF/CNPJ with its last digit one up
}


@dataclass(frozen=True)
class Breaks:
    """The ways an ERP dialect spoils a stream's records: kind ``k`` of ``stream`` does
    ``spoils[stream][k]`` (how, and the path of the field) to the record."""

    spoils: Mapping[str, Sequence[tuple[Spoil, tuple[str, ...]]]]

    def __post_init__(self) -> None:
        # Dataset.malformed_kind draws one of MALFORMED_KINDS kinds for every stream.
        for stream, ways in self.spoils.items():
            if len(ways) != MALFORMED_KINDS:
                raise ValueError(f"{stream}: {len(ways)} ways to break, not {MALFORMED_KINDS}")

    def kind_names(self) -> dict[str, tuple[str, ...]]:
        """``missing_id``, ``preco_not_numeric``...: the names the truth endpoints give."""
        return {
            stream: tuple(_KIND_NAME[how].format(path[-1]) for how, path in ways)
            for stream, ways in self.spoils.items()
        }

    def apply(self, stream: str, kind: int, record: dict[str, Any]) -> dict[str, Any]:
        """Spoil ``record`` (in place, and returned) the way kind ``kind`` says."""
        how, path = self.spoils[stream][kind]
        *parents, key = path
        target = record
        for parent in parents:
            target = target[parent]
        if how == "drop":
            target.pop(key, None)
        elif how == "null":
            target[key] = None
        elif how == "comma":
            target[key] = comma_decimal(target[key])
        elif how == "wrap":
            target[key] = {"valor": target[key]}
        elif how == "list":
            target[key] = [target[key]]
        else:
            target[key] = bump_last_digit(target[key])
        return record


# Slugs of the names e-mail addresses are made of: unicodedata per record is costly.
_SLUGS = {text: slug(text) for text in (*COMPANY_CORES, *FIRST_NAMES, *LAST_NAMES)}


def _not_repdigit(digits: str) -> str:
    """CPF/CNPJ made of one repeated digit are invalid by rule; nudge the last one."""
    if len(set(digits)) == 1:
        return bump_last_digit(digits)
    return digits


# ----------------------------------------------------------- index-space machinery


class Timeline:
    """Base change time of record i: non-decreasing in i, spread over [start, end)."""

    __slots__ = ("n", "span", "start")

    def __init__(self, start: int, end: int, n: int) -> None:
        self.start, self.span, self.n = start, max(end - start, 1), max(n, 1)

    def at(self, i: int) -> int:
        return self.start + (i * self.span) // self.n

    def first_at_or_after(self, ts: int) -> int:
        """Smallest i in [0, n] with at(i) >= ts (exact integer arithmetic)."""
        d = ts - self.start
        if d <= 0:
            return 0
        return min(-(-d * self.n // self.span), self.n)

    def first_after(self, ts: int) -> int:
        return self.first_at_or_after(ts + 1)


class ClassScheme:
    """class(i) = (mult*i + shift) mod period; counts per class over a range are exact."""

    __slots__ = ("_inv", "mult", "period", "shift")

    def __init__(self, period: int, mult: int, shift: int) -> None:
        if gcd(mult, period) != 1:
            raise ValueError("mult must be coprime with period")
        self.period, self.mult, self.shift = period, mult, shift % period
        self._inv = pow(mult, -1, period)

    def of(self, i: int) -> int:
        return (self.mult * i + self.shift) % self.period

    def count(self, a: int, b: int, cls: int) -> int:
        """How many i in [a, b) have class ``cls``."""
        r = ((cls - self.shift) * self._inv) % self.period
        return self._below(b, r) - self._below(a, r)

    def _below(self, n: int, r: int) -> int:
        return (n - r + self.period - 1) // self.period if n > r else 0


Window = tuple[int | None, int | None]
ALL_TIME: Window = (None, None)


class RecordSpace:
    """The ids of one stream: base records, appended ones, touched and deleted ones.

    A record is *moved* once it is touched or deleted: it leaves the arithmetic base
    set and, unless deleted, is answered from the sparse override maps instead.
    """

    def __init__(self, n_base: int, timeline: Timeline, scheme: ClassScheme) -> None:
        self.n_base = n_base
        self.total = n_base
        self.timeline = timeline
        self.scheme = scheme
        self.deleted: set[int] = set()
        self.version = 0
        self._changed: dict[int, int] = {}
        self._created: dict[int, int] = {}
        self._class: dict[int, int] = {}
        self._moved: set[int] = set()
        self._moved_sorted: list[int] = []
        self._moved_by_class: list[list[int]] = [[] for _ in range(scheme.period)]
        self._extra_cache: dict[tuple[Any, ...], list[int]] = {}

    def exists(self, i: int) -> bool:
        return 0 <= i < self.total and i not in self.deleted

    def existing_count(self) -> int:
        return self.total - len(self.deleted)

    def changed_at(self, i: int) -> int:
        ts = self._changed.get(i)
        return self.timeline.at(i) if ts is None else ts

    def created_at(self, i: int) -> int:
        ts = self._created.get(i)
        return self.timeline.at(i) if ts is None else ts

    def class_of(self, i: int) -> int:
        cls = self._class.get(i)
        return self.scheme.of(i) if cls is None else cls

    def touched(self) -> Iterator[int]:
        return iter(self._changed)

    def touch(self, i: int, ts: int, cls: int | None = None) -> None:
        self._changed[i] = ts
        if cls is not None:
            self._class[i] = cls
        self._mark_moved(i)
        self.version += 1

    def append(self, ts: int, cls: int) -> int:
        i = self.total
        self.total += 1
        self._changed[i] = ts
        self._created[i] = ts
        self._class[i] = cls
        self.version += 1
        return i

    def delete(self, i: int) -> None:
        self.deleted.add(i)
        self._mark_moved(i)
        self.version += 1

    def _mark_moved(self, i: int) -> None:
        if i < self.n_base and i not in self._moved:
            self._moved.add(i)
            insort(self._moved_sorted, i)
            insort(self._moved_by_class[self.scheme.of(i)], i)

    def copy(self) -> RecordSpace:
        other = RecordSpace(self.n_base, self.timeline, self.scheme)
        other.total, other.version = self.total, self.version
        other.deleted = set(self.deleted)
        other._changed = dict(self._changed)
        other._created = dict(self._created)
        other._class = dict(self._class)
        other._moved = set(self._moved)
        other._moved_sorted = list(self._moved_sorted)
        other._moved_by_class = [list(x) for x in self._moved_by_class]
        return other

    def select(
        self,
        classes: frozenset[int] | None = None,
        changed: Window = ALL_TIME,
        created: Window = ALL_TIME,
    ) -> Selection:
        """Records matching all filters (inclusive windows), in ascending index order."""
        lo, hi = 0, self.n_base
        for start, end in (changed, created):
            if start is not None:
                lo = max(lo, self.timeline.first_at_or_after(start))
            if end is not None:
                hi = min(hi, self.timeline.first_after(end))
        hi = max(hi, lo)
        return Selection(self, lo, hi, classes, self._extra(classes, changed, created))

    def _extra(self, classes: frozenset[int] | None, changed: Window, created: Window) -> list[int]:
        key = (self.version, classes, changed, created)
        cached = self._extra_cache.get(key)
        if cached is not None:
            return cached
        c_from, c_to = changed
        k_from, k_to = created
        out: list[int] = []
        for i, ts in self._changed.items():
            if i in self.deleted:
                continue
            if (c_from is not None and ts < c_from) or (c_to is not None and ts > c_to):
                continue
            if k_from is not None or k_to is not None:
                made = self.created_at(i)
                if (k_from is not None and made < k_from) or (k_to is not None and made > k_to):
                    continue
            if classes is not None and self.class_of(i) not in classes:
                continue
            out.append(i)
        out.sort()
        if len(self._extra_cache) > 64:
            self._extra_cache.clear()
        self._extra_cache[key] = out
        return out


class Selection:
    """A filtered, id-ordered view of a RecordSpace that can be paged without scanning."""

    def __init__(
        self,
        space: RecordSpace,
        lo: int,
        hi: int,
        classes: frozenset[int] | None,
        extra: list[int],
    ) -> None:
        self._space, self._lo, self._hi = space, lo, hi
        self._classes = classes
        self._extra = extra
        self._upper = max(hi, extra[-1] + 1 if extra else 0)
        self.count = self._below(self._upper)

    def _below(self, v: int) -> int:
        """How many selected indices are < v."""
        lo, b = self._lo, min(max(v, self._lo), self._hi)
        n = 0
        if b > lo:
            space = self._space
            if self._classes is None:
                ms = space._moved_sorted
                n = b - lo - (bisect_left(ms, b) - bisect_left(ms, lo))
            else:
                for cls in self._classes:
                    mc = space._moved_by_class[cls]
                    moved = bisect_left(mc, b) - bisect_left(mc, lo)
                    n += space.scheme.count(lo, b, cls) - moved
        return n + bisect_left(self._extra, v)

    def page(self, offset: int, limit: int) -> list[int]:
        if limit <= 0 or offset >= self.count:
            return []
        lo_v, hi_v = 0, self._upper
        target = offset + 1
        while lo_v < hi_v:
            mid = (lo_v + hi_v) // 2
            if self._below(mid) >= target:
                hi_v = mid
            else:
                lo_v = mid + 1
        first = lo_v - 1
        out: list[int] = []
        extra, e = self._extra, bisect_left(self._extra, first)
        j, hi = max(first, self._lo), self._hi
        moved, scheme, classes = self._space._moved, self._space.scheme, self._classes
        while len(out) < limit:
            while j < hi and (j in moved or (classes is not None and scheme.of(j) not in classes)):
                j += 1
            next_extra = extra[e] if e < len(extra) else None
            if j < hi and (next_extra is None or j < next_extra):
                out.append(j)
                j += 1
            elif next_extra is not None:
                out.append(next_extra)
                e += 1
            else:
                break
        return out

    def all(self) -> list[int]:
        return self.page(0, self.count)


# ------------------------------------------------------------ canonical records


class Product(NamedTuple):
    slot: int  # position in its stream; id = id base + slot
    id: int
    sku: str
    name: str
    short_description: str
    category_id: int
    category: str
    brand: str
    unit: str
    gtin: str
    ncm: str
    price_cents: int
    cost_cents: int
    active: bool
    weight_grams: int
    width_cm: int
    height_cm: int
    depth_cm: int
    min_stock: int
    max_stock: int
    created_at: int
    updated_at: int


class ProductHead(NamedTuple):
    """What lists, stock answers and order lines show of a product: its first draws.

    Much cheaper than a whole ``Product`` (no GTIN, weights, dimensions...), and the
    same values as the matching ``Product`` fields.
    """

    slot: int
    id: int
    sku: str
    name: str
    short_description: str
    unit: str
    price_cents: int
    cost_cents: int
    active: bool


class Customer(NamedTuple):
    slot: int  # position in its stream; id = id base + slot
    id: int
    code: str
    person_type: str  # "F" (CPF) or "J" (CNPJ)
    name: str
    trade_name: str
    document: str  # digits only
    state_registration: str
    email: str
    phone: str
    mobile: str
    street: str
    number: str
    complement: str
    district: str
    city: str
    state: str
    zip_code: str
    active: bool
    credit_limit_cents: int
    created_at: int
    updated_at: int


class OrderLine(NamedTuple):
    id: int
    product_index: int
    product_id: int
    sku: str
    description: str
    unit: str
    quantity_milli: int
    unit_price_cents: int
    discount_pct: int
    total_cents: int


class Installment(NamedTuple):
    id: int
    due_at: int
    value_cents: int
    payment_method_id: int


class OrderStatus(NamedTuple):
    id: int
    value: int
    name: str


ORDER_STATUSES = {
    "open": OrderStatus(6, 0, "Em aberto"),
    "done": OrderStatus(9, 1, "Atendido"),
    "cancelled": OrderStatus(12, 2, "Cancelado"),
    "in_progress": OrderStatus(15, 3, "Em andamento"),
    "checked": OrderStatus(24, 4, "Verificado"),
}
# Order status by class (period 20): mostly fulfilled, a few open, some cancelled.
_ORDER_CLASS_STATUS: tuple[str, ...] = (
    ("done",) * 12 + ("open",) * 3 + ("in_progress",) * 2 + ("cancelled",) * 2 + ("checked",)
)
ORDER_STATUS_BY_CLASS: tuple[OrderStatus, ...] = tuple(
    ORDER_STATUSES[k] for k in _ORDER_CLASS_STATUS
)
ORDER_OPEN_CLASS = _ORDER_CLASS_STATUS.index("open")
ORDER_DONE_CLASS = _ORDER_CLASS_STATUS.index("done")


class OrderBody(NamedTuple):
    """What an order is made of when it is created; its status and times live apart."""

    customer_index: int
    lines: tuple[OrderLine, ...]
    freight_cents: int
    installments: tuple[Installment, ...]
    store_number: str
    seller_id: int


class Order(NamedTuple):
    slot: int  # position in its stream; id = id base + slot
    id: int
    number: int
    customer: Customer
    status: OrderStatus
    ordered_at: int
    lines: tuple[OrderLine, ...]
    freight_cents: int
    total_products_cents: int
    total_cents: int
    installments: tuple[Installment, ...]
    store_number: str
    seller_id: int
    updated_at: int


class Warehouse(NamedTuple):
    id: int
    name: str
    default: bool


class StockLine(NamedTuple):
    warehouse: Warehouse
    physical_milli: int
    reserved_milli: int

    @property
    def available_milli(self) -> int:
        return self.physical_milli - self.reserved_milli


class _ProductPlan(NamedTuple):
    """Per-category constants for drawing a product's first fields without a ``Draw``.

    A product draws, in order: category, item, qualifier, spec, price, cost factor,
    minimum stock, brand and unit. In every category these come from the first hash
    with no refill (``_product_plan`` checks it), so they are its mixed-radix digits:
    item, qualifier and spec are one digit of ``n_names``, whose name strings are
    precomputed in ``names``.
    """

    category: Category
    n_names: int
    names: tuple[tuple[str, str, str], ...]  # (name, short description, NCM)
    price_lo: int
    price_span: int
    n_brands: int
    n_units: int
    skip_to_unit: int  # minimum stock x brand: the digits between cost factor and unit
    cap: int  # what the first hash can still give after the unit draw


_COST_FACTOR_LO, _COST_FACTOR_SPAN = 55, 26  # cost = 55..80 % of the price
_MIN_STOCK_SPAN = 20


def _product_plan(cat: Category) -> _ProductPlan:
    n_items, n_qualifiers, n_specs = len(cat.items), len(cat.qualifiers), len(cat.specs)
    names = []
    for k in range(n_items * n_qualifiers * n_specs):
        noun, ncm = cat.items[k % n_items]
        qualifier = cat.qualifiers[k // n_items % n_qualifiers]
        spec = cat.specs[k // (n_items * n_qualifiers)]
        names.append(
            (
                f"{noun} {qualifier} {spec}",
                f"{noun} {qualifier.lower()} {spec}, linha {cat.name.lower()}.",
                ncm,
            )
        )
    lo, hi = cat.price_cents
    radices = (
        len(CATEGORIES),
        n_items,
        n_qualifiers,
        n_specs,
        hi - lo + 1,
        _COST_FACTOR_SPAN,
        _MIN_STOCK_SPAN,
        len(cat.brands),
        len(cat.units),
    )
    cap = _FULL_CAP
    for n in radices:
        if cap < n << 10:  # Draw.below would refill here
            raise ValueError(f"category {cat.name}: first product draws must fit one hash")
        cap //= n
    return _ProductPlan(
        cat,
        len(names),
        tuple(names),
        lo,
        hi - lo + 1,
        len(cat.brands),
        len(cat.units),
        _MIN_STOCK_SPAN * len(cat.brands),
        cap,
    )


_PRODUCT_PLANS = tuple(_product_plan(cat) for cat in CATEGORIES)


STREAMS = ("products", "stock_levels", "customers", "sales_orders")
_STREAM_KEYS = {name: k + 1 for k, name in enumerate(STREAMS)}
MALFORMED_KINDS = 4
PRODUCT_INACTIVE_CLASS = 0
CUSTOMER_INACTIVE_CLASS = 0
MAX_RECORDS_PER_STREAM = 99_000_000


@dataclass(frozen=True)
class DatasetSpec:
    """Sizes and identity of one account's data. ``anchor`` ends the base history."""

    seed: int = 1
    products: int = 1000
    customers: int = 300
    orders: int = 2000
    warehouses: int = 3
    history_days: int = 730
    anchor: int = 0  # epoch seconds; 0 = the Brasília midnight starting today
    account_no: int = 0  # shifts every id so accounts never share ids

    def validate(self) -> None:
        for name in ("products", "customers", "orders"):
            value = getattr(self, name)
            if not 0 <= value <= MAX_RECORDS_PER_STREAM:
                raise ValueError(f"{name} must be between 0 and {MAX_RECORDS_PER_STREAM}")
        if self.products == 0 and self.orders > 0:
            raise ValueError("orders need at least one product")
        if self.customers == 0 and self.orders > 0:
            raise ValueError("orders need at least one customer")
        if not 1 <= self.warehouses <= len(WAREHOUSE_NAMES):
            raise ValueError(f"warehouses must be between 1 and {len(WAREHOUSE_NAMES)}")
        if self.history_days < 1:
            raise ValueError("history_days must be at least 1")


@dataclass(frozen=True)
class MutationCounts:
    price_changes: int = 0
    stock_changes: int = 0
    new_products: int = 0
    deleted_products: int = 0
    status_changes: int = 0
    customer_changes: int = 0
    new_orders: int = 0
    order_status_changes: int = 0

    MAX_TOTAL = 100_000

    @classmethod
    def from_json(cls, payload: object) -> MutationCounts:
        if not isinstance(payload, dict):
            raise ValueError("body must be a JSON object of counts")
        known = {f for f in cls.__dataclass_fields__ if f != "MAX_TOTAL"}
        unknown = set(payload) - known
        if unknown:
            raise ValueError(f"unknown counts: {sorted(unknown)}; known: {sorted(known)}")
        values: dict[str, int] = {}
        for key, value in payload.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{key} must be a non-negative integer")
            values[key] = value
        counts = cls(**values)
        if sum(values.values()) > cls.MAX_TOTAL:
            raise ValueError(f"at most {cls.MAX_TOTAL} changes per call")
        return counts


class Dataset:
    """One account's ERP data: lazily generated base records plus sparse changes."""

    def __init__(self, spec: DatasetSpec, clock: Callable[[], float] = time.time) -> None:
        spec.validate()
        self.spec = spec
        self.clock = clock
        anchor = spec.anchor or local_midnight(clock())
        end = anchor - 3600  # the newest base record is an hour before the anchor
        start = end - spec.history_days * DAY
        self.anchor = anchor
        seed = spec.seed * 1_000_003 + spec.account_no
        self._seed = seed
        self._keys = {name: mix64(seed ^ (key << 56)) for name, key in _STREAM_KEYS.items()}
        self._product_key = self._keys["products"]
        self._stock_key = self._keys["stock_levels"]
        self._fault_keys = {name: mix64(key) for name, key in self._keys.items()}
        shift = spec.account_no * 100_000_000
        self.product_id_base = 16_000_000_001 + shift
        self.customer_id_base = 17_000_000_001 + shift
        self.order_id_base = 18_000_000_001 + shift
        self.line_id_base = 19_000_000_001 + shift * 8
        self.installment_id_base = 21_000_000_001 + shift * 4
        self.warehouses = tuple(
            Warehouse(14_000_000_001 + shift + k, WAREHOUSE_NAMES[k], k == 0)
            for k in range(spec.warehouses)
        )
        self.products = RecordSpace(
            spec.products, Timeline(start, end, spec.products), ClassScheme(20, 7, seed)
        )
        self.customers = RecordSpace(
            spec.customers, Timeline(start, end, spec.customers), ClassScheme(20, 11, seed >> 3)
        )
        self.orders = RecordSpace(
            spec.orders, Timeline(start, end, spec.orders), ClassScheme(20, 13, seed >> 5)
        )
        self._gtin_shift = mix64(seed ^ 0x6774696E) % 1_000_000_000
        self._cpf_shift = mix64(seed ^ 0x637066) % 1_000_000_000
        self._cnpj_shift = mix64(seed ^ 0x636E706A) % 100_000_000
        self._product_patch: dict[int, dict[str, Any]] = {}
        self._customer_patch: dict[int, dict[str, Any]] = {}
        self._new_orders: dict[int, OrderBody] = {}
        self._stock: dict[tuple[int, int], tuple[int, int]] = {}
        self._mutations = 0
        self._scan_cache: dict[tuple[Any, ...], tuple[int, int, int]] = {}

    # ---- ids

    def product_index(self, product_id: int) -> int | None:
        i = product_id - self.product_id_base
        return i if self.products.exists(i) else None

    def customer_index(self, customer_id: int) -> int | None:
        i = customer_id - self.customer_id_base
        return i if self.customers.exists(i) else None

    def order_index(self, order_id: int) -> int | None:
        i = order_id - self.order_id_base
        return i if self.orders.exists(i) else None

    def warehouse(self, warehouse_id: int) -> int | None:
        for k, w in enumerate(self.warehouses):
            if w.id == warehouse_id:
                return k
        return None

    # ---- products

    def _product_draws(self, i: int) -> tuple[int, int, _ProductPlan, int, int, int]:
        """Product i's first draws with ``Draw.below`` inlined (same numbers, hot path).

        (state, the hash left after them, category plan, names digit, price, cost
        factor); minimum stock, brand and unit are the next digits of that hash.
        """
        state = mix64(self._product_key ^ i)
        acc, c = divmod(mix64(state), len(CATEGORIES))
        plan = _PRODUCT_PLANS[c]
        acc, names = divmod(acc, plan.n_names)
        acc, price = divmod(acc, plan.price_span)
        acc, factor = divmod(acc, _COST_FACTOR_SPAN)
        return state, acc, plan, names, plan.price_lo + price, _COST_FACTOR_LO + factor

    def _product_head(self, i: int, patch: Mapping[str, Any] | None) -> ProductHead:
        _, acc, plan, names, price, factor = self._product_draws(i)
        name, short_description, _ = plan.names[names]
        if patch:
            price, cost = patch["price_cents"], patch["cost_cents"]
        else:
            cost = max(1, price * factor // 100)
        return ProductHead(
            i,
            self.product_id_base + i,
            f"{plan.category.sku_prefix}-{i + 1:07d}",
            name,
            short_description,
            plan.category.units[acc // plan.skip_to_unit % plan.n_units],
            price,
            cost,
            self.products.class_of(i) != PRODUCT_INACTIVE_CLASS,
        )

    def _make_product(self, i: int, patch: Mapping[str, Any] | None) -> Product:
        state, acc, plan, names, price, factor = self._product_draws(i)
        cat = plan.category
        name, short_description, ncm = plan.names[names]
        cost = max(1, price * factor // 100)
        if patch:
            price, cost = patch["price_cents"], patch["cost_cents"]
        acc, minimum = divmod(acc, _MIN_STOCK_SPAN)
        acc, brand = divmod(acc, plan.n_brands)
        acc, unit = divmod(acc, plan.n_units)
        d = Draw.resume(state, acc, plan.cap)
        space = self.products
        return Product(
            slot=i,
            id=self.product_id_base + i,
            sku=f"{cat.sku_prefix}-{i + 1:07d}",
            name=name,
            short_description=short_description,
            category_id=9_000_000 + cat.id_offset,
            category=cat.name,
            brand=cat.brands[brand],
            unit=cat.units[unit],
            gtin=gtin13_789((i * 387_420_489 + self._gtin_shift) % 1_000_000_000),
            ncm=ncm,
            price_cents=price,
            cost_cents=cost,
            active=space.class_of(i) != PRODUCT_INACTIVE_CLASS,
            weight_grams=d.between(*cat.weight_grams),
            width_cm=d.between(1, 60),
            height_cm=d.between(1, 40),
            depth_cm=d.between(1, 80),
            min_stock=minimum,
            max_stock=minimum + d.between(20, 500),
            created_at=space.created_at(i),
            updated_at=space.changed_at(i),
        )

    def product(self, i: int) -> Product:
        """Product at index i as it is now (call only for existing indices)."""
        return self._make_product(i, self._product_patch.get(i))

    def _base_product_head(self, i: int) -> ProductHead:
        """As first generated: the price an old order line was sold at."""
        return self._product_head(i, None)

    def product_head(self, i: int) -> ProductHead:
        """``product(i)``'s list fields, at a fraction of its cost."""
        return self._product_head(i, self._product_patch.get(i))

    def _stock_milli(self, slot: int, kg: bool) -> list[tuple[int, int]]:
        """(physical, reserved) thousandths per warehouse (no ``StockLine``: a list item
        needs only their sum)."""
        d = Draw(self._stock_key, slot)
        changes = self._stock
        out = []
        for k in range(len(self.warehouses)):
            roll = d.below(100)
            if roll < 12:
                units = 0
            elif roll < 92:
                units = d.between(1, 200)
            else:
                units = d.between(201, 5000)
            physical = units * 1000 + (d.below(4) * 250 if kg and units else 0)
            reserved = 0 if d.below(4) or not units else min(units, d.between(1, 5)) * 1000
            changed = changes.get((slot, k)) if changes else None
            if changed is not None:
                physical, reserved = changed
            out.append((physical, reserved))
        return out

    def stock(self, p: Product | ProductHead) -> list[StockLine]:
        """One line per warehouse: (physical, reserved) in thousandths of a unit."""
        return [
            StockLine(w, physical, reserved)
            for w, (physical, reserved) in zip(
                self.warehouses, self._stock_milli(p.slot, p.unit == "KG"), strict=True
            )
        ]

    def available_milli(self, p: Product | ProductHead) -> int:
        """Physical minus reserved stock over every warehouse, in thousandths."""
        return sum(starmap(sub, self._stock_milli(p.slot, p.unit == "KG")))

    # ---- customers

    def _base_customer(self, i: int) -> Customer:
        d = Draw(self._keys["customers"], i)
        city, uf, ddd, cep = d.pick(CITIES)
        if d.chance(75):
            core = d.pick(COMPANY_CORES)
            trade = f"{d.pick(COMPANY_PREFIXES)} {core}"
            name = f"{trade} {d.pick(COMPANY_SUFFIXES)}"
            root = f"{(i * 387_420_489 + self._cnpj_shift) % 100_000_000:08d}"
            document = cnpj_with_check_digits(_not_repdigit(root + "0001"))
            person, ie = "J", f"{d.below(10**9):09d}{d.below(1000):03d}"
            email = f"compras{i + 1}@{_SLUGS[core]}.com.br"
        else:
            first, last = d.pick(FIRST_NAMES), d.pick(LAST_NAMES)
            name, trade = f"{first} {d.pick(LAST_NAMES)} {last}", ""
            base = f"{(i * 387_420_489 + self._cpf_shift) % 1_000_000_000:09d}"
            document = cpf_with_check_digits(_not_repdigit(base))
            person, ie = "F", ""
            email = f"{_SLUGS[first]}.{_SLUGS[last]}{i + 1}@email.com.br"
        return Customer(
            slot=i,
            id=self.customer_id_base + i,
            code=f"CLI{i + 1:06d}",
            person_type=person,
            name=name,
            trade_name=trade,
            document=document,
            state_registration=ie,
            email=email,
            phone=f"({ddd}) {d.between(3000, 3999)}-{d.below(10000):04d}",
            mobile=f"({ddd}) 9{d.between(6000, 9999)}-{d.below(10000):04d}",
            street=d.pick(STREETS),
            number=str(d.between(1, 3500)),
            complement=d.pick(COMPLEMENTS),
            district=d.pick(DISTRICTS),
            city=city,
            state=uf,
            zip_code=f"{cep + d.below(1000):05d}-{d.below(1000):03d}",
            active=self.customers.class_of(i) != CUSTOMER_INACTIVE_CLASS,
            credit_limit_cents=d.below(50) * 100_000,
            created_at=self.customers.created_at(i),
            updated_at=self.customers.changed_at(i),
        )

    def customer(self, i: int) -> Customer:
        c = self._base_customer(i)
        patch = self._customer_patch.get(i)
        return c._replace(**patch) if patch else c

    # ---- orders

    def _order_body(
        self,
        i: int,
        d: Draw,
        customer_index: int,
        pick_product: Callable[[Draw], int],
        price_of: Callable[[int], ProductHead],
        ordered_at: int,
    ) -> OrderBody:
        lines = []
        for k in range(d.between(1, 5)):
            p = price_of(pick_product(d))
            qty = d.between(1, 40) * 250 if p.unit == "KG" else d.between(1, 24) * 1000
            discount = 0 if d.chance(80) else d.pick((5, 10))
            total = (qty * p.price_cents * (100 - discount) + 50_000) // 100_000
            lines.append(
                OrderLine(
                    self.line_id_base + i * 8 + k,
                    p.slot,
                    p.id,
                    p.sku,
                    p.name,
                    p.unit,
                    qty,
                    p.price_cents,
                    discount,
                    total,
                )
            )
        freight = 0 if d.chance(40) else d.between(1500, 12000)
        total = sum(line.total_cents for line in lines) + freight
        parts = d.between(1, 3)
        installments = tuple(
            Installment(
                self.installment_id_base + i * 4 + k,
                ordered_at + 30 * DAY * (k + 1),
                total // parts + (total % parts if k == 0 else 0),
                d.pick((1, 2, 3, 4)),
            )
            for k in range(parts)
        )
        store = f"MLB{d.below(10**10):010d}" if d.chance(10) else ""
        return OrderBody(
            customer_index, tuple(lines), freight, installments, store, d.pick((0, 0, 1, 2))
        )

    def _base_order_body(self, i: int) -> OrderBody:
        d = Draw(self._keys["sales_orders"], i)
        n_products, n_customers = self.products.n_base, self.customers.n_base
        return self._order_body(
            i,
            d,
            d.below(n_customers),
            lambda dd: dd.below(n_products),
            self._base_product_head,
            self.orders.created_at(i),
        )

    def order(self, i: int) -> Order:
        space = self.orders
        body = self._new_orders.get(i) or self._base_order_body(i)
        products_total = sum(line.total_cents for line in body.lines)
        return Order(
            slot=i,
            id=self.order_id_base + i,
            number=i + 1,
            customer=self.customer(body.customer_index),
            status=ORDER_STATUS_BY_CLASS[space.class_of(i)],
            ordered_at=space.created_at(i),
            lines=body.lines,
            freight_cents=body.freight_cents,
            total_products_cents=products_total,
            total_cents=products_total + body.freight_cents,
            installments=body.installments,
            store_number=body.store_number,
            seller_id=body.seller_id,
            updated_at=space.changed_at(i),
        )

    # ---- malformed records

    def is_malformed(self, stream: str, i: int, rate: float) -> bool:
        """Whether record i is served broken at this rate (monotone in the rate)."""
        # unit_interval(key, i) with its first hash, which depends on the stream only,
        # computed once.
        return rate > 0 and mix64(self._fault_keys[stream] ^ (i & _MASK64)) / _TWO64 < rate

    def malformed_kind(self, stream: str, i: int) -> int:
        return mix64(self._keys[stream] ^ (i * 0x5851F42D4C957F2D)) % MALFORMED_KINDS

    # ---- changes

    def _pick(
        self,
        space: RecordSpace,
        rng: random.Random,
        k: int,
        exclude: set[int],
        accept: Callable[[int], bool] | None = None,
    ) -> list[int]:
        """k distinct existing indices, deterministic for a given rng state."""
        available = space.existing_count() - len(exclude)
        k = min(k, max(available, 0))
        if k == 0:
            return []
        if k * 2 > available:
            pool = [
                i
                for i in range(space.total)
                if space.exists(i) and i not in exclude and (accept is None or accept(i))
            ]
            return sorted(rng.sample(pool, min(k, len(pool))))
        chosen: set[int] = set()
        attempts = 0
        while len(chosen) < k and attempts < 50 * k + 1000:
            attempts += 1
            i = rng.randrange(space.total)
            if space.exists(i) and i not in exclude and i not in chosen:
                if accept is None or accept(i):
                    chosen.add(i)
        return sorted(chosen)

    def mutate(self, counts: MutationCounts) -> dict[str, Any]:
        """Apply changes now; every changed record gets the current time as change time."""
        self._mutations += 1
        rng = random.Random(mix64(self._seed ^ (self._mutations * 0x2545F4914F6CDD1D)))
        now = int(self.clock())
        touched: set[int] = set()

        price_changed = []
        for i in self._pick(self.products, rng, counts.price_changes, touched):
            p = self.product(i)
            factor = rng.choice((85, 90, 95, 105, 110, 115, 120, 125))
            price = max(1, p.price_cents * factor // 100)
            cost = max(1, p.cost_cents * factor // 100)
            self._product_patch.setdefault(i, {}).update(price_cents=price, cost_cents=cost)
            self.products.touch(i, now)
            touched.add(i)
            price_changed.append(self.product_id_base + i)

        status_changed = []
        for i in self._pick(self.products, rng, counts.status_changes, touched):
            cls = self.products.class_of(i)
            new_cls = 1 + rng.randrange(19) if cls == PRODUCT_INACTIVE_CLASS else 0
            self.products.touch(i, now, new_cls)
            touched.add(i)
            status_changed.append(self.product_id_base + i)

        created = []
        for _ in range(counts.new_products):
            i = self.products.append(now, 1 + rng.randrange(19))
            touched.add(i)
            created.append(self.product_id_base + i)

        deleted = []
        for i in self._pick(self.products, rng, counts.deleted_products, touched):
            self.products.delete(i)
            deleted.append(self.product_id_base + i)

        stock_changed = []
        if self.products.existing_count():
            for i in self._pick(self.products, rng, counts.stock_changes, set()):
                k = rng.randrange(len(self.warehouses))
                p = self.product(i)
                physical, reserved = self.stock(p)[k].physical_milli, 0
                delta = rng.choice((-1, 1)) * rng.randint(1, 50) * 1000
                physical = max(0, physical + delta)
                reserved = min(physical, rng.choice((0, 0, 1000, 2000)))
                self._stock[(i, k)] = (physical, reserved)
                stock_changed.append(
                    {
                        "product_id": p.id,
                        "warehouse_id": self.warehouses[k].id,
                        "physical": physical / 1000,
                        "available": (physical - reserved) / 1000,
                    }
                )

        customers_changed = []
        for i in self._pick(self.customers, rng, counts.customer_changes, set()):
            c = self.customer(i)
            d = Draw(self._keys["customers"], i, self._mutations)
            city, uf, ddd, cep = d.pick(CITIES)
            self._customer_patch[i] = {
                "email": f"novo{self._mutations}.{c.email}",
                "phone": f"({ddd}) {d.between(3000, 3999)}-{d.below(10000):04d}",
                "mobile": f"({ddd}) 9{d.between(6000, 9999)}-{d.below(10000):04d}",
                "street": d.pick(STREETS),
                "number": str(d.between(1, 3500)),
                "district": d.pick(DISTRICTS),
                "city": city,
                "state": uf,
                "zip_code": f"{cep + d.below(1000):05d}-{d.below(1000):03d}",
            }
            self.customers.touch(i, now)
            customers_changed.append(c.id)

        orders_created = []
        products_left = self.products.existing_count() > 0
        if counts.new_orders and products_left and self.customers.existing_count():
            for _ in range(counts.new_orders):
                i = self.orders.total
                d = Draw(self._keys["sales_orders"], i, self._mutations)
                customer = self._pick(self.customers, rng, 1, set())[0]
                body = self._order_body(
                    i,
                    d,
                    customer,
                    lambda _d: self._pick(self.products, rng, 1, set())[0],
                    self.product_head,
                    now,
                )
                self._new_orders[i] = body
                self.orders.append(now, ORDER_OPEN_CLASS)
                orders_created.append(self.order_id_base + i)

        orders_status = []
        open_classes = {
            c
            for c, s in enumerate(ORDER_STATUS_BY_CLASS)
            if s.name in ("Em aberto", "Em andamento")
        }
        for i in self._pick(
            self.orders,
            rng,
            counts.order_status_changes,
            set(),
            accept=lambda j: self.orders.class_of(j) in open_classes,
        ):
            self.orders.touch(i, now, ORDER_DONE_CLASS)
            orders_status.append(self.order_id_base + i)

        return {
            "at": fmt_datetime(now),
            "products": {
                "price_changed": price_changed,
                "status_changed": status_changed,
                "created": created,
                "deleted": deleted,
            },
            "stock_levels": {"changed": stock_changed},
            "customers": {"changed": customers_changed},
            "sales_orders": {"created": orders_created, "status_changed": orders_status},
        }

    def frozen_copy(self) -> Dataset:
        """A snapshot for long reads (truth streams) while the live data keeps changing."""
        other = Dataset.__new__(Dataset)
        other.__dict__.update(self.__dict__)
        other.products = self.products.copy()
        other.customers = self.customers.copy()
        other.orders = self.orders.copy()
        other._product_patch = {k: dict(v) for k, v in self._product_patch.items()}
        other._customer_patch = {k: dict(v) for k, v in self._customer_patch.items()}
        other._new_orders = dict(self._new_orders)
        other._stock = dict(self._stock)
        other._scan_cache = {}
        return other

    # ---- truth

    def _space(self, stream: str) -> RecordSpace:
        return {
            "products": self.products,
            "stock_levels": self.products,
            "customers": self.customers,
            "sales_orders": self.orders,
        }[stream]

    def truth_records(
        self, stream: str, rate: float, kind_names: Sequence[str]
    ) -> Iterator[dict[str, Any]]:
        """Canonical current values of every existing record of a stream, by id."""
        if stream not in STREAMS:
            raise ValueError(f"stream must be one of {', '.join(STREAMS)}")
        space = self._space(stream)
        for i in range(space.total):
            if i in space.deleted:
                continue
            malformed = self.is_malformed(stream, i, rate)
            flag = {
                "malformed": malformed,
                "malformedKind": kind_names[self.malformed_kind(stream, i)] if malformed else None,
            }
            if stream == "products":
                yield self._truth_product(self.product(i)) | flag
            elif stream == "stock_levels":
                p = self.product_head(i)
                for line in self.stock(p):
                    yield {
                        "productExternalId": str(p.id),
                        "warehouseExternalId": str(line.warehouse.id),
                        "warehouseName": line.warehouse.name,
                        "quantity": line.physical_milli / 1000,
                        "available": line.available_milli / 1000,
                    } | flag
            elif stream == "customers":
                yield self._truth_customer(self.customer(i)) | flag
            else:
                yield self._truth_order(self.order(i)) | flag

    @staticmethod
    def _truth_product(p: Product) -> dict[str, Any]:
        return {
            "externalId": str(p.id),
            "sku": p.sku,
            "name": p.name,
            "gtin": p.gtin,
            "ncm": p.ncm,
            "unit": p.unit,
            "brand": p.brand,
            "listPrice": p.price_cents / 100,
            "costPrice": p.cost_cents / 100,
            "active": p.active,
            "sourceUpdatedAt": fmt_datetime(p.updated_at),
        }

    @staticmethod
    def _truth_customer(c: Customer) -> dict[str, Any]:
        return {
            "externalId": str(c.id),
            "code": c.code,
            "name": c.name,
            "personType": c.person_type,
            "document": c.document,
            "email": c.email,
            "phone": c.phone,
            "mobile": c.mobile,
            "street": c.street,
            "number": c.number,
            "district": c.district,
            "city": c.city,
            "state": c.state,
            "zipCode": c.zip_code,
            "active": c.active,
            "sourceUpdatedAt": fmt_datetime(c.updated_at),
        }

    @staticmethod
    def _truth_order(o: Order) -> dict[str, Any]:
        return {
            "externalId": str(o.id),
            "number": str(o.number),
            "customerExternalId": str(o.customer.id),
            "status": o.status.name,
            "statusId": o.status.id,
            "orderDate": fmt_date(o.ordered_at),
            "freight": o.freight_cents / 100,
            "totalProducts": o.total_products_cents / 100,
            "total": o.total_cents / 100,
            "lines": [
                {
                    "externalId": str(line.id),
                    "productExternalId": str(line.product_id),
                    "sku": line.sku,
                    "quantity": line.quantity_milli / 1000,
                    "unitPrice": line.unit_price_cents / 100,
                    "discountPct": line.discount_pct,
                    "total": line.total_cents / 100,
                }
                for line in o.lines
            ],
            "sourceUpdatedAt": fmt_datetime(o.updated_at),
        }

    def summary(self, rate: float) -> dict[str, Any]:
        """Counts per stream; ``idSum`` is the sum of valid ids, easy to check in SQL."""
        out: dict[str, Any] = {}
        for stream in STREAMS:
            space = self._space(stream)
            key = (space.version, stream, rate)
            cached = self._scan_cache.get(key)
            if cached is None:
                count = malformed = id_sum_all = id_sum_bad = 0
                base = {
                    "products": self.product_id_base,
                    "stock_levels": self.product_id_base,
                    "customers": self.customer_id_base,
                    "sales_orders": self.order_id_base,
                }[stream]
                deleted = space.deleted
                for i in range(space.total):
                    if i in deleted:
                        continue
                    count += 1
                    id_sum_all += base + i
                    if rate > 0 and self.is_malformed(stream, i, rate):
                        malformed += 1
                        id_sum_bad += base + i
                cached = (count, malformed, id_sum_all - id_sum_bad)
                self._scan_cache[key] = cached
            count, malformed, id_sum = cached
            per = len(self.warehouses) if stream == "stock_levels" else 1
            out[stream] = {
                "count": count * per,
                "malformed": malformed * per,
                "valid": (count - malformed) * per,
                "idSum": str(id_sum * per),
            }
        return out


# ------------------------------------------------------------------- runtime knobs


@dataclass
class BaseKnobs:
    """Everything that can be changed at runtime through ``POST /__sandbox/faults``.

    The fields every sandbox has; a dialect subclasses it with its own limits and
    lists them in ``RATES`` (0..1 shares), ``INTS`` (non-negative integers, with
    optional ``MINIMA``) and ``BOOLS``. ``ACTIONS`` are keys the faults endpoint accepts
    that are not knobs (one-off actions such as expiring every token); ``update``
    leaves them to the endpoint.
    """

    latency_ms: int = 0
    error_rate: float = 0.0
    malformed_rate: float = 0.0

    RATES: ClassVar[tuple[str, ...]] = ("error_rate", "malformed_rate")
    INTS: ClassVar[tuple[str, ...]] = ("latency_ms",)
    BOOLS: ClassVar[tuple[str, ...]] = ()
    MINIMA: ClassVar[Mapping[str, tuple[int, str]]] = {}
    ACTIONS: ClassVar[tuple[str, ...]] = ()

    def update(self, payload: Mapping[str, object]) -> None:
        """Validate everything first, then apply, so a bad request changes nothing."""
        changes: dict[str, object] = {}
        for key, value in payload.items():
            if key in self.RATES:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError(f"{key} must be a number between 0 and 1")
                if not 0 <= value <= 1:
                    raise ValueError(f"{key} must be between 0 and 1")
                changes[key] = float(value)
            elif key in self.INTS:
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError(f"{key} must be a non-negative integer")
                minimum = self.MINIMA.get(key)
                if minimum is not None and value < minimum[0]:
                    raise ValueError(minimum[1])
                changes[key] = value
            elif key in self.BOOLS:
                if not isinstance(value, bool):
                    raise ValueError(f"{key} must be true or false")
                changes[key] = value
            elif key not in self.ACTIONS:
                raise ValueError(f"unknown knob {key!r}")
        for key, value in changes.items():
            setattr(self, key, value)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Knobs(BaseKnobs):
    """The Bling sandbox's knobs (OAuth lifetimes and Bling's per-account limits)."""

    reject_refresh: bool = False
    rate_limit: int = 3  # requests per second per account; 0 = unlimited
    daily_limit: int = 120_000  # requests per Brasília day per account; 0 = unlimited
    token_ttl: int = 21600

    INTS: ClassVar[tuple[str, ...]] = ("latency_ms", "rate_limit", "daily_limit", "token_ttl")
    BOOLS: ClassVar[tuple[str, ...]] = ("reject_refresh",)
    MINIMA: ClassVar[Mapping[str, tuple[int, str]]] = {
        "token_ttl": (1, "token_ttl must be at least 1 second")
    }
    ACTIONS: ClassVar[tuple[str, ...]] = ("expire_tokens",)


class SlidingWindowLimiter:
    """At most ``limit`` accepted requests in any window of ``window`` seconds.

    A sliding log rather than a fixed per-second bucket: it is the stricter reading of
    "3 requests per second", so a client that never trips it here will not trip a
    fixed-window server either. Rejected requests do not use up the budget.
    """

    def __init__(self, window: float = 1.0) -> None:
        self.window = window
        self._accepted: deque[float] = deque()

    def try_acquire(self, now: float, limit: int) -> float:
        """0.0 when accepted, else the seconds until a slot frees."""
        if limit <= 0:
            return 0.0
        accepted = self._accepted
        while accepted and now - accepted[0] >= self.window:
            accepted.popleft()
        if len(accepted) >= limit:
            return self.window - (now - accepted[len(accepted) - limit])
        accepted.append(now)
        return 0.0

    def undo(self) -> None:
        """Give back the last accepted slot (a later check refused the same request)."""
        if self._accepted:
            self._accepted.pop()


class DailyQuota:
    """Accepted requests per Brasília calendar day."""

    def __init__(self) -> None:
        self.day = -1
        self.used = 0

    def try_acquire(self, wall_now: float, limit: int) -> bool:
        day = local_midnight(wall_now)
        if day != self.day:
            self.day, self.used = day, 0
        if limit > 0 and self.used >= limit:
            return False
        self.used += 1
        return True


@dataclass
class EndpointStats:
    requests: int = 0
    statuses: dict[str, int] = field(default_factory=dict)


class Stats:
    """Counters a benchmark reads to prove "zero 429s, most of the budget used"."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.ok = 0
        self.rate_limited = 0
        self.unauthorized = 0
        self.injected_errors = 0
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.endpoints: dict[str, EndpointStats] = {}
        # Dialect-specific tallies (e.g. Omie's redundant-call faults) and high-water
        # marks (e.g. calls in flight per method), reported as they are.
        self.counters: dict[str, int] = {}
        self.peaks: dict[str, int] = {}

    def bump(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def peak(self, name: str, value: int) -> None:
        if value > self.peaks.get(name, 0):
            self.peaks[name] = value

    def record(self, endpoint: str, status: int, now: float, injected: bool = False) -> None:
        self.requests += 1
        if self.first_at is None:
            self.first_at = now
        self.last_at = now
        if 200 <= status < 300:
            self.ok += 1
        elif status == 429:
            self.rate_limited += 1
        elif status in (401, 403):
            self.unauthorized += 1
        if injected:
            self.injected_errors += 1
        ep = self.endpoints.get(endpoint)
        if ep is None:
            ep = self.endpoints[endpoint] = EndpointStats()
        ep.requests += 1
        key = str(status)
        ep.statuses[key] = ep.statuses.get(key, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        span = (
            self.last_at - self.first_at
            if self.first_at is not None and self.last_at is not None
            else 0.0
        )
        return {
            "requests": self.requests,
            "ok": self.ok,
            "rate_limited": self.rate_limited,
            "unauthorized": self.unauthorized,
            "injected_errors": self.injected_errors,
            "first_to_last_seconds": round(span, 6),
            "by_endpoint": {
                name: {"requests": ep.requests, "statuses": dict(ep.statuses)}
                for name, ep in sorted(self.endpoints.items())
            },
            "counters": dict(sorted(self.counters.items())),
            "peaks": dict(sorted(self.peaks.items())),
        }


# ------------------------------------------------------------------- OAuth2 tokens


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int


class TokenStore:
    """Bearer tokens with rotating refresh tokens (each refresh token works once).

    Tokens are random (``secrets.token_urlsafe``) and never logged or echoed anywhere
    but in the token response itself.
    """

    def __init__(self, refresh_ttl: int, clock: Callable[[], float] = time.time) -> None:
        self.refresh_ttl = refresh_ttl
        self.clock = clock
        self._access: dict[str, tuple[str, float]] = {}
        self._refresh: dict[str, tuple[str, float]] = {}

    def issue(self, account: str, ttl: int) -> TokenPair:
        now = self.clock()
        self._prune(now)
        access, refresh = secrets.token_urlsafe(30), secrets.token_urlsafe(30)
        self._access[access] = (account, now + ttl)
        self._refresh[refresh] = (account, now + self.refresh_ttl)
        return TokenPair(access, refresh, ttl)

    def rotate(self, refresh_token: str, account: str, ttl: int) -> TokenPair | None:
        """New pair for a valid refresh token of this account; the old one dies now."""
        entry = self._refresh.get(refresh_token)
        if entry is None or entry[0] != account or entry[1] <= self.clock():
            return None
        del self._refresh[refresh_token]
        return self.issue(account, ttl)

    def check(self, access_token: str) -> tuple[str | None, str]:
        """(account, "") when valid, else (None, "expired" | "unknown")."""
        entry = self._access.get(access_token)
        if entry is None:
            return None, "unknown"
        if entry[1] <= self.clock():
            return None, "expired"
        return entry[0], ""

    def expire_all_access(self) -> int:
        """Make every access token expired (refresh tokens keep working)."""
        now = self.clock()
        for token, (account, _) in list(self._access.items()):
            self._access[token] = (account, now)
        return len(self._access)

    def _prune(self, now: float) -> None:
        if len(self._access) > 10_000:
            self._access = {k: v for k, v in self._access.items() if v[1] > now - DAY}
        if len(self._refresh) > 10_000:
            self._refresh = {k: v for k, v in self._refresh.items() if v[1] > now}


# ------------------------------------------------------------- accounts and core


@dataclass(frozen=True)
class AccountSpec:
    """Who may call: an OAuth client (Bling) or an app key and its secret (Omie, as
    ``client_id``/``client_secret``). ``client_id`` also names the account in the
    admin endpoints (``?account=``)."""

    client_id: str
    client_secret: str
    auth_code: str = ""


@dataclass(frozen=True)
class SandboxConfig:
    """What every sandbox's CLI can set: where it listens, its data, the faults every ERP
    can show and the periodic changes. A dialect's config adds its own limits and
    credentials and its own default port; the runtime knobs can be changed later over
    HTTP."""

    host: str = "127.0.0.1"
    port: int = 0  # 0 = any free port
    products: int = 1000
    customers: int = 300
    orders: int = 2000
    warehouses: int = 3
    seed: int = 1
    history_days: int = 730
    anchor: int = 0
    latency_ms: int = 0
    error_rate: float = 0.0
    malformed_rate: float = 0.0
    # More accounts besides the main one, each with data of its own (ids shifted).
    extra_accounts: tuple[AccountSpec, ...] = field(default=())
    mutate_every: float = 0.0

    def accounts(self, main: AccountSpec) -> list[tuple[AccountSpec, DatasetSpec]]:
        """The main account and the extra ones for ``SandboxCore``, each with data of its
        own: the config's ``DatasetSpec`` fields, ids shifted by the account's number."""
        data = {
            f.name: getattr(self, f.name) for f in fields(DatasetSpec) if f.name != "account_no"
        }
        return [
            (spec, DatasetSpec(**data, account_no=number))
            for number, spec in enumerate([main, *self.extra_accounts])
        ]

    def base_knobs(self) -> dict[str, object]:
        """The ``BaseKnobs`` as set at start (a dialect's ``knobs()`` adds its own)."""
        return {
            "latency_ms": self.latency_ms,
            "error_rate": self.error_rate,
            "malformed_rate": self.malformed_rate,
        }

    def knobs(self) -> BaseKnobs:
        """The runtime knobs as set at start; ValueError names a bad one."""
        knobs = BaseKnobs()
        knobs.update(self.base_knobs())
        return knobs


@dataclass
class Account:
    spec: AccountSpec
    data: Dataset
    limiter: SlidingWindowLimiter = field(default_factory=SlidingWindowLimiter)
    daily: DailyQuota = field(default_factory=DailyQuota)
    stats: Stats = field(default_factory=Stats)


class JSONBytes(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def bad_gateway_page() -> Response:
    """An injected 502 as the proxy in front of an ERP sends it: an HTML page, not JSON."""
    return Response(
        "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad "
        "Gateway</h1></center></body></html>",
        status_code=502,
        media_type="text/html",
    )


K = TypeVar("K", bound=BaseKnobs)


class SandboxCore(Generic[K]):
    """State shared by one sandbox server: accounts, knobs, tokens, injected faults."""

    def __init__(
        self,
        accounts: Sequence[tuple[AccountSpec, DatasetSpec]],
        knobs: K,
        malformed_kind_names: Mapping[str, Sequence[str]],
        refresh_ttl: int = 30 * DAY,
        fault_seed: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not accounts:
            raise ValueError("at least one account is needed")
        self.knobs = knobs
        self.clock = clock
        self.tokens = TokenStore(refresh_ttl, clock)
        self.kind_names = malformed_kind_names
        self.accounts: dict[str, Account] = {}
        for spec, data_spec in accounts:
            if spec.client_id in self.accounts:
                raise ValueError(f"duplicate client_id {spec.client_id!r}")
            self.accounts[spec.client_id] = Account(spec, Dataset(data_spec, clock))
        self.primary = next(iter(self.accounts.values()))
        self._fault_rng = random.Random(fault_seed)

    def account(self, client_id: str | None) -> Account | None:
        return self.primary if not client_id else self.accounts.get(client_id)

    def pick_injected_error(self) -> int | None:
        """An HTTP status to fail this request with, at the configured error rate."""
        rate = self.knobs.error_rate
        if rate <= 0 or self._fault_rng.random() >= rate:
            return None
        return self._fault_rng.choice((500, 502, 503))

    async def periodic_mutations(self, every: float, counts: MutationCounts) -> None:
        while True:
            await asyncio.sleep(every)
            for account in self.accounts.values():
                account.data.mutate(counts)


# ---------------------------------------------------------------- admin endpoints

DEFAULT_PERIODIC_MUTATION = MutationCounts(
    price_changes=10,
    stock_changes=20,
    new_products=2,
    deleted_products=1,
    status_changes=1,
    customer_changes=5,
    new_orders=5,
    order_status_changes=3,
)


@dataclass(frozen=True)
class FaultAction:
    """A one-off action ``POST /__sandbox/faults`` accepts besides the knobs (e.g.
    ``{"expire_tokens": true}``). ``check`` validates the value (raise ValueError) before
    anything changes; ``apply`` runs after the knobs are set and returns what to add to
    the answer. Both see ``None`` when the key is absent."""

    name: str
    check: Callable[[object], None]
    apply: Callable[[object], dict[str, Any]]


def admin_routes(core: SandboxCore[Any], actions: Sequence[FaultAction] = ()) -> list[Route]:
    """``/__sandbox/...``: stats, faults, mutations and truth, identical for every ERP.

    Not rate-limited, not authenticated, never faulty: they are the test's view of
    the sandbox, not part of the ERP being imitated.
    """

    def problem(status: int, message: str) -> JSONBytes:
        return JSONBytes({"error": message}, status_code=status)

    def pick_account(request: Request) -> Account | None:
        return core.account(request.query_params.get("account"))

    async def read_json(request: Request) -> object:
        body = await request.body()
        return orjson.loads(body) if body.strip() else {}

    async def stats(request: Request) -> Response:
        account = pick_account(request)
        if account is None:
            return problem(404, "unknown account")
        snap = account.stats.snapshot()
        snap["account"] = account.spec.client_id
        snap["daily_used"] = account.daily.used
        snap["knobs"] = core.knobs.as_dict()
        return JSONBytes(snap)

    async def stats_reset(request: Request) -> Response:
        for account in core.accounts.values():
            account.stats.reset()
        return JSONBytes({"reset": True})

    async def faults(request: Request) -> Response:
        if request.method == "POST":
            try:
                payload = await read_json(request)
                if not isinstance(payload, dict):
                    raise ValueError("body must be a JSON object")
                for action in actions:
                    action.check(payload.get(action.name))
                core.knobs.update(payload)
            except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
                return problem(400, str(exc))
            answer = core.knobs.as_dict()
            for action in actions:
                answer |= action.apply(payload.get(action.name))
            return JSONBytes(answer)
        return JSONBytes(core.knobs.as_dict())

    async def mutate(request: Request) -> Response:
        account = pick_account(request)
        if account is None:
            return problem(404, "unknown account")
        try:
            counts = MutationCounts.from_json(await read_json(request))
        except ValueError as exc:
            return problem(400, str(exc))
        return JSONBytes(account.data.mutate(counts))

    async def truth(request: Request) -> Response:
        account = pick_account(request)
        if account is None:
            return problem(404, "unknown account")
        stream = request.query_params.get("stream", "")
        if stream not in STREAMS:
            return problem(400, f"stream must be one of {', '.join(STREAMS)}")
        snapshot = account.data.frozen_copy()
        rate = core.knobs.malformed_rate
        names = core.kind_names[stream]

        async def lines() -> AsyncIterator[bytes]:
            chunk: list[bytes] = []
            for record in snapshot.truth_records(stream, rate, names):
                chunk.append(orjson.dumps(record))
                if len(chunk) >= 2000:
                    yield b"\n".join(chunk) + b"\n"
                    chunk = []
                    await asyncio.sleep(0)  # let API requests in between chunks
            if chunk:
                yield b"\n".join(chunk) + b"\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def summary(request: Request) -> Response:
        account = pick_account(request)
        if account is None:
            return problem(404, "unknown account")
        data = account.data
        return JSONBytes(
            {
                "account": account.spec.client_id,
                "at": fmt_datetime(int(core.clock())),
                "malformed_rate": core.knobs.malformed_rate,
                "streams": data.summary(core.knobs.malformed_rate),
            }
        )

    async def info(request: Request) -> Response:
        return JSONBytes(
            {
                "accounts": [
                    {
                        "client_id": a.spec.client_id,
                        "products": a.data.products.existing_count(),
                        "customers": a.data.customers.existing_count(),
                        "orders": a.data.orders.existing_count(),
                        "warehouses": [w.id for w in a.data.warehouses],
                        "history_ends": fmt_datetime(a.data.anchor - 3600),
                    }
                    for a in core.accounts.values()
                ],
                "knobs": core.knobs.as_dict(),
            }
        )

    return [
        Route("/__sandbox/info", info, methods=["GET"]),
        Route("/__sandbox/stats", stats, methods=["GET"]),
        Route("/__sandbox/stats/reset", stats_reset, methods=["POST"]),
        Route("/__sandbox/faults", faults, methods=["GET", "POST"]),
        Route("/__sandbox/mutate", mutate, methods=["POST"]),
        Route("/__sandbox/truth", truth, methods=["GET"]),
        Route("/__sandbox/truth/summary", summary, methods=["GET"]),
    ]


# --------------------------------------------------------------------------- serving


def periodic_mutations_lifespan(
    core: SandboxCore[Any], every: float, counts: MutationCounts = DEFAULT_PERIODIC_MUTATION
) -> Callable[[Any], contextlib.AbstractAsyncContextManager[None]]:
    """A Starlette lifespan applying ``counts`` every ``every`` seconds (off when 0)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        task = asyncio.create_task(core.periodic_mutations(every, counts)) if every > 0 else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    return lifespan


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before announcing, so the announced port is really ours (0 = any free one)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def uvicorn_config(app: Any) -> uvicorn.Config:
    # Access logs off: Bling tokens and Omie app secrets travel in requests.
    return uvicorn.Config(
        app,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        log_level="warning",
        access_log=False,
        lifespan="on",
    )


def serve_forever(
    app: Any, host: str, port: int, banner: Callable[[int], str], announce: Callable[[str], None]
) -> None:
    """Bind, announce ``banner(port)``, serve until stopped (one process: state is in memory)."""
    sock = bind_socket(host, port)
    server = uvicorn.Server(uvicorn_config(app))
    announce(banner(sock.getsockname()[1]))
    server.run(sockets=[sock])


@contextlib.contextmanager
def serve_in_thread(app: Any, host: str, port: int, what: str = "sandbox") -> Iterator[str]:
    """Serve in a background thread (for tests); yields the root URL, stops on exit."""
    sock = bind_socket(host, port)
    server = uvicorn.Server(uvicorn_config(app))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.005)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
