"""Reading a stored run for comparison: configuration, per-model mean of every metric, job statuses."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.results import tables as results
from bench.config.errors import UserError

BATCH_SEPARATOR = "@"  # the summary's column name for a metric at one batch size: sample_throughput@256


def split_key(key: str) -> tuple[str, int | None]:
    """``sample_throughput@256`` -> (sample_throughput, 256); a steps-curve qualifier stays with the
    metric: ``sample_throughput@256@steps=20`` -> (sample_throughput@steps=20, 256)."""
    metric, *parts = key.split(BATCH_SEPARATOR)
    batch = next((int(p) for p in parts if p.isdigit()), None)
    return BATCH_SEPARATOR.join([metric, *(p for p in parts if not p.isdigit())]), batch


def load_run(run_dir: str | Path) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """``config.json``, ``metrics.csv`` and ``jobs.csv`` of a run, or a UserError naming what is missing."""
    files = results.load_run(run_dir, require=("config.json", "metrics.csv", "jobs.csv"))
    return files.config, files.metrics, files.jobs


def entry_names(metrics: pd.DataFrame) -> pd.Series:
    """The name each row is compared under: its model, and its track where the model has rows on more than
    one (the ``data`` rows score real images on the binary and the 8-bit track: two entries, never averaged)."""
    if "track" not in metrics.columns:
        return metrics["model"].astype(str)
    track = metrics["track"].fillna("").astype(str)
    several = metrics.assign(track=track).groupby("model")["track"].transform("nunique") > 1
    return metrics["model"].astype(str).where(~several, metrics["model"].astype(str) + " (" + track + ")")


def model_of(entry: str) -> str:
    """``data (binary)`` -> ``data``: the model an entry's jobs belong to."""
    return entry.split(" (")[0]


def mean_values(metrics: pd.DataFrame) -> dict[str, dict[str, float]]:
    """entry -> {metric[@batch]: mean over seeds}, an entry being a (model, track) (``entry_names``); NaN
    stays NaN (a metric that was not finite)."""
    out: dict[str, dict[str, float]] = {}
    keys = results.metric_keys(metrics.assign(batch=pd.to_numeric(metrics["batch"], errors="coerce")))
    frame = metrics.assign(key=keys, value=pd.to_numeric(metrics["value"], errors="coerce"),
                           entry=entry_names(metrics))
    # mean() skips NaN; a metric that is NaN for every seed stays NaN.
    for (entry, key), values in frame.groupby(["entry", "key"], sort=False)["value"]:
        out.setdefault(str(entry), {})[key] = float(values.mean()) if values.notna().any() else float("nan")
    return out


def metric_units(metrics: pd.DataFrame) -> dict[str, str]:
    if "unit" not in metrics.columns:
        return {}
    return {str(m): str(u) for m, u in zip(metrics["metric"], metrics["unit"]) if isinstance(u, str)}


def job_statuses(jobs: pd.DataFrame) -> dict[str, dict]:
    """model -> {"status": ok | diverged | failed (the worst over seeds), "detail": reasons by seed}."""
    order = {"ok": 0, "diverged": 1, "failed": 2}
    out: dict[str, dict] = {}
    for row in jobs.to_dict("records"):
        model, status = str(row["model"]), str(row.get("status", "failed")) or "failed"
        entry = out.setdefault(model, {"status": "ok", "detail": []})
        if order.get(status, 2) > order.get(entry["status"], 2):
            entry["status"] = status
        if status != "ok":
            entry["detail"].append(f"seed {row.get('seed')}: {status}" +
                                   (f" ({row['reason']})" if row.get("reason") else ""))
    return out


CLASSIFIER_KEYS = ("classifier_weights_digest", "classifier_key", "classifier_source", "classifier_path")


def comparability(config: dict) -> dict:
    """What must match for two runs' numbers to be compared."""
    budget = config.get("budget_resolved") or {}
    return {
        "dataset": config.get("dataset"),
        "budget": ("each model's default_steps" if budget.get("per_model") else
                   f"{budget.get('amount'):g} {budget.get('kind')}" if budget.get("kind") else config.get("budget")),
        "seeds": sorted(int(s) for s in config.get("seeds") or []),
        "device": str(config.get("device", "")).split(":")[0] or None,
        "fidelity_samples": config.get("fidelity_samples"),
        "eval_size": config.get("eval_size"),
    }
