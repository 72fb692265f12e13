"""FVSBN sampling speed (pytest-benchmark group ``fvsbn-sampler``): the compiled sampler against the
torch reference loop, at batch 16 and 1,024, untrained 28x28 weights (D = 784).

The compiled sampler's cost does not depend on the weights (it never skips a zero pixel), so untrained
weights time it fairly. ``test_gemm_roofline`` times one ``B x D @ D x D`` product in the same run:
the sampler does half its multiply-adds, B D (D - 1) / 2, so a sampler running at the GEMM rate would
take half the GEMM's time. Samples/s = batch / time. Timing: ``--benchmark-enable --benchmark-only``;
the plain run (``--benchmark-disable``) runs each body once as a check.
"""
import pytest
import torch

import models
from models.autoregressive import fvsbn_kernels

IMAGE_SHAPE = (1, 28, 28)
BATCHES = [16, 1024]
BACKENDS = [pytest.param("numba", marks=pytest.mark.skipif(not fvsbn_kernels.numba_available(),
                                                             reason="numba not installed")),
            "torch"]


@pytest.mark.benchmark(group="fvsbn-sampler")
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_fvsbn_sampler(benchmark, backend, batch):
    model = models.build("fvsbn", image_shape=IMAGE_SHAPE).eval()
    fvsbn_kernels.warm_up()  # numba compiles (or loads its cache) outside the timed calls
    generator = torch.Generator().manual_seed(0)
    benchmark.extra_info.update(batch=batch, backend=backend, dim=model.dim,
                                multiply_adds=batch * model.dim * (model.dim - 1) // 2)
    images, probs = benchmark(model.sample_with_conditionals, batch, generator=generator, backend=backend)
    assert images.shape == (batch, *IMAGE_SHAPE)
    assert set(images.unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(probs, torch.full_like(probs, 0.5))  # untrained: every conditional is 1/2


@pytest.mark.benchmark(group="fvsbn-sampler")
def test_gemm_roofline(benchmark):
    batch, d = 1024, IMAGE_SHAPE[1] * IMAGE_SHAPE[2]
    x, w = torch.rand(batch, d), torch.rand(d, d)
    benchmark.extra_info.update(batch=batch, multiply_adds=batch * d * d)
    out = benchmark(torch.mm, x, w)
    assert out.shape == (batch, d)
