"""A stored run, read back: its tables, configuration and what each job recorded."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench import results


@dataclass
class Run:
    folder: Path
    metrics: pd.DataFrame
    summary: pd.DataFrame
    jobs: pd.DataFrame
    curves: pd.DataFrame
    config: dict
    info: dict = field(default_factory=dict)  # model -> attributes recorded by its jobs (likelihood, ...)


def load_run(run_dir: Path) -> Run:
    folder = Path(run_dir)
    metrics = pd.read_csv(folder / "metrics.csv", dtype={"note": str, "kind": str})
    metrics["note"] = metrics["note"].fillna("") if "note" in metrics else ""
    summary = (pd.read_csv(folder / "summary.csv") if (folder / "summary.csv").exists()
               else results.summary_frame(metrics))
    jobs = (pd.read_csv(folder / "jobs.csv", dtype={"reason": str, "notes": str}).fillna("") if (folder / "jobs.csv").exists()
            else pd.DataFrame(columns=results.JOB_COLUMNS))
    curves = (pd.read_csv(folder / "curves.csv") if (folder / "curves.csv").exists()
              else pd.DataFrame(columns=["model", "dataset", "seed", "step", "seconds", "loss"]))
    config = results.read_json(folder / "config.json") if (folder / "config.json").exists() else {}
    info = {}
    for outcome in results.load_outcomes(folder):
        entry = info.setdefault(outcome["job"]["model"], {})
        checks = entry.get("checks", []) + (outcome.get("info") or {}).get("checks", [])  # every seed's
        entry.update(outcome.get("info") or {})
        if checks:
            entry["checks"] = checks
    return Run(folder, metrics, summary, jobs, curves, config, info)
