"""``bench compare RUN --history STORE``: judge a run against the last N runs of its series, not one baseline.

For each (entry, metric[, batch]) the reference is the median of the window's values. A change in the bad
direction fails when it exceeds the tolerance, the widest of

- the registry's rule for a known noise (``Rule.history_band``: 1% for a likelihood, 10% for speed and memory);
- the window's one-sided prediction band, ``t(1 - ALPHA, n - 1) * s * sqrt(1 + 1/n)`` with ``s`` the window's
  standard deviation: for Gaussian noise a new run of the same code falls past it with probability ``ALPHA``
  (0.1%; measured with the median as the reference: ``simulate_false_alarm_rate``, docs/history.md). Speed and
  memory (``Rule.scale == "log"``) vary by a factor, so their band is taken of the logarithm;
- the window's own worst deviation from the median in the bad direction: a figure as far off as one the
  recent history already holds is not news.

A figure that fewer than ``MIN_HISTORY`` runs of the window hold (a throughput batch size the cap mostly
skips) has no known noise: the registry's band for one baseline applies to it (speed: 0.3x).

So exactly repeating figures (likelihoods under a step budget) keep the registry's tight band; a throughput
that wanders by 30% from run to run passes, and one that falls to 0.4x fails (with the default window of 20).
The run itself is never part of its own window. The rows are the same ``Row`` objects a baseline comparison
makes, so the text, JUnit, Markdown and JSON outputs are the same.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy import stats

from bench.config.errors import UserError
from bench.evaluate.metrics import Rule, scored_by_classifier
from bench.results.compare.judge import Row, _change, _status_rows
from bench.results.compare.rules import parse_tolerance, resolve_rules, rule_of
from bench.results.compare.runs import job_statuses, load_run, model_of, split_key
from bench.results.history.store import HistoryStore, metric_rows, run_identity

DEFAULT_WINDOW = 20
MIN_HISTORY = 3  # fewer earlier runs cannot say what the noise is
ALPHA = 0.001  # one-sided: how often a noisy metric of an unchanged run fails, for Gaussian noise


@dataclass(frozen=True)
class Window:
    series: str
    runs: pd.DataFrame  # the earlier runs judged against, oldest first

    def describe(self) -> str:
        first, last = self.runs.iloc[0], self.runs.iloc[-1]
        return (f"the median of the last {len(self.runs)} runs of series '{self.series}' "
                f"(commits {first.git_commit[:10]} .. {last.git_commit[:10]}, {first.started} .. {last.started})")


def tolerance(rule: Rule, reference: float, history: np.ndarray) -> float:
    """The worsening still taken for noise, in the metric's unit (see the module docstring)."""
    if len(history) < MIN_HISTORY:  # too few earlier values of this figure to know its noise: one baseline's band
        return rule.band(reference)
    floor = rule.history_band(reference)
    if rule.direction is None:
        return floor
    on_log = rule.scale == "log" and reference > 0 and bool(np.all(history > 0))
    values, centre = (np.log(history), math.log(reference)) if on_log else (history, reference)
    worse = (values - centre) if rule.direction == "lower" else (centre - values)
    band = max(prediction_band(values), float(np.max(worse, initial=0.0)))
    if on_log:  # back to the metric's unit, in the bad direction
        band = reference * (math.exp(band) - 1) if rule.direction == "lower" else reference * (1 - math.exp(-band))
    return max(floor, band)


def prediction_band(values: np.ndarray) -> float:
    """One-sided (1 - ALPHA) prediction band of one more draw from the window's distribution."""
    n = len(values)
    if n < 2:
        return 0.0
    return float(stats.t.ppf(1 - ALPHA, n - 1) * np.std(values, ddof=1) * math.sqrt(1 + 1 / n))


def simulate_false_alarm_rate(window: int = DEFAULT_WINDOW, trials: int = 200_000, seed: int = 0) -> float:
    """How often an unchanged run fails one noisy metric: Gaussian noise, the median as the reference, the
    band as ``tolerance`` computes it (no registry floor)."""
    rng = np.random.default_rng(seed)
    history, new = rng.normal(0, 1, (trials, window)), rng.normal(0, 1, trials)
    reference = np.median(history, axis=1)
    spread = stats.t.ppf(1 - ALPHA, window - 1) * history.std(axis=1, ddof=1) * math.sqrt(1 + 1 / window)
    worst = np.maximum((reference[:, None] - history).max(axis=1), 0)
    return float(np.mean(reference - new > np.maximum(spread, worst)))


def verdict(rule: Rule, reference: float, now: float, band: float) -> str:
    if not rule.gated or rule.direction is None:
        return "info"
    if math.isnan(reference) and math.isnan(now):
        return "ok"
    if math.isnan(now):
        return "regressed"
    if math.isnan(reference):
        return "improved"
    worse_by = (now - reference) if rule.direction == "lower" else (reference - now)
    return "regressed" if worse_by > band else ("improved" if -worse_by > band else "ok")


def describe_band(rule: Rule, band: float) -> str:
    if not rule.gated or rule.direction is None:
        return "-"
    return f"{'+' if rule.direction == 'lower' else '-'}{band:.4g}"


def history_window(store: HistoryStore, run_dir, window: int) -> tuple[dict, pd.DataFrame, pd.DataFrame, Window]:
    if window < MIN_HISTORY:
        raise UserError(f"--window {window}: the gate needs at least {MIN_HISTORY} earlier runs to know the noise")
    config, metrics, jobs = load_run(run_dir)
    ident = run_identity(config, run_dir)
    runs = store.runs(ident.series)
    earlier = runs[~((runs["git_commit"] == ident.git_commit) & (runs["started"] == ident.started))].tail(window)
    if len(earlier) < MIN_HISTORY:
        others = [s for s in store.series() if s != ident.series]
        raise UserError(f"{store.path} holds {len(earlier)} earlier run(s) of this run's series '{ident.series}'; "
                        f"the history gate needs {MIN_HISTORY}: add runs made under the same settings with "
                        f"`bench history add`, or compare with a baseline (--baseline)"
                        + (f". The store's other series: {others}" if others else ""))
    return config, metrics, jobs, Window(ident.series, earlier.reset_index(drop=True))


def compare_with_history(store: HistoryStore, run_dir, window: int = DEFAULT_WINDOW,
                         overrides: list[str] | None = None, sample_quality: bool = True) -> tuple[list[Row], Window]:
    """Every (entry, metric[, batch]) of the window's newest run and of this run, judged (module docstring)."""
    _config, metrics, jobs, win = history_window(store, run_dir, window)
    rules = resolve_rules({}, overrides or [])
    # A --tolerance given on the command line is the whole registry part of the band, here as for a baseline.
    overridden = {parse_tolerance(text)[0] for text in overrides or []}
    rules = {m: (replace(r, history_rel=None) if m.split("@")[0] in overridden else r) for m, r in rules.items()}
    now = metric_rows(metrics).set_index(["entry", "key"])
    past = store.points(win.series, list(win.runs["id"]))
    newest_id = int(win.runs["id"].iloc[-1])
    if not sample_quality:
        now = now[[not scored_by_classifier(m) for m in now["metric"]]]
        past = past[[not scored_by_classifier(m) for m in past["metric"]]]
    by_key = {k: g for k, g in past.groupby(["entry", "key"], sort=False)}
    newest = {k for k, g in by_key.items() if (g["run_id"] == newest_id).any()}
    base_jobs, now_jobs = store.jobs(newest_id), job_statuses(jobs)

    rows: list[Row] = []
    entries = list(dict.fromkeys([e for e, _ in newest] + [e for e, _ in now.index]))
    status_shown: set[str] = set()
    for entry in entries:
        if model_of(entry) not in status_shown:  # a model's jobs once, however many tracks it has rows on
            rows += _status_rows(model_of(entry), base_jobs, now_jobs)
            status_shown.add(model_of(entry))
        keys = list(dict.fromkeys([k for e, k in newest if e == entry] + [k for e, k in now.index if e == entry]))
        for key in keys:
            rows.append(_judge_key(entry, key, by_key.get((entry, key)), now, rules, (entry, key) in newest))
    return rows, win


def _judge_key(entry: str, key: str, past: pd.DataFrame | None, now: pd.DataFrame, rules, in_newest: bool) -> Row:
    metric, batch = split_key(key)
    rule = rule_of(rules, metric)
    current = now.loc[(entry, key), "value"] if (entry, key) in now.index else None
    current = float("nan") if current is None or pd.isna(current) else float(current)
    if not in_newest:
        return Row(entry, metric, batch, None, current, "-", rule.describe(), "added")
    history = past["value"].dropna().to_numpy(dtype=float)
    reference = float(np.median(history)) if len(history) else float("nan")
    band = tolerance(rule, reference, history) if len(history) else 0.0
    if (entry, key) not in now.index:
        return Row(entry, metric, batch, reference, None, "-", describe_band(rule, band), "removed")
    return Row(entry, metric, batch, reference, current, _change(reference, current), describe_band(rule, band),
               verdict(rule, reference, current, band))
