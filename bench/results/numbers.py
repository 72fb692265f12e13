"""How the results write a number: one place, so that a figure reads the same in the report, in
``scaling.md`` and in ``bench compare``'s table.

- ``metric(value, name)``: a metric's figure, with the decimals its registry entry fixes (else three
  significant digits, none from 1,000 up: the FID of an untrained model has no meaningful fraction);
- ``significant(value)``: three significant digits, thousands grouped from 100 up (milliseconds);
- ``scientific(value)``: three significant digits, exponent form when large (FLOP counts);
- ``percent(fraction)``: a roofline fraction;
- ``exact(value)``: six significant digits, grouped from 100,000 up (compare's baseline and current values).
A missing value (None or NaN) is "-" everywhere but in ``exact``, which says "nan": compare shows what the
files hold.
"""
from __future__ import annotations

import math

import pandas as pd

from bench.evaluate import metrics as metric_registry

MISSING = "-"
DECIMALS = {name: m.decimals for name, m in metric_registry.REGISTRY.items() if m.decimals is not None}


def is_missing(value) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def metric_decimals(metric: str, mean: float) -> int:
    """Fixed per metric where the unit says so, else three significant digits."""
    if abs(mean) >= 1000:  # e.g. the FID of an untrained model: digits past the point are noise
        return 0
    if metric in DECIMALS:
        return DECIMALS[metric] if abs(mean) < 100 else min(DECIMALS[metric], 1)
    if mean == 0 or not math.isfinite(mean) or abs(mean) >= 100:
        return 0 if mean != 0 else 2
    return max(0, 2 - math.floor(math.log10(abs(mean))))


def fixed(value, decimals: int, grouped: bool = True) -> str:
    if is_missing(value):
        return MISSING
    return f"{value:,.{decimals}f}" if grouped else f"{value:.{decimals}f}"


def metric(value, name: str) -> str:
    return MISSING if is_missing(value) else fixed(value, metric_decimals(name, value))


def significant(value) -> str:
    if is_missing(value):
        return MISSING
    return f"{value:.3g}" if value < 100 else f"{value:,.0f}"


def scientific(value) -> str:
    """Three significant digits, in exponent form when large (FLOP counts)."""
    return MISSING if is_missing(value) else f"{value:.3g}"


def percent(fraction) -> str:
    if is_missing(fraction):
        return MISSING
    return f"{fraction * 100:.2g}%" if fraction < 0.1 else f"{fraction * 100:.0f}%"


def exact(value) -> str:
    if value is None:
        return MISSING
    if isinstance(value, str):
        return value
    if math.isnan(value):
        return "nan"
    return f"{value:,.0f}" if abs(value) >= 1e5 else f"{value:.6g}"
