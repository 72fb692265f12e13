"""Sampling speed: samples per second at each batch size, and the peak memory while sampling there."""
from __future__ import annotations

import statistics

import torch

from bench.evaluate.metrics import row
from bench.instruments.memory import PhasePeak
from bench.instruments.timing import sample_labels, timed_sample

THROUGHPUT_BATCHES = (16, 256, 1024)


def sample_throughput(model, device: torch.device, batches=THROUGHPUT_BATCHES, max_seconds: float = 20.0,
                      min_seconds: float = 0.5, max_repeats: int = 5) -> tuple[list[dict], list[str]]:
    """Samples per second at each batch size: warm-up first, then the median over repeats; and the
    peak memory while sampling at that batch size (``peak_memory_sample``, one row per batch).

    A batch size whose projected time exceeds ``max_seconds`` is not run (and said so in the notes):
    only measured figures are reported."""
    rows, notes = [], []
    per_sample = None
    for b in batches:
        labels = sample_labels(model, b, device)
        if per_sample is not None and per_sample * b > max_seconds:
            notes.append(f"batch {b} skipped: projected {per_sample * b:.0f}s > {max_seconds:.0f}s cap")
            continue
        with PhasePeak(device) as memory:
            timed_sample(model, min(b, 16), sample_labels(model, min(b, 16), device), device)  # warm-up
            times = []
            while len(times) < max_repeats and (sum(times) < min_seconds or len(times) < 1):
                times.append(timed_sample(model, b, labels, device))
                if times[-1] > max_seconds / 2:
                    break
        median = statistics.median(times)
        per_sample = median / b
        rows.append(row("sample_throughput", b / median, "samples/s", batch=b))
        rows.append(row("peak_memory_sample", memory.mib, "MiB", batch=b, note=memory.what))
    return rows, notes
