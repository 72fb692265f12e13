"""FVSBN: the sampler uses exactly the conditionals of the likelihood, and the likelihood normalises."""
import itertools

import pytest
import torch

import models
from models.autoregressive import fvsbn_kernels

FAST_BACKENDS = [pytest.param("numba", marks=pytest.mark.skipif(not fvsbn_kernels.numba_available(),
                                                                  reason="numba not installed")),
                 "blocked"]


def _random_fvsbn(shape, seed=0):
    torch.manual_seed(seed)
    model = models.build("fvsbn", image_shape=shape)
    with torch.no_grad():
        model.weight.normal_(0, 1.5)
        model.bias.normal_(0, 1.0)
    return model


def test_sampler_conditionals_equal_teacher_forced_conditionals():
    model = _random_fvsbn((1, 6, 6))
    x, sampler_probs = model.sample_with_conditionals(64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(model.conditionals(x), sampler_probs, atol=1e-6)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_fast_sampler_draws_the_reference_samples(backend):
    # D = 100 spans two of the blocked sampler's 64-pixel blocks; same uniforms -> the same draws.
    # Conditionals agree to float32 rounding (sigmoid's last bit; the blocked sums' order).
    # The numba backend switches algorithm at BLOCKED_FROM samples: both sides are drawn.
    model = _random_fvsbn((1, 10, 10), seed=3)
    n = fvsbn_kernels.BLOCKED_FROM + 8
    x_ref, p_ref = model.sample_with_conditionals(n, generator=torch.Generator().manual_seed(4), backend="torch")
    x, p = model.sample_with_conditionals(n, generator=torch.Generator().manual_seed(4), backend=backend)
    assert torch.equal(x, x_ref)
    assert torch.allclose(p, p_ref, atol=1e-6)
    assert torch.allclose(model.conditionals(x), p, atol=1e-6)
    x, p = model.sample_with_conditionals(8, generator=torch.Generator().manual_seed(4), backend=backend)
    x_ref, p_ref = x_ref[:8], p_ref[:8]  # the first 8 rows of the same uniforms
    assert torch.equal(x, x_ref)
    assert torch.allclose(p, p_ref, atol=1e-6)
    assert torch.allclose(model.conditionals(x), p, atol=1e-6)


@pytest.mark.parametrize("block", [1, 5, 36, 100])
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_blocked_samplers_match_the_reference_at_any_block_size(backend, block):
    model = _random_fvsbn((1, 6, 6), seed=6)
    outgoing = model.masked_weight().detach().T.contiguous()
    uniforms = torch.rand(32, 36, generator=torch.Generator().manual_seed(7))
    x_ref, p_ref = model._sample_reference(outgoing, uniforms)
    blocked = fvsbn_kernels.sample_numba_blocked if backend == "numba" else fvsbn_kernels.sample_blocked
    x, p = blocked(outgoing, model.bias.detach(), uniforms, block=block)
    assert torch.equal(x, x_ref)
    assert torch.allclose(p, p_ref, atol=1e-6)


@pytest.mark.skipif(not fvsbn_kernels.numba_available(), reason="numba not installed")
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_compiled_sampler_matches_the_reference_in_any_thread_count(threads):
    # The batch is split across threads: every share must see its own uniforms and rows.
    model = _random_fvsbn((1, 6, 6), seed=6)
    outgoing = model.masked_weight().detach().T.contiguous()
    uniforms = torch.rand(31, 36, generator=torch.Generator().manual_seed(7))
    x_ref, p_ref = model._sample_reference(outgoing, uniforms)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x, p = fvsbn_kernels.sample_numba_per_sample(outgoing, model.bias.detach(), uniforms)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(x, x_ref)
    assert torch.allclose(p, p_ref, atol=1e-6)


def test_sampler_sees_weights_changed_after_an_earlier_call():
    # The sampler keeps W^T between calls; an optimiser step (in place) must invalidate it.
    model = _random_fvsbn((1, 3, 3))
    before = model.sample_with_conditionals(8, generator=torch.Generator().manual_seed(0))[1]
    opt = torch.optim.SGD(model.parameters(), lr=10.0)
    model.nll(torch.ones(4, 1, 3, 3)).mean().backward()
    opt.step()
    x, p = model.sample_with_conditionals(8, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(p, before)
    assert torch.allclose(model.conditionals(x), p, atol=1e-6)


def test_sampler_depends_on_earlier_pixels():
    # With a strong positive weight from pixel 0 to pixel 1, pixel 1 copies pixel 0 (the seed's bug
    # made every pixel independent of the earlier ones).
    model = models.build("fvsbn", image_shape=(1, 1, 2))
    with torch.no_grad():
        model.weight[1, 0] = 20.0
        model.bias[:] = torch.tensor([0.0, -10.0])
    x = model.sample(2000).flatten(1)
    assert 0.4 < x[:, 0].mean() < 0.6
    assert torch.equal(x[:, 0], x[:, 1])


def test_probabilities_of_all_images_sum_to_one():
    model = _random_fvsbn((1, 2, 2))  # D = 4: 16 images
    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4))).view(16, 1, 2, 2)
    total = torch.exp(-model.nll(images).double()).sum()
    assert abs(total.item() - 1.0) < 1e-6


@pytest.mark.parametrize("backend", ["torch", *FAST_BACKENDS])
def test_sample_frequencies_match_likelihood(backend):
    # Enumerate D = 4: empirical sample frequencies against exp(-nll), for each sampler backend.
    model = _random_fvsbn((1, 2, 2), seed=2)
    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4))).view(16, 1, 2, 2)
    probs = torch.exp(-model.nll(images))
    samples, _ = model.sample_with_conditionals(40000, generator=torch.Generator().manual_seed(5),
                                                backend=backend)
    codes = (samples.flatten(1) * torch.tensor([8.0, 4.0, 2.0, 1.0])).sum(1).long()
    freq = torch.bincount(codes, minlength=16).float() / len(codes)
    assert torch.allclose(freq, probs, atol=0.01)


def test_auto_backend_is_the_compiled_sampler_on_cpu_when_numba_is_installed():
    expected = "numba" if fvsbn_kernels.numba_available() else "torch"
    assert models.build("fvsbn")._resolve_backend("auto", torch.device("cpu")) == expected
    assert models.build("fvsbn")._resolve_backend("auto", torch.device("cuda")) == "cuda-graph"
    with pytest.raises(ValueError):
        models.build("fvsbn")._resolve_backend("fortran", torch.device("cpu"))


def test_weights_on_and_above_the_diagonal_have_no_effect():
    model = _random_fvsbn((1, 3, 3))
    x = torch.bernoulli(torch.full((4, 1, 3, 3), 0.5))
    before = model.nll(x).detach()
    with torch.no_grad():
        model.weight.add_(torch.triu(torch.full((9, 9), 55.0)))  # junk where pixel i would see x_>=i
    after = model.nll(x)
    assert torch.allclose(before, after)
    after.sum().backward()
    assert torch.count_nonzero(model.weight.grad.triu()) == 0
