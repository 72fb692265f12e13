"""Sampling cost against image size: ``python -m bench scaling``.

Every model is built at 8x8, 14x14 and 28x28 (D = 64, 196, 784) and its time per sample is measured at
batch 1 and at batch 1,024 (warm-up first, then the median of a few repeats; on a GPU after
``torch.cuda.synchronize``; a slow sampler at the largest halving of the asked batch that keeps one
call under MAX_CALL_S, the same for all its sizes, and with fewer repeats, so that the whole study stays
within a minute or two on a CPU). A straight line is fitted to log10(seconds per sample) against
log10(D) at each batch: its slope says how the cost grows with the number of pixels.

Two different things grow with D, and the study reports them side by side:

- *sequential depth*, the network evaluations one sample waits for (``sampling_nfe``): FVSBN's D
  dependent steps against a flow's single pass. At batch 1 (latency) depth shows;
- *total work*, the matmul/conv FLOPs of one sample (bench.instruments.flops): FVSBN's D(D-1)/2 multiply-adds
  against a convolutional flow's O(D). At batch 1,024 (throughput) work and memory traffic show.

Against this machine's own fp32 GEMM rate, measured in the same run (a dense 1024x1024 torch.mm on the
run's device and thread count), the *roofline fraction* = FLOPs per sample x samples per second / GEMM
rate says how much of the machine's matrix-product speed a sampler turns into counted work.

Untrained weights suffice for a sampler that does no weight-dependent work (no adaptive ODE solver, no
early stopping): ``FAMILY_COST_NOTES`` says why, family by family. A model that declares
``sampling_cost_depends_on_weights`` (an adaptive-solver flow) is first trained briefly on mnist5k
resized to the size (TRAIN_STEPS steps), and its rows say so. Only measured figures are written, never
extrapolated: a model whose sampler is projected past the cap, or that cannot be built or sampled at a
size, is listed as skipped with the reason.
"""
from __future__ import annotations

import functools
import statistics
import time

import numpy as np
import pandas as pd
import torch

from bench.evaluate.sampling_cost_protocol import (MAX_CALL_S, MAX_REPEATS, MAX_SECONDS, MIN_REPEATS,
                                                   MIN_SECONDS, PROBE_BATCH, SKIP_COLUMNS, SKIP_PROJECTED_S,
                                                   TIMING_COLUMNS, TRAIN_STEPS, fit_table, with_roofline)
from bench.instruments import flops as flop_count
from bench.instruments import timing

DEFAULT_SIZES = (8, 14, 28)
DEFAULT_BATCHES = (1, 1024)  # latency (depth shows) and throughput (work shows)
FLOP_COUNT_SAMPLES = 2  # samples drawn under the FLOP counter (per-sample FLOPs do not depend on the batch)
GEMM_SIDE = 1024     # the roofline's reference: float32 torch.mm of two GEMM_SIDE x GEMM_SIDE matrices
GEMM_REPEATS = 7     # the fastest is the ceiling: on a shared machine the median moves with the load


# --- the measurement -----------------------------------------------------------------------------
class Skipped(Exception):
    """This (model, size) is not measured; the message says why."""


def gemm_rate(device: torch.device, side: int = GEMM_SIDE, repeats: int = GEMM_REPEATS) -> dict:
    """This machine's float32 matrix-product rate on ``device`` at the current thread count: the fastest
    of ``repeats`` timed ``side x side`` torch.mm calls after a warm-up, 2 side^3 FLOPs each (the median
    rate is kept alongside)."""
    a = torch.randn(side, side, device=device)
    b = torch.randn(side, side, device=device)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        timing.synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        timing.synchronize(device)
        times.append(time.perf_counter() - start)
    work = 2.0 * side ** 3
    return {"gemm_flops_per_second": work / min(times), "median_gemm_flops_per_second": work / statistics.median(times),
            "side": side, "dtype": "float32", "repeats": repeats, "device": str(device),
            "torch_threads": torch.get_num_threads()}


def time_per_sample(model, batch: int, device: torch.device, fixed: bool = False) -> tuple[float, int, int]:
    """(median seconds per sample, repeats, batch used). The batch is ``batch``, or for a slow sampler the
    largest halving of it that keeps one call under MAX_CALL_S (never below PROBE_BATCH); ``fixed``
    forces ``batch``, so that every size of one model is timed at the same batch."""
    first = batch if fixed else min(batch, PROBE_BATCH)
    warm = _call(model, first, device)  # warm-up: allocations, kernel selection
    if warm / first * batch > SKIP_PROJECTED_S and warm > SKIP_PROJECTED_S / 4:
        raise Skipped(f"projected {warm / first * batch:.0f}s per batch of {batch}; the warm-up alone took "
                      f"{warm:.0f}s (cap {SKIP_PROJECTED_S:.0f}s)")
    probe = _call(model, first, device)  # steady state: sizes the batch (first-call costs would overstate it)
    per_sample = probe / first
    use = batch if fixed else _affordable_batch(batch, per_sample)
    if per_sample * use > SKIP_PROJECTED_S:
        raise Skipped(f"projected {per_sample * use:.0f}s per batch of {use} > {SKIP_PROJECTED_S:.0f}s cap")
    times = [probe] if use == first else []  # the probe is a timed call after a warm-up: a repeat
    if not times and per_sample * use < MAX_SECONDS / 2:
        _call(model, use, device)  # warm-up at the measured shape too, when cheap
    while len(times) < MAX_REPEATS and not _enough(times):
        times.append(_call(model, use, device))
    return statistics.median(times) / use, len(times), use


def _call(model, n: int, device: torch.device) -> float:
    return timing.timed_sample(model, n, timing.sample_labels(model, n, device), device)


def _affordable_batch(batch: int, seconds_per_sample: float) -> int:
    use = batch
    while use > PROBE_BATCH and seconds_per_sample * use > MAX_CALL_S:
        use = max(PROBE_BATCH, use // 2)
    return use


def _enough(times: list[float]) -> bool:
    spent = sum(times)
    return spent >= MAX_SECONDS or (len(times) >= MIN_REPEATS and spent >= MIN_SECONDS)


def build_for_study(name: str, size: int, device: torch.device, train_steps: int | None = None):
    """(model for 1 x size x size images in eval mode, training steps it had). Untrained, unless its
    sampling cost depends on its weights: then ``train_steps`` steps on mnist5k resized to the size."""
    import models

    torch.manual_seed(0)
    try:
        model = models.build(name, image_shape=(1, size, size)).to(device)
    except Exception as exc:  # a model that cannot take this size is a finding, not a crash
        raise Skipped(f"cannot build at {size}x{size}: {type(exc).__name__}: {exc}") from exc
    trained, train_steps = 0, TRAIN_STEPS if train_steps is None else train_steps
    if getattr(model, "sampling_cost_depends_on_weights", False) and train_steps > 0:
        try:
            trained = _train_briefly(model, size, device, train_steps)
        except Exception as exc:
            raise Skipped(f"brief training before timing failed at {size}x{size}: {type(exc).__name__}: {exc}") from exc
    return model.eval(), trained


def _train_briefly(model, size: int, device: torch.device, steps: int) -> int:
    from bench.config.budgets import parse_budget
    from bench.train.trainer import train

    images, labels = _resized_mnist5k(size)
    result = train(model, images, labels, parse_budget(f"{steps}steps"), device, seed=0,
                   batch_size=getattr(model, "batch_size", 64), progress=False)
    return result.steps


@functools.lru_cache(maxsize=4)
def _resized_mnist5k(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """mnist5k's training images resized to size x size (area average down, bilinear up), 0..255 integers."""
    import torch.nn.functional as F

    from bench.data.datasets import load_dataset

    data = load_dataset("mnist5k")
    x = data.train_images.float()
    mode = "area" if size <= x.shape[-1] else "bilinear"
    resized = F.interpolate(x, size=(size, size), mode=mode)
    return resized.round().clamp(0, 255).to(data.train_images.dtype), data.train_labels


def sampling_flops(model) -> float:
    """matmul/conv FLOPs per sample (bench.instruments.flops); NaN when they cannot be counted."""
    try:
        return flop_count.sample_flops_per_sample(model, FLOP_COUNT_SAMPLES)
    except Exception:
        return float("nan")


def run_study(names: list[str], sizes: list[int], batch, device: torch.device, log=print,
              gemm: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Timings, fits and skips for every (model, size, batch); ``batch`` is one batch or several.
    Sizes go largest first: the batch the largest affords is then used for the smaller ones too, so one
    model's sizes share one batch at each asked batch. ``gemm`` (from ``gemm_rate``) is measured if absent."""
    batches = [int(batch)] if np.isscalar(batch) else [int(b) for b in batch]
    gemm = gemm or gemm_rate(device)
    timings, skipped = [], []
    for name in names:
        used_at_largest: dict[int, int] = {}  # asked batch -> batch the largest size afforded
        for size in sorted(sizes, reverse=True):
            try:
                model, trained = build_for_study(name, size, device)
            except Skipped as exc:
                skipped.append({"model": name, "size": size, "batch": "all", "reason": str(exc)})
                log(f"{name:<10} {size:>2}x{size:<2} skipped: {exc}")
                continue
            per_sample_flops = sampling_flops(model)
            for asked in batches:
                start = time.perf_counter()
                fixed = asked in used_at_largest
                try:
                    seconds, repeats, used = _timed(model, used_at_largest.get(asked, asked), device, fixed, size)
                except Skipped as exc:
                    skipped.append({"model": name, "size": size, "batch": str(asked), "reason": str(exc)})
                    log(f"{name:<10} {size:>2}x{size:<2} batch {asked}: skipped: {exc}")
                    continue
                used_at_largest.setdefault(asked, used)
                timings.append({"model": name, "size": size, "dim": model.dim, "batch": used,
                                "seconds_per_sample": seconds, "repeats": repeats, "family": model.family,
                                "sampling_nfe": int(model.sampling_nfe), "batch_asked": asked,
                                "flops_per_sample": per_sample_flops, "trained_steps": trained})
                log(f"{name:<10} {size:>2}x{size:<2} {seconds * 1e3:10.4g} ms/sample at batch {used}"
                    f"{'' if used == asked else f' (asked {asked})'} ({repeats} repeats, "
                    f"{time.perf_counter() - start:.1f}s)")
    frame = pd.DataFrame(timings, columns=TIMING_COLUMNS)
    frame = with_roofline(frame, gemm["gemm_flops_per_second"])[TIMING_COLUMNS]
    order = {n: i for i, n in enumerate(names)}
    frame = frame.assign(_o=frame["model"].map(order)).sort_values(["_o", "batch_asked", "size"], kind="stable")
    frame = frame.drop(columns="_o").reset_index(drop=True)
    return frame, fit_table(frame), pd.DataFrame(skipped, columns=SKIP_COLUMNS)


def _timed(model, batch: int, device, fixed: bool, size: int):
    try:
        return time_per_sample(model, batch, device, fixed)
    except Skipped:
        raise
    except Exception as exc:
        raise Skipped(f"sampling failed at {size}x{size}: {type(exc).__name__}: {exc}") from exc
