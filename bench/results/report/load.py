"""A stored run, read back: its tables, configuration and what each job recorded."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.config.job import load_outcomes
from bench.results import tables as results


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
    files = results.load_run(run_dir)
    folder, metrics, summary, jobs, curves, config = (files.folder, files.metrics, files.summary, files.jobs,
                                                      files.curves, files.config)
    info = {}
    outcomes = load_outcomes(folder)
    jobs = mark_corrupt(jobs, [o for o in outcomes if o["status"] == "corrupt"])
    for outcome in outcomes:
        if outcome["status"] == "corrupt":
            continue
        entry = info.setdefault(outcome["job"]["model"], {})
        checks = entry.get("checks", []) + (outcome.get("info") or {}).get("checks", [])  # every seed's
        entry.update(outcome.get("info") or {})
        if checks:
            entry["checks"] = checks
    return Run(folder, metrics, summary, jobs, curves, config, info)


def mark_corrupt(jobs: pd.DataFrame, corrupt: list[dict]) -> pd.DataFrame:
    """The jobs table with each job whose outcome file is corrupt marked so (its metrics.csv rows, written
    when the file was whole, still show)."""
    jobs = jobs.copy()
    for o in corrupt:
        model, seed = o["job"]["model"], o["job"]["seed"]
        match = (jobs["model"].astype(str) == model) & (jobs["seed"].astype(str) == str(seed))
        if match.any():
            jobs.loc[match, ["status", "reason"]] = ["corrupt", o["reason"]]
        else:
            row = {c: "" for c in jobs.columns}
            row.update(model=model, dataset=o["job"]["dataset"], seed=seed, status="corrupt", reason=o["reason"])
            jobs = pd.concat([jobs, pd.DataFrame([row])], ignore_index=True)
    return jobs
