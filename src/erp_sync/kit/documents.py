"""Brazilian tax ids (CPF, CNPJ): check digits, so that a typo is caught at write time."""

from __future__ import annotations

import re

_NON_DIGITS = re.compile(r"\D")


def digits(value: str) -> str:
    return _NON_DIGITS.sub("", value)


def _check_digit(numbers: str, weights: list[int]) -> str:
    total = sum(int(n) * w for n, w in zip(numbers, weights, strict=True))
    rest = total % 11
    return "0" if rest < 2 else str(11 - rest)


def cpf_check_digits(base9: str) -> str:
    first = _check_digit(base9, list(range(10, 1, -1)))
    second = _check_digit(base9 + first, list(range(11, 1, -1)))
    return first + second


def cnpj_check_digits(base12: str) -> str:
    w1 = [5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2]
    first = _check_digit(base12, w1)
    second = _check_digit(base12 + first, [6, *w1])
    return first + second


def is_valid_cpf(value: str) -> bool:
    d = digits(value)
    return len(d) == 11 and len(set(d)) > 1 and cpf_check_digits(d[:9]) == d[9:]


def is_valid_cnpj(value: str) -> bool:
    d = digits(value)
    return len(d) == 14 and len(set(d)) > 1 and cnpj_check_digits(d[:12]) == d[12:]


def normalize_document(value: str) -> str:
    """Digits of a valid CPF or CNPJ; ValueError naming what is wrong otherwise."""
    d = digits(value)
    if len(d) == 14:
        if is_valid_cnpj(d):
            return d
        raise ValueError(f"{value!r} is not a valid CNPJ (check digits do not match)")
    if len(d) == 11:
        if is_valid_cpf(d):
            return d
        raise ValueError(f"{value!r} is not a valid CPF (check digits do not match)")
    raise ValueError(f"{value!r} is neither a CNPJ (14 digits) nor a CPF (11 digits)")
