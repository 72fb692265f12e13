"""Regression tracking: compare a run with a stored baseline (``bench compare``, ``bench baseline``).

A baseline (``results/baselines/<name>.json``) holds, per model, the mean over seeds of every metric
of one run (throughput one value per batch size, ``sample_throughput@256``), each job's status, the
tolerances, and what makes two runs comparable (dataset, budget, seeds, device, evaluation sample count).
``compare`` prints one table row per (model, metric[, batch]) with a verdict and exits

    0  nothing regressed beyond its tolerance;
    1  a gated metric got worse by more than its tolerance, or a model that finished in the baseline
       diverged or failed now;
    2  unusable input (missing files, a baseline of another dataset, budget, seed set or device).

Each metric has a direction (lower or higher is better) and a tolerance: the change in the bad
direction that is still noise, ``max(rel * |baseline|, abs)``. Defaults follow each metric's noise.
Quality metrics under a step budget on a CPU with fixed seeds repeat almost exactly, so their band is
tight; speed on a shared machine varies by a factor of two, so throughput only fails below 0.3x of the
baseline. Informational metrics (parameter count, what the budget bought, ``train_seconds``: under a
step budget it is ``train_examples / train_throughput`` and would count the same slowdown twice; under
a time budget it is the budget itself) are shown and never gate.

Tolerances come from, last one winning: the defaults below, the baseline file's ``tolerances``, and
``--tolerance METRIC=TOL`` where TOL is a relative band (``0.1`` or ``10%``), an absolute one in the
metric's unit (``abs:0.02``), or ``off`` (show, never gate).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path

import pandas as pd

from bench import results
from bench.errors import UserError

BASELINE_FORMAT = "genbench-baseline/1"
BATCH_SEPARATOR = "@"  # the summary's column name for a metric at one batch size: sample_throughput@256


@dataclass(frozen=True)
class Rule:
    """How one metric is judged: which way is better, and how much worse is still noise."""

    direction: str | None  # "lower" | "higher" | None (no better side: params, steps)
    rel: float = 0.0  # fraction of |baseline|
    abs: float = 0.0  # in the metric's unit
    gated: bool = True  # False: shown, never a regression

    def band(self, baseline: float) -> float:
        return max(self.rel * abs(baseline), self.abs)

    def describe(self) -> str:
        """The band as the allowed worsening: ``+1%`` (may rise 1%), ``-70%`` (may fall to 0.3x)."""
        if not self.gated or self.direction is None:
            return "-"
        sign = "+" if self.direction == "lower" else "-"
        parts = ([f"{sign}{100 * self.rel:.3g}%"] if self.rel else []) + ([f"{sign}{self.abs:.3g}"] if self.abs else [])
        return " or ".join(parts) if parts else "0"


# Likelihoods at a step budget repeat bit for bit on one machine and to ~1e-8 across thread counts;
# FVSBN's smoke bits/dim moves 0.02% between seeds but +13.5% when its learning rate is halved, so
# 1% leaves room for another CPU's arithmetic and still catches a changed default or a broken model.
_LIKELIHOOD = Rule("lower", rel=0.01)
# Sample-quality scores come from ~1,000 samples: a few flipped pixels move them a little.
_SAMPLE_DISTANCE = Rule("lower", rel=0.10, abs=0.5)
_FRACTION = Rule("higher", abs=0.05)
# Speed on a shared machine: fail only below 0.3x of the baseline.
_SPEED = Rule("higher", rel=0.70)
_INFO_LOWER = Rule("lower", gated=False)
_INFO = Rule(None, gated=False)

DEFAULT_RULES: dict[str, Rule] = {
    "test_bpd": _LIKELIHOOD,
    "test_nll": _LIKELIHOOD,
    "fid": _SAMPLE_DISTANCE,
    "kid": Rule("lower", rel=0.25, abs=0.01),
    "is": Rule("higher", rel=0.10),
    "precision": _FRACTION,
    "recall": _FRACTION,
    "class_accuracy": _FRACTION,
    "sample_throughput": _SPEED,
    "train_throughput": _SPEED,
    "peak_memory": Rule("lower", rel=0.50),  # resident memory moves with thread count and libraries
    "peak_memory_train": Rule("lower", rel=0.50),
    "peak_memory_sample": Rule("lower", rel=0.50),
    "train_seconds": _INFO_LOWER,
    "params": _INFO,
    "train_steps": _INFO,
    "train_examples": _INFO,
    "sampling_nfe": _INFO,
    "best_epoch": _INFO,
    "valid_nll": _INFO,
}


def rule_for(metric: str) -> Rule:
    """The default rule of a metric. Model-specific likelihoods named like ``test_iwae``,
    ``iwae_k50``, ``*_bpd`` or ``*_nll`` are judged like ``test_nll``; any other unknown metric is
    shown but not gated (its better direction is unknown: an ELBO may be stored either way round)."""
    if metric in DEFAULT_RULES:
        return DEFAULT_RULES[metric]
    if re.search(r"(^|_)(iwae|nll|bpd)(_|$|\d)", metric):
        return _LIKELIHOOD
    return _INFO


# --- reading a run ---------------------------------------------------------------------------
def split_key(key: str) -> tuple[str, int | None]:
    metric, _, batch = key.partition(BATCH_SEPARATOR)
    return metric, (int(batch) if batch else None)


def load_run(run_dir: str | Path) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """``config.json``, ``metrics.csv`` and ``jobs.csv`` of a run, or a UserError naming what is missing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist: give the --out folder of a `bench run`")
    missing = [n for n in ("config.json", "metrics.csv", "jobs.csv") if not (run_dir / n).is_file()]
    if missing:
        raise UserError(f"{run_dir} lacks {', '.join(missing)}: give the folder of a finished `bench run`")
    try:
        config = results.read_json(run_dir / "config.json")
        metrics = pd.read_csv(run_dir / "metrics.csv")
        jobs = pd.read_csv(run_dir / "jobs.csv", keep_default_na=False)
    except (ValueError, OSError) as exc:
        raise UserError(f"{run_dir} holds an unreadable result file ({exc}); rerun `bench run`") from None
    need = {"model", "metric", "value"}
    if not need <= set(metrics.columns):
        raise UserError(f"{run_dir}/metrics.csv lacks the columns {sorted(need - set(metrics.columns))}")
    if "batch" not in metrics.columns:
        metrics["batch"] = pd.NA
    return config, metrics, jobs


def mean_values(metrics: pd.DataFrame) -> dict[str, dict[str, float]]:
    """model -> {metric[@batch]: mean over seeds}; NaN stays NaN (a metric that was not finite)."""
    out: dict[str, dict[str, float]] = {}
    batch = pd.to_numeric(metrics["batch"], errors="coerce")
    keys = [results.metric_key(m, b) for m, b in zip(metrics["metric"], batch)]
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
        "versions": config.get("versions", {}),
        "hardware": config.get("hardware", {}),
        "comparable_on": comparability(config),
        "tolerances": {m: asdict(rule_for(m)) for m in metric_names},
        "jobs": job_statuses(jobs),
        "units": {m: units[m] for m in metric_names if m in units},
        # JSON has no NaN: a metric that was not finite is stored as null.
        "values": {model: {k: (v if math.isfinite(v) else None) for k, v in per_model.items()}
                   for model, per_model in values.items()},
    }


def write_baseline(run_dir: str | Path, out: str | Path) -> Path:
    baseline = build_baseline(run_dir)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(readable_json(baseline) + "\n")
    return out


def readable_json(value, indent: int = 0, width: int = 110) -> str:
    """JSON with every object or list that fits on one line written on one line (one metric, one
    tolerance per line), so a baseline reads, and diffs, line by line."""
    flat = json.dumps(value)
    if not isinstance(value, (dict, list)) or len(flat) + indent <= width or not value:
        return flat
    pad = " " * (indent + 2)
    if isinstance(value, dict):
        items = [f"{pad}{json.dumps(k)}: {readable_json(v, indent + 2, width)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    items = [pad + readable_json(v, indent + 2, width) for v in value]
    return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"


def write_baseline_cli(args) -> int:
    out = write_baseline(args.run_dir, args.out)
    baseline = json.loads(out.read_text())
    n = sum(len(v) for v in baseline["values"].values())
    print(f"baseline: {out} ({len(baseline['values'])} models, {n} values; dataset {baseline['dataset']}, "
          f"budget {baseline['budget']}, seeds {baseline['seeds']}, device {baseline['device']})")
    return 0


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


# --- tolerances ------------------------------------------------------------------------------
def parse_tolerance(text: str) -> tuple[str, dict]:
    """``METRIC=0.1`` / ``METRIC=10%`` (relative), ``METRIC=abs:0.02`` (absolute), ``METRIC=off``."""
    metric, sep, spec = text.partition("=")
    metric, spec = metric.strip(), spec.strip().lower()
    hint = "use METRIC=0.1 or METRIC=10% (relative), METRIC=abs:0.02 (in the metric's unit) or METRIC=off"
    if not sep or not metric or not spec:
        raise UserError(f"malformed --tolerance {text!r}: {hint}")
    if spec == "off":
        return metric, {"gated": False}
    absolute = spec.startswith("abs:")
    number = spec[4:] if absolute else spec
    try:
        value = float(number[:-1]) / 100 if number.endswith("%") else float(number)
    except ValueError:
        raise UserError(f"malformed --tolerance {text!r}: {hint}") from None
    if not math.isfinite(value) or value < 0:
        raise UserError(f"--tolerance {text!r}: a tolerance is a non-negative number; {hint}")
    return metric, ({"abs": value, "gated": True} if absolute else {"rel": value, "gated": True})


def resolve_rules(baseline: dict, overrides: list[str]) -> dict[str, Rule]:
    rules: dict[str, Rule] = {}
    for metric, stored in (baseline.get("tolerances") or {}).items():
        default = rule_for(metric)
        try:
            rules[metric] = replace(default, **{k: stored[k] for k in ("direction", "rel", "abs", "gated")
                                                if k in stored})
        except TypeError:
            raise UserError(f"the baseline's tolerance for {metric!r} is malformed: {stored!r}") from None
    for text in overrides:
        metric, change = parse_tolerance(text)
        rule = rules.get(metric, rule_for(metric))
        if change.get("gated") and rule.direction is None:
            raise UserError(f"--tolerance {text!r}: {metric} has no better direction and is never gated")
        rules[metric] = replace(rule, **change)
    return rules


# --- comparing -------------------------------------------------------------------------------
@dataclass
class Row:
    model: str
    metric: str
    batch: int | None
    baseline: float | str | None
    current: float | str | None
    change: str
    tolerance: str
    verdict: str  # ok | regressed | improved | added | removed | info


def judge(rule: Rule, base: float, now: float) -> str:
    if not rule.gated or rule.direction is None:
        return "info"
    if math.isnan(base) and math.isnan(now):
        return "ok"
    if math.isnan(now):
        return "regressed"  # a metric that was finite is not any more
    if math.isnan(base):
        return "improved"
    worse_by = (now - base) if rule.direction == "lower" else (base - now)
    band = rule.band(base)
    if worse_by > band:
        return "regressed"
    if -worse_by > band:
        return "improved"
    return "ok"


def _change(base: float, now: float) -> str:
    if math.isnan(base) or math.isnan(now):
        return "-"
    diff = now - base
    if base == 0:
        return f"{diff:+.4g}"
    return f"{diff:+.4g} ({100 * diff / abs(base):+.1f}%)"


def _status_rows(model: str, base_jobs: dict, now_jobs: dict) -> list[Row]:
    base, now = base_jobs.get(model), now_jobs.get(model)
    if base is None or now is None:
        return []
    b, n = base["status"], now["status"]
    if b == n:
        if b == "ok":
            return []
        verdict = "info"
    else:
        verdict = "regressed" if b == "ok" else ("improved" if n == "ok" else "info")
    detail = "; ".join(now["detail"]) or "-"
    return [Row(model, "job status", None, b, n, detail, "-", verdict)]


def compare(run_dir: str | Path, baseline: dict, overrides: list[str] | None = None) -> list[Row]:
    """Every (model, metric[, batch]) of the baseline and the run, judged. Refuses (UserError) a baseline
    that was not made under the same dataset, budget, seeds, device and evaluation sample count."""
    config, metrics, jobs = load_run(run_dir)
    check_comparable(baseline, config)
    current = mean_values(metrics)
    rules = resolve_rules(baseline, overrides or [])
    base_values = {m: {k: (float("nan") if v is None else float(v)) for k, v in per.items()}
                   for m, per in baseline["values"].items()}
    base_jobs, now_jobs = baseline.get("jobs") or {}, job_statuses(jobs)

    rows: list[Row] = []
    # A job that failed before measuring anything has a jobs.csv row and no metric rows.
    models = list(dict.fromkeys([*base_values, *base_jobs, *current, *now_jobs]))
    for model in models:
        if model not in current and model not in now_jobs:
            rows.append(Row(model, "(model)", None, "present", "absent", "-", "-", "removed"))
            continue
        if model not in base_values and model not in base_jobs:
            status = now_jobs.get(model, {}).get("status", "ok")
            rows.append(Row(model, "(model)", None, "absent", "present" if status == "ok" else status,
                            "; ".join(now_jobs.get(model, {}).get("detail", [])) or "-", "-", "added"))
            continue
        rows += _status_rows(model, base_jobs, now_jobs)
        base, now = base_values.get(model, {}), current.get(model, {})
        for key in dict.fromkeys([*base, *now]):
            metric, batch = split_key(key)
            rule = rules.get(metric, rule_for(metric))
            if key not in now:
                rows.append(Row(model, metric, batch, base[key], None, "-", rule.describe(), "removed"))
            elif key not in base:
                rows.append(Row(model, metric, batch, None, now[key], "-", rule.describe(), "added"))
            else:
                rows.append(Row(model, metric, batch, base[key], now[key], _change(base[key], now[key]),
                                rule.describe(), judge(rule, base[key], now[key])))
    return rows


def check_comparable(baseline: dict, config: dict) -> None:
    want = baseline.get("comparable_on") or {}
    have = comparability(config)
    for key, fix in [("dataset", "--dataset"), ("budget", "--budget"), ("seeds", "--seeds"),
                     ("device", "--device"), ("fidelity_samples", "--fid-samples"),
                     ("eval_size", "--eval-size")]:
        if key in want and want[key] is not None and have.get(key) is not None and want[key] != have[key]:
            raise UserError(f"the baseline was made with {key} {want[key]}, this run used {have[key]}: "
                            f"their numbers are not comparable; rerun with the baseline's {fix}, "
                            f"or write a new baseline with `bench baseline`")


def context_notes(baseline: dict, config: dict) -> list[str]:
    """Differences that may move the last digits without making the runs incomparable: package
    versions, torch's thread count (a convolution's sums split differently), the machine."""
    notes = []
    base_versions, now_versions = baseline.get("versions") or {}, config.get("versions") or {}
    for name in sorted(set(base_versions) & set(now_versions)):
        if base_versions[name] != now_versions[name]:
            notes.append(f"{name} {base_versions[name]} in the baseline, {now_versions[name]} now")
    base_hw, now_hw = baseline.get("hardware") or {}, config.get("hardware") or {}
    for key in ("torch_threads", "processor", "cpu_count", "gpu"):
        if key in base_hw and key in now_hw and base_hw[key] != now_hw[key]:
            notes.append(f"{key} {base_hw[key]} in the baseline, {now_hw[key]} now")
    return notes


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if math.isnan(value):
        return "nan"
    return f"{value:,.0f}" if abs(value) >= 1e5 else f"{value:.6g}"


def render(rows: list[Row]) -> str:
    from tabulate import tabulate

    table = [[r.model, r.metric, "" if r.batch is None else r.batch, _fmt(r.baseline), _fmt(r.current),
              r.change, r.tolerance, r.verdict.upper() if r.verdict == "regressed" else r.verdict]
             for r in rows]
    return tabulate(table, headers=["model", "metric", "batch", "baseline", "current", "change", "tolerance",
                                    "verdict"], tablefmt="github", disable_numparse=True)


def summary_line(rows: list[Row]) -> str:
    counts = {v: sum(r.verdict == v for r in rows) for v in ("regressed", "improved", "added", "removed")}
    text = ", ".join(f"{n} {v}" for v, n in counts.items() if n) or "no changes beyond tolerance"
    regressed = [r for r in rows if r.verdict == "regressed"]
    if regressed:
        names = "; ".join(f"{r.model} {r.metric}" + (f"@{r.batch}" if r.batch is not None else "")
                          for r in regressed)
        return f"REGRESSION: {text}. Regressed: {names}"
    return f"ok: {text}"


def main(args) -> int:
    baseline = read_baseline(args.baseline)
    rows = compare(args.run_dir, baseline, list(args.tolerance or []))
    print(f"compare {args.run_dir} with {args.baseline} (dataset {baseline.get('dataset')}, budget "
          f"{baseline.get('budget')}, seeds {baseline.get('seeds')}, baseline commit {baseline.get('git_commit')})")
    notes = context_notes(baseline, load_run(args.run_dir)[0])
    if notes:
        print("note: " + "; ".join(notes) + " (last digits may differ)")
    print(render(rows))
    print(summary_line(rows))
    return 1 if any(r.verdict == "regressed" for r in rows) else 0
