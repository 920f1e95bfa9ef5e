"""Scraping and reading the Prometheus text exposition in tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families


@dataclass
class Scrape:
    """One /metrics answer: samples by name, and every family's type and label names."""

    text: str
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)
    types: dict[str, str] = field(default_factory=dict)
    labels: dict[str, set[str]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Scrape:
        scrape = cls(text)
        for family in text_string_to_metric_families(text):
            scrape.types[family.name] = family.type
            names = scrape.labels.setdefault(family.name, set())
            for s in family.samples:
                scrape.samples.append((s.name, dict(s.labels), float(s.value)))
                names.update(s.labels)
        return scrape

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels`` (0 if none)."""
        return sum(
            v
            for n, lbl, v in self.samples
            if n == name and all(lbl.get(k) == want for k, want in labels.items())
        )

    def has(self, name: str) -> bool:
        return any(n == name for n, _, _ in self.samples)

    def label_values(self) -> Iterator[str]:
        for _, labels, _ in self.samples:
            yield from labels.values()

    def series_names(self) -> set[str]:
        """Every series name a query may use: a family's samples, even when it has none
        yet (a counter ``x`` is queried as ``x_total``, a histogram as ``x_bucket`` ...)."""
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
        names = {n for n, _, _ in self.samples}
        for family, kind in self.types.items():
            names.update(family + s for s in suffixes.get(kind, ("",)))
        return names

    def family_of(self, series: str) -> str | None:
        for suffix in ("_total", "_bucket", "_sum", "_count", ""):
            family = series.removesuffix(suffix) if suffix else series
            if family in self.types and (family == series or series.endswith(suffix)):
                return family
        return None

    def labels_of(self, series: str) -> set[str] | None:
        """The label names of ``series``; None when its family has no sample yet (so
        its labels cannot be known from the scrape)."""
        family = self.family_of(series)
        if family is None or not any(self.family_of(n) == family for n, _, _ in self.samples):
            return None
        extra = {"le"} if series.endswith("_bucket") else set()
        return self.labels.get(family, set()) | extra


async def scrape(base_url: str) -> Scrape:
    async with httpx.AsyncClient(timeout=15) as client:
        r = await client.get(f"{base_url}/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8", r.headers
    return Scrape.parse(r.text)
