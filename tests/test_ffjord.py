"""FFJORD: the trace ODE against closed forms and autograd, Hutchinson's unbiasedness, inversion, NFE counts."""
import math

import pytest
import torch
from torch import nn
from torchdiffeq import odeint

import models
from models.ode import CountedField, DensityDynamics, SolverStepLimit, hutchinson_divergence, solve

TIGHT = 1e-8


def _random_ffjord(shape=(1, 2, 2), seed=0, scale=0.3, **kwargs):
    """A double-precision FFJORD whose field is not zero (the untrained one is the identity)."""
    torch.manual_seed(seed)
    model = models.build("ffjord", image_shape=shape, hidden=8, rtol=TIGHT, atol=TIGHT, **kwargs).double()
    with torch.no_grad():
        model.field.convs[-1].conv.weight.normal_(0, scale)
        model.field.convs[-1].conv.bias.normal_(0, scale)
    return model


class LinearField(nn.Module):
    """f(z, t) = A z on flattened z."""

    def __init__(self, a: torch.Tensor, shape):
        super().__init__()
        self.a, self.shape = a, shape

    def forward(self, t, z):
        return (z.flatten(1) @ self.a.T).view(-1, *self.shape)


def _use_field(model, field):
    model.dynamics = DensityDynamics(field)
    model.sampler_dynamics = CountedField(field)
    return model


def test_linear_field_log_density_change_matches_closed_form():
    # dz/dt = A z: z(t) = expm(A t) z(0) and the log-density changes by -tr(A) t (exact trace path).
    shape = (1, 2, 2)
    model = _random_ffjord(shape)
    assert model.exact_trace
    torch.manual_seed(1)
    a = torch.randn(4, 4, dtype=torch.float64) * 0.7
    _use_field(model, LinearField(a, shape))
    z0 = torch.randn(3, *shape, dtype=torch.float64)
    t = 0.8
    delta0 = torch.zeros(3, dtype=torch.float64)
    z_t, delta = solve(model.dynamics, (z0, delta0), 0.0, t, rtol=TIGHT, atol=TIGHT, max_num_steps=model.max_num_steps)
    expected_z = z0.flatten(1) @ torch.linalg.matrix_exp(a * t).T
    assert torch.allclose(z_t.flatten(1), expected_z, atol=1e-6)
    assert torch.allclose(delta, torch.full((3,), -a.trace().item() * t, dtype=torch.float64), atol=1e-8)


def test_likelihood_matches_change_of_variables_through_the_solver():
    # log p(y) = log N(z1(y)) + log|det dz1/dy| with the Jacobian of the whole map (logit + solve) taken by
    # autograd through the solver: independent of the trace ODE that nll_continuous integrates.
    shape = (1, 2, 2)
    model = _random_ffjord(shape)
    y = torch.rand(2, *shape, dtype=torch.float64) * 0.8 + 0.1
    nll = model.nll_continuous(y, 1, TIGHT, TIGHT, "nll")[0]

    def to_latent(v):
        z0, _ = model.to_logit(v.view(1, *shape))
        return model.integrate_field(z0, 0.0, 1.0, TIGHT, TIGHT, "check").flatten()

    for i in range(2):
        jac = torch.autograd.functional.jacobian(to_latent, y[i].flatten())
        z1 = to_latent(y[i].flatten())
        log_p = -0.5 * (z1 ** 2 + math.log(2 * math.pi)).sum() + torch.linalg.slogdet(jac)[1]
        assert abs(nll[i].item() + log_p.item()) < 1e-5
    assert abs(model.nll_continuous(y, 1, TIGHT, TIGHT, "nll")[0] - nll).max() < 1e-10  # exact: no noise


def test_hutchinson_divergence_is_unbiased():
    model = _random_ffjord((1, 4, 4), scale=0.5)
    torch.manual_seed(2)
    z = torch.randn(1, 1, 4, 4, dtype=torch.float64).requires_grad_(True)
    t = torch.tensor(0.3, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: model.field(t, v.view(1, 1, 4, 4)).flatten(), z.flatten())
    exact = jac.trace().item()
    k = 2000
    zs = z.detach().repeat(k, 1, 1, 1).requires_grad_(True)
    probe = torch.randint(0, 2, zs.shape).double() * 2 - 1
    estimates = hutchinson_divergence(model.field(t, zs), zs, probe, create_graph=False)
    se = estimates.std().item() / math.sqrt(k)
    assert se > 0  # a real Monte Carlo estimate, not the exact trace in disguise
    assert abs(estimates.mean().item() - exact) < 4 * se


def test_hutchinson_log_density_is_unbiased_against_exact_trace():
    # log p is linear in the trace integral, so the probe estimates of -log p average to the exact value.
    exact_model = _random_ffjord((1, 4, 4), exact_trace_max_dim=16)
    probe_model = _random_ffjord((1, 4, 4), exact_trace_max_dim=0)
    y = torch.rand(1, 1, 4, 4, dtype=torch.float64) * 0.8 + 0.1
    with torch.no_grad():
        exact = exact_model.nll_continuous(y, 1, 1e-6, 1e-6, "nll")[0, 0].item()
        k = 300
        estimates = probe_model.nll_continuous(y, k, 1e-6, 1e-6, "nll")[:, 0]
    se = estimates.std().item() / math.sqrt(k)
    assert se > 0
    assert abs(estimates.mean().item() - exact) < 4 * se


def test_reverse_solve_inverts_forward_solve():
    model = _random_ffjord((1, 6, 6))
    z0 = torch.randn(4, 1, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        z1 = model.integrate_field(z0, 0.0, 1.0, 1e-7, 1e-7, "check")
        back = model.integrate_field(z1, 1.0, 0.0, 1e-7, 1e-7, "check")
    assert (z1 - z0).abs().max() > 0.1
    assert torch.allclose(back, z0, atol=1e-5)


def test_samples_mapped_forward_recover_the_prior_draws():
    model = _random_ffjord((1, 3, 3), scale=0.2)
    samples = model.sample(8, generator=torch.Generator().manual_seed(5))
    z1 = torch.randn(8, 1, 3, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    inside = ((samples > 0) & (samples < 1)).flatten(1).all(1)  # clamped samples lost their latent
    assert inside.sum() >= 4
    with torch.no_grad():
        back = model.integrate_field(model.to_logit(samples[inside])[0], 0.0, 1.0, TIGHT, TIGHT, "check")
    assert torch.allclose(back, z1[inside], atol=1e-5)
    assert samples.shape == (8, 1, 3, 3)


class CallCounter(nn.Module):
    def __init__(self, field):
        super().__init__()
        self.field, self.calls = field, 0

    def forward(self, t, z):
        self.calls += 1
        return self.field(t, z)


def test_nfe_is_the_number_of_field_calls():
    model = _random_ffjord((1, 4, 4))
    counter = CallCounter(model.field)
    _use_field(model, counter)
    before = torch.random.get_rng_state()
    first = model.sampling_nfe  # no sampling yet: one private small solve, drawing no global randomness
    assert torch.equal(torch.random.get_rng_state(), before)
    assert first == counter.calls > 0
    model.sample(3)
    model.nll_continuous(torch.rand(2, 1, 4, 4, dtype=torch.float64), 1, 1e-5, 1e-5, "nll")
    assert model.nfe_log["sample"][-1] + model.nfe_log["nll"][-1] + first == counter.calls
    assert model.sampling_nfe == sum(model.nfe_log["sample"]) / 2
    # torchdiffeq's own calls of a plain function on the same solve give the same count
    calls = []
    z1 = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    odeint(lambda t, z: calls.append(1) or model.field(t, z), z1, torch.tensor([1.0, 0.0], dtype=torch.float64),
           method="dopri5", rtol=TIGHT, atol=TIGHT)
    model.sample(3, generator=torch.Generator().manual_seed(7))
    assert model.nfe_log["sample"][-1] == len(calls)


def test_step_limit_raises_a_clear_error():
    model = _random_ffjord((1, 4, 4), scale=1.0, max_num_steps=2)
    with pytest.raises(SolverStepLimit, match="max_num_steps"):
        model.sample(2)


def test_training_step_evaluation_and_checks_on_8bit_images():
    torch.manual_seed(0)
    model = models.build("ffjord", image_shape=(1, 6, 6), hidden=8)
    x = torch.randint(0, 256, (4, 1, 6, 6)).float()
    stats = model.train_step((x, None), model.configure_optimizers())
    assert math.isfinite(stats["loss"]) and stats["nfe"] > 0
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():
        nll = model.nll(x)
    assert nll.shape == (4,) and torch.isfinite(nll).all()
    rows = {r["metric"]: r for r in model.extra_metrics(x)}
    assert rows["nll_probe_se"]["value"] > 0 and rows["nll_nfe"]["value"] == model.nfe_log["nll"][0]
    assert rows["train_nfe"]["value"] == stats["nfe"]
    (check,) = model.self_checks(x)
    assert check["passed"], check
