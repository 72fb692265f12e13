"""Formatting one figure: decimals from the metric registry, mean and spread over seeds, model attributes."""
from __future__ import annotations

import math
import re

import pandas as pd

from bench.evaluate import metrics as metric_registry
from bench.results import numbers, plots


DATA_MODEL = plots.DATA_MODEL


PREFERRED_BATCH = 256  # samples/s is quoted at this batch, else at the largest one measured


FIDELITY_METRICS = ["fid", "intra_fid", "kid", "is", "precision", "recall", "density", "coverage", "class_accuracy"]


TRACK_ORDER = plots.TRACK_ORDER


DECIMALS = numbers.DECIMALS  # per metric, from the registry
_decimals = numbers.metric_decimals


def stat(row: pd.Series, key: str) -> tuple[float, float, int]:
    """(mean, std, count) of a summary key in one summary row; count 0 when absent."""
    mean = row.get(f"{key}_mean", float("nan"))
    count = row.get(f"{key}_count", float("nan"))
    count = 0 if pd.isna(count) or pd.isna(mean) else int(count)
    return mean, row.get(f"{key}_std", float("nan")), count


def cell(row: pd.Series, key: str, n_seeds: int, always_n: bool = False) -> str:
    """'mean ± std' over seeds (sample std), '(n=k)' where fewer seeds than the run's measured it."""
    mean, std, count = stat(row, key)
    if count == 0:
        return "-"
    decimals = numbers.metric_decimals(key.split("@")[0], mean)
    text = numbers.fixed(mean, decimals)
    if count > 1 and pd.notna(std) and std != 0:  # a constant (params, NFE) needs no "± 0"
        text += f" ± {numbers.fixed(std, decimals)}"
    if always_n or count < n_seeds:
        text += f" (n={count})"
    return text


def throughput_batch(row: pd.Series) -> int | None:
    """The batch samples/s is quoted at: PREFERRED_BATCH when measured, else the largest measured."""
    measured = [int(m.group(1)) for key in row.index
                if (m := re.fullmatch(r"sample_throughput@(\d+)_mean", key)) and pd.notna(row[key])]
    if not measured:
        return None
    return PREFERRED_BATCH if PREFERRED_BATCH in measured else max(measured)


def throughput_cell(row: pd.Series, n_seeds: int, metric: str = "sample_throughput") -> str:
    """A per-batch metric (speed, or the sampling memory peak) at the batch the speed is quoted at."""
    batch = throughput_batch(row)
    if batch is None:
        return "-"
    text = cell(row, f"{metric}@{batch}", n_seeds)
    return text if batch == PREFERRED_BATCH else f"{text} @{batch}"


def likelihood_kind(model: str, metrics: pd.DataFrame, info: dict) -> str | None:
    """exact | bound | estimate from the model's bits/dim rows, else from its jobs; None: no likelihood."""
    kinds = metrics.loc[(metrics["model"] == model) & (metrics["metric"] == "test_bpd"), "kind"].dropna()
    if not kinds.empty:
        return str(kinds.iloc[0])
    if model == DATA_MODEL:
        return None
    if "likelihood" in info.get(model, {}):
        return info[model]["likelihood"]
    return _registered_likelihood(model)


UNKNOWN = "unknown"


def _registered_likelihood(model: str) -> str | None:
    """The model class's own attribute, for a job that failed before recording it."""
    try:
        import models

        return models.model_class(model).likelihood
    except (ImportError, KeyError):
        return UNKNOWN


def is_conditional(model: str, metrics: pd.DataFrame, info: dict) -> bool:
    if info.get(model, {}).get("conditional"):
        return True
    return bool(((metrics["model"] == model) & (metrics["metric"] == "class_accuracy")).any())


def model_order(summary: pd.DataFrame) -> pd.DataFrame:
    """The run's order, the data rows (one per track) last: they are the reference, not contestants."""
    data = summary[summary["model"] == DATA_MODEL]
    data = data.sort_values("track", key=lambda t: t.map(lambda v: TRACK_ORDER.get(v, 9)), kind="stable")
    return pd.concat([summary[summary["model"] != DATA_MODEL], data])


def checks_cell(checks: list[dict] | None) -> str:
    """Summary column: 'pass (n)' when every self-check passed, else 'FAIL: names'."""
    if not checks:
        return "-"
    failed = sorted({c["check"] for c in checks if not c["passed"]})
    return f"FAIL: {', '.join(failed)}" if failed else f"pass ({len(checks)})"


def interval_cell(row, metric: str) -> str:
    """'12.3 [11.1, 13.6]': the figure and its 95% bootstrap interval, when one was stored."""
    decimals = numbers.metric_decimals(metric, row["value"])
    text = numbers.fixed(row["value"], decimals)
    low, high = row.get("ci_low"), row.get("ci_high")
    if low is not None and high is not None and pd.notna(low) and pd.notna(high):
        text += f" [{numbers.fixed(low, decimals)}, {numbers.fixed(high, decimals)}]"
    return text
