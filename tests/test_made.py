"""MADE: the masks make it autoregressive, the likelihood normalises, and the samplers (cached and
naive) draw from the likelihood's own conditionals."""
import itertools

import pytest
import torch

import models
from tests.conftest import sampler_frequency_chi2


def _random_made(shape, num_masks=1, hidden_sizes=(24, 24), seed=0):
    torch.manual_seed(seed)
    model = models.build("made", image_shape=shape, hidden_sizes=hidden_sizes, num_masks=num_masks)
    with torch.no_grad():
        for layer in model.layers:
            layer.weight.normal_(0, 2.0 / layer.in_features ** 0.5)
            layer.bias.normal_(0, 1.0)
    return model


def _all_images(d):
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=d)))


@pytest.mark.parametrize("hidden_sizes", [(24,), (24, 24)])
def test_flipping_a_pixel_moves_no_conditional_at_or_before_it(hidden_sizes):
    model = _random_made((1, 3, 3), num_masks=3, hidden_sizes=hidden_sizes)
    x = torch.bernoulli(torch.full((16, 9), 0.5), generator=torch.Generator().manual_seed(3))
    for mask in range(3):
        order = model.orders[mask].tolist()
        before = model.logits(x, mask)
        moved_later = 0.0
        for step, pixel in enumerate(order):
            flipped = x.clone()
            flipped[:, pixel] = 1 - flipped[:, pixel]
            change = (model.logits(flipped, mask) - before).abs()
            assert change[:, order[:step + 1]].max() == 0, f"mask {mask}: pixel {pixel} leaks into its own past"
            moved_later += change[:, order[step + 1:]].sum().item()
        assert moved_later > 0  # the conditionals do depend on earlier pixels


def test_masks_have_different_orderings():
    model = _random_made((1, 3, 3), num_masks=3)
    assert torch.equal(model.orders[0], torch.arange(9))
    assert not torch.equal(model.orders[1], model.orders[0])


@pytest.mark.parametrize("mask", [0, 1])
@pytest.mark.parametrize("method", ["cached", "naive"])
def test_sampler_conditionals_equal_teacher_forced_conditionals(mask, method):
    model = _random_made((1, 6, 6), num_masks=2)
    x, sampler_probs = model.sample_with_conditionals(64, generator=torch.Generator().manual_seed(1), mask=mask,
                                                      method=method)
    assert set(x.unique().tolist()) == {0.0, 1.0}
    assert torch.allclose(model.conditionals(x, mask), sampler_probs, atol=1e-5)


def test_cached_sampler_gives_the_naive_samplers_samples():
    model = _random_made((1, 6, 6), num_masks=2, hidden_sizes=(32, 16))
    for mask in (0, 1):
        fast, fast_probs = model.sample_with_conditionals(64, torch.Generator().manual_seed(4), mask=mask,
                                                          method="cached")
        slow, slow_probs = model.sample_with_conditionals(64, torch.Generator().manual_seed(4), mask=mask,
                                                          method="naive")
        assert torch.equal(fast, slow)
        assert torch.allclose(fast_probs, slow_probs, atol=1e-6)


@pytest.mark.parametrize("num_masks", [1, 3])
def test_probabilities_of_all_images_sum_to_one(num_masks):
    model = _random_made((1, 2, 2), num_masks=num_masks)  # D = 4: 16 images
    total = torch.exp(-model.nll(_all_images(4).view(16, 1, 2, 2)).double()).sum()
    assert abs(total.item() - 1.0) < 1e-5


@pytest.mark.parametrize("num_masks", [1, 2])
def test_sample_frequencies_match_likelihood(num_masks):
    # With two masks the model is their mixture: sample() must pick a mask per image to match nll().
    model = _random_made((1, 2, 2), num_masks=num_masks, seed=2)
    chi2, freq, probs = sampler_frequency_chi2(model)
    assert chi2 < 37.7, (chi2, freq, probs)  # 99.9% quantile, 15 degrees of freedom


def test_self_checks_pass_on_a_random_model():
    model = _random_made((1, 5, 5))
    (check,) = model.self_checks(torch.zeros(4, 1, 5, 5))
    assert check["passed"] and check["value"] <= check["tolerance"]
