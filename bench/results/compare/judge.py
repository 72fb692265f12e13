"""Judging a run against a baseline: one verdict per (model, metric[, batch]) and per job status."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from bench.results.compare.rules import resolve_rules, rule_of
from bench.results.compare.runs import comparability, job_statuses, load_run, mean_values, model_of, split_key
from bench.config.errors import UserError
from bench.evaluate.metrics import Rule, scored_by_classifier


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


def compare(run_dir: str | Path, baseline: dict, overrides: list[str] | None = None,
            sample_quality: bool = True) -> list[Row]:
    """Every (model, metric[, batch]) of the baseline and the run, judged. Refuses (UserError) a baseline
    that was not made under the same dataset, budget, seeds, device and evaluation sample count, and, unless
    ``sample_quality`` is off (likelihood and speed rows only), one scored by another evaluation classifier."""
    config, metrics, jobs = load_run(run_dir)
    check_comparable(baseline, config)
    if sample_quality:
        check_same_classifier(baseline, config, run_dir)
    else:
        metrics = metrics[[not scored_by_classifier(m) for m in metrics["metric"]]]
    current = mean_values(metrics)
    rules = resolve_rules(baseline, overrides or [])
    base_values = {m: {k: (float("nan") if v is None else float(v)) for k, v in per.items()
                       if sample_quality or not scored_by_classifier(split_key(k)[0])}
                   for m, per in baseline["values"].items()}
    base_jobs, now_jobs = baseline.get("jobs") or {}, job_statuses(jobs)

    rows: list[Row] = []
    # An entry is a (model, track) (``runs.entry_names``); a job that failed before measuring anything has a
    # jobs.csv row and no metric rows, so its model is an entry of its own.
    entries = list(dict.fromkeys([*base_values, *current]))
    measured = {model_of(e) for e in entries}
    entries += [m for m in dict.fromkeys([*base_jobs, *now_jobs]) if m not in measured]
    status_shown: set[str] = set()
    for entry in entries:
        model = model_of(entry)
        if entry not in current and model not in now_jobs:
            rows.append(Row(entry, "(model)", None, "present", "absent", "-", "-", "removed"))
            continue
        if entry not in base_values and model not in base_jobs:
            status = now_jobs.get(model, {}).get("status", "ok")
            rows.append(Row(entry, "(model)", None, "absent", "present" if status == "ok" else status,
                            "; ".join(now_jobs.get(model, {}).get("detail", [])) or "-", "-", "added"))
            continue
        if model not in status_shown:  # a model's jobs once, however many tracks it has rows on
            rows += _status_rows(model, base_jobs, now_jobs)
            status_shown.add(model)
        base, now = base_values.get(entry, {}), current.get(entry, {})
        for key in dict.fromkeys([*base, *now]):
            metric, batch = split_key(key)
            rule = rule_of(rules, metric)
            if key not in now:
                rows.append(Row(entry, metric, batch, base[key], None, "-", rule.describe(), "removed"))
            elif key not in base:
                rows.append(Row(entry, metric, batch, None, now[key], "-", rule.describe(), "added"))
            else:
                rows.append(Row(entry, metric, batch, base[key], now[key], _change(base[key], now[key]),
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


def check_same_classifier(baseline: dict, config: dict, run_dir) -> None:
    """Sample-quality figures scored by two classifiers measure two things: refuse, naming both digests and
    how to rescore the run with the baseline's classifier."""
    recorded = baseline.get("classifier") or {}
    base, now = recorded.get("classifier_weights_digest"), config.get("classifier_weights_digest")
    if not base or not now or base == now:
        return
    where = recorded.get("classifier_path") or "the baseline run's classifier file"
    raise UserError(f"the baseline's sample quality was scored by evaluation classifier {base} "
                    f"({recorded.get('classifier_source') or 'source not recorded'}), this run's by {now} "
                    f"({config.get('classifier_source') or 'source not recorded'}): FID, KID, IS, precision and "
                    f"recall from two classifiers do not compare. Rescore the run with the baseline's classifier, "
                    f"`python -m bench evaluate {run_dir} --classifier {where}`, or compare likelihood and speed "
                    f"only with --no-sample-quality")


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
