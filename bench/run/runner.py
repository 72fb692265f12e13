"""One job, inside its worker process: train (or continue from a checkpoint), checkpoint, measure.

The executors (``bench.run.executors``) give each job a fresh process, which keeps one model's memory out of
another's figures (each phase's peak is measured by ``instruments.memory.PhasePeak``) and confines a crash. The job's
outcome is written to ``jobs/<job>.json`` as soon as it ends, its trained weights to
``checkpoints/<job>.pt`` (``bench.train.checkpoints``) before it is measured, so nothing computed is lost.
"""
from __future__ import annotations

import random
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from bench.evaluate.metrics import row
from bench.instruments.memory import PhasePeak
from bench.train import checkpoints
from bench.evaluate import measurements
from bench.config import environment
from bench.config.budgets import PER_MODEL, budget_for, parse_budget
from bench.train.checkpoints import CheckpointError
from bench.data.datasets import load_dataset
from bench.config.job import DEFAULT_THREADS, THREADS_ENV, Job, JobOutcome, config_hash, job_threads, limit_threads, save_outcome, training_hash  # noqa: F401
from bench.train.trainer import (Checkpointing, Diverged, Interrupted, TrainResult, load_trainer_state, train,
                           trainer_state)

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from bench.config.errors import UserError
        raise UserError("--device cuda asked for, but torch sees no CUDA device; use --device cpu or auto")
    return torch.device(name)


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_job(job: Job) -> JobOutcome:
    """Train (or continue training from a checkpoint), checkpoint, then measure one model. Runs inside the
    worker process; never raises (a stop request ends it as ``interrupted``, its training checkpointed)."""
    import models

    start = time.perf_counter()
    outcome = JobOutcome(job=asdict(job))
    limit_threads(job_threads())  # torch's threads and numpy's BLAS threads alike
    device = torch.device(job.device)
    outcome.info.update(config_hash=config_hash(job), hardware=environment.hardware(device))
    try:
        seed_everything(job.seed)
        data = load_dataset(job.dataset, job.data_root)
        model = models.build(job.model, image_shape=data.image_shape,
                             **{**job.model_args, **job.sampler_args}).to(device)
        outcome.info.update(family=model.family, likelihood=model.likelihood, track=model.track,
                            conditional=model.conditional, batch_size=getattr(model, "batch_size", 64))
        x_test = data.test_split(model.track)[:job.eval_size]
        saved = _checkpoint_to_use(job, outcome)
        phase_started = time.perf_counter()
        if saved is not None and saved["complete"]:
            result = _restore_trained(model, saved, outcome)
        else:
            if job.evaluate_only:
                raise CheckpointError(f"no finished checkpoint at {job.checkpoint_path} to evaluate")
            result = _train(model, data, device, job, outcome, saved)
        outcome.curve = result.curve
        outcome.rows += _training_rows(result)
        outcome.rows.append(row("peak_memory_train", outcome.info["train_memory_mib"], "MiB",
                                        note=outcome.info["train_memory_what"]))
        outcome.rows.append(row("params", param_count(model), "count"))
        outcome.info["training_wall_seconds"] = round(time.perf_counter() - phase_started, 2)  # with checkpoint
        if outcome.status == "ok":
            phase_started = time.perf_counter()
            outcome.rows += _evaluate(model, data, x_test, device, job, outcome)
            outcome.info["evaluation_wall_seconds"] = round(time.perf_counter() - phase_started, 2)
        outcome.rows.append(_peak_memory_row(outcome.rows))
    except (Interrupted, KeyboardInterrupt) as exc:
        outcome.status = "interrupted"
        outcome.reason = (f"stopped when asked, {exc}; training checkpointed" if isinstance(exc, Interrupted)
                          else "stopped when asked")
    except Exception as exc:  # recorded as a failed job; the suite goes on
        outcome.status = "failed"
        outcome.reason = f"{type(exc).__name__}: {exc}"
        outcome.info["traceback"] = traceback.format_exc()
    outcome.wall_seconds = time.perf_counter() - start
    _save_outcome(outcome, Path(job.out))
    return outcome


def _checkpoint_to_use(job: Job, outcome: JobOutcome) -> dict | None:
    """The job's checkpoint if it is there and trustworthy; a corrupt or stale one is noted and ignored."""
    path = job.checkpoint_path
    if not path.exists():
        return None
    try:
        return checkpoints.load(path, training_hash(job))
    except CheckpointError as exc:
        outcome.notes.append(f"{exc}; training started again")
        return None


def _train(model, data, device, job: Job, outcome: JobOutcome, saved: dict | None) -> TrainResult:
    """Train under the job's budget (from ``saved``, an incomplete checkpoint, if given), then save the
    finished checkpoint that ``bench evaluate`` and a resumed run reuse."""
    budget = budget_for(job.budget, model)
    outcome.info["budget_resolved"] = {"kind": budget.kind, "amount": budget.amount, "label": budget.label}
    if budget.label == PER_MODEL and budget.kind != "steps":
        outcome.notes.append(f"{model.name} declares no default_steps: the default budget is {budget.amount:g} s "
                             f"of wall time for it, so what it trains depends on the machine")
    result = TrainResult()
    validation = data.valid_split(model.track) if job.early_stopping and model.likelihood else None
    every = parse_budget(job.checkpoint_every) if job.checkpoint_every else None
    plan = Checkpointing(job.checkpoint_path, training_hash(job), every, resume=saved)
    if saved is not None:
        outcome.info["resumed_from_step"] = saved["trainer"]["steps"]
        outcome.notes.append(f"training resumed from the checkpoint at step {saved['trainer']['steps']}")
    with PhasePeak(device) as train_memory:
        try:
            train(model, data.train_images, data.train_labels, budget, device, job.seed,
                  batch_size=outcome.info["batch_size"], progress=job.progress, result=result,
                  validation=validation, checkpoint=plan)
        except Diverged as exc:
            outcome.status, outcome.reason = "diverged", str(exc)
            outcome.info["diverged_step"] = exc.step
    what = train_memory.what + (" (the resumed part of training only)" if saved is not None else "")
    outcome.info.update(train_memory_mib=train_memory.mib, train_memory_what=what,
                        memory_method=train_memory.method)
    if outcome.status == "ok":
        path = checkpoints.save(job.checkpoint_path, model=model, optimizers=plan.optimizers or [],
                                job_hash=training_hash(job), complete=True, trainer=trainer_state(result),
                                extra={"train_memory": {k: outcome.info.get(k) for k in _MEMORY_INFO}})
        outcome.info["checkpoint"] = str(path.relative_to(job.out))
        outcome.info["checkpoint_digest"] = checkpoints.file_digest(path)
    return result


_MEMORY_INFO = ("train_memory_mib", "train_memory_what", "memory_method", "resumed_from_step")


def _restore_trained(model, saved: dict, outcome: JobOutcome) -> TrainResult:
    """A finished checkpoint: its weights and what its training measured; no training."""
    checkpoints.restore_model(model, saved)
    model.eval()
    result = TrainResult()
    load_trainer_state(result, saved["trainer"])
    result.flops_per_step = saved["trainer"].get("flops_per_step", float("nan"))
    outcome.info.update({k: v for k, v in saved.get("train_memory", {}).items() if v is not None})
    outcome.info["trained_by_earlier_run"] = True
    job = Job(**outcome.job)
    outcome.info["checkpoint"] = str(job.checkpoint_path.relative_to(job.out))
    outcome.info["checkpoint_digest"] = checkpoints.file_digest(job.checkpoint_path)
    outcome.notes.append("measured from the finished checkpoint; its training was done earlier and not repeated")
    return result


def _training_rows(result: TrainResult) -> list[dict]:
    early = []
    if result.best_epoch is not None:
        best = result.valid_curve[result.best_epoch - 1]
        early = [row("best_epoch", result.best_epoch, "epochs", note="early stopping on validation NLL"),
                 row("valid_nll", best["valid_nll"], "nats", note="validation NLL of the kept weights")]
    return early + [
        row("train_steps", result.steps, "steps"),
        row("train_examples", result.examples, "examples"),
        row("train_seconds", result.seconds, "s"),
        row("train_throughput", result.throughput, "examples/s"),
        row("train_flops", result.flops, "FLOP", "counted",
                    note=f"steps x {result.flops_per_step:.4g} matmul/conv FLOPs per step (bench.instruments.flops)"),
    ]


def _peak_memory_row(rows: list[dict]) -> dict:
    """The larger of the training and sampling peaks; evaluation (likelihood, FID) is not included."""
    peaks = [r["value"] for r in rows if r["metric"] in ("peak_memory_train", "peak_memory_sample")]
    return row("peak_memory", max(peaks), "MiB", note="max of peak_memory_train and peak_memory_sample "
                       "(every batch); evaluation excluded")


def _evaluate(model, data, x_test, device, job: Job, outcome: JobOutcome) -> list[dict]:
    """The registered measurements (bench.evaluate.measurements), in order, on the trained model."""
    context = measurements.Context(model, data, x_test, device, job, outcome)
    return measurements.evaluate(context, reseed=lambda: seed_everything(job.seed))


def param_count(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _save_outcome(outcome: JobOutcome, out: Path):
    save_outcome(outcome, Job(**{**outcome.job, "out": str(out)}).outcome_path)
