"""Evaluation as a list of measurements: what the runner does to a trained model, one step at a time.

Each measurement has one job and a name; ``applies`` says whether it has anything to measure for this
model, and ``measure`` returns metric rows (and may record notes and information on the outcome). The
runner walks ``MEASUREMENTS`` in order, reseeding before each, so adding one, say a new metric family,
is one class here (or in its own module) and one ``register_measurement`` call; the report, ``compare``
and ``bench list`` pick its rows up through the metric registry.

A measurement that must amend the rows before it (the sampler notes of the steps curve) receives them in
``context.rows`` and may rewrite their notes; it never removes a row.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.evaluate import likelihood, sampling_speed
from bench.evaluate.metrics import row
from bench.evaluate.samples import draw_samples

SAMPLE_GRID = 64


@dataclass
class Context:
    """Everything a measurement may read: the trained model, its data, the job and what was measured so far."""

    model: torch.nn.Module
    data: object
    x_test: torch.Tensor
    device: torch.device
    job: object
    outcome: object
    rows: list[dict] = field(default_factory=list)


class Measurement:
    name = "measurement"
    reseed = False  # True: the job's seed is set again first, so this measurement's draws never depend on
                    # how much randomness the ones before it used

    def applies(self, model) -> bool:
        return True

    def measure(self, ctx: Context) -> list[dict]:
        raise NotImplementedError


class Likelihood(Measurement):
    """Test NLL and bits/dim, labelled exact, bound or estimate; the model's own extra rows (IWAE)."""

    name = "likelihood"

    def applies(self, model) -> bool:
        return bool(model.likelihood)

    def measure(self, ctx: Context) -> list[dict]:
        rows = likelihood.test_likelihood(ctx.model, ctx.x_test, ctx.device, ctx.job.seed, progress=ctx.job.progress)
        return rows + ctx.model.extra_metrics(ctx.x_test.to(ctx.device))


class Throughput(Measurement):
    """Samples/s and the sampling memory peak per batch size, and the sampler's NFE."""

    name = "throughput"

    def measure(self, ctx: Context) -> list[dict]:
        rows, notes = sampling_speed.sample_throughput(ctx.model, ctx.device, max_seconds=ctx.job.throughput_cap_s)
        ctx.outcome.notes += notes
        return rows + [row("sampling_nfe", ctx.model.sampling_nfe, "evaluations", "exact")]


class SampleGrid(Measurement):
    """A seeded 8 x 8 grid of samples (conditional models: a row per label) for the report."""

    name = "sample grid"
    reseed = True

    def measure(self, ctx: Context) -> list[dict]:
        from torchvision.utils import save_image

        model = ctx.model
        labels = torch.arange(SAMPLE_GRID) // 8 % model.num_classes if model.conditional else None
        grid, _ = draw_samples(model, SAMPLE_GRID, ctx.device, labels=labels, progress=False)
        path = Path(ctx.job.out) / "samples" / f"{ctx.job.key}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid.float() / 255.0, path, nrow=8, padding=2, pad_value=0.5)
        ctx.outcome.info["sample_grid"] = str(path.relative_to(ctx.job.out))
        return []


class SampleQuality(Measurement):
    """FID (and fid_inf), IS, KID, precision/recall with intervals, copy_rate, class accuracy."""

    name = "sample quality"

    def measure(self, ctx: Context) -> list[dict]:
        from bench.evaluate import sample_quality

        return sample_quality.model_rows(ctx.model, ctx.data, ctx.device, ctx.job, ctx.outcome)


class SelfChecks(Measurement):
    """The model's run-time self-checks and the harness's FID recomputation, stored with the job."""

    name = "checks"

    def measure(self, ctx: Context) -> list[dict]:
        from bench.evaluate import self_checks

        ctx.outcome.info.setdefault("checks", []).extend(self_checks.model_checks(ctx.model, ctx.x_test, ctx.device))
        return []


class StepsCurve(Measurement):
    """Names each figure's sampler and chain in its note; FID, samples/s and NFE against sampling steps."""

    name = "steps curve"

    def measure(self, ctx: Context) -> list[dict]:
        from bench.evaluate import steps_curve

        amended = steps_curve.evaluate(ctx.model, ctx.data, ctx.device, ctx.job, ctx.outcome, ctx.rows)
        ctx.rows[:] = amended[:len(ctx.rows)]  # the same rows, their notes naming the sampler
        return amended[len(ctx.rows):]


MEASUREMENTS: list[Measurement] = []


def register_measurement(measurement: Measurement, before: str | None = None) -> Measurement:
    """Add a measurement to the list the runner walks (at the end, or before the one named ``before``)."""
    if any(m.name == measurement.name for m in MEASUREMENTS):
        raise ValueError(f"measurement {measurement.name!r} registered twice")
    names = [m.name for m in MEASUREMENTS]
    MEASUREMENTS.insert(names.index(before) if before in names else len(MEASUREMENTS), measurement)
    return measurement


for _measurement in (Likelihood(), Throughput(), SampleGrid(), SampleQuality(), SelfChecks(), StepsCurve()):
    register_measurement(_measurement)


def evaluate(ctx: Context, reseed) -> list[dict]:
    """Every registered measurement that applies, in order (``reseed()`` first, and again before each that
    asks for it); returns all rows. Each one's wall time goes into ``info["evaluation_seconds"]``."""
    reseed()
    seconds = ctx.outcome.info.setdefault("evaluation_seconds", {})  # where evaluation's time goes
    for measurement in MEASUREMENTS:
        if measurement.applies(ctx.model):
            if measurement.reseed:
                reseed()
            started = time.perf_counter()
            ctx.rows += measurement.measure(ctx)
            seconds[measurement.name] = round(time.perf_counter() - started, 2)
    return ctx.rows
