"""The one training loop: budgets, batches, divergence, the training curve and its timing.

A model supplies ``configure_optimizers`` and ``train_step``; the loop decides when to stop and
what was bought. A non-finite loss (or a ``FloatingPointError`` from the model) ends training as a
*divergence*, a result the report shows ("diverged at step N"), not a crash of the suite.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from bench.instruments import flops as flop_count
from bench.config.budgets import Budget
from bench.data.datasets import to_track
from bench.instruments.timing import synchronize


RECOUNT_EVERY = 20  # steps between FLOP counts of a model whose step cost depends on its weights


class Diverged(Exception):
    def __init__(self, step: int, reason: str):
        super().__init__(f"diverged at step {step}: {reason}")
        self.step = step
        self.reason = reason


@dataclass
class TrainResult:
    steps: int = 0
    examples: int = 0
    seconds: float = 0.0
    flops: float = 0.0  # matmul/conv FLOPs of the steps run (bench.instruments.flops), forward and backward
    flops_per_step: float = float("nan")  # at the training batch size; NaN when it could not be counted
    curve: list[dict] = field(default_factory=list)  # {"step", "seconds", "loss"}
    valid_curve: list[dict] = field(default_factory=list)  # early stopping: {"epoch", "valid_nll"}
    best_epoch: int | None = None

    @property
    def throughput(self) -> float:
        return self.examples / self.seconds if self.seconds > 0 else float("nan")


class ShuffledBatches:
    """Endless minibatches of (images in the track's representation, labels), reshuffled each epoch."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, track: str,
                 device: torch.device, generator: torch.Generator):
        self.images, self.labels = images, labels
        self.batch_size = min(batch_size, len(images))
        self.track, self.device, self.generator = track, device, generator
        self._order, self._pos = None, len(images)

    def __next__(self):
        if self._pos + self.batch_size > len(self.images):
            self._order = torch.randperm(len(self.images), generator=self.generator)
            self._pos = 0
        idx = self._order[self._pos:self._pos + self.batch_size]
        self._pos += self.batch_size
        x = to_track(self.images[idx], self.track, generator=self.generator)
        return x.to(self.device, non_blocking=True), self.labels[idx].to(self.device, non_blocking=True)

    def state(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self._order, "pos": self._pos}

    def load_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self._order, self._pos = state["order"], state["pos"]


def train(model, images: torch.Tensor, labels: torch.Tensor, budget: Budget, device: torch.device,
          seed: int, batch_size: int = 64, progress: bool = True, curve_points: int = 200,
          result: TrainResult | None = None, validation: torch.Tensor | None = None,
          patience: int = 4, checkpoint: "Checkpointing | None" = None) -> TrainResult:
    """Train ``model`` until ``budget`` is spent. ``result`` (if given) is filled in place, so a
    caller still holds what was bought when ``Diverged`` is raised.

    With ``validation`` (images in the track's representation) this is early stopping: the mean
    validation NLL after every epoch, the learning rate halved after an epoch without improvement,
    the best epoch's weights restored at the end, and training ends once ``patience`` epochs in a row
    bring no improvement.

    With ``checkpoint`` the loop saves an incomplete checkpoint every ``checkpoint.every`` and when a stop
    is requested (``request_stop``, then ``Interrupted``), and continues from ``checkpoint.resume`` (the
    payload of such a checkpoint) exactly where it stopped."""
    result = result if result is not None else TrainResult()
    optimizers = model.configure_optimizers()
    stopper = EarlyStopping(model, validation, device, patience, optimizers) if validation is not None else None
    generator = torch.Generator().manual_seed(seed)
    batches = ShuffledBatches(images, labels, batch_size, model.track, device, generator)
    steps_per_epoch = max(1, len(images) // batches.batch_size)
    model.train()
    result.flops_per_step = step_flops(model, images, labels, batches.batch_size, device, seed,
                                       required=budget.kind == "flops")
    log_every = _log_interval(budget, steps_per_epoch, curve_points, result.flops_per_step)
    if checkpoint:
        checkpoint.optimizers = optimizers
    # An adaptive solver's steps (hence a training step's FLOPs) change with the weights: recount.
    recount = getattr(model, "sampling_cost_depends_on_weights", False) and result.flops_per_step > 0
    if checkpoint and checkpoint.resume:
        checkpoint.restore(model, optimizers, result, batches, stopper)
        if recount:  # the count made on the fresh weights above is not the one the steps since the last recount used
            result.flops_per_step = checkpoint.resume["trainer"].get("flops_per_step", result.flops_per_step)
    loss = result.curve[-1]["loss"] if result.curve else float("nan")
    bar = tqdm(total=budget.amount, desc=f"train {model.name}", unit=budget.kind,
               disable=not progress, leave=False, dynamic_ncols=True)
    start = time.perf_counter() - result.seconds  # a resumed run's clock goes on from its checkpoint
    _STOP.listening, _STOP.requested = True, False
    try:
        while not budget.exhausted(result.steps, result.seconds, result.steps / steps_per_epoch, result.flops):
            batch = next(batches)
            try:
                if recount and result.steps % RECOUNT_EVERY == 0:  # count this live step, use it until the next
                    stats, result.flops_per_step = flop_count.count_returning(
                        lambda: model.train_step(batch, optimizers))
                else:
                    stats = model.train_step(batch, optimizers)
            except FloatingPointError as exc:
                raise Diverged(result.steps + 1, str(exc)) from None
            synchronize(device)
            result.steps += 1
            result.examples += len(batch[0])
            # Every batch has the counted size (ShuffledBatches never yields a short one), so this is
            # the count of what was run (recounted every RECOUNT_EVERY steps for weight-dependent models).
            result.flops += result.flops_per_step
            result.seconds = time.perf_counter() - start
            loss = float(stats["loss"])
            if not math.isfinite(loss):
                raise Diverged(result.steps, f"loss became {loss}")
            if result.steps == 1 or result.steps % log_every == 0:
                result.curve.append({"step": result.steps, "seconds": result.seconds, "loss": loss})
                bar.set_postfix(loss=f"{loss:.4g}")
            bar.n = {"steps": result.steps, "seconds": round(result.seconds, 1), "flops": result.flops,
                     "epochs": round(result.steps / steps_per_epoch, 2)}[budget.kind]
            if result.steps % 20 == 0:
                bar.refresh()
            if stopper and result.steps % steps_per_epoch == 0 and stopper.epoch_done(result):
                break
            if checkpoint and (_STOP.requested or checkpoint.due(result)):
                checkpoint.save(model, optimizers, result, batches, stopper)
            if _STOP.requested:
                raise Interrupted(result.steps)
    finally:
        _STOP.listening = False
        bar.close()
        model.eval()
        if stopper:
            stopper.restore_best()
    if not result.curve or result.curve[-1]["step"] != result.steps:
        result.curve.append({"step": result.steps, "seconds": result.seconds, "loss": loss})
    return result


class Interrupted(Exception):
    """Training stopped at a step boundary because the worker was asked to stop (its state is checkpointed)."""

    def __init__(self, step: int):
        super().__init__(f"interrupted at step {step}")
        self.step = step


class _StopFlag:
    listening = False
    requested = False


_STOP = _StopFlag()


def request_stop() -> bool:
    """Ask the running training loop to checkpoint and stop after its current step (a signal handler's
    call). False when no loop is running: the caller should stop some other way."""
    _STOP.requested = True
    return _STOP.listening


@dataclass
class Checkpointing:
    """Where and how often the loop saves incomplete checkpoints (``bench.train.checkpoints``), and what it resumes."""

    path: object
    job_hash: str
    every: Budget | None = None  # a "seconds" or "steps" budget; None: only when asked to stop
    resume: dict | None = None  # an incomplete checkpoint's payload
    saved_at: tuple = (0, 0.0)  # (steps, seconds) of the last save
    optimizers: list | None = None  # set by the loop, for the finished checkpoint

    def due(self, result: TrainResult) -> bool:
        if self.every is None:
            return False
        done = {"steps": result.steps - self.saved_at[0], "seconds": result.seconds - self.saved_at[1]}
        return done.get(self.every.kind, 0) >= self.every.amount

    def save(self, model, optimizers, result: TrainResult, batches, stopper) -> None:
        from bench.train import checkpoints

        checkpoints.save(self.path, model=model, optimizers=optimizers, job_hash=self.job_hash, complete=False,
                         trainer=trainer_state(result), batches=batches.state(),
                         stopper=stopper.state() if stopper else None)
        self.saved_at = (result.steps, result.seconds)

    def restore(self, model, optimizers, result: TrainResult, batches, stopper) -> None:
        from bench.train import checkpoints

        payload = self.resume
        checkpoints.restore_model(model, payload)
        checkpoints.restore_optimizers(optimizers, payload)
        load_trainer_state(result, payload["trainer"])
        batches.load_state(payload["batches"])
        if stopper and payload.get("stopper"):
            stopper.load_state(payload["stopper"])
        checkpoints.set_rng_state(payload["rng"])  # last: nothing above draws
        self.saved_at = (result.steps, result.seconds)


_TRAINER_FIELDS = ("steps", "examples", "seconds", "flops", "flops_per_step", "curve", "valid_curve", "best_epoch")


def trainer_state(result: TrainResult) -> dict:
    return {name: getattr(result, name) for name in _TRAINER_FIELDS}


def load_trainer_state(result: TrainResult, state: dict) -> None:
    for name in _TRAINER_FIELDS:
        # A step's FLOPs are counted again on resume (``train`` keeps the saved count where the step's cost
        # depends on the weights, i.e. where it was last recounted on the live model).
        if name in state and name != "flops_per_step":
            setattr(result, name, state[name])


def step_flops(model, images, labels, batch_size: int, device: torch.device, seed: int,
               required: bool = False) -> float:
    """matmul/conv FLOPs of one training step at ``batch_size`` (bench.instruments.flops: a deep copy, RNG restored),
    on a batch of its own so that the training batches' random stream is untouched. NaN if the counter
    fails, unless ``required`` (a FLOP budget cannot be spent without it)."""
    generator = torch.Generator().manual_seed(seed)
    x = to_track(images[:batch_size], model.track, generator=generator).to(device)
    try:
        per_step = flop_count.train_step_flops(model, (x, labels[:batch_size].to(device)))
    except Exception as exc:
        if required:
            raise RuntimeError(f"a FLOP budget needs the FLOPs of a training step, and counting them "
                               f"failed: {type(exc).__name__}: {exc}") from exc
        return float("nan")
    if required and not per_step > 0:
        raise RuntimeError("a FLOP budget needs a step's FLOPs, but the counter saw no matmul/conv work in "
                           f"{model.name}'s train_step; use a step or time budget for it")
    return per_step


class EarlyStopping:
    """Validation NLL after each epoch; keeps a copy of the best weights (the harness's one use of the
    validation split during training)."""

    def __init__(self, model, validation: torch.Tensor, device: torch.device, patience: int, optimizers=(),
                 batch: int = 1000):
        self.model, self.validation, self.device = model, validation, device
        self.patience, self.batch, self.optimizers = patience, batch, optimizers
        self.best_nll, self.best_state = math.inf, None

    @torch.no_grad()
    def valid_nll(self) -> float:
        self.model.eval()
        total = sum(self.model.nll(self.validation[i:i + self.batch].to(self.device)).double().sum().item()
                    for i in range(0, len(self.validation), self.batch))
        self.model.train()
        return total / len(self.validation)

    def epoch_done(self, result: TrainResult) -> bool:
        """Record this epoch; True when training should stop (no improvement for ``patience`` epochs)."""
        epoch = len(result.valid_curve) + 1
        nll = self.valid_nll()
        result.valid_curve.append({"epoch": epoch, "step": result.steps, "valid_nll": nll})
        if nll < self.best_nll:
            self.best_nll, result.best_epoch = nll, epoch
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        else:  # a plateau: smaller steps (the optimisers' state, e.g. Adam's moments, is kept)
            for optimizer in self.optimizers:
                for group in optimizer.param_groups:
                    group["lr"] /= 2
        return epoch - result.best_epoch >= self.patience

    def state(self) -> dict:
        return {"best_nll": self.best_nll, "best_state": self.best_state}

    def load_state(self, state: dict) -> None:
        self.best_nll, self.best_state = state["best_nll"], state["best_state"]

    def restore_best(self):
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)


def _log_interval(budget: Budget, steps_per_epoch: int, points: int, flops_per_step: float = float("nan")) -> int:
    if budget.kind == "steps":
        return max(1, int(budget.amount) // points)
    if budget.kind == "epochs":
        return max(1, int(budget.amount * steps_per_epoch) // points)
    if budget.kind == "flops" and flops_per_step > 0:
        return max(1, flop_count.steps_for(budget.amount, flops_per_step) // points)
    return 10  # a time budget: the step count is unknown in advance
