"""The 8-bit VAE: its decoder is a distribution over the 256 values (the probabilities of all 65,536
images of 1 x 1 x 2 sum to one for any z), its ELBO bounds the exact discrete likelihood (quadrature over
a one-dimensional latent) and its IWAE estimate approaches it, and its samples are draws of 8-bit values."""
import math

import pytest
import torch

import models
from models import discretized_logistic as logistic
from tests.conftest import one_latent_vae_nlls


def perturbed(shape, latent_dim=1, seed=0):
    torch.manual_seed(seed)
    model = models.build("vae-8bit", image_shape=shape, latent_dim=latent_dim)
    with torch.no_grad():
        for p in model.decoder.parameters():  # a decoder whose p(x | z) moves visibly with z
            p.mul_(3.0)
    return model.eval()


def test_decoder_probabilities_of_all_65536_images_sum_to_one_for_any_z():
    model = perturbed((1, 1, 2)).double()
    values = torch.arange(256, dtype=torch.float64)
    images = torch.cartesian_prod(values, values).view(-1, 1, 1, 2)
    with torch.no_grad():
        for z in (-2.0, 0.0, 1.3):
            log_p = model.log_likelihood(images, torch.full((len(images), 1), z, dtype=torch.float64))
            assert abs(torch.exp(log_p).sum().item() - 1.0) < 1e-6


def test_elbo_bounds_and_iwae_approaches_the_exact_discrete_likelihood():
    # log P(x) = log ∫ P(x | z) N(z; 0, 1) dz by quadrature over a 1-d latent, on 1 x 2 x 2 images.
    model = perturbed((1, 2, 2), latent_dim=1, seed=3)
    with torch.no_grad():  # a proposal q(z | x) = N(0.2, 1.5) covering the posterior: low-variance weights
        model.encoder[-1].weight.zero_()
        model.encoder[-1].bias.copy_(torch.tensor([0.2, math.log(1.5)]))
    x = torch.tensor([[0.0, 255.0, 128.0, 3.0], [40.0, 41.0, 250.0, 0.0]]).view(2, 1, 2, 2)
    exact_nll, iwae, stderr, elbo = one_latent_vae_nlls(model, x)  # quadrature, IWAE (K = 4,000), ELBO
    assert torch.all((iwae - exact_nll).abs() < 4 * stderr + 1e-4), (iwae, exact_nll, stderr)
    assert stderr.max() < 0.02
    assert torch.all(elbo > exact_nll + 0.02), (elbo, exact_nll)  # a strict upper bound on the NLL


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 8, 8), (3, 32, 32)])
def test_shapes_ranges_and_rows(shape):
    model = models.build("vae-8bit", image_shape=shape).eval()
    assert model.track == "8bit" and model.likelihood == "bound"
    x = torch.randint(0, 256, (3, *shape)).float()
    nll = model.nll(x)
    assert nll.shape == (3,) and torch.all(torch.isfinite(nll)) and torch.all(nll > 0)
    samples = model.sample(4)
    assert samples.shape == (4, *shape) and samples.min() >= 0 and samples.max() <= 1
    assert torch.allclose(samples * 255, (samples * 255).round(), atol=1e-4)  # 8-bit values, not means
    rows = {r["metric"]: r for r in model.extra_metrics(x)}
    assert rows["test_bpd_iwae"]["kind"] == "estimate" and rows["test_bpd_iwae"]["note"] == "IWAE K=100"
    assert math.isclose(rows["test_bpd_iwae"]["value"], rows["test_nll_iwae"]["value"] / (model.dim * math.log(2)))


def test_samples_follow_the_decoders_distribution():
    """For a fixed z, the sample frequencies of one pixel match the decoder's 256 probabilities."""
    model = perturbed((1, 1, 2), seed=1)
    z = torch.full((1, 1), 0.7)
    with torch.no_grad():
        probs = logistic.probabilities(model.decode_params(z))[0, 0, 0, 0].double()
        torch.manual_seed(2)
        model.decode_params = lambda _z, f=model.decode_params: f(z.expand(len(_z), 1))  # pin z
        values = (model.sample(50000)[:, 0, 0, 0] * 255).round().long()
    observed = torch.bincount(values, minlength=256).double()
    expected = probs * 50000
    keep = expected > 5
    chi2 = ((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum().item()
    from scipy import stats
    assert chi2 < stats.chi2.ppf(0.999, int(keep.sum()) - 1)
