"""PixelCNN sampling speed (pytest-benchmark groups ``pixelcnn-batch1``, ``pixelcnn-batch1024``,
``pixelcnn-8bit-batch1``, ``pixelcnn-8bit-batch1024``): the naive sampler (batch 1 only), the torch cached
loop and the compiled sampler (``models/autoregressive/pixelcnn_kernels.py``: the per-sample numba kernel
at batch 1, the batched BLAS form at 1,024), untrained default 28x28 models (32 channels, a 7x7 type-A
layer, 5 residual 3x3 type-B layers, 1x1 head; 8-bit: K = 5 components).

Every sampler computes every position of every layer whatever the values, so untrained weights time it
fairly. ``extra_info``: the batch, the method, and ``flops``, the torch cached sampler's matmul/conv FLOPs
for the batch (``PixelCNN.sampling_flops``, equal to torch's FLOP counter on that loop: 6.31e7 per sample).
``test_gemm_rate`` times float32 ``torch.mm`` of two 1024 x 1024 matrices in the same run (the scaling
study's roofline): roofline fraction = flops / (round time x GEMM rate). The naive sampler at 1,024 is
skipped with its computed cost (784 passes of the whole network over the batch). Rounds are few for the
torch loops (batch 1,024 of the cached loop takes ~10 s a round on one CPU thread).

Timing: ``OMP_NUM_THREADS=1 python -m pytest tests/benchmarks --benchmark-only -k pixelcnn`` (the targets
are stated at one thread; the compiled per-sample kernel also splits a batch across threads). The plain run
(``--benchmark-disable``) runs each body once as a check, the large groups at batch 8.
"""
import pytest
import torch

import models
from bench.instruments import flops as flop_count
from models.autoregressive import pixelcnn_kernels

NAMES = ["pixelcnn", "pixelcnn-8bit"]
BATCHES = [1, 1024]
CHECK_BATCH = 8  # the plain run's batch for the large groups: the torch loop at 1,024 would take ~10 s
ROUNDS = {"naive": 1, "cached": 3, "compiled": 7}
METHODS = ["naive", "cached",
           pytest.param("compiled", marks=pytest.mark.skipif(not pixelcnn_kernels.numba_available(),
                                                             reason="numba not installed"))]
GEMM_SIDE = 1024


def _naive_cost(model, batch: int) -> str:
    """The naive sampler's work: D passes of the whole network over the padded batch."""
    c, h, w = model.image_shape
    one_pass = flop_count.count(lambda: model.network(model.pad(torch.zeros(1, c, h, w))))
    total = model.dim * one_pass * batch
    return (f"naive at batch {batch}: {model.dim} passes of the whole network, {total:.2e} FLOPs "
            f"(at least {total / 1e11 / 60:.0f} min even at 100 GFLOP/s, one CPU thread's GEMM rate)")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("method", METHODS)
def test_pixelcnn_sampler(benchmark, name, batch, method):
    model = models.build(name).eval()
    if method == "naive" and batch > 1:
        pytest.skip(_naive_cost(model, batch))
    pixelcnn_kernels.warm_up()  # numba compiles (or loads its cache) outside the timed calls
    used = batch if benchmark.enabled else min(batch, CHECK_BATCH)
    benchmark.group = f"{name}-batch{batch}"
    benchmark.extra_info.update(batch=used, method=method, flops=model.sampling_flops(used),
                                threads=torch.get_num_threads())
    extra = {"tables": False} if name == "pixelcnn-8bit" else {}  # as sample() does: no 256-value tables
    generator = torch.Generator().manual_seed(0)
    x, drawn_with = benchmark.pedantic(model.sample_with_conditionals, args=(used,),
                                       kwargs=dict(generator=generator, method=method, **extra),
                                       rounds=ROUNDS[method], warmup_rounds=int(method == "compiled"))
    assert x.shape == (used, *model.image_shape) and torch.isfinite(drawn_with).all()
    if name == "pixelcnn":
        assert set(x.unique().tolist()) <= {0.0, 1.0} and ((drawn_with > 0) & (drawn_with < 1)).all()
    else:
        assert torch.equal(x, x.round()) and x.min() >= 0 and x.max() <= 255


@pytest.mark.benchmark(group="pixelcnn-gemm")
def test_gemm_rate(benchmark):
    a, b = torch.randn(GEMM_SIDE, GEMM_SIDE), torch.randn(GEMM_SIDE, GEMM_SIDE)
    benchmark.extra_info.update(flops=2 * GEMM_SIDE ** 3, threads=torch.get_num_threads())
    out = benchmark(torch.mm, a, b)
    assert out.shape == (GEMM_SIDE, GEMM_SIDE)
