"""Measurements of a trained model: test likelihood, sampling speed, memory, size.

Each function returns metric rows ``{"metric", "value", "unit", "kind", ...}``; the runner adds the
identifying columns (model, dataset, seed, ...).
"""
from __future__ import annotations

import re
import statistics
import threading
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


# --- memory, per phase -----------------------------------------------------------------------------
_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"
CPU_MEMORY_NOTE = ("CPU: peak resident set of the job's worker process during the phase (the interpreter, "
                   "libraries, data and model resident at the time count too)")
GPU_MEMORY_NOTE = "GPU: peak memory allocated by torch tensors during the phase (torch.cuda.max_memory_allocated)"


class PhasePeak:
    """The peak memory of one phase (training, or sampling at one batch size), this process's own.

    CPU: Linux's VmHWM (high-water mark of the resident set), reset to the current resident set at the
    start of the phase by writing "5" to /proc/self/clear_refs. ``getrusage``'s ru_maxrss is not used: it
    cannot be reset, and a spawned worker inherits its parent's peak through it. Where clear_refs cannot be
    written (not Linux, or no permission) a thread samples the resident set every few milliseconds instead
    (``method`` says which; a sampler can miss a peak shorter than its interval).
    GPU: torch's peak-allocation counter, reset at the start of the phase."""

    def __init__(self, device: torch.device, interval_s: float = 0.002):
        self.device = torch.device(device)
        self.interval_s = interval_s
        self.mib = float("nan")
        self.method = ""
        self._stop = threading.Event()
        self._thread = None
        self._sampled_kib = 0

    @property
    def what(self) -> str:
        return GPU_MEMORY_NOTE if self.device.type == "cuda" else f"{CPU_MEMORY_NOTE}; {self.method}"

    def __enter__(self):
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.method = "torch.cuda.max_memory_allocated"
        elif _reset_high_water_mark():
            self.method = "VmHWM reset by /proc/self/clear_refs"
        else:
            self.method = "resident set sampled every 2 ms"
            self._sampled_kib = _status_kib("VmRSS") or 0
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(self.interval_s):
            self._sampled_kib = max(self._sampled_kib, _status_kib("VmRSS") or 0)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            synchronize(self.device)
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self._thread is None:
            self.mib = _status_kib("VmHWM") / 1024.0
        else:
            self._stop.set()
            self._thread.join()
            self.mib = max(self._sampled_kib, _status_kib("VmRSS") or 0) / 1024.0
        return False


def _reset_high_water_mark() -> bool:
    """Reset VmHWM to the current resident set; False where the kernel does not let us (or has no VmHWM)."""
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
    except OSError:
        return False
    hwm, rss = _status_kib("VmHWM"), _status_kib("VmRSS")
    # A kernel that ignores "5" leaves the old peak in place: only trust a reset that took.
    return hwm is not None and rss is not None and hwm <= rss + 4096


def _status_kib(field: str) -> int | None:
    try:
        with open(_STATUS) as f:
            match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def param_count(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def draw_samples(model, n: int, device: torch.device, batch_size: int = 500, labels: torch.Tensor | None = None,
                 progress: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``n`` samples as uint8 images (N x C x H x W) on the CPU, with the labels asked for (conditional)."""
    if model.conditional and labels is None:
        labels = sample_labels(model, n, torch.device("cpu"))
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
