"""FVSBN: the sampler uses exactly the conditionals of the likelihood, and the likelihood normalises."""
import itertools

import torch

import models


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


def test_sample_frequencies_match_likelihood():
    # Enumerate D = 3: empirical sample frequencies against exp(-nll).
    model = _random_fvsbn((1, 1, 3), seed=2)
    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3))).view(8, 1, 1, 3)
    probs = torch.exp(-model.nll(images))
    torch.manual_seed(5)
    samples = model.sample(40000).flatten(1)
    codes = (samples * torch.tensor([4.0, 2.0, 1.0])).sum(1).long()
    freq = torch.bincount(codes, minlength=8).float() / len(codes)
    assert torch.allclose(freq, probs, atol=0.01)


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
