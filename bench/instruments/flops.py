"""FLOP counts of training steps and samples, with ``torch.utils.flop_counter.FlopCounterMode``.

What the counter sees: matrix products and convolutions (mm, addmm, bmm, baddbmm, convolution and
their backward ops, scaled dot-product attention), counted as 2 FLOPs per multiply-add. What it does
not see: elementwise ops (activations, normalisation, additions, the optimizer's update, sampling
noise), reductions, outer products such as ``addr_``, and anything outside aten (numba, custom
kernels). Hence every figure here is labelled "matmul/conv FLOPs". A model whose work the counter
misses says so by returning a number from ``sampling_flops(n)``, which then takes precedence.

Each count runs once per (model class, configuration, shape, batch) and is cached: the FLOPs of a step
of these models depend on shapes, not on weight values (an adaptive-solver sampler is the exception,
and ``sampling_cost_depends_on_weights`` marks it: its per-sample count is taken on the model as given).
Counting a training step must not change training, so it runs on a deep copy of the model with fresh
optimizers, and the random-number state is restored afterwards.
"""
from __future__ import annotations

import copy
import math

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from bench.instruments.timing import sample_labels

LABEL = "matmul/conv FLOPs"  # what the counter counts; elementwise ops are not in it
_CACHE: dict[tuple, float] = {}


def count(fn) -> float:
    """matmul/conv FLOPs that ``fn()`` executes (forward, and backward if it calls it).

    FlopCounterMode tracks modules with backward hooks, which ``torch.autograd.grad`` on a leaf tensor
    refuses (an EBM's Langevin sampler); there the same formulas are applied without module tracking."""
    try:
        with FlopCounterMode(display=False) as counter:
            fn()
        return float(counter.get_total_flops())
    except RuntimeError as exc:
        if "_will_engine_execute_node" not in str(exc):
            raise
    with _UntrackedFlopCounter() as plain:
        fn()
    return float(plain.total)


def count_returning(fn):
    """(``fn()``, its matmul/conv FLOPs), for counting a live training step: no module tracker, so the
    step runs exactly once whatever it calls (torch.autograd.grad included)."""
    with _UntrackedFlopCounter() as counter:
        value = fn()
    return value, float(counter.total)


class _UntrackedFlopCounter(TorchDispatchMode):
    """FlopCounterMode's per-op formulas (``flop_registry``), summed, with no module tracker."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def _key(model, what: str, batch: int) -> tuple:
    # The class, the shape and the parameter shapes identify the work; the weight values do not.
    shapes = tuple(tuple(p.shape) for p in model.parameters())
    return (type(model).__qualname__, getattr(model, "name", ""), tuple(model.image_shape), shapes, what, batch,
            str(_device(model)))


def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def train_step_flops(model, batch, cache: bool = True) -> float:
    """matmul/conv FLOPs of one ``train_step`` on ``batch = (x, labels)``: forward and backward.

    Runs on a deep copy with fresh optimizers, RNG state restored: the model, its optimizer state and
    the random stream of the training that follows are untouched."""
    key = _key(model, "train", len(batch[0]))
    cache = cache and not getattr(model, "sampling_cost_depends_on_weights", False)
    if cache and key in _CACHE:
        return _CACHE[key]
    device = _device(model)
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        twin = copy.deepcopy(model)
        twin.train()
        optimizers = twin.configure_optimizers()
        flops = count(lambda: twin.train_step(batch, optimizers))
        del twin, optimizers
    if cache:
        _CACHE[key] = flops
    return flops


def sample_flops_per_sample(model, n: int = 4, cache: bool = True) -> float:
    """matmul/conv FLOPs of one sample: the model's own ``sampling_flops(n) / n`` where it gives a
    number, else one ``sample(n)`` call under the counter divided by n. RNG state is restored."""
    own = getattr(model, "sampling_flops", None)
    value = own(n) if callable(own) else None
    if value is not None:
        return float(value) / n
    weight_dependent = getattr(model, "sampling_cost_depends_on_weights", False)
    key = _key(model, "sample", n)
    if cache and not weight_dependent and key in _CACHE:
        return _CACHE[key]
    device = _device(model)
    labels = sample_labels(model, n, device)
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []), torch.no_grad():
        flops = count(lambda: model.sample(n, labels=labels) if labels is not None else model.sample(n))
    # Zero means the sampler's work is invisible to the counter (matrix-vector or rank-one updates)
    # and the model gave no sampling_flops: unknown, not free.
    per_sample = flops / n if flops > 0 else float("nan")
    if not weight_dependent:
        _CACHE[key] = per_sample
    return per_sample


def steps_for(budget_flops: float, flops_per_step: float) -> int:
    """Steps a FLOP budget buys: the first step at which the cumulative count reaches the budget."""
    return math.ceil(budget_flops / flops_per_step)


def human(flops: float) -> str:
    """2.4e12 -> '2.40 TFLOP' (decimal prefixes)."""
    if flops is None or not math.isfinite(flops):
        return "-"
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(flops) >= scale:
            return f"{flops / scale:.3g} {prefix}FLOP"
    return f"{flops:.3g} FLOP"
