"""DDPM's probability-flow ODE: its density against the closed form for Gaussian data (the ODE is linear
there), Hutchinson's estimate against the exact trace, the ODE sampler's map and its measured NFE, and
the ``test_nll_ode`` / ``test_bpd_ode`` rows (finite, kind "bound", the global RNG untouched)."""
import math

import numpy as np
import pytest
import torch

import models
from models.diffusion.ddpm import DDPM
from models.ode import CountedField, solve

MU, S = 0.2, 0.3  # Gaussian data N(MU, S^2) per pixel, in model space [-1, 1]


def linear_abar(T: int) -> np.ndarray:
    """abar_t of Ho's linear schedule (the ends scaled by 1000 / T, betas clipped at 0.999), with numpy."""
    betas = np.clip(np.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T), None, 0.999)
    return np.cumprod(1 - betas)


class ContinuousGaussianDenoiser(torch.nn.Module):
    """The optimal eps for data N(MU, S^2): E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) MU) / (a S^2 + 1 - a), at a
    float timestep t: log sigma is interpolated linearly between the integer timesteps (as the ODE's time map
    is) and a = 1 / (1 + sigma^2). Counts its calls."""

    def __init__(self, abar: np.ndarray):
        super().__init__()
        self.log_sigma = torch.tensor(0.5 * np.log((1 - abar) / abar), dtype=torch.float64)
        self.anchor = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))  # the model's device and dtype
        self.calls = 0

    def forward(self, x, t):
        self.calls += 1
        t = t.double()
        i = t.floor().long().clamp(0, len(self.log_sigma) - 2)
        lam = self.log_sigma[i] + (t - i) * (self.log_sigma[i + 1] - self.log_sigma[i])
        a = torch.sigmoid(-2 * lam).to(x.dtype).view(-1, 1, 1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * S ** 2 + 1 - a)


def gaussian_model(T: int, **kwargs) -> DDPM:
    model = DDPM(image_shape=(1, 2, 2), T=T, **kwargs)
    model.net = ContinuousGaussianDenoiser(linear_abar(T))
    return model


def model_marginal(T: int) -> tuple[float, float]:
    """Mean and variance per pixel of the ODE model's x at the first step, derived by hand.

    In xbar = x_t / sqrt(a), sigma^2 = (1 - a) / a, the data's xbar is N(MU, S^2 + sigma^2) and the optimal
    eps is sigma (xbar - MU) / (S^2 + sigma^2), so d xbar / d sigma = sigma (xbar - MU) / (S^2 + sigma^2):
    xbar - MU grows as sqrt(S^2 + sigma^2). From the prior xbar ~ N(0, 1 + sigma_max^2) the map to sigma_0
    is linear, xbar_0 = MU + r (xbar_max - MU) with r = sqrt((S^2 + sigma_0^2) / (S^2 + sigma_max^2)), and
    x = sqrt(a_0) xbar_0: mean sqrt(a_0) MU (1 - r), variance (a_0 S^2 + 1 - a_0) / (a_T S^2 + 1 - a_T)."""
    abar = linear_abar(T)
    a0, aT = abar[0], abar[-1]
    s0, smax = (1 - a0) / a0, (1 - aT) / aT  # sigma^2 at the two ends
    r = math.sqrt((S ** 2 + s0) / (S ** 2 + smax))
    return math.sqrt(a0) * MU * (1 - r), (a0 * S ** 2 + 1 - a0) / (aT * S ** 2 + 1 - aT)


def analytic_log_density(x: torch.Tensor, T: int) -> torch.Tensor:
    mean, var = model_marginal(T)
    return (-0.5 * ((x - mean) ** 2 / var + math.log(2 * math.pi * var))).flatten(1).sum(1)


POINTS = torch.tensor([[-0.9, 0.1, 0.5, 1.0], [0.2, 0.2, 0.2, 0.2], [-1.0, 0.7, -0.3, 0.45]],
                      dtype=torch.float64).view(3, 1, 2, 2)


@pytest.mark.parametrize("T", [1000, 20])  # T = 20: a coarse time grid, so the interpolation shows
def test_ode_log_density_of_gaussian_data_is_the_analytic_push_forward(T):
    model = gaussian_model(T, ode_max_steps=10000)
    assert model.ode_exact_trace  # D = 4
    log_p, nfe = model.ode_log_density(POINTS, rtol=1e-10, atol=1e-10)
    assert log_p.shape == (1, 3)
    assert nfe > 0
    expected = analytic_log_density(POINTS, T)
    assert torch.allclose(log_p[0], expected, rtol=0, atol=1e-7), (log_p[0] - expected).tolist()
    if T == 1000:  # abar_T = 4e-5: the prior's mismatch shows at this tolerance, so the data's own
        a0 = linear_abar(T)[0]  # marginal at the first step would not do as the reference
        data_marginal = (-0.5 * ((POINTS - math.sqrt(a0) * MU) ** 2 / (a0 * S ** 2 + 1 - a0)
                                 + math.log(2 * math.pi * (a0 * S ** 2 + 1 - a0)))).flatten(1).sum(1)
        assert (data_marginal - expected).abs().max() > 1e-5


def test_ode_nll_adds_dequantization_and_the_8bit_terms():
    T = 1000
    model = gaussian_model(T, ode_rtol=1e-9, ode_atol=1e-9, ode_max_steps=10000)
    x = torch.tensor([[0, 255, 128, 77], [140, 140, 141, 139]], dtype=torch.float64).view(2, 1, 2, 2)
    nll, nfes = model.ode_nll(x, generator=torch.Generator().manual_seed(3))
    assert nll.shape == (1, 2) and len(nfes) == 1
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)  # the same draw
    z = 2 * (x + u) / 256 - 1
    expected = -(analytic_log_density(z, T) + 4 * math.log(2.0)) + 4 * math.log(256.0)
    assert torch.allclose(nll[0], expected, rtol=0, atol=1e-6)


def test_ode_timestep_interpolates_the_integer_grid_in_log_sigma():
    model = DDPM(image_shape=(1, 2, 2), T=50)
    grid = model.ode_lambdas
    for i in (0, 1, 17, 48, 49):
        assert model.ode_timestep(grid[i]).item() == pytest.approx(i, abs=1e-9)
    mid = 0.5 * (grid[10] + grid[11])
    assert model.ode_timestep(mid).item() == pytest.approx(10.5, abs=1e-9)


def random_unet_model(shape=(1, 8, 8), **kwargs):
    torch.manual_seed(0)
    model = DDPM(image_shape=shape, T=100, width=8, **kwargs)
    torch.nn.init.normal_(model.net.conv_out.weight, std=0.05)  # a field with a dense Jacobian
    return model.eval()


class DenseField(torch.nn.Module):
    """eps(x, t) = tanh(W x) (1 + t / T): a smooth network with a dense Jacobian, so e^T J e varies with e,
    and W = I + noise, so that the trace (the log-det) is large against the probes' spread."""

    def __init__(self, dim: int, T: int):
        super().__init__()
        noise = torch.randn(dim, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        self.W = torch.nn.Parameter(torch.eye(dim, dtype=torch.float64) + noise * 0.5 / math.sqrt(dim))
        self.T = T

    def forward(self, x, t):
        return (torch.tanh(x.flatten(1) @ self.W.T) * (1 + t.to(x.dtype)[:, None] / self.T)).view_as(x)


def test_hutchinson_mean_over_many_probes_converges_to_the_exact_trace():
    model = DDPM(image_shape=(1, 4, 4), T=100, ode_max_steps=2000)
    model.net = DenseField(16, 100)
    x = torch.tensor([[-0.5, 0.1, 0.9, -0.2] * 4, [0.3] * 16], dtype=torch.float64).view(2, 1, 4, 4)
    with torch.no_grad():
        exact, _ = model.ode_log_density(x, exact=True, rtol=1e-6, atol=1e-6)
        probes = 1000  # 1000 x 2 rows of 16: small enough that torch runs each op on one thread
        estimates, _ = model.ode_log_density(x, exact=False, probes=probes, rtol=1e-6, atol=1e-6,
                                             generator=torch.Generator().manual_seed(0))
    assert estimates.shape == (probes, 2)
    spread = estimates.std(0)
    assert (spread > 0.1).all()  # the probes do differ: the test is not trivially exact
    gap = (estimates.mean(0) - exact[0]).abs()
    assert (gap < 4 * spread / math.sqrt(probes)).all(), (gap, spread)
    assert (gap < 0.1 * spread).all()  # and the mean has moved well inside one probe's spread
    # The trace's integral is large against that standard error, so a biased estimator would show.
    a0 = model.chain.abar[0].item()
    lam_data, lam_noise = model.ode_ends
    with torch.no_grad():
        at_noise = solve(CountedField(model.probability_flow), x / math.sqrt(a0), lam_data, lam_noise,
                         rtol=1e-6, atol=1e-6, max_num_steps=2000)
    trace_integral = model.ode_log_prior(at_noise) - (exact[0] + 8 * math.log(a0))  # D log sqrt(abar_0), D = 16
    assert (trace_integral.abs() > 10 * spread / math.sqrt(probes)).all(), trace_integral


def test_ode_sampler_maps_the_prior_to_the_data_and_reports_its_own_nfe():
    T = 1000
    model = gaussian_model(T, sampler="ode", sampling_steps=10, ode_sample_tol=1e-5)
    x_T = torch.randn(20000, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x0 = model.denoise(x_T, model.sample_timesteps, model.sample_chain, "ode")
    abar = linear_abar(T)
    s0, smax = (1 - abar[0]) / abar[0], (1 - abar[-1]) / abar[-1]
    r = math.sqrt((S ** 2 + s0) / (S ** 2 + smax))
    exact_map = math.sqrt(abar[0]) * (MU + r * (x_T / math.sqrt(abar[-1]) - MU))
    assert (x0 - exact_map).abs().max() < 1e-3
    n = x0.numel()
    assert abs(x0.mean().item() - MU) < 5 * S / math.sqrt(n)
    assert x0.var().item() == pytest.approx(S ** 2, rel=5 * math.sqrt(2 / n))

    # sample(): the NFE is the solver's own count of field calls, not the (unused) step count.
    model.net.calls = 0
    model.sample(64)
    assert model.ode_sample_nfe[-1] == model.net.calls
    assert model.sampling_nfe == pytest.approx(sum(model.ode_sample_nfe) / len(model.ode_sample_nfe))
    assert model.sampling_nfe != model.sampling_steps  # 10 steps asked; dopri5 counts 2 + 6 per attempt
    assert model.sampling_step_options == () and model.sampling_cost_depends_on_weights
    assert "probability-flow ODE" in model.sampler_description()


def test_ode_sampling_nfe_without_a_solve_runs_one_and_leaves_the_global_rng_alone():
    model = gaussian_model(100, sampler="ode")
    state = torch.random.get_rng_state()
    nfe = model.sampling_nfe
    assert torch.equal(state, torch.random.get_rng_state())
    assert nfe == model.net.calls > 0


def test_extra_metrics_give_finite_ode_bounds_without_touching_the_global_rng():
    torch.manual_seed(0)
    model = models.build("ddpm", image_shape=(1, 8, 8), width=8, ode_images=4, ode_probes=2,
                         ode_rtol=1e-3, ode_atol=1e-3).eval()
    torch.nn.init.normal_(model.net.conv_out.weight, std=0.02)
    x = torch.randint(0, 256, (10, 1, 8, 8), generator=torch.Generator().manual_seed(1)).float()
    state = torch.random.get_rng_state()
    rows = model.extra_metrics(x)
    assert torch.equal(state, torch.random.get_rng_state())
    by_name = {r["metric"]: r for r in rows}
    assert set(by_name) == {"test_nll_ode", "test_bpd_ode"}
    nll, bpd = by_name["test_nll_ode"], by_name["test_bpd_ode"]
    assert nll["kind"] == bpd["kind"] == "bound"
    assert nll["unit"] == "nats" and bpd["unit"] == "bits/dim"
    assert math.isfinite(nll["value"]) and math.isfinite(bpd["value"])
    assert bpd["value"] == pytest.approx(nll["value"] / (64 * math.log(2)))
    assert nll["value"] > 0  # a bound on -log P of discrete data
    for r in rows:
        assert "dopri5" in r["note"] and "NFE" in r["note"] and "4 test images" in r["note"]
        assert "2 Hutchinson probe(s)" in r["note"] and "standard error" in r["note"]
    assert model.extra_metrics(x) == rows  # its own seeded generator: the same draws every time


def test_extra_metrics_return_nothing_when_the_solver_hits_its_step_limit():
    model = random_unet_model(ode_max_steps=1)
    x = torch.randint(0, 256, (4, 1, 8, 8), generator=torch.Generator().manual_seed(1)).float()
    with pytest.warns(RuntimeWarning, match="no ODE likelihood rows"):
        assert model.extra_metrics(x) == []


def test_ode_settings_are_evaluation_settings_not_the_samplers():
    model = DDPM(image_shape=(1, 8, 8))
    assert {"ode_images", "ode_probes", "ode_rtol", "ode_atol", "ode_max_steps"}.isdisjoint(model.sampler_settings)
    assert "ode_sample_tol" in model.sampler_settings and "ode" in model.samplers
    assert model.sampling_step_options and not model.sampling_cost_depends_on_weights  # ancestral by default
    description = model.likelihood_description()
    assert "variational bound of the T=1000" in description and "probability-flow ODE" in description
