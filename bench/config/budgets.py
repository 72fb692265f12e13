"""Training budgets: how much training a model gets, as steps, seconds or epochs.

Presets (docs/design.md): ``smoke`` is a few steps per model, seconds for the whole suite (tests, CI) and
reproducible with a fixed seed because it counts steps; ``default``, what ``run --all`` uses, is each
model's own ``default_steps`` (``models.base``): the steps a minute of training bought it on the 2-core CPU
the suite is built on, declared with the model, so the default run trains the same steps on any machine
and under any load (a time budget such as ``60s`` is still there); ``flops`` buys every model the same training work,
3e12 matmul/conv FLOPs (bench.instruments.flops), which on the 2-core CPU is 30 s to 100 s depending on the model, and
the same steps on any machine; ``full`` is published-scale training, meant for a GPU.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

from bench.config.errors import UserError

_UNITS = {"steps": "steps", "step": "steps", "s": "seconds", "sec": "seconds", "seconds": "seconds",
          "m": "minutes", "min": "minutes", "epochs": "epochs", "epoch": "epochs",
          "flop": "flops", "flops": "flops", "gflops": "gflops", "tflops": "tflops", "pflops": "pflops"}
# A FLOP budget counts matmul/conv FLOPs of training steps (bench.instruments.flops), so it buys the same work on
# any machine: deterministic like a step budget, but equal across model families.
_FLOP_SCALE = {"flops": 1.0, "gflops": 1e9, "tflops": 1e12, "pflops": 1e15}
PER_MODEL = "default"  # the preset whose amount each model declares (its default_steps)
PER_MODEL_FALLBACK = "60s"  # under ``default``, a model that declares no default_steps
PRESETS = {"smoke": "20steps", "default": "each model's default_steps (a minute each on a 2-core CPU)",
           "flops": "3e12flops", "full": "100epochs"}
# The smoke preset also evaluates on a subset (test images for likelihoods, samples for FID), so the
# whole suite runs in CI minutes; every other budget uses the whole test split unless --eval-size says.
PRESET_EVAL_SIZE = {"smoke": 200}
# ... and its run's scaling study times latency (batch 1) only; every other budget adds batch 1,024.
PRESET_SCALING_BATCHES = {"smoke": (1,)}
# ... and skips a sampling batch projected past 8 s (every other budget: 20 s), so the suite stays in minutes.
DEFAULT_THROUGHPUT_CAP_S = 20.0
PRESET_THROUGHPUT_CAP_S = {"smoke": 8.0}
# Periodic training checkpoints: often enough that a killed full-budget job loses minutes, not hours;
# rarely enough that saving (a fraction of a second for these models) costs nothing.
DEFAULT_CHECKPOINT_EVERY = "300s"
FORMS = "a preset (smoke, default, flops, full) or an amount such as 500steps, 90s, 5min, 3epochs, 2e12flops, 1.5tflops"


@dataclass(frozen=True)
class Budget:
    kind: str  # "steps" | "seconds" | "epochs" | "flops" (matmul/conv FLOPs of training, bench.instruments.flops)
    amount: float
    label: str  # what the user asked for, e.g. "default" or "500steps"
    per_model: bool = False  # ``default`` before ``budget_for`` resolved it: each model's own steps

    def exhausted(self, steps: int, seconds: float, epochs: float, flops: float = 0.0) -> bool:
        if self.per_model:
            raise ValueError("the default budget is per model: resolve it with budget_for(text, model) first")
        done = {"steps": steps, "seconds": seconds, "epochs": epochs, "flops": flops}[self.kind]
        return done >= self.amount

    def __str__(self) -> str:
        return self.label


def default_eval_size(budget_text: str) -> int | None:
    return PRESET_EVAL_SIZE.get(budget_text.strip())


def throughput_cap(budget_text: str) -> float:
    return PRESET_THROUGHPUT_CAP_S.get(budget_text.strip(), DEFAULT_THROUGHPUT_CAP_S)


def scaling_batches(budget_text: str) -> tuple[int, ...] | None:
    """The batches a run's scaling study times under this budget; None: the study's defaults."""
    return PRESET_SCALING_BATCHES.get(budget_text.strip())


def budget_for(text: str, model) -> Budget:
    """The budget one model trains under: ``default`` becomes its ``default_steps`` (or, for a model that
    declares none, PER_MODEL_FALLBACK of wall time); any other budget is the same for every model."""
    budget = parse_budget(text)
    if not budget.per_model:
        return budget
    steps = getattr(model, "default_steps", None)
    if steps is None:
        return replace(parse_budget(PER_MODEL_FALLBACK), label=budget.label)
    return Budget("steps", float(int(steps)), budget.label)


def parse_budget(text: str) -> Budget:
    label = text.strip()
    if label == PER_MODEL:
        return Budget("steps", 0.0, label, per_model=True)
    spec = PRESETS.get(label, label)
    match = re.fullmatch(r"(\d+(?:\.\d+)?(?:e[+-]?\d+)?)\s*([a-z]+)", spec.lower())
    if not match or match.group(2) not in _UNITS:
        raise UserError(f"malformed budget {text!r}: use {FORMS}")
    amount, unit = float(match.group(1)), _UNITS[match.group(2)]
    if unit == "minutes":
        amount, unit = amount * 60, "seconds"
    if unit in _FLOP_SCALE:
        amount, unit = amount * _FLOP_SCALE[unit], "flops"
    if not math.isfinite(amount):
        raise UserError(f"budget {text!r} is not a finite amount (it overflows a float): use {FORMS}")
    if amount <= 0:
        raise UserError(f"budget {text!r} buys no training: use a positive amount ({FORMS})")
    if unit == "steps" and amount != int(amount):
        raise UserError(f"budget {text!r}: steps must be a whole number ({FORMS})")
    return Budget(unit, amount, label)
