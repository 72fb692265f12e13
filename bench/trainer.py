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

from bench.budgets import Budget
from bench.data import to_track
from bench.measure import synchronize


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


def train(model, images: torch.Tensor, labels: torch.Tensor, budget: Budget, device: torch.device,
          seed: int, batch_size: int = 64, progress: bool = True, curve_points: int = 200,
          result: TrainResult | None = None, validation: torch.Tensor | None = None,
          patience: int = 4) -> TrainResult:
    """Train ``model`` until ``budget`` is spent. ``result`` (if given) is filled in place, so a
    caller still holds what was bought when ``Diverged`` is raised.

    With ``validation`` (images in the track's representation) this is early stopping: the mean
    validation NLL after every epoch, the learning rate halved after an epoch without improvement,
    the best epoch's weights restored at the end, and training ends once ``patience`` epochs in a row
    bring no improvement."""
    result = result if result is not None else TrainResult()
    optimizers = model.configure_optimizers()
    stopper = EarlyStopping(model, validation, device, patience, optimizers) if validation is not None else None
    generator = torch.Generator().manual_seed(seed)
    batches = ShuffledBatches(images, labels, batch_size, model.track, device, generator)
    steps_per_epoch = max(1, len(images) // batches.batch_size)
    log_every = _log_interval(budget, steps_per_epoch, curve_points)
    model.train()
    bar = tqdm(total=budget.amount, desc=f"train {model.name}", unit=budget.kind,
               disable=not progress, leave=False, dynamic_ncols=True)
    start = time.perf_counter()
    try:
        while not budget.exhausted(result.steps, result.seconds, result.steps / steps_per_epoch):
            batch = next(batches)
            try:
                stats = model.train_step(batch, optimizers)
            except FloatingPointError as exc:
                raise Diverged(result.steps + 1, str(exc)) from None
            synchronize(device)
            result.steps += 1
            result.examples += len(batch[0])
            result.seconds = time.perf_counter() - start
            loss = float(stats["loss"])
            if not math.isfinite(loss):
                raise Diverged(result.steps, f"loss became {loss}")
            if result.steps == 1 or result.steps % log_every == 0:
                result.curve.append({"step": result.steps, "seconds": result.seconds, "loss": loss})
                bar.set_postfix(loss=f"{loss:.4g}")
            bar.n = {"steps": result.steps, "seconds": round(result.seconds, 1),
                     "epochs": round(result.steps / steps_per_epoch, 2)}[budget.kind]
            if result.steps % 20 == 0:
                bar.refresh()
            if stopper and result.steps % steps_per_epoch == 0 and stopper.epoch_done(result):
                break
    finally:
        bar.close()
        model.eval()
        if stopper:
            stopper.restore_best()
    if not result.curve or result.curve[-1]["step"] != result.steps:
        result.curve.append({"step": result.steps, "seconds": result.seconds, "loss": loss})
    return result


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

    def restore_best(self):
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)


def _log_interval(budget: Budget, steps_per_epoch: int, points: int) -> int:
    if budget.kind == "steps":
        return max(1, int(budget.amount) // points)
    if budget.kind == "epochs":
        return max(1, int(budget.amount * steps_per_epoch) // points)
    return 10  # a time budget: the step count is unknown in advance
