"""Measurements of a trained model: test likelihood, sampling speed, memory, size.

Each function returns metric rows ``{"metric", "value", "unit", "kind", ...}``; the runner adds the
identifying columns (model, dataset, seed, ...).
"""
from __future__ import annotations

import resource
import statistics
import time

import torch
from tqdm.auto import tqdm

from models.base import bits_per_dim

THROUGHPUT_BATCHES = (16, 256, 1024)


def row(metric: str, value: float, unit: str, kind: str = "measured", **extra) -> dict:
    return {"metric": metric, "value": float(value), "unit": unit, "kind": kind, **extra}


@torch.no_grad()
def test_likelihood(model, x_test: torch.Tensor, device: torch.device, seed: int,
                    batch_size: int = 500, progress: bool = True) -> list[dict]:
    """Mean test NLL (nats per example) and bits/dim, labelled exact or bound by the model."""
    torch.manual_seed(seed)  # fixes the dequantization noise (8bit) so a rerun scores the same
    total, count = 0.0, 0
    for start in tqdm(range(0, len(x_test), batch_size), desc=f"nll {model.name}", leave=False,
                      disable=not progress):
        x = x_test[start:start + batch_size].to(device)
        total += model.nll(x).double().sum().item()
        count += len(x)
    nll = total / count
    kind = model.likelihood
    return [row("test_nll", nll, "nats", kind), row("test_bpd", bits_per_dim(nll, model.dim), "bits/dim", kind)]


def sample_throughput(model, device: torch.device, batches=THROUGHPUT_BATCHES, max_seconds: float = 20.0,
                      min_seconds: float = 0.5, max_repeats: int = 5) -> tuple[list[dict], list[str]]:
    """Samples per second at each batch size: warm-up first, then the median over repeats.

    A batch size whose projected time exceeds ``max_seconds`` is not run (and said so in the notes):
    only measured figures are reported."""
    rows, notes = [], []
    per_sample = None
    for b in batches:
        labels = sample_labels(model, b, device)
        if per_sample is not None and per_sample * b > max_seconds:
            notes.append(f"batch {b} skipped: projected {per_sample * b:.0f}s > {max_seconds:.0f}s cap")
            continue
        timed_sample(model, min(b, 16), sample_labels(model, min(b, 16), device), device)  # warm-up
        times = []
        while len(times) < max_repeats and (sum(times) < min_seconds or len(times) < 1):
            times.append(timed_sample(model, b, labels, device))
            if times[-1] > max_seconds / 2:
                break
        median = statistics.median(times)
        per_sample = median / b
        rows.append(row("sample_throughput", b / median, "samples/s", batch=b))
    return rows, notes


@torch.no_grad()
def timed_sample(model, n: int, labels, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    model.sample(n, labels=labels) if labels is not None else model.sample(n)
    synchronize(device)
    return time.perf_counter() - start


def sample_labels(model, n: int, device: torch.device):
    if not getattr(model, "conditional", False):
        return None
    return torch.arange(n, device=device) % model.num_classes


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mib(device: torch.device) -> float:
    """GPU: peak allocated by torch; CPU: peak resident set of this (the worker) process."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def param_count(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def draw_samples(model, n: int, device: torch.device, batch_size: int = 500, labels: torch.Tensor | None = None,
                 progress: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``n`` samples as uint8 images (N x C x H x W) on the CPU, with the labels asked for (conditional)."""
    if model.conditional and labels is None:
        labels = torch.arange(n) % model.num_classes
    out = []
    for start in tqdm(range(0, n, batch_size), desc=f"sample {model.name}", leave=False, disable=not progress):
        m = min(batch_size, n - start)
        if model.conditional:
            x = model.sample(m, labels=labels[start:start + m].to(device))
        else:
            x = model.sample(m)
        out.append(to_uint8(x.cpu()))
    return torch.cat(out), labels


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255.0).round().to(torch.uint8)
