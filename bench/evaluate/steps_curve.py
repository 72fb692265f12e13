"""Quality against sampling steps: FID, samples/s and NFE of one trained model at several step counts.

A model that exposes ``sampling_step_options`` (step counts worth sweeping) and a settable
``sampling_steps`` (DDPM: respaced steps of its chain; EBM: Langevin steps) is sampled at each step
count, its other settings unchanged. Each point gets
- ``fid``: on the run's sample count, scored by the run's own fidelity scoring (``bench.evaluate.sample_quality.score``,
  same classifier, same reference set), so it compares with the headline FID;
- ``sample_throughput``: samples/s at one batch size (the largest of ``sampling_speed.THROUGHPUT_BATCHES`` that the
  FID draw fills), the median over the full batches of that draw, after a warm-up;
- ``sampling_nfe``: the network evaluations the step count costs.
They are ordinary metric rows with a ``steps`` column (summary keys ``fid@steps=20``); the rows without
``steps`` stay the headline figures, at the model's own setting. The point at the model's own step count
is the headline measurement itself (copied, not drawn again). A model whose own setting is an adaptive
solver (flow matching: ``sampling_steps`` None) has no such point: its headline rows are the adaptive
point, and the curve holds the fixed-step ones.

Cost: a point costs about n x steps network evaluations. Points are measured cheapest first; one whose
projected time (seconds per sample-step, from the headline throughput and then from the last point)
exceeds what is left of the curve's budget, ``BUDGET_PER_CAP`` x the job's throughput cap (120 s at the
default cap of 20 s), is skipped and said so in the job's notes. The smoke budget measures only the
``SMOKE_POINTS`` smallest step counts.

``evaluate`` also names the sampler on the headline rows (``sampler_description()``) and the chain of the
likelihood (``likelihood_description()``), where the model has them: a DDPM's bits/dim is the bound of its
T-step chain while its samples come from a shorter one, and every figure should say which.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from bench.evaluate.metrics import row
from bench.evaluate.samples import to_uint8
from bench.evaluate.sampling_speed import THROUGHPUT_BATCHES
from bench.instruments.timing import sample_labels, synchronize, timed_sample

BUDGET_PER_CAP = 6.0  # the curve's time budget, in units of the job's throughput cap
SMOKE_POINTS = 2
SAMPLER_METRICS = {"fid", "kid", "is", "precision", "recall", "class_accuracy", "sample_throughput", "sampling_nfe"}
LIKELIHOOD_METRICS = {"test_nll", "test_bpd"}


def evaluate(model, data, device, job, outcome, rows: list[dict]) -> list[dict]:
    """``rows`` with the sampler and the likelihood's chain named in their notes, plus the curve's rows."""
    rows = name_chains(model, rows, outcome)
    if not getattr(model, "sampling_step_options", None):
        return rows
    try:
        return rows + curve_rows(model, data, device, job, outcome, rows)
    except Exception as exc:  # noqa: BLE001 - the headline figures stand without the curve
        outcome.notes.append(f"steps curve failed: {type(exc).__name__}: {exc}")
        return rows


def name_chains(model, rows: list[dict], outcome) -> list[dict]:
    """Append 'sampler: ...' to the sample rows' notes and the likelihood's chain to its rows' notes."""
    sampler = model.sampler_description() if hasattr(model, "sampler_description") else ""
    chain = model.likelihood_description() if hasattr(model, "likelihood_description") else ""
    if sampler:
        outcome.info["sampler"] = sampler
    if chain:
        outcome.info["likelihood_chain"] = chain
    out = []
    for r in rows:
        extra = (f"sampler: {sampler}" if r["metric"] in SAMPLER_METRICS and sampler else
                 chain if r["metric"] in LIKELIHOOD_METRICS and chain else "")
        note = "; ".join(filter(None, [r.get("note", ""), extra]))
        out.append({**r, "note": note} if extra else r)
    return out


def curve_rows(model, data, device, job, outcome, headline: list[dict]) -> list[dict]:
    from bench.evaluate.classifier import has_labels
    from bench.evaluate.sample_quality import job_classifier

    if not has_labels(data):
        outcome.notes.append("steps curve skipped: no evaluation classifier for a dataset without labels")
        return []
    device = torch.device(device)
    n = job.fidelity_samples or len(data.test_images)
    batch = max([b for b in THROUGHPUT_BATCHES if b <= n] or [n])
    own = model.sampling_steps
    ours = set() if own is None else {own}  # None: an adaptive solver, whose headline is not a step count
    options = sorted(set(model.sampling_step_options) | ours)
    if job.budget == "smoke":
        options = sorted(set(options[:SMOKE_POINTS]) | ours)
    classifier = job_classifier(data, device, job)
    budget = BUDGET_PER_CAP * job.throughput_cap_s
    per_step = _seconds_per_sample_step(headline, model.sampling_nfe)
    rows, spent = [], 0.0
    try:
        for steps in options:
            model.sampling_steps = steps
            nfe = model.sampling_nfe
            if steps == own:
                rows += _own_point(headline, steps, batch)
                continue
            projected = per_step * n * nfe if per_step else 0.0
            if projected > budget - spent:
                outcome.notes.append(f"steps curve: {steps} steps skipped: projected {projected:.0f}s > "
                                     f"{max(budget - spent, 0):.0f}s left of its {budget:.0f}s budget")
                continue
            start = time.perf_counter()
            fid, speed, full_batches = _measure_point(model, data, device, job, classifier, n, batch)
            spent += time.perf_counter() - start
            per_step = 1.0 / (speed * nfe)
            about = f"{model.sampler_description()}; " if hasattr(model, "sampler_description") else ""
            rows += [row("fid", fid, "", "estimate", steps=steps, note=f"{about}{n} samples, scored as the "
                                 "headline FID"),
                     row("sample_throughput", speed, "samples/s", batch=batch, steps=steps,
                                 note=f"median over the {full_batches} full batch(es) of the FID draw"),
                     row("sampling_nfe", nfe, "evaluations", "exact", steps=steps)]
    finally:
        model.sampling_steps = own
    return rows


def _seconds_per_sample_step(headline: list[dict], nfe: int) -> float | None:
    """From the headline throughput at its largest measured batch: seconds per sample per step."""
    speeds = [r for r in headline if r["metric"] == "sample_throughput" and r.get("batch") and r["value"] > 0]
    if not speeds or nfe < 1:
        return None
    best = max(speeds, key=lambda r: r["batch"])
    return 1.0 / (best["value"] * nfe)


def _own_point(headline: list[dict], steps: int, batch: int) -> list[dict]:
    """The model's own step count: the headline rows, copied with ``steps`` set."""
    copied = []
    for r in headline:
        if r["metric"] in ("fid", "sampling_nfe") or (r["metric"] == "sample_throughput" and r.get("batch") == batch):
            copied.append({**r, "steps": steps, "note": "; ".join(filter(None, ["the headline measurement (the "
                                                                                "model's own setting)", r.get("note")]))})
    return copied


def _measure_point(model, data, device, job, classifier, n: int, batch: int) -> tuple[float, float, int]:
    """(FID, samples/s at ``batch``, full batches timed) of one draw of ``n`` samples."""
    from bench.evaluate import sample_quality

    labels = sample_labels(model, min(batch, 16), device)
    timed_sample(model, min(batch, 16), labels, device)  # warm-up
    torch.manual_seed(job.seed)
    images, times = [], []
    for start in range(0, n, batch):
        m = min(batch, n - start)
        labels = sample_labels(model, m, device)
        with torch.no_grad():
            synchronize(device)
            began = time.perf_counter()
            x = model.sample(m, labels=labels) if labels is not None else model.sample(m)
            synchronize(device)
        if m == batch:
            times.append(time.perf_counter() - began)
        images.append(to_uint8(x.cpu()))
    reference = sample_quality.reference_images(data, model.track)
    values, _ = sample_quality.score(torch.cat(images), reference, classifier, device, cache_root=Path(job.out) / "fidelity",
                               reference_name=sample_quality.reference_name(data, model.track, reference))
    return values["fid"], batch / statistics.median(times), len(times)
