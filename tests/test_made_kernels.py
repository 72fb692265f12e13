"""The compiled MADE samplers (models/autoregressive/made_kernels.py): the same samples as the torch cached
loop from the same generator, with its conditionals (binary) or mixture parameters (8-bit), in both the
per-sample and the blocked form, for every mask; 8-bit frequencies match the enumerated probabilities; and
``method="auto"`` picks them only where they apply."""
import pytest
import torch
from scipy import stats

import models
from models.autoregressive import made_kernels

needs_numba = pytest.mark.skipif(not made_kernels.numba_available(), reason="numba not installed")
# Batches that run per sample only, a whole blocked chunk plus a tail per sample, and blocked chunks with
# the last one padded.
BATCHES = {kind: [switch - 1, made_kernels.CHUNK + 2, made_kernels.CHUNK + switch + 1]
           for kind, switch in made_kernels.BLOCKED_FROM.items()}


def random_made(name, shape, hidden_sizes=(48,), num_masks=1, seed=0, **settings):
    """One hidden layer by default, weights spread wide enough that no conditional is near 1/2 everywhere."""
    torch.manual_seed(seed)
    model = models.build(name, image_shape=shape, hidden_sizes=hidden_sizes, num_masks=num_masks, **settings)
    with torch.no_grad():
        for layer in model.layers:
            layer.weight.normal_(0, 2.0 / layer.in_features ** 0.5)
            layer.bias.normal_(0, 1.0)
    return model


def draw(model, n, method, seed=4, mask=0):
    extra = {"tables": False} if model.track == "8bit" else {}
    return model.sample_with_conditionals(n, torch.Generator().manual_seed(seed), mask=mask, method=method, **extra)


@needs_numba
@pytest.mark.parametrize("n", BATCHES["binary"])
def test_compiled_binary_sampler_draws_the_reference_samples(n):
    model = random_made("made", (1, 10, 10), num_masks=3)
    for mask in range(3):
        x_ref, p_ref = draw(model, n, "cached", mask=mask)
        x, p = draw(model, n, "compiled", mask=mask)
        assert torch.equal(x, x_ref), f"mask {mask}"
        assert torch.allclose(p, p_ref, atol=1e-6)
        assert torch.allclose(model.conditionals(x, mask), p, atol=1e-6)
        assert 0.05 < p.mean() < 0.95 and p.std() > 0.1  # the conditionals really vary


@needs_numba
@pytest.mark.parametrize("shape", [(1, 6, 6), (3, 4, 4)])
@pytest.mark.parametrize("n", BATCHES["mixture"])
def test_compiled_8bit_sampler_draws_the_reference_samples(shape, n):
    model = random_made("made-8bit", shape, num_masks=3)
    with torch.no_grad():  # component 0 below the log-scale floor of -7 for about half the draws
        model.layers[-1].bias.view(model.dim, -1)[:, 2 * model.components] -= 7.0
    for mask in range(3):
        x_ref, params_ref = draw(model, n, "cached", mask=mask)
        x, params = draw(model, n, "compiled", mask=mask)
        assert torch.equal(x, x_ref), f"mask {mask}"
        assert torch.allclose(params, params_ref, atol=1e-5)
        assert torch.allclose(model.params(x, mask), params, atol=1e-5)
        assert len(x.unique()) > 20  # values spread over the range, not all clamped to an edge


@needs_numba
@pytest.mark.parametrize("name", ["made", "made-8bit"])
def test_per_sample_and_blocked_forms_are_bit_identical(name):
    # The module's claim: both forms add each output sum's terms in the same order. H = 45 leaves a
    # remainder after the four-at-a-time loop; 40 samples fill one chunk and pad the next.
    model = random_made(name, (1, 5, 5), hidden_sizes=(45,), num_masks=2)
    sample = made_kernels.sample_binary if name == "made" else made_kernels.sample_mixture
    uniforms = torch.rand(made_kernels.CHUNK + 8, model.dim, *(() if name == "made" else (2,)),
                          generator=torch.Generator().manual_seed(1))
    for mask in range(2):
        weights = model._compiled_weights(mask)
        x_one, out_one = sample(weights, uniforms, blocked=False)
        x_block, out_block = sample(weights, uniforms, blocked=True)
        assert torch.equal(x_one, x_block)
        assert torch.equal(out_one, out_block)


@needs_numba
@pytest.mark.parametrize("name", ["made", "made-8bit"])
def test_threads_share_the_batch_and_draw_the_same_samples(name, monkeypatch):
    # Three threads: shares of whole chunks, then of the per-sample tail; the result must not depend on it.
    model = random_made(name, (1, 5, 5))
    n = 2 * made_kernels.CHUNK + 3
    x_one, out_one = draw(model, n, "compiled")
    monkeypatch.setattr(made_kernels.torch, "get_num_threads", lambda: 3)
    assert made_kernels._shares(None, 0, 2 * made_kernels.CHUNK, made_kernels.CHUNK, 3) == [
        (None, 0, made_kernels.CHUNK), (None, made_kernels.CHUNK, 2 * made_kernels.CHUNK)]
    x, out = draw(model, n, "compiled")
    assert torch.equal(x, x_one) and torch.equal(out, out_one)


@needs_numba
def test_compiled_sampler_sees_changed_weights():
    model = random_made("made", (1, 6, 6))
    draw(model, 8, "compiled")  # fills the compiled weights' cache
    with torch.no_grad():
        model.layers[1].bias.add_(1.5)  # an in-place change, as an optimiser step
    x_ref, p_ref = draw(model, 8, "cached")
    x, p = draw(model, 8, "compiled")
    assert torch.equal(x, x_ref)
    assert torch.allclose(p, p_ref, atol=1e-6)


def _chi2(observed: torch.Tensor, expected: torch.Tensor) -> tuple[float, int]:
    """Chi-square over cells with an expected count of at least 5, the rest pooled into one cell."""
    keep = expected >= 5
    observed = torch.cat([observed[keep], observed[~keep].sum().view(1)])
    expected = torch.cat([expected[keep], expected[~keep].sum().view(1)])
    chi2 = ((observed - expected) ** 2 / expected.clamp(min=1e-12)).sum().item()
    return chi2, len(expected) - 1


@needs_numba
def test_compiled_8bit_frequencies_match_the_enumerated_probabilities():
    # Sharp components (log-scales near -4.5: scale ~ 1.4 values), so that a sampler one value off (a
    # wrong rounding) moves most of the mass; the check below asserts that the test would see it.
    model = random_made("made-8bit", (1, 1, 2), hidden_sizes=(16,), seed=2)
    k = model.components
    with torch.no_grad():
        bias = model.layers[-1].bias.view(2, 3 * k)
        bias[:, 2 * k:] = -4.5 + 0.3 * torch.randn(2, k, generator=torch.Generator().manual_seed(3))
        bias[:, k:2 * k] = torch.linspace(-0.8, 0.8, k)  # component means spread over the range
    n = 100_000
    x, _ = draw(model, n, "compiled", seed=11)
    codes = x.flatten(1).long()
    assert codes.min() >= 0 and codes.max() <= 255

    # The first pixel's 256 values against its conditional (which depends on nothing before it).
    first = model.conditionals(torch.zeros(1, 1, 1, 2))[0, 0].double()
    observed = torch.bincount(codes[:, 0], minlength=256).double()
    chi2, dof = _chi2(observed, first * n)
    assert stats.chi2.sf(chi2, dof) > 1e-3, (chi2, dof)
    shifted, _ = _chi2(observed.roll(1), first * n)  # one value off
    assert stats.chi2.sf(shifted, dof) < 1e-12, shifted

    # The pair's joint against exp(-nll) over all 65,536 images, in 100 cells of equal mass.
    values = torch.arange(256, dtype=torch.float64)
    images = torch.cartesian_prod(values, values).view(-1, 1, 1, 2)
    with torch.no_grad():
        joint = torch.exp(-model.double().nll(images))
    model.float()
    assert abs(joint.sum().item() - 1.0) < 1e-6
    order = torch.argsort(joint)
    cell_of = torch.empty(65536, dtype=torch.long)
    cell_of[order] = (torch.cumsum(joint[order], 0) * 100).long().clamp(max=99)
    expected = torch.bincount(cell_of, weights=joint, minlength=100) * n
    pair = codes[:, 0] * 256 + codes[:, 1]
    chi2, dof = _chi2(torch.bincount(cell_of[pair], minlength=100).double(), expected)
    assert stats.chi2.sf(chi2, dof) > 1e-3, (chi2, dof)
    off_by_one = codes[:, 0] * 256 + (codes[:, 1] + 1).clamp(max=255)  # the second pixel one value off
    shifted, _ = _chi2(torch.bincount(cell_of[off_by_one], minlength=100).double(), expected)
    assert stats.chi2.sf(shifted, dof) < 1e-12, shifted


@pytest.mark.parametrize("name", ["made", "made-8bit"])
def test_auto_picks_compiled_for_one_hidden_layer_and_cached_for_two(name):
    one = random_made(name, (1, 4, 4))
    two = random_made(name, (1, 4, 4), hidden_sizes=(16, 16))
    expected = "compiled" if made_kernels.numba_available() else "cached"
    assert one._resolve_method("auto") == expected
    assert two._resolve_method("auto") == "cached"
    x_auto, out_auto = draw(one, 6, "auto")
    x, out = draw(one, 6, expected)
    assert torch.equal(x_auto, x) and torch.equal(out_auto, out)
    x_auto, out_auto = draw(two, 6, "auto")
    x, out = draw(two, 6, "cached")
    assert torch.equal(x_auto, x) and torch.equal(out_auto, out)
    with pytest.raises(ValueError, match="one hidden layer"):
        draw(two, 6, "compiled")


@pytest.mark.parametrize("name", ["made", "made-8bit"])
def test_unknown_method_is_refused_with_the_valid_ones(name):
    model = random_made(name, (1, 3, 3))
    with pytest.raises(ValueError, match="naive.*cached.*compiled.*cuda-graph"):
        draw(model, 2, "fast")


@needs_numba
def test_sample_of_a_three_mask_model_runs_compiled_per_mask():
    model = random_made("made-8bit", (1, 3, 3), num_masks=3)
    torch.manual_seed(0)
    x = model.sample(50)
    assert x.shape == (50, 1, 3, 3)
    assert torch.allclose(x * 255, (x * 255).round(), atol=1e-4) and x.min() >= 0 and x.max() <= 1
