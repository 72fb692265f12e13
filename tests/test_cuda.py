"""What only a CUDA device can check: torch.cuda memory statistics per phase, the CUDA-graph FVSBN, MADE
and PixelCNN samplers against their torch references, and one local worker per visible device.

Every test is skipped where torch sees no CUDA device (``.ci/gpu`` runs this file on a GPU machine).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.run.executors.local import LocalExecutor
from bench.config.job import Job
from bench.instruments.memory import GPU_MEMORY_NOTE, PhasePeak
from models.autoregressive import fvsbn_kernels
from models.registry import build

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

REPO = Path(__file__).resolve().parents[1]
MiB = 2**20
CUDA = torch.device("cuda")


def _allocated_mib() -> float:
    torch.cuda.synchronize(CUDA)
    return torch.cuda.memory_allocated(CUDA) / MiB


# --- per-phase memory from torch.cuda statistics ---------------------------------------------------
def test_phase_peak_reports_a_known_allocation():
    """A 64 MiB float32 tensor allocated inside the phase: the peak is what was allocated before the
    phase plus 64 MiB (the caching allocator rounds a large block up to 512 bytes at most), even though
    a 256 MiB block was allocated and freed before the phase (the reset forgets it)."""
    held = torch.ones(16 * MiB // 4, device=CUDA)  # allocated before the phase and kept through it
    earlier = torch.ones(256 * MiB // 4, device=CUDA)
    del earlier  # the process's peak is now >= 272 MiB; the phase must not see it
    before = _allocated_mib()
    with PhasePeak(CUDA) as phase:
        block = torch.empty(64 * MiB // 4, dtype=torch.float32, device=CUDA)
        block.fill_(1.0)
    assert phase.mib == pytest.approx(before + 64, abs=1.0), (phase.mib, before)
    assert phase.method == "torch.cuda.max_memory_allocated"
    assert phase.what == GPU_MEMORY_NOTE
    del block, held


def test_a_second_phase_does_not_see_the_first_phases_peak():
    with PhasePeak(CUDA) as first:
        block = torch.ones(128 * MiB // 4, device=CUDA)
        del block
    before = _allocated_mib()
    with PhasePeak(CUDA) as second:
        small = torch.ones(8 * MiB // 4, device=CUDA)
    assert first.mib >= 128
    assert second.mib == pytest.approx(before + 8, abs=1.0), (second.mib, before, first.mib)
    assert second.mib < first.mib - 100
    del small


# --- the CUDA-graph FVSBN sampler against the reference --------------------------------------------
def _random_fvsbn(shape, seed=0, device=CUDA):
    torch.manual_seed(seed)
    model = build("fvsbn", image_shape=shape)
    with torch.no_grad():
        model.weight.normal_(0, 1.5)
        model.bias.normal_(0, 1.0)
    return model.to(device)


def _cuda_generator(seed: int) -> torch.Generator:
    return torch.Generator(device=CUDA).manual_seed(seed)


def test_cuda_graph_sampler_draws_the_reference_samples():
    # As tests/test_fvsbn.py does for the CPU backends: D = 100 spans two 64-pixel blocks; the same
    # uniforms give the same draws; conditionals agree to float32 rounding. A second batch size captures
    # a second graph, and replaying the first again must still use the new call's uniforms.
    model = _random_fvsbn((1, 10, 10), seed=3)
    n = fvsbn_kernels.BLOCKED_FROM + 8
    x_ref, p_ref = model.sample_with_conditionals(n, generator=_cuda_generator(4), backend="torch")
    x, p = model.sample_with_conditionals(n, generator=_cuda_generator(4), backend="cuda-graph")
    assert x.device.type == "cuda"
    assert torch.equal(x, x_ref)
    assert torch.allclose(p, p_ref, atol=1e-6)
    assert torch.allclose(model.conditionals(x), p, atol=1e-6)
    x, p = model.sample_with_conditionals(8, generator=_cuda_generator(4), backend="cuda-graph")
    assert torch.equal(x, x_ref[:8])  # the first 8 rows of the same uniforms
    assert torch.allclose(p, p_ref[:8], atol=1e-6)
    x_ref, p_ref = model.sample_with_conditionals(n, generator=_cuda_generator(9), backend="torch")
    x, p = model.sample_with_conditionals(n, generator=_cuda_generator(9), backend="cuda-graph")
    assert torch.equal(x, x_ref)  # a replay of the first graph with other uniforms
    assert torch.allclose(p, p_ref, atol=1e-6)


def test_auto_backend_on_cuda_is_the_cuda_graph():
    model = _random_fvsbn((1, 6, 6), seed=1)
    x_auto, p_auto = model.sample_with_conditionals(32, generator=_cuda_generator(2))
    x_ref, p_ref = model.sample_with_conditionals(32, generator=_cuda_generator(2), backend="torch")
    assert model._resolve_backend("auto", CUDA) == "cuda-graph"
    assert torch.equal(x_auto, x_ref)
    assert torch.allclose(p_auto, p_ref, atol=1e-6)


@pytest.mark.parametrize("block", [1, 5, 36, 100])
def test_cuda_graph_sampler_matches_the_cpu_reference_at_any_block_size(block):
    # The same uniforms (drawn on the CPU) on both devices: the graph on CUDA, the reference loop on the CPU.
    model = _random_fvsbn((1, 6, 6), seed=6, device=torch.device("cpu"))
    outgoing = model.masked_weight().detach().T.contiguous()
    uniforms = torch.rand(32, 36, generator=torch.Generator().manual_seed(7))
    x_ref, p_ref = model._sample_reference(outgoing, uniforms)
    x, p = fvsbn_kernels.sample_cuda_graph(outgoing.to(CUDA), model.bias.detach().to(CUDA), uniforms.to(CUDA),
                                           block=block)
    assert torch.equal(x.cpu(), x_ref)
    assert torch.allclose(p.cpu(), p_ref, atol=1e-6)


def test_cuda_graph_sampler_sees_weights_changed_after_an_earlier_call():
    # The graph is captured once per shape; its static inputs must be refreshed with the new weights.
    model = _random_fvsbn((1, 3, 3))
    before = model.sample_with_conditionals(8, generator=_cuda_generator(0), backend="cuda-graph")[1]
    opt = torch.optim.SGD(model.parameters(), lr=10.0)
    model.nll(torch.ones(4, 1, 3, 3, device=CUDA)).mean().backward()
    opt.step()
    x, p = model.sample_with_conditionals(8, generator=_cuda_generator(0), backend="cuda-graph")
    x_ref, p_ref = model.sample_with_conditionals(8, generator=_cuda_generator(0), backend="torch")
    assert not torch.allclose(p, before)
    assert torch.equal(x, x_ref)
    assert torch.allclose(p, p_ref, atol=1e-6)
    assert torch.allclose(model.conditionals(x), p, atol=1e-6)


def test_cuda_graph_sample_frequencies_match_likelihood():
    import itertools

    model = _random_fvsbn((1, 2, 2), seed=2)
    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)), device=CUDA).view(16, 1, 2, 2)
    probs = torch.exp(-model.nll(images)).detach()
    samples, _ = model.sample_with_conditionals(40000, generator=_cuda_generator(5), backend="cuda-graph")
    codes = (samples.flatten(1) * torch.tensor([8.0, 4.0, 2.0, 1.0], device=CUDA)).sum(1).long()
    freq = torch.bincount(codes, minlength=16).float() / len(codes)
    assert torch.allclose(freq, probs, atol=0.01)


def test_fvsbn_self_check_passes_on_cuda():
    model = _random_fvsbn((1, 10, 10), seed=8)
    (check,) = model.self_checks(torch.zeros(1, 1, 10, 10, device=CUDA))
    assert check["passed"], check


# --- one local worker per visible device -----------------------------------------------------------
def _visible_devices() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]


def test_worker_slots_map_to_devices_modulo_the_visible_count():
    n = torch.cuda.device_count()
    devices = _visible_devices()
    assert len(devices) == n
    executor = LocalExecutor(workers=n + 1, device="cuda")
    envs = [executor._env(slot) for slot in range(n + 1)]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == [devices[slot % n] for slot in range(n + 1)]
    assert envs[n] == envs[0]  # one more worker than devices: it shares device 0
    assert LocalExecutor(workers=n, device="cpu")._env(0) == {}


def _device_id(index: int) -> str:
    props = torch.cuda.get_device_properties(index)
    return str(getattr(props, "uuid", props.name))


def test_each_slots_environment_shows_its_worker_exactly_its_device():
    # A fresh process with slot i's environment sees one device, and it is this process's device i.
    n = min(torch.cuda.device_count(), 8)
    executor = LocalExecutor(workers=n, device="cuda")
    probe = ("import torch; p = torch.cuda.get_device_properties(0); "
             "print(torch.cuda.device_count()); print(getattr(p, 'uuid', p.name))")
    for slot in range(n):
        env = {**os.environ, **executor._env(slot)}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        count, ident = out.stdout.split("\n")[:2]
        assert int(count) == 1
        assert ident == _device_id(slot), (slot, ident)


def test_local_executor_runs_a_job_per_device_on_cuda(tmp_path):
    n = min(torch.cuda.device_count(), 2)
    jobs = [Job("fvsbn", "digits", seed, "3steps", "cuda", str(tmp_path), progress=False, throughput_cap_s=2.0,
                fidelity_samples=50, eval_size=50) for seed in range(n)]
    outcomes = []
    LocalExecutor(workers=n, device="cuda").run(jobs, outcomes.append)
    assert len(outcomes) == n
    for outcome in outcomes:
        assert outcome["status"] == "ok", outcome["reason"] + outcome["info"].get("traceback", "")
        assert outcome["job"]["device"] == "cuda"
        # Jobs start in order, so seed i ran in slot i, on device i; the name is the worker's own reading.
        assert outcome["info"]["hardware"].get("gpu") == torch.cuda.get_device_name(outcome["job"]["seed"])
        train_peak = [r for r in outcome["rows"] if r["metric"] == "peak_memory_train"]
        assert train_peak and train_peak[0]["note"] == GPU_MEMORY_NOTE
        assert train_peak[0]["value"] > 0


# --- the CUDA-graph MADE and PixelCNN samplers against their torch references ------------------------
def _randomised(name, shape, seed, **settings):
    torch.manual_seed(seed)
    model = build(name, image_shape=shape, **settings)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model.to(CUDA).eval()


@pytest.mark.parametrize("name,shape,settings", [("made", (1, 5, 5), {"hidden_sizes": (24,)}),
                                                 ("made-8bit", (3, 3, 3), {"hidden_sizes": (24,)}),
                                                 ("pixelcnn", (1, 5, 5), {"channels": 8, "layers": 2}),
                                                 ("pixelcnn-8bit", (3, 4, 4), {"channels": 8, "layers": 2})])
def test_cuda_graph_autoregressive_samplers_draw_the_cached_loops_samples(name, shape, settings):
    """The graph replays the cached torch loop: the same uniforms give the same samples, and a second call with
    other uniforms replays the same graph with them (the static input is refreshed)."""
    model = _randomised(name, shape, seed=2, **settings)
    extra = {"tables": False} if name.endswith("8bit") else {}
    for seed in (4, 9):
        x_ref, used_ref = model.sample_with_conditionals(16, _cuda_generator(seed), method="cached", **extra)
        x, used = model.sample_with_conditionals(16, _cuda_generator(seed), method="cuda-graph", **extra)
        assert x.device.type == "cuda" and torch.equal(x, x_ref), (name, seed)
        assert torch.allclose(used, used_ref, atol=1e-5), (name, seed)
    auto, _ = model.sample_with_conditionals(16, _cuda_generator(4), **extra)  # auto on CUDA: the graph
    assert torch.equal(auto, model.sample_with_conditionals(16, _cuda_generator(4), method="cached", **extra)[0])
