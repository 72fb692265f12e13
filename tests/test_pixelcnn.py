"""PixelCNN: the masked convolutions make it autoregressive, the likelihood normalises, and the
samplers (cached, windowed, naive) draw the same samples from the likelihood's own conditionals."""
import itertools

import pytest
import torch

import models
from tests.conftest import sampler_frequency_chi2


def _random_pixelcnn(shape, channels=8, layers=2, seed=0):
    torch.manual_seed(seed)
    model = models.build("pixelcnn", image_shape=shape, channels=channels, layers=layers)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
        # The ReLU features are positive: a zero-mean output layer keeps the logits of either sign.
        model.head[-1].weight.normal_(0, 0.5)
        model.head[-1].bias.zero_()
    return model


def test_flipping_a_pixel_moves_no_conditional_at_or_before_it():
    model = _random_pixelcnn((1, 5, 5), layers=3)
    x = torch.bernoulli(torch.full((8, 1, 5, 5), 0.5), generator=torch.Generator().manual_seed(3))
    before = model.logits(x)
    d = 25
    moved_later = 0.0
    for i in range(d):
        flipped = x.clone().view(8, d)
        flipped[:, i] = 1 - flipped[:, i]
        change = (model.logits(flipped.view_as(x)) - before).abs()
        assert change[:, :i + 1].max() == 0, f"pixel {i} leaks into the conditionals at or before it"
        moved_later += change[:, i + 1:].sum().item()
    assert moved_later > 0  # the conditionals do depend on earlier pixels


def test_first_layer_hides_the_centre_and_later_layers_see_it():
    model = _random_pixelcnn((1, 4, 4))
    assert model.first.mask[-1].tolist() == [1, 1, 1, 0, 0, 0, 0]  # type A: left of centre only
    assert model.blocks[0].conv.mask[-1].tolist() == [1, 1, 0]  # type B: up to the centre


def test_sampler_conditionals_equal_teacher_forced_conditionals():
    model = _random_pixelcnn((1, 6, 6))
    x, sampler_probs = model.sample_with_conditionals(32, generator=torch.Generator().manual_seed(1))
    assert set(x.unique().tolist()) == {0.0, 1.0}
    assert torch.allclose(model.conditionals(x), sampler_probs, atol=1e-5)


def test_cached_and_windowed_samplers_give_the_naive_samplers_samples():
    model = _random_pixelcnn((1, 7, 6), layers=3)  # not square: rows and columns kept apart
    draws = {method: model.sample_with_conditionals(16, torch.Generator().manual_seed(4), method=method)
             for method in ("cached", "windowed", "naive")}
    naive, naive_probs = draws["naive"]
    for method in ("cached", "windowed"):
        samples, probs = draws[method]
        assert torch.equal(samples, naive), method
        assert torch.allclose(probs, naive_probs, atol=1e-6), method


def test_probabilities_of_all_images_sum_to_one():
    model = _random_pixelcnn((1, 2, 2))  # D = 4: 16 images
    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4))).view(16, 1, 2, 2)
    total = torch.exp(-model.nll(images).double()).sum()
    assert abs(total.item() - 1.0) < 1e-5


def test_sample_frequencies_match_likelihood():
    model = _random_pixelcnn((1, 2, 2), seed=2)
    chi2, freq, probs = sampler_frequency_chi2(model)
    assert chi2 < 37.7, (chi2, freq, probs)  # 99.9% quantile, 15 degrees of freedom


def test_self_checks_pass_on_a_random_model():
    model = _random_pixelcnn((1, 5, 5))
    (check,) = model.self_checks(torch.zeros(4, 1, 5, 5))
    assert check["passed"] and check["value"] <= check["tolerance"]


def test_unknown_sampling_method_is_refused():
    with pytest.raises(ValueError, match="cached, windowed or naive"):
        _random_pixelcnn((1, 2, 2)).sample_with_conditionals(2, method="fast")
