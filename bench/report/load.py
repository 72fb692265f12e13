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
    files = results.load_run(run_dir)
    folder, metrics, summary, jobs, curves, config = (files.folder, files.metrics, files.summary, files.jobs,
                                                      files.curves, files.config)
    info = {}
    for outcome in results.load_outcomes(folder):
        entry = info.setdefault(outcome["job"]["model"], {})
        checks = entry.get("checks", []) + (outcome.get("info") or {}).get("checks", [])  # every seed's
        entry.update(outcome.get("info") or {})
        if checks:
            entry["checks"] = checks
    return Run(folder, metrics, summary, jobs, curves, config, info)
