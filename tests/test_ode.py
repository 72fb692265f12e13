"""models/ode.py, the likelihood FFJORD, flow matching and DDPM's probability-flow ODE share: against the
closed form of an affine field's flow, in both time directions; Hutchinson's estimate against the exact trace;
the fixed-step solvers' evaluation counts."""
import math

import pytest
import torch
from torch import nn

from models.ode import CountedField, DensityDynamics, log_likelihood, solve, standard_normal_log_prob

TIGHT = 1e-10


class AffineField(nn.Module):
    """f(z, t) = A z + b on flattened z."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, shape):
        super().__init__()
        self.a, self.b, self.shape = a, b, shape

    def forward(self, t, z):
        return (z.flatten(1) @ self.a.T + self.b).view(-1, *self.shape)


def affine_flow(a, b, z, span: float):
    """z(t0 + span) of dz/dt = A z + b from z(t0) = z: expm(A s) z + A^-1 (expm(A s) - I) b."""
    e = torch.linalg.matrix_exp(a * span)
    shift = torch.linalg.solve(a, (e - torch.eye(len(a), dtype=a.dtype)) @ b)
    return z.flatten(1) @ e.T + shift


@pytest.mark.parametrize("t_data,t_noise", [(0.0, 1.0), (1.0, 0.0)])
def test_the_exact_trace_likelihood_of_an_affine_flow_equals_its_closed_form(t_data, t_noise):
    # The flow carries z at t_data to z at t_noise, where it is scored by N(0, I); the log-density of the
    # data end is log N(z_noise) + log|det d z_noise / d z_data| = log N(z_noise) + tr(A) (t_noise - t_data).
    torch.manual_seed(0)
    shape = (1, 2, 2)
    a = torch.randn(4, 4, dtype=torch.float64) * 0.6
    b = torch.randn(4, dtype=torch.float64) * 0.3
    z = torch.randn(5, *shape, dtype=torch.float64)
    log_p, nfe = log_likelihood(DensityDynamics(AffineField(a, b, shape)), z, t_data=t_data, t_noise=t_noise,
                                probes=1, exact=True, rtol=TIGHT, atol=TIGHT, max_num_steps=10_000)
    z_noise = affine_flow(a, b, z, t_noise - t_data)
    expected = standard_normal_log_prob(z_noise) + a.trace() * (t_noise - t_data)
    assert log_p.shape == (1, 5) and nfe > 0
    assert torch.allclose(log_p[0], expected, atol=1e-6, rtol=0)


class TanhField(nn.Module):
    """A small nonlinear field, so that the trace varies along the path."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.lin1, self.lin2 = nn.Linear(5, 16).double(), nn.Linear(16, 4).double()

    def forward(self, t, z):
        flat = z.flatten(1)
        h = torch.tanh(self.lin1(torch.cat([flat, t.expand(len(flat), 1)], 1)))
        return self.lin2(h).view_as(z)


def test_hutchinson_estimates_average_to_the_exact_trace_likelihood():
    field = TanhField()
    z = torch.randn(3, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    dynamics = DensityDynamics(field)
    with torch.no_grad():
        exact, _ = log_likelihood(dynamics, z, t_data=0.0, t_noise=1.0, probes=1, exact=True, rtol=1e-8,
                                  atol=1e-8, max_num_steps=10_000)
        probes = 4000
        estimates, _ = log_likelihood(dynamics, z, t_data=0.0, t_noise=1.0, probes=probes, exact=False, rtol=1e-8,
                                      atol=1e-8, max_num_steps=10_000, generator=torch.Generator().manual_seed(2))
    assert estimates.shape == (probes, 3)
    assert estimates.std(0).min() > 1e-3  # the probes do vary: the test is not comparing exact with exact
    se = estimates.std(0) / math.sqrt(probes)
    assert ((estimates.mean(0) - exact[0]).abs() < 4 * se).all()


def test_a_generator_makes_the_probes_reproducible_without_touching_the_global_rng():
    field = TanhField()
    z = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    before = torch.random.get_rng_state()
    runs = [log_likelihood(DensityDynamics(field), z, t_data=0.0, t_noise=1.0, probes=3, exact=False, rtol=1e-6,
                           atol=1e-6, max_num_steps=1000, generator=torch.Generator().manual_seed(5))[0]
            for _ in range(2)]
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(runs[0].detach(), runs[1].detach())


@pytest.mark.parametrize("method,per_step", [("euler", 1), ("midpoint", 2), ("rk4", 4)])
def test_a_fixed_step_solver_takes_its_steps_and_counts_its_evaluations(method, per_step):
    # dz/dt = -z: each method's one-step growth factor is known; k steps of it from z0.
    counted = CountedField(lambda t, z: -z)
    z0 = torch.ones(2, 1, 1, 1, dtype=torch.float64)
    k = 5
    out = solve(counted, z0, 0.0, 1.0, method=method, steps=k)
    h = 1.0 / k
    factor = {"euler": 1 - h, "midpoint": 1 - h + h ** 2 / 2, "rk4": 1 - h + h ** 2 / 2 - h ** 3 / 6 + h ** 4 / 24}
    assert counted.calls == k * per_step
    assert torch.allclose(out, z0 * factor[method] ** k, atol=1e-12)


def test_an_unknown_solver_or_a_missing_step_count_is_refused():
    with pytest.raises(ValueError, match="unknown ODE solver"):
        solve(lambda t, z: z, torch.zeros(1), 0.0, 1.0, method="heun3")
    with pytest.raises(ValueError, match="step count"):
        solve(lambda t, z: z, torch.zeros(1), 0.0, 1.0, method="euler")
