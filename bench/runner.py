"""Runs the suite: one job per (model, dataset, seed), each in a fresh worker process.

A fresh process per job keeps one model's memory out of another's figures (each phase's peak is
measured by ``measure.PhasePeak``), and a crash or a divergence in
one model cannot take the others down: the job's outcome is written to ``jobs/<job>.json`` as soon
as it ends, and the run's tables are rewritten after every job, so nothing computed is lost.
"""
from __future__ import annotations

import multiprocessing
import random
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from bench import evaluation, measure
from bench.budgets import parse_budget
from bench.data import load_dataset
from bench.jobs import DEFAULT_THREADS, THREADS_ENV, Job, JobOutcome, job_threads, save_outcome  # noqa: F401
from bench.trainer import Diverged, TrainResult, train

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from bench.errors import UserError
        raise UserError("--device cuda asked for, but torch sees no CUDA device; use --device cpu or auto")
    return torch.device(name)


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_job(job: Job) -> JobOutcome:
    """Train, then measure one model. Runs inside the worker process; never raises."""
    import models

    start = time.perf_counter()
    outcome = JobOutcome(job=asdict(job))
    torch.set_num_threads(job_threads())
    device = torch.device(job.device)
    try:
        seed_everything(job.seed)
        data = load_dataset(job.dataset, job.data_root)
        model = models.build(job.model, image_shape=data.image_shape, **job.model_args).to(device)
        outcome.info.update(family=model.family, likelihood=model.likelihood, track=model.track,
                            conditional=model.conditional, batch_size=getattr(model, "batch_size", 64))
        x_test = data.test_split(model.track)[:job.eval_size]
        budget = parse_budget(job.budget)
        result = TrainResult()
        validation = data.valid_split(model.track) if job.early_stopping and model.likelihood else None
        with measure.PhasePeak(device) as train_memory:
            try:
                train(model, data.train_images, data.train_labels, budget, device, job.seed,
                      batch_size=outcome.info["batch_size"], progress=job.progress, result=result,
                      validation=validation)
            except Diverged as exc:
                outcome.status, outcome.reason = "diverged", str(exc)
                outcome.info["diverged_step"] = exc.step
        outcome.curve = result.curve
        outcome.rows += _training_rows(result)
        outcome.rows.append(measure.row("peak_memory_train", train_memory.mib, "MiB", note=train_memory.what))
        outcome.info["memory_method"] = train_memory.method
        outcome.rows.append(measure.row("params", measure.param_count(model), "count"))
        if outcome.status == "ok":
            outcome.rows += _evaluate(model, data, x_test, device, job, outcome)
        outcome.rows.append(_peak_memory_row(outcome.rows))
    except Exception as exc:  # recorded as a failed job; the suite goes on
        outcome.status = "failed"
        outcome.reason = f"{type(exc).__name__}: {exc}"
        outcome.info["traceback"] = traceback.format_exc()
    outcome.wall_seconds = time.perf_counter() - start
    _save_outcome(outcome, Path(job.out))
    return outcome


def _training_rows(result: TrainResult) -> list[dict]:
    early = []
    if result.best_epoch is not None:
        best = result.valid_curve[result.best_epoch - 1]
        early = [measure.row("best_epoch", result.best_epoch, "epochs", note="early stopping on validation NLL"),
                 measure.row("valid_nll", best["valid_nll"], "nats", note="validation NLL of the kept weights")]
    return early + [
        measure.row("train_steps", result.steps, "steps"),
        measure.row("train_examples", result.examples, "examples"),
        measure.row("train_seconds", result.seconds, "s"),
        measure.row("train_throughput", result.throughput, "examples/s"),
        measure.row("train_flops", result.flops, "FLOP", "counted",
                    note=f"steps x {result.flops_per_step:.4g} matmul/conv FLOPs per step (bench.flops)"),
    ]


def _peak_memory_row(rows: list[dict]) -> dict:
    """The larger of the training and sampling peaks; evaluation (likelihood, FID) is not included."""
    peaks = [r["value"] for r in rows if r["metric"] in ("peak_memory_train", "peak_memory_sample")]
    return measure.row("peak_memory", max(peaks), "MiB", note="max of peak_memory_train and peak_memory_sample "
                       "(every batch); evaluation excluded")


def _evaluate(model, data, x_test, device, job: Job, outcome: JobOutcome) -> list[dict]:
    """The registered measurements (bench.evaluation), in order, on the trained model."""
    context = evaluation.Context(model, data, x_test, device, job, outcome)
    return evaluation.evaluate(context, reseed=lambda: seed_everything(job.seed))


def _save_outcome(outcome: JobOutcome, out: Path):
    save_outcome(outcome, Path(out) / "jobs" / f"{Job(**outcome.job).key}.json")


def run_isolated(job: Job) -> JobOutcome:
    """``run_job`` in a fresh spawned process (its own memory, and a crash stays there)."""
    context = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            return pool.submit(run_job, job).result()
    except BrokenProcessPool as exc:
        outcome = JobOutcome(job=asdict(job), status="failed",
                             reason=f"worker process died ({exc}); out of memory or a crash in native code")
        _save_outcome(outcome, Path(job.out))
        return outcome
