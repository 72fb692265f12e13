"""Peak memory per phase: each job's own figure, for training and for sampling at each batch size.

The two failure modes these tests catch: a worker reporting its parent's peak (``ru_maxrss`` is
inherited across a spawn), and a sampling peak that misses what the sampler allocated.
"""
import ctypes
from dataclasses import asdict

import pytest
import torch

from bench.evaluate import sampling_speed
from bench.instruments import memory
from bench.run.executors.local import LocalExecutor
from bench.run.runner import Job
from tests.plugins.memory_hog import MemoryHog

CPU = torch.device("cpu")
MiB = 2**20


def resident_mib() -> float:
    return memory._status_kib("VmRSS") / 1024.0


def release_freed_heap() -> None:
    """Return glibc's free heap pages to the kernel. After hundreds of tests this process can hold a free,
    still resident heap chunk larger than a test's block; malloc then reuses it and the resident set does
    not grow (the fresh-clone CI saw exactly that). Trimmed, the block's pages are faulted in anew."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


@pytest.fixture(autouse=True)
def trimmed_heap():
    """Every test here measures this process's resident set: start each from a trimmed heap."""
    release_freed_heap()


def test_phase_peak_sees_an_allocation_inside_the_phase():
    with memory.PhasePeak(CPU) as quiet:
        pass
    with memory.PhasePeak(CPU) as busy:
        block = torch.ones(300 * MiB // 4)
        block.add_(1.0)
        del block
    assert busy.mib >= quiet.mib + 0.9 * 300, (quiet.mib, busy.mib)


def test_phase_peak_forgets_an_earlier_phase():
    """A peak from before the phase (a freed 400 MiB block) does not count in the next phase."""
    block = torch.ones(400 * MiB // 4)
    block.add_(1.0)
    del block
    with memory.PhasePeak(CPU) as after:
        pass
    assert after.mib < resident_mib() + 50, (after.mib, resident_mib())
    assert after.method  # says how it was measured


def test_sampling_peak_counts_what_the_sampler_allocates():
    """The same model, its sampler touching 500 MiB or nothing: the sampling peak differs by ~500 MiB."""
    rows = {}
    for mib in (0, 500):
        release_freed_heap()  # the first model's freed buffers must not serve the second's
        model = MemoryHog(image_shape=(1, 8, 8), sample_buffer_mib=mib)
        found, _ = sampling_speed.sample_throughput(model, CPU, batches=(4,), max_seconds=5, min_seconds=0.0,
                                            max_repeats=1)
        rows[mib] = [r for r in found if r["metric"] == "peak_memory_sample"]
    assert len(rows[500]) == 1 and rows[500][0]["batch"] == 4
    assert rows[500][0]["value"] >= rows[0][0]["value"] + 0.9 * 500, rows


@pytest.fixture
def parent_holding_memory():
    """This (the parent) process holds 1.5 GiB, touched, while the job runs in a spawned worker."""
    block = torch.ones(1536 * MiB // 4)
    block.add_(1.0)
    yield block
    del block


def test_spawned_job_reports_its_own_peak_not_the_parents(parent_holding_memory, tmp_path, monkeypatch):
    monkeypatch.setenv("GENBENCH_PLUGINS", "tests.plugins.memory_hog")
    parent_peak = memory._status_kib("VmHWM") / 1024.0
    assert parent_peak >= 1536
    job = Job("memory-hog", "digits", 0, "2steps", "cpu", str(tmp_path), progress=False, throughput_cap_s=5.0,
              fidelity_samples=50, eval_size=50)
    reported = []
    LocalExecutor(workers=1).run([job], reported.append)  # a fresh spawned worker process, as in a run
    (outcome,) = reported
    assert outcome["status"] == "ok", outcome["reason"] + outcome["info"].get("traceback", "")
    values = {(r["metric"], r.get("batch")): r["value"] for r in outcome["rows"]}
    train_peak = values[("peak_memory_train", None)]
    sample_peaks = [v for (m, _), v in values.items() if m == "peak_memory_sample"]
    assert train_peak < parent_peak - 1024, (train_peak, parent_peak)
    assert sample_peaks and max(sample_peaks) < parent_peak - 1024
    assert values[("peak_memory", None)] == max([train_peak, *sample_peaks])
