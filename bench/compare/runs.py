"""Reading a stored run for comparison: configuration, per-model mean of every metric, job statuses."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench import results
from bench.errors import UserError

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


def mean_values(metrics: pd.DataFrame) -> dict[str, dict[str, float]]:
    """model -> {metric[@batch]: mean over seeds}; NaN stays NaN (a metric that was not finite)."""
    out: dict[str, dict[str, float]] = {}
    keys = results.metric_keys(metrics.assign(batch=pd.to_numeric(metrics["batch"], errors="coerce")))
    frame = metrics.assign(key=keys, value=pd.to_numeric(metrics["value"], errors="coerce"))
    # mean() skips NaN; a metric that is NaN for every seed stays NaN.
    for (model, key), values in frame.groupby(["model", "key"], sort=False)["value"]:
        out.setdefault(str(model), {})[key] = float(values.mean()) if values.notna().any() else float("nan")
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
        "budget": (f"{budget.get('amount'):g} {budget.get('kind')}" if budget.get("kind") else config.get("budget")),
        "seeds": sorted(int(s) for s in config.get("seeds") or []),
        "device": str(config.get("device", "")).split(":")[0] or None,
        "fidelity_samples": config.get("fidelity_samples"),
        "eval_size": config.get("eval_size"),
    }
