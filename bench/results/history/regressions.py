"""Steps in every stored series: which commit moved which model's figure, and whether the newest run is worse.

Each (series, entry, metric[, batch]) of a gated metric (one with a better direction that the gate judges;
``train_seconds``, which under a step budget only restates the throughput, is not) is one time series, its runs in the order they
started; ``steps.detect_steps`` fits it piecewise-constant. Each point's noise is the widest of the series'
own (from its first differences), the point's 95% interval (over seeds or bootstrap) as a standard error,
and a floor of a third of the registry's band for a known noise (``Rule.history_band``), so that the last-digit
wobble of an exactly repeating likelihood is not a step, while a shift of about that band is.

A step is ``worse`` or ``better`` by the metric registry's direction. A metric is regressed when its series'
last step is worse: its newest point sits on a level worse than the one before. ``bench history regressions``
exits 1 when a gated metric is regressed.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from bench.evaluate.metrics import rule_for
from bench.results.history.steps import detect_steps
from bench.results.history.store import HistoryStore

Z_95 = 1.959964


@dataclass(frozen=True)
class FoundStep:
    series: str
    model: str
    metric: str  # the key: sample_throughput@256, fid@steps=20
    commit: str  # the first run on the new level
    started: str
    before: float
    after: float
    direction: str  # better | worse
    z: float  # the change over its standard error: how sure
    gated: bool
    latest: bool  # the series' last step: the newest run sits past it

    @property
    def regressed(self) -> bool:
        return self.latest and self.gated and self.direction == "worse"

    def to_dict(self) -> dict:
        return {**asdict(self), "regressed": self.regressed}


def point_sigmas(points: pd.DataFrame) -> list[float | None]:
    half = (points["high"] - points["low"]) / 2
    return [float(h) / Z_95 if pd.notna(h) and h > 0 else None for h in half]


def steps_of_series(series: str, entry: str, key: str, points: pd.DataFrame) -> list[FoundStep]:
    rule = rule_for(key)
    if rule.direction is None or not rule.gated:  # what the gate never judges (train_seconds, steps) is not tracked
        return []
    values = points["value"].to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    if len(finite) < 4:
        return []
    floor = rule.history_band(float(np.median(finite))) / 3
    steps = detect_steps(list(values), point_sigmas(points), noise_floor=floor)
    found = []
    for i, step in enumerate(steps):
        at = points.iloc[step.index]
        worse = (step.after > step.before) == (rule.direction == "lower")
        found.append(FoundStep(series, entry, key, str(at["git_commit"]), str(at["started"]), step.before,
                               step.after, "worse" if worse else "better", step.z, rule.gated,
                               latest=i == len(steps) - 1))
    return found


def find_steps(store: HistoryStore, model: str | None = None, metric: str | None = None) -> list[FoundStep]:
    found: list[FoundStep] = []
    for series in store.series():
        points = store.points(series)
        for (entry, key), group in points.groupby(["entry", "key"], sort=False):
            if (model and entry != model) or (metric and key.split("@")[0] != metric and key != metric):
                continue
            found += steps_of_series(series, str(entry), str(key), group.reset_index(drop=True))
    return found


def describe(step: FoundStep) -> str:
    change = step.after - step.before
    rel = f" ({100 * change / abs(step.before):+.1f}%)" if step.before and math.isfinite(step.before) else ""
    return f"{step.before:.6g} -> {step.after:.6g}{rel}"
