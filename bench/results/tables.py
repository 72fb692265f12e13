"""The files a run leaves (docs/design.md, "Result files"): metrics.csv, summary.csv, config.json, jobs.csv.

``metrics.csv`` is tidy, one row per (model, dataset, seed, metric[, batch][, steps]); ``summary.csv`` has
one row per (model, dataset) with the mean, standard deviation and count over seeds of every metric. A
row with ``steps`` is a point of the quality-against-steps curve (``bench.evaluate.steps_curve``): the model
sampled with that many steps instead of its default; rows without ``steps`` are the headline figures.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.config.errors import UserError
from bench.config.paths import read_json

METRIC_COLUMNS = ["model", "family", "dataset", "track", "seed", "budget", "metric", "value", "unit", "kind",
                  "batch", "steps", "note", "ci_low", "ci_high"]  # ci_*: 95% bootstrap interval (sample quality)
JOB_COLUMNS = ["model", "dataset", "seed", "status", "reason", "wall_seconds", "training_s", "evaluation_s",
               "slowest_measurements", "resumed", "host", "notes"]


def metrics_frame(outcomes) -> pd.DataFrame:
    records = []
    for o in outcomes:
        ident = {"model": o["job"]["model"], "family": o["info"].get("family", ""), "dataset": o["job"]["dataset"],
                 "track": o["info"].get("track", ""), "seed": o["job"]["seed"], "budget": o["job"]["budget"]}
        for r in o["rows"]:
            records.append({**ident, "batch": None, "steps": None, "note": "", **r})
    frame = pd.DataFrame.from_records(records, columns=METRIC_COLUMNS)
    frame[["batch", "steps"]] = frame[["batch", "steps"]].astype("Int64")
    return frame


def metric_key(metric: str, batch, steps=None) -> str:
    """The summary column for a metric: throughput is one column per batch size, a point of the
    steps curve one per step count (``fid@steps=20``, ``sample_throughput@256@steps=20``)."""
    key = f"{metric}@{int(batch)}" if pd.notna(batch) else metric
    return key + (f"@steps={int(steps)}" if steps is not None and pd.notna(steps) else "")


def metric_keys(metrics: pd.DataFrame) -> list[str]:
    """``metric_key`` of every row (a frame without a ``steps`` column, an older run's, has none)."""
    steps = metrics["steps"] if "steps" in metrics else [None] * len(metrics)
    return [metric_key(m, b, s) for m, b, s in zip(metrics["metric"], metrics["batch"], steps)]


def headline(metrics: pd.DataFrame) -> pd.DataFrame:
    """The rows at the model's own settings: the steps curve's rows left out."""
    return metrics[metrics["steps"].isna()] if "steps" in metrics else metrics


def summary_frame(metrics: pd.DataFrame) -> pd.DataFrame:
    if metrics.empty:
        return pd.DataFrame(columns=["model", "family", "dataset", "track", "n_seeds"])
    m = metrics.assign(key=metric_keys(metrics))
    ident = ["model", "family", "dataset", "track"]
    stats = m.groupby(ident + ["key"], sort=False)["value"].agg(["mean", "std", "count"])
    wide = stats.unstack("key")
    order = list(dict.fromkeys(m["key"]))
    columns = {}
    for key in order:
        for stat in ("mean", "std", "count"):
            columns[f"{key}_{stat}"] = wide[(stat, key)]
    out = pd.DataFrame(columns, index=wide.index).reset_index()
    seeds = m.groupby(ident, sort=False)["seed"].nunique().rename("n_seeds").reset_index()
    return seeds.merge(out, on=ident)


def jobs_frame(outcomes) -> pd.DataFrame:
    return pd.DataFrame.from_records(
        [{"model": o["job"]["model"], "dataset": o["job"]["dataset"], "seed": o["job"]["seed"],
          "status": o["status"], "reason": o["reason"], "wall_seconds": round(o["wall_seconds"], 2),
          "training_s": o["info"].get("training_wall_seconds"), "evaluation_s": o["info"].get("evaluation_wall_seconds"),
          "slowest_measurements": slowest_measurements(o["info"]), "resumed": resumed_text(o["info"]), "host": o["info"].get("hardware", {}).get("host", ""),
          "notes": "; ".join(o["notes"])} for o in outcomes], columns=JOB_COLUMNS)


def slowest_measurements(info: dict, top: int = 3) -> str:
    """Where a job's evaluation time went: its slowest measurements, e.g. ``sample quality 41.2 s, ...``."""
    seconds = sorted((info.get("evaluation_seconds") or {}).items(), key=lambda item: -item[1])[:top]
    return ", ".join(f"{name} {s:.1f} s" for name, s in seconds)


def resumed_text(info: dict) -> str:
    """How a job got its weights when not in one go: continued from a checkpoint, or trained by an earlier run."""
    if info.get("trained_by_earlier_run"):
        return "measured from its finished checkpoint"
    if info.get("resumed_from_step") is not None:
        return f"training resumed at step {info['resumed_from_step']}"
    return ""


def curves_frame(outcomes) -> pd.DataFrame:
    rows = [{"model": o["job"]["model"], "dataset": o["job"]["dataset"], "seed": o["job"]["seed"], **point}
            for o in outcomes for point in o["curve"]]
    return pd.DataFrame.from_records(rows, columns=["model", "dataset", "seed", "step", "seconds", "loss"])


def write_tables(run_dir: Path, outcomes) -> pd.DataFrame:
    """(Re)write metrics.csv, summary.csv, jobs.csv and curves.csv from the job outcomes."""
    run_dir = Path(run_dir)
    metrics = metrics_frame(outcomes)
    metrics.to_csv(run_dir / "metrics.csv", index=False)
    summary_frame(metrics).to_csv(run_dir / "summary.csv", index=False)
    jobs_frame(outcomes).to_csv(run_dir / "jobs.csv", index=False)
    curves_frame(outcomes).to_csv(run_dir / "curves.csv", index=False)
    return metrics


# --- config.json -----------------------------------------------------------------------------
# --- reading a run back ------------------------------------------------------------------------
@dataclass
class RunFiles:
    """The tables a ``bench run`` left in its folder, read back (the one reader: report, compare, API)."""

    folder: Path
    config: dict
    metrics: pd.DataFrame
    summary: pd.DataFrame
    jobs: pd.DataFrame
    curves: pd.DataFrame


def load_run(run_dir: str | Path, require: tuple[str, ...] = ("metrics.csv",)) -> RunFiles:
    """A run's tables, or a UserError naming the folder or file that is missing or unreadable. Tables a
    run lacks (an older run, a run cut short) come back empty; summary.csv is recomputed if absent."""
    folder = Path(run_dir)
    if not folder.is_dir():
        raise UserError(f"run folder {folder} does not exist: give the --out folder of a `bench run`")
    missing = [name for name in require if not (folder / name).is_file()]
    if missing:
        raise UserError(f"{folder} lacks {', '.join(missing)}: give the folder of a finished `bench run`")
    try:
        metrics = pd.read_csv(folder / "metrics.csv", dtype={"note": str, "kind": str})
        summary = pd.read_csv(folder / "summary.csv") if (folder / "summary.csv").is_file() else None
        jobs = (pd.read_csv(folder / "jobs.csv", dtype={"reason": str, "notes": str}, keep_default_na=False)
                if (folder / "jobs.csv").is_file() else pd.DataFrame(columns=JOB_COLUMNS))
        curves = (pd.read_csv(folder / "curves.csv") if (folder / "curves.csv").is_file()
                  else pd.DataFrame(columns=["model", "dataset", "seed", "step", "seconds", "loss"]))
        config = read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    except (ValueError, OSError) as exc:
        raise UserError(f"{folder} holds an unreadable result file ({exc}); rerun `bench run`") from None
    need = {"model", "metric", "value"}
    if not need <= set(metrics.columns):
        raise UserError(f"{folder}/metrics.csv lacks the columns {sorted(need - set(metrics.columns))}")
    metrics["note"] = metrics["note"].fillna("") if "note" in metrics else ""
    if "batch" not in metrics.columns:
        metrics["batch"] = pd.NA
    return RunFiles(folder, config, metrics, summary if summary is not None else summary_frame(metrics), jobs,
                    curves)
