"""DDPM: the forward process against its closed form, the bound's terms (signs, sum, prior, decoder
normalisation, unbiased estimate over t), the strided sampler's chain, and a training step."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

import models
from models.diffusion.ddpm import (DDPM, cosine_betas, discretized_gaussian_log_prob, linear_betas, normal_kl,
                         stratified_timesteps)


def reference_abar(T: int, schedule: str) -> np.ndarray:
    """abar_t from the papers' formulas, independently of the model code."""
    if schedule == "linear":
        betas = np.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T)
        return np.cumprod(1 - betas)
    f = lambda t: math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    return np.array([f(t) / f(0) for t in range(1, T + 1)])


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_q_sample_has_the_closed_form_mean_and_variance(schedule):
    T = 100
    model = DDPM(image_shape=(1, 2, 2), T=T, schedule=schedule)
    abar = reference_abar(T, schedule)
    assert np.allclose(model.chain.abar[:-1].numpy(), abar[:-1], rtol=1e-6)  # cosine clips only the last beta
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([[-1.0, -0.3], [0.4, 1.0]]).view(1, 1, 2, 2)
    draws = 40000
    for t in (0, 30, 80):
        xt = model.q_sample(x0.expand(draws, -1, -1, -1), torch.full((draws,), t),
                            torch.randn(draws, 1, 2, 2, generator=g))
        mean, var = math.sqrt(abar[t]) * x0, 1 - abar[t]
        se = math.sqrt(var / draws)
        assert (xt.mean(0) - mean[0]).abs().max() < 5 * se
        assert xt.var(0).sub(var).abs().max() < 5 * var * math.sqrt(2 / draws)


def test_normal_kl_matches_torch_distributions():
    m1, m2 = torch.randn(50), torch.randn(50)
    lv1, lv2 = torch.randn(50), torch.randn(50)
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(m1, (0.5 * lv1).exp()),
                                                 torch.distributions.Normal(m2, (0.5 * lv2).exp()))
    assert torch.allclose(normal_kl(m1, lv1, m2, lv2), expected, atol=1e-5)


@pytest.mark.parametrize("mean", [-1.5, -1.0, -0.3, 0.0, 0.99, 1.2])
@pytest.mark.parametrize("std", [1e-3, 1e-2, 1.0, 3.0])
def test_decoder_probabilities_over_all_256_values_sum_to_one(mean, std):
    x = torch.arange(256, dtype=torch.float64) * (2 / 255) - 1
    log_p = discretized_gaussian_log_prob(x, torch.full_like(x, mean), torch.full_like(x, 2 * math.log(std)))
    assert torch.isfinite(log_p).all() or std < 1e-2  # very narrow Gaussians may put exactly 0 on far bins
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-9)
    # An inner bin against scipy's normal CDF (its upper tail taken from sf, where cdf rounds to 1).
    k = 100
    lo, hi = (x[k].item() - 1 / 255 - mean) / std, (x[k].item() + 1 / 255 - mean) / std
    expected = norm.sf(lo) - norm.sf(hi) if lo > 0 else norm.cdf(hi) - norm.cdf(lo)
    if expected > 1e-300:
        assert log_p[k].item() == pytest.approx(math.log(expected), rel=1e-6, abs=1e-9)


def test_decoder_log_probability_stays_accurate_far_in_the_tail():
    # A bin 30 standard deviations above the mean: 1 - cdf there is 1e-198, a naive cdf difference gives 0.
    mean, std = 0.0, 0.01
    x = torch.tensor([0.3], dtype=torch.float64)
    log_p = discretized_gaussian_log_prob(x, torch.tensor([mean], dtype=torch.float64),
                                          torch.tensor([2 * math.log(std)], dtype=torch.float64))
    expected = math.log(norm.sf((x.item() - 1 / 255) / std) - norm.sf((x.item() + 1 / 255) / std))
    assert log_p.item() == pytest.approx(expected, rel=1e-6)


def small_model(**kwargs):
    torch.manual_seed(0)
    model = DDPM(image_shape=(1, 8, 8), T=25, width=16, **kwargs)
    # A non-trivial network (the output layer starts at zero).
    torch.nn.init.normal_(model.net.conv_out.weight, std=0.05)
    return model.eval()


def digits_batch(n=6):
    return torch.randint(0, 256, (n, 1, 8, 8), generator=torch.Generator().manual_seed(1)).float()


def test_bound_terms_are_non_negative_and_sum_to_nll():
    model, x = small_model(nll_t_samples=None), digits_batch()
    torch.manual_seed(5)
    terms = model.bound_terms(x)
    torch.manual_seed(5)
    nll = model.nll(x)
    for name, value in terms.items():
        assert (value >= 0).all(), name
    assert torch.allclose(terms["prior"] + terms["diffusion"] + terms["decoder"], nll.double(), rtol=1e-5)
    with torch.no_grad():  # every single term, not just their sum
        x0 = model.to_model_space(x)
        for t in range(model.T):
            assert (model._terms_at(x0, torch.full((len(x0),), t)) >= 0).all()


def test_prior_term_is_the_analytic_kl_and_near_zero():
    model = DDPM(T=1000)
    x = torch.tensor([0.0, 255.0, 128.0]).repeat_interleave(784).view(3, 1, 28, 28)
    x0 = x.double() * 2 / 255 - 1
    abar_T = reference_abar(1000, "linear")[-1]
    expected = 0.5 * (abar_T * x0 ** 2 + (1 - abar_T) - 1 - math.log(1 - abar_T)).flatten(1).sum(1)
    prior = model.prior_term(model.to_model_space(x))
    assert torch.allclose(prior.double(), expected, rtol=1e-4)
    assert prior.max() < 0.02  # nats per 784-pixel image


def test_stratified_timesteps_estimate_sums_without_bias():
    first, last, k = 1, 99, 6
    t, weights = stratified_timesteps(first, last, k, 20000, generator=torch.Generator().manual_seed(0))
    assert weights.sum().item() == last - first + 1
    assert set(t.flatten().tolist()) == set(range(first, last + 1))  # every timestep can be drawn
    assert (t.diff(dim=1) > 0).all()  # one draw per stratum, strata in order
    f = lambda s: (s.double() - 30) ** 2 + 1 / s.double()  # noqa: E731
    estimates = (f(t) * weights).sum(1)
    exact = f(torch.arange(first, last + 1)).sum().item()
    assert abs(estimates.mean().item() - exact) < 4 * estimates.std().item() / math.sqrt(len(estimates))


def test_monte_carlo_bound_agrees_with_the_exact_bound_on_average():
    exact_model, mc_model = small_model(nll_t_samples=None), small_model(nll_t_samples=3)
    x = digits_batch(4).repeat(100, 1, 1, 1)
    torch.manual_seed(0)
    exact, mc = exact_model.nll(x).double(), mc_model.nll(x).double()
    se = math.sqrt(exact.var() / len(x) + mc.var() / len(x))
    assert abs(exact.mean() - mc.mean()) < 4 * se


def test_strided_sub_chain_keeps_the_marginals():
    model = DDPM(image_shape=(1, 8, 8), T=1000, sampling_steps=50)
    assert model.sampling_nfe == 50
    assert model.sample_timesteps[-1] == 999
    assert torch.allclose(model.sample_chain.abar, model.chain.abar[model.sample_timesteps])
    full = DDPM(image_shape=(1, 8, 8), T=100, sampling_steps=None)
    assert full.sampling_nfe == 100
    assert torch.allclose(full.sample_chain.betas, full.chain.betas)


def test_train_step_returns_a_finite_loss():
    torch.manual_seed(0)
    model = DDPM(image_shape=(1, 14, 14), T=1000)
    stats = model.train_step((torch.randint(0, 256, (8, 1, 14, 14)).float(), None), model.configure_optimizers())
    assert math.isfinite(stats["loss"])
    assert stats["loss"] == pytest.approx(1.0, abs=0.2)  # eps ~ N(0, I) against an initial prediction of 0


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 14, 14), (1, 28, 28)])
def test_builds_and_samples_at_every_study_size(shape):
    model = models.build("ddpm", image_shape=shape, sampling_steps=3)
    x = model.sample(4)
    assert x.shape == (4, *shape)
    assert x.min() >= 0 and x.max() <= 1
    assert model.sampling_nfe == 3
    assert model.family == "diffusion" and model.likelihood == "bound" and model.track == "8bit"


def test_linear_and_cosine_betas_are_valid():
    for betas in (linear_betas(1000), cosine_betas(1000)):
        assert (betas > 0).all() and (betas < 1).all()


# --- the samplers, on Gaussian data with its exact denoiser -------------------------------------------
DATA_MEAN, DATA_STD = 0.2, 0.3  # per pixel; inside [-1, 1] but for 0.4% of draws, so x0 clipping hardly acts


class GaussianDenoiser(torch.nn.Module):
    """The optimal eps-prediction for data N(DATA_MEAN, DATA_STD^2) per pixel: E[eps | x_t]
    = sqrt(1 - a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a), a = abar at the network's timestep."""

    def __init__(self, abar):
        super().__init__()
        self.abar = torch.as_tensor(abar)
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the model a device

    def forward(self, x, t):
        a = self.abar[t].to(x.dtype).view(-1, 1, 1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * DATA_MEAN) / (a * DATA_STD ** 2 + 1 - a)


def gaussian_model(T, steps):
    model = DDPM(image_shape=(1, 2, 2), T=T, sampling_steps=steps)
    model.net = GaussianDenoiser(reference_abar(T, "linear"))
    return model


def exact_output_moments(T, steps, sampler, eta=0.0):
    """Mean and variance of x_0 from each sampler, by propagating them through its linear-Gaussian steps
    (from the papers' formulas and numpy, not the model's code)."""
    abar_full = reference_abar(T, "linear")
    timesteps = np.unique(np.round(np.linspace(0, T - 1, steps)).astype(int))
    abar = abar_full[timesteps]
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    mean, var, mu, v = 0.0, 1.0, DATA_MEAN, DATA_STD ** 2
    for i in reversed(range(len(abar))):
        a, a_s = abar[i], abar_prev[i]
        k = math.sqrt(a) * v / (a * v + 1 - a)  # E[x0 | x_t] = mu + k (x_t - sqrt(a) mu)
        x0 = lambda m: mu + k * (m - math.sqrt(a) * mu)  # noqa: E731
        if sampler == "ancestral":
            beta = 1 - a / a_s
            c0, c1 = beta * math.sqrt(a_s) / (1 - a), (1 - a_s) * math.sqrt(1 - beta) / (1 - a)
            new_mean, slope = c0 * x0(mean) + c1 * mean, c0 * k + c1
            noise_var = beta * (1 - a_s) / (1 - a) if i > 0 else 0.0
        else:
            noise_var = eta ** 2 * (1 - a_s) / (1 - a) * (1 - a / a_s)
            r = math.sqrt(1 - a_s - noise_var) / math.sqrt(1 - a)
            new_mean = math.sqrt(a_s) * x0(mean) + r * (mean - math.sqrt(a) * x0(mean))
            slope = math.sqrt(a_s) * k + r * (1 - math.sqrt(a) * k)
        mean, var = new_mean, slope ** 2 * var + noise_var
    return mean, var


def sample_moments(model, n=20000, **options):
    torch.manual_seed(0)
    x = model.sample(n, **options).double() * 2 - 1  # back to [-1, 1]
    return x.mean().item(), x.var().item(), x.numel()


@pytest.mark.parametrize("T, steps, sampler, eta", [
    (100, 100, "ancestral", 0.0), (100, 100, "ddim", 1.0), (100, 100, "ddim", 0.0),
    (100, 10, "ancestral", 0.0), (100, 10, "ddim", 0.0), (1000, 20, "ddim", 0.5)])
def test_each_sampler_has_its_exact_output_moments(T, steps, sampler, eta):
    mean, var, n = sample_moments(gaussian_model(T, steps), sampler=sampler, eta=eta)
    want_mean, want_var = exact_output_moments(T, steps, sampler, eta)
    assert abs(mean - want_mean) < 5 * math.sqrt(want_var / n)
    assert abs(var - want_var) < 5 * want_var * math.sqrt(2 / n)


def test_ddim_with_eta_one_on_the_full_chain_samples_like_ancestral_and_like_the_data():
    model = gaussian_model(1000, None)
    ancestral = sample_moments(model, sampler="ancestral")
    ddim = sample_moments(model, sampler="ddim", eta=1.0)
    n = ancestral[2]
    for mean, var, _ in (ancestral, ddim):
        assert abs(mean - DATA_MEAN) < 0.01
        assert var == pytest.approx(DATA_STD ** 2, rel=0.05)  # the full chain: 3% under, its discretization
    assert abs(ancestral[0] - ddim[0]) < 5 * math.sqrt(2 * ancestral[1] / n)
    assert abs(ancestral[1] - ddim[1]) < 5 * ancestral[1] * math.sqrt(4 / n)


def test_respaced_ancestral_sampler_keeps_the_mean_and_most_of_the_variance():
    mean, var, _ = sample_moments(gaussian_model(1000, 100), sampler="ancestral")
    assert abs(mean - DATA_MEAN) < 0.01
    assert 0.7 * DATA_STD ** 2 < var < 1.05 * DATA_STD ** 2  # fewer steps lose variance (about 18% at 100)


def test_ddim_with_eta_zero_is_a_deterministic_map_of_the_starting_noise():
    model = gaussian_model(100, 20)
    x_T = torch.randn(8, 1, 2, 2, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(1)
    first = model.denoise(x_T, model.sample_timesteps, model.sample_chain, "ddim", eta=0.0)
    torch.manual_seed(2)
    second = model.denoise(x_T, model.sample_timesteps, model.sample_chain, "ddim", eta=0.0)
    assert torch.equal(first, second)
    noisy = model.denoise(x_T, model.sample_timesteps, model.sample_chain, "ddim", eta=1.0)
    assert not torch.equal(first, noisy)


def test_sampler_settings_set_the_chain_the_cost_and_the_description():
    model = DDPM(image_shape=(1, 8, 8), T=1000, sampler="ddim", eta=0.0)
    assert model.sampling_nfe == 50 and "DDIM (eta=0), 50 respaced steps of the T=1000" in model.sampler_description()
    model.sampling_steps = 10
    assert model.sampling_nfe == 10 and model.sample_timesteps[-1] == 999
    assert torch.allclose(model.sample_chain.abar, model.chain.abar[model.sample_timesteps])
    model.sampling_steps = 5000  # capped at T
    assert model.sampling_nfe == 1000 and "all 1000 steps" in model.sampler_description()
    assert "bound of the T=1000 linear chain" in model.likelihood_description()
    with pytest.raises(ValueError, match="unknown sampler"):
        DDPM(image_shape=(1, 8, 8), sampler="euler")
    with pytest.raises(ValueError, match="at least 1"):
        model.sampling_steps = 0
