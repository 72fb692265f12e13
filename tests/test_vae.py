"""VAE: the closed-form KL, the ELBO and the importance-weighted (IWAE) estimate, checked against
Monte Carlo, numerical integration and the monotonicity in K that Burda et al. (2016) prove."""
import math

import pytest
import torch

import models
from models.base import bits_per_dim
from models.vae.vae import ConvVAE, gaussian_kl_to_standard, gaussian_log_density
from tests.conftest import one_latent_vae_nlls


def _perturbed_vae(shape, latent_dim=2, seed=0):
    """An untrained VAE whose posterior is visibly unlike the prior (so KL and IWAE gaps are not ~0)."""
    torch.manual_seed(seed)
    model = ConvVAE(shape, latent_dim=latent_dim)
    with torch.no_grad():
        head = model.encoder[-1]
        head.bias[:latent_dim].normal_(0, 1.5)  # posterior means away from 0
        head.bias[latent_dim:].uniform_(-3.0, -1.0)  # posterior variances away from 1
    return model.eval()


def _noisy_prototypes(n, seed=0, size=8, flip=0.05):
    """Binary images: one of four fixed random patterns, each pixel flipped with probability ``flip``.
    A tiny dataset a small VAE learns within a few hundred steps (its entropy is about 14 nats)."""
    prototypes = (torch.rand(4, 1, size, size, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    g = torch.Generator().manual_seed(seed)
    which = torch.randint(0, 4, (n,), generator=g)
    flips = (torch.rand(n, 1, size, size, generator=g) < flip).float()
    return (prototypes[which] + flips) % 2


def test_registered_twice_with_their_latent_sizes():
    assert models.build("vae-z2", image_shape=(1, 8, 8)).latent_dim == 2
    assert models.build("vae-z4", image_shape=(1, 8, 8)).latent_dim == 4
    assert models.model_class("vae-z2") is models.model_class("vae-z4") is ConvVAE


def test_analytic_kl_matches_monte_carlo():
    torch.manual_seed(0)
    mean, logvar = torch.randn(5, 4), torch.randn(5, 4)
    draws = 200_000
    z = mean + torch.exp(0.5 * logvar) * torch.randn(draws, 5, 4)
    standard = torch.zeros(4)
    log_ratio = (gaussian_log_density(z, mean, logvar) - gaussian_log_density(z, standard, standard)).double()
    mc, stderr = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(draws)
    analytic = gaussian_kl_to_standard(mean, logvar).double()
    assert torch.all((mc - analytic).abs() < 5 * stderr + 1e-4), (mc, analytic, stderr)
    # and against torch's own Normal densities and KL (an independent implementation)
    q = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros(4), torch.ones(4))
    assert torch.allclose(analytic.float(), torch.distributions.kl_divergence(q, p).sum(-1), atol=1e-5)
    assert torch.allclose(gaussian_log_density(z[:3], mean, logvar), q.log_prob(z[:3]).sum(-1), atol=1e-4)


def test_iwae_with_one_sample_is_the_elbo_in_expectation():
    model = _perturbed_vae((1, 8, 8))
    x = _noisy_prototypes(4, seed=1)
    repeats = 1000
    x_many = x.repeat(repeats, 1, 1, 1)
    with torch.no_grad():
        torch.manual_seed(2)
        elbo = model.nll(x_many).double().view(repeats, 4)  # closed-form KL
        torch.manual_seed(3)
        iwae1 = model.iwae_nll(x_many, k=1).view(repeats, 4)  # Monte Carlo KL
    diff = elbo.mean(0) - iwae1.mean(0)
    stderr = torch.sqrt(elbo.var(0) / repeats + iwae1.var(0) / repeats)
    assert torch.all(diff.abs() < 4 * stderr), (diff, stderr)
    # the KL here is a few nats, so leaving it out of either side would fail the check above
    assert gaussian_kl_to_standard(*model.encode(x)).min() > 10 * stderr.max()


def test_iwae_approaches_the_exact_likelihood_of_a_one_dimensional_latent():
    # With a 1-d latent, log p(x) = log ∫ p(x | z) N(z; 0, 1) dz by quadrature on a fine grid.
    model = _perturbed_vae((1, 2, 2), latent_dim=1, seed=4)
    with torch.no_grad():  # a proposal q(z | x) = N(0.3, 1.5) that covers the posterior: low-variance weights
        model.encoder[-1].weight.zero_()
        model.encoder[-1].bias.copy_(torch.tensor([0.3, math.log(1.5)]))
    x = torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]).view(3, 1, 2, 2)
    exact_nll, iwae, stderr, elbo = one_latent_vae_nlls(model, x)  # quadrature, IWAE (K = 4,000), ELBO
    assert torch.all((iwae - exact_nll).abs() < 4 * stderr + 1e-4), (iwae, exact_nll, stderr)
    assert stderr.max() < 0.01  # so the check above is sharp
    assert torch.all(elbo > exact_nll + 0.02), (elbo, exact_nll)  # the ELBO is a strict bound here


def test_iwae_bound_tightens_with_k_on_a_trained_model():
    torch.manual_seed(0)
    model = ConvVAE((1, 8, 8), latent_dim=2)
    train, test = _noisy_prototypes(2000, seed=10), _noisy_prototypes(100, seed=11)
    (opt,) = model.configure_optimizers()
    for step in range(200):
        start = (step * 50) % len(train)
        model.train_step((train[start:start + 50], None), (opt,))
    model.eval()
    torch.manual_seed(1)
    repeats = 3
    nll = {k: torch.stack([model.iwae_nll(test, k=k) for _ in range(repeats)]).mean(0) for k in (1, 10, 100)}
    assert nll[1].mean() < 0.5 * 64 * math.log(2)  # it learnt something (a fair coin per pixel: 44 nats)
    for small, large in ((1, 10), (10, 100)):
        gap = nll[small] - nll[large]  # per test image, paired
        stderr = gap.std() / math.sqrt(len(gap))
        assert gap.mean() > -3 * stderr, (small, large, gap.mean(), stderr)
    gap = nll[1] - nll[100]
    assert gap.mean() > 4 * gap.std() / math.sqrt(len(gap))  # strictly tighter, not just equal


@pytest.mark.parametrize("size", [8, 14, 28])
def test_shapes_and_ranges(size):
    shape = (1, size, size)
    model = models.build("vae-z4", image_shape=shape).eval()
    x = torch.bernoulli(torch.full((3, *shape), 0.3))
    nll = model.nll(x)
    assert nll.shape == (3,) and torch.all(torch.isfinite(nll)) and torch.all(nll > 0)
    samples = model.sample(5)
    assert samples.shape == (5, *shape)
    assert samples.min() >= 0 and samples.max() <= 1
    assert model.decode_logits(torch.zeros(2, 4)).shape == (2, *shape)
    iwae = model.iwae_nll(x, k=3)
    assert iwae.shape == (3,) and torch.all(torch.isfinite(iwae))
    assert model.sampling_nfe == 1


def test_extra_metrics_rows():
    model = ConvVAE((1, 8, 8), latent_dim=2, iwae_samples=7).eval()
    x = torch.bernoulli(torch.full((10, 1, 8, 8), 0.5))
    rows = {r["metric"]: r for r in model.extra_metrics(x)}
    assert set(rows) == {"test_nll_iwae", "test_bpd_iwae"}
    assert rows["test_nll_iwae"]["unit"] == "nats" and rows["test_bpd_iwae"]["unit"] == "bits/dim"
    assert all(r["kind"] == "estimate" and r["note"] == "IWAE K=7" for r in rows.values())
    assert rows["test_bpd_iwae"]["value"] == pytest.approx(bits_per_dim(rows["test_nll_iwae"]["value"], 64))


def test_iwae_chunking_does_not_change_the_weights():
    model = _perturbed_vae((1, 8, 8))
    x = _noisy_prototypes(6, seed=2)
    torch.manual_seed(0)
    whole = model.log_importance_weights(x, 12, chunk=10_000)
    torch.manual_seed(0)
    mean, logvar = model.encode(x)
    eps = torch.randn(12, 6, 2)  # the same draws, decoded one at a time
    z = mean + torch.exp(0.5 * logvar) * eps
    expected = torch.stack([model.log_likelihood(x, z[j]) - 0.5 * (math.log(2 * math.pi) + z[j] ** 2).sum(-1)
                            - gaussian_log_density(z[j], mean, logvar) for j in range(12)], dim=1)
    assert torch.allclose(whole, expected, atol=1e-4)
    assert model.log_importance_weights(x, 12, chunk=7).shape == (6, 12)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="latent_dim"):
        ConvVAE((1, 8, 8), latent_dim=0)
    with pytest.raises(ValueError, match="K"):
        ConvVAE((1, 8, 8)).iwae_nll(torch.zeros(1, 1, 8, 8), k=0)
    with pytest.raises(ValueError, match="binary"):
        ConvVAE((1, 8, 8)).nll(torch.full((1, 1, 8, 8), 255.0))


def test_samples_are_binary_draws_with_the_decoders_pixel_means():
    """sample() draws x ~ Bernoulli(p(x | z)), z ~ N(0, I): binary pixels whose average over many draws
    is the model's marginal pixel mean E_z[sigmoid(decoder(z))], estimated independently."""
    torch.manual_seed(0)
    model = models.build("vae-z4", image_shape=(1, 8, 8)).eval()
    with torch.no_grad():  # pixel means far from the untrained 0.5, different per pixel
        for p in model.decoder.parameters():
            p.add_(0.5 * torch.randn_like(p))
    n = 4000
    draws = model.sample(n)
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    means = model.sample_means(n)
    diff = draws.mean(0) - means.mean(0)
    stderr = torch.sqrt(draws.var(0) / n + means.var(0) / n) + 1e-6
    assert (diff.abs() < 5 * stderr).all(), (diff / stderr).abs().max()
