"""The baseline file: per-model means of one run, its job statuses, tolerances and what makes runs comparable."""
from __future__ import annotations

import json
import math
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from bench.results.compare.runs import (CLASSIFIER_KEYS, comparability, job_statuses, load_run, mean_values, metric_units,
                                split_key)
from bench.config.errors import UserError
from bench.evaluate.metrics import rule_for

BASELINE_FORMAT = "genbench-baseline/1"


# --- the baseline file -----------------------------------------------------------------------
def build_baseline(run_dir: str | Path) -> dict:
    config, metrics, jobs = load_run(run_dir)
    values = mean_values(metrics)
    units = metric_units(metrics)
    metric_names = sorted({split_key(k)[0] for per_model in values.values() for k in per_model})
    return {
        "format": BASELINE_FORMAT,
        "created": datetime.now().isoformat(timespec="seconds"),
        "source_run": str(run_dir),
        "git_commit": config.get("git_commit", "unknown"),
        "dataset": config.get("dataset"),
        "budget": config.get("budget"),
        "budget_resolved": config.get("budget_resolved"),
        "seeds": config.get("seeds"),
        "device": config.get("device"),
        "fidelity_samples": config.get("fidelity_samples"),
        # Sample-quality figures compare only when one evaluation classifier scored both runs.
        "classifier": portable_classifier(config),
        "versions": config.get("versions", {}),
        "hardware": config.get("hardware", {}),
        "comparable_on": comparability(config),
        "tolerances": {m: baseline_rule(m) for m in metric_names},
        "jobs": job_statuses(jobs),
        "units": {m: units[m] for m in metric_names if m in units},
        # JSON has no NaN: a metric that was not finite is stored as null.
        "values": {model: {k: (v if math.isfinite(v) else None) for k, v in per_model.items()}
                   for model, per_model in values.items()},
    }


def baseline_rule(metric: str) -> dict:
    """The parts of a metric's rule that judge a run against one baseline (the history's are not stored)."""
    return {k: v for k, v in asdict(rule_for(metric)).items() if k in ("direction", "rel", "abs", "gated")}


def portable_classifier(config: dict) -> dict:
    """The run's classifier keys, a shipped classifier's path relative to the repository (it is the same
    file in every clone)."""
    from bench.evaluate.classifier import ASSETS

    recorded = {k: config.get(k) for k in CLASSIFIER_KEYS}
    path = recorded.get("classifier_path")
    if path and Path(path).resolve().parent == ASSETS:
        recorded["classifier_path"] = str(Path(path).resolve().relative_to(ASSETS.parents[1]))
    return recorded


def write_baseline(run_dir: str | Path, out: str | Path) -> Path:
    baseline = build_baseline(run_dir)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(baseline, indent=1) + "\n")
    return out


def read_baseline(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"baseline {path} does not exist: write one with "
                        f"`python -m bench baseline RUN --out {path}`")
    try:
        baseline = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise UserError(f"baseline {path} is not readable JSON ({exc}); rewrite it with `bench baseline`") from None
    if not isinstance(baseline, dict) or baseline.get("format") != BASELINE_FORMAT or "values" not in baseline:
        raise UserError(f"{path} is not a genbench baseline (format {BASELINE_FORMAT}); "
                        f"write one with `python -m bench baseline RUN --out {path}`")
    return baseline
