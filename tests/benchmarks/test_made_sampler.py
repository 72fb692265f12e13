"""MADE sampling speed (pytest-benchmark groups ``made-batch1``, ``made-batch1024``, ``made-8bit-batch1``,
``made-8bit-batch1024``): the compiled sampler against the torch cached loop and the naive sampler, untrained
default 28x28 models (D = 784, one hidden layer of 500 units).

The compiled sampler's cost does not depend on the weights (it never skips a zero pixel), so untrained
weights time it fairly. ``extra_info["flops"]`` is the model's hand count, ``sampling_flops(batch)`` =
2 batch D (H + H P) (P = 1 logit, or the 8-bit model's 15 mixture parameters); ``test_made_gemm_roofline``
times two 1024 x 1024 float32 matrices multiplied in the same run (2 * 1024^3 FLOPs), so a sampler's
fraction of the GEMM rate is (flops / its time) / (2 * 1024^3 / the GEMM's time). The 8-bit sampler is
timed with ``tables=False`` (it returns the mixture parameters; the 256-value tables of 1,024 samples would
take 12 GB to build). Timing: ``python -m pytest tests/benchmarks --benchmark-only -k made``; the plain
run (``--benchmark-disable``) runs each body once as a check. Threads: torch's (set OMP_NUM_THREADS).
"""
import pytest
import torch

import models
from models.autoregressive import made_kernels

IMAGE_SHAPE = (1, 28, 28)
COMPILED = pytest.param("compiled", marks=pytest.mark.skipif(not made_kernels.numba_available(),
                                                              reason="numba not installed"))
# At batch 1,024 the naive sampler's full pass per pixel costs 2 * 1024 * 784 * (784 * 500 + 500 * 784 P)
# FLOPs per call: 1.3e12 binary, 1.0e13 8-bit, ~13 s and ~100 s per round at ~100 GFLOP/s.
NAIVE_1024 = pytest.param("naive", marks=pytest.mark.skip(
    reason="naive at batch 1,024: a full network pass per pixel, 1.3e12 FLOPs per call binary and 1.0e13 "
           "8-bit, ~13 s and ~100 s per round at this machine's ~100 GFLOP/s"))
_models: dict = {}


def _model(name):
    if name not in _models:
        torch.manual_seed(0)
        _models[name] = models.build(name, image_shape=IMAGE_SHAPE).eval()
    return _models[name]


def _time(benchmark, name, batch, method):
    model = _model(name)
    made_kernels.warm_up()  # numba compiles (or loads its cache) outside the timed calls
    generator = torch.Generator().manual_seed(0)
    benchmark.extra_info.update(batch=batch, method=method, flops=model.sampling_flops(batch), dim=model.dim)
    extra = {"tables": False} if name == "made-8bit" else {}
    images, outputs = benchmark(model.sample_with_conditionals, batch, generator=generator, method=method, **extra)
    assert images.shape == (batch, *IMAGE_SHAPE)
    if name == "made":
        assert set(images.unique().tolist()) <= {0.0, 1.0}
        assert outputs.shape == (batch, model.dim) and 0 < outputs.min() and outputs.max() < 1
    else:
        assert torch.equal(images, images.round()) and images.min() >= 0 and images.max() <= 255
        assert outputs.shape == (batch, model.dim, model.outputs_per_pixel)


@pytest.mark.benchmark(group="made-batch1")
@pytest.mark.parametrize("method", ["naive", "cached", COMPILED])
def test_made_sampler_batch1(benchmark, method):
    _time(benchmark, "made", 1, method)


@pytest.mark.benchmark(group="made-batch1024")
@pytest.mark.parametrize("method", [NAIVE_1024, "cached", COMPILED])
def test_made_sampler_batch1024(benchmark, method):
    _time(benchmark, "made", 1024, method)


@pytest.mark.benchmark(group="made-8bit-batch1")
@pytest.mark.parametrize("method", ["naive", "cached", COMPILED])
def test_made_8bit_sampler_batch1(benchmark, method):
    _time(benchmark, "made-8bit", 1, method)


@pytest.mark.benchmark(group="made-8bit-batch1024")
@pytest.mark.parametrize("method", [NAIVE_1024, "cached", COMPILED])
def test_made_8bit_sampler_batch1024(benchmark, method):
    _time(benchmark, "made-8bit", 1024, method)


@pytest.mark.benchmark(group="made-batch1024")
def test_made_gemm_roofline(benchmark):
    a, b = torch.rand(1024, 1024), torch.rand(1024, 1024)
    benchmark.extra_info.update(flops=2 * 1024 ** 3)
    out = benchmark(torch.mm, a, b)
    assert out.shape == (1024, 1024)
