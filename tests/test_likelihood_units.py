"""bits/dim conversions on cases computed by hand (docs/design.md, "Data tracks")."""
import math

import torch

import models
from models.base import bits_per_dim


def test_fvsbn_with_zero_parameters_scores_one_bit_per_dim():
    model = models.build("fvsbn", image_shape=(1, 5, 5))  # W = 0, b = 0: every pixel is a fair coin
    x = torch.bernoulli(torch.full((7, 1, 5, 5), 0.3))
    nll = model.nll(x)
    assert torch.allclose(nll, torch.full((7,), 25 * math.log(2.0)), atol=1e-5)
    assert torch.allclose(bits_per_dim(nll, model.dim), torch.ones(7), atol=1e-6)


def _identity_realnvp(shape):
    model = models.build("realnvp", image_shape=shape, logit_alpha=None)  # couplings start at the identity
    latent, logdet = model.forward_flow(torch.rand(3, *shape))
    return model, latent, logdet


def test_untrained_realnvp_is_the_identity():
    model, _, logdet = _identity_realnvp((1, 4, 4))
    y = torch.rand(3, 1, 4, 4)
    latent, logdet = model.forward_flow(y)
    assert torch.equal(latent, y) and torch.equal(logdet, torch.zeros(3))


def test_identity_flow_on_dequantized_data_matches_hand_derivation():
    # -log p(y) = sum_i (y_i^2 / 2 + ln(2 pi) / 2) under N(0, I); the discrete bound adds D ln 256.
    model, _, _ = _identity_realnvp((1, 4, 4))
    x = torch.randint(0, 256, (5, 1, 4, 4)).float()
    torch.manual_seed(3)
    nll = model.nll(x)
    torch.manual_seed(3)
    y = (x + torch.rand(x.shape)) / 256.0  # the same uniform noise the model drew
    by_hand = (0.5 * y ** 2 + 0.5 * math.log(2 * math.pi)).flatten(1).sum(1) + 16 * math.log(256.0)
    assert torch.allclose(nll, by_hand, rtol=1e-6)


def test_identity_flow_on_a_black_image_gives_the_analytic_bits_per_dim():
    # x = 0: y = u / 256, E[y^2] = 1 / (3 * 256^2), so
    # bits/dim = (1 / (6 * 256^2) + ln(2 pi) / 2 + ln 256) / ln 2 = 9.32575...
    model, _, _ = _identity_realnvp((1, 8, 8))
    torch.manual_seed(0)
    bpd = bits_per_dim(model.nll(torch.zeros(2000, 1, 8, 8)).mean().item(), model.dim)
    expected = (1 / (6 * 256 ** 2) + 0.5 * math.log(2 * math.pi) + math.log(256)) / math.log(2)
    assert abs(expected - 9.32575) < 1e-4
    assert abs(bpd - expected) < 1e-6
