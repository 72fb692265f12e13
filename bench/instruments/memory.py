"""Peak memory of one phase (training, or sampling at one batch size), this process's own: Linux's
resident-set high-water mark on a CPU, torch's peak-allocation counter on a GPU."""
from __future__ import annotations

import re
import threading

import torch

from bench.instruments.timing import synchronize

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
