"""Flow matching: the loss's minimiser is the analytic velocity; a trained field carries N(0, 1) to its target;
the likelihood agrees with the sampler's map; NFE is counted, never assumed; the OT pairing is optimal."""
import itertools
import math

import pytest
import torch
from torch import nn
from torchdiffeq import odeint

import models
from models.flows.flow_matching import TIME_SCALE, FlowMatching, ot_pairing, straight_path

TIGHT = 1e-8


def gaussian_velocity(x, t, m, s):
    """E[x_1 - x_0 | x_t = x] for x_0 ~ N(0, 1), x_1 ~ N(m, s^2) independent, on the straight path."""
    var = (1 - t) ** 2 + t ** 2 * s ** 2
    return m + (t * s ** 2 - (1 - t)) / var * (x - t * m)


@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_the_loss_minimiser_on_gaussian_to_gaussian_is_the_analytic_velocity(t):
    # At fixed t the analytic velocity is affine in x_t, so least squares of the loss's target on (x_t, 1)
    # recovers the loss minimiser's slope and intercept; they must equal the closed form.
    g = torch.Generator().manual_seed(0)
    m, s, n = 1.5, 0.5, 400_000
    x0 = torch.randn(n, 1, generator=g, dtype=torch.float64)
    x1 = m + s * torch.randn(n, 1, generator=g, dtype=torch.float64)
    xt, target = straight_path(x0, x1, torch.full((n,), t, dtype=torch.float64))
    design = torch.cat([xt, torch.ones_like(xt)], 1)
    slope, intercept = torch.linalg.lstsq(design, target).solution.flatten().tolist()
    var = (1 - t) ** 2 + t ** 2 * s ** 2
    expected_slope = (t * s ** 2 - (1 - t)) / var
    assert slope == pytest.approx(expected_slope, abs=0.01)
    assert intercept == pytest.approx(m - expected_slope * t * m, abs=0.01)
    # and the analytic field's loss is the smallest: a perturbed field does worse
    best = ((gaussian_velocity(xt, t, m, s) - target) ** 2).mean()
    assert best < ((gaussian_velocity(xt, t, m, s) + 0.05 - target) ** 2).mean()


class PixelMLP(nn.Module):
    """A velocity network for 1x1x1 images, called as the U-Net is: net(x, t * TIME_SCALE)."""

    def __init__(self):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 1))

    def forward(self, x, t):
        return self.mlp(torch.cat([x.flatten(1), (t / TIME_SCALE).view(-1, 1)], 1)).view_as(x)


def test_a_trained_field_carries_n01_to_its_target_distribution():
    # 8-bit pixels from a rounded N(128, 50^2), trained through the model's own train_step; sampling from
    # N(0, 1) must give the dequantized data's mean and variance on [0, 1].
    torch.manual_seed(0)
    model = FlowMatching(image_shape=(1, 1, 1), lr=3e-3, batch_size=256)
    model.field.net = PixelMLP()
    (opt,) = model.configure_optimizers()  # built after the network was replaced: it holds the MLP's weights
    data = (128 + 50 * torch.randn(20_000)).round().clamp(0, 255).view(-1, 1, 1, 1)
    for _ in range(800):
        model.train_step((data[torch.randint(0, len(data), (256,))], None), [opt])
    y = model.sample(4000).flatten().double()
    target_mean = (data.mean().item() + 0.5) / 256
    target_var = data.var().item() / 256 ** 2 + 1 / (12 * 256 ** 2)
    assert y.mean().item() == pytest.approx(target_mean, abs=0.01)
    assert y.var().item() == pytest.approx(target_var, rel=0.15)


def _random_model(shape=(1, 4, 4), **kwargs):
    # width 16: at the U-Net's coarsest level (1x1 here) each GroupNorm group still holds two values
    torch.manual_seed(0)
    model = FlowMatching(image_shape=shape, width=16, max_num_steps=5000, **kwargs).double()
    nn.init.normal_(model.field.net.conv_out.weight, std=0.1)  # a field that moves points (not zero-initialised)
    return model


def test_the_likelihood_equals_the_change_of_variables_of_the_samplers_map():
    # log p(y) from the trace ODE against log N(x0(y)) + log|det dx0/dy| with the Jacobian of the sampler's
    # own (reverse) solve taken by autograd through the solver: two independent computations.
    model = _random_model()
    assert model.exact_trace
    y = torch.rand(2, 1, 4, 4, dtype=torch.float64) * 0.8 + 0.1
    nll = model.nll_continuous(y, 1, TIGHT, TIGHT)[0]

    def to_noise(v):
        return model.integrate(model.to_flow_space(v.view(1, 1, 4, 4)), 1.0, 0.0, "check", TIGHT, TIGHT).flatten()

    for i in range(1):  # one image: the Jacobian costs D backward passes through the solver
        jac = torch.autograd.functional.jacobian(to_noise, y[i].flatten())
        x0 = to_noise(y[i].flatten())
        log_p = -0.5 * (x0 ** 2 + math.log(2 * math.pi)).sum() + torch.linalg.slogdet(jac)[1]
        assert abs(nll[i].item() + log_p.item()) < 1e-5  # nats; the two solves' own error is ~1e-6


def test_the_sampler_inverts_the_likelihood_solve():
    model = _random_model()
    y = torch.rand(3, 1, 4, 4, dtype=torch.float64) * 0.8 + 0.1
    with torch.no_grad():
        x0 = model.integrate(model.to_flow_space(y), 1.0, 0.0, "check", TIGHT, TIGHT)
        back = (model.integrate(x0, 0.0, 1.0, "check", TIGHT, TIGHT) + 1) / 2
    assert (x0 - model.to_flow_space(y)).abs().max() > 0.1  # it moved
    assert torch.allclose(back, y, atol=1e-7)


@pytest.mark.parametrize("solver,per_step", [("euler", 1), ("midpoint", 2)])
def test_a_fixed_step_sampler_with_k_steps_reports_and_makes_k_times_its_evaluations(solver, per_step):
    model = _random_model((1, 4, 4), sampling_steps=7, solver=solver)
    calls = model.sampler_dynamics.calls
    model.sample(3)
    assert model.sampler_dynamics.calls - calls == 7 * per_step == model.nfe_log["fixed"][-1]
    assert model.sampling_nfe == 7 * per_step
    assert not model.sampling_cost_depends_on_weights


def test_the_adaptive_sampler_reports_the_solvers_own_count():
    model = _random_model((1, 4, 4))
    assert model.sampling_steps is None and model.sampling_cost_depends_on_weights
    z = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    calls = []
    odeint(lambda t, x: calls.append(1) or model.field(t, x), z, torch.tensor([0.0, 1.0], dtype=torch.float64),
           method="dopri5", rtol=model.rtol, atol=model.atol, options={"max_num_steps": model.max_num_steps})
    model.sample(3, generator=torch.Generator().manual_seed(7))
    assert model.nfe_log["sample"][-1] == len(calls) > 2
    assert model.sampling_nfe == len(calls)


def test_the_likelihood_with_probes_states_its_standard_error_and_every_bound_is_above_the_entropy_floor():
    model = _random_model((1, 6, 6)).float()
    x = torch.randint(0, 256, (5, 1, 6, 6)).float()
    assert not model.exact_trace
    with torch.no_grad():
        nll = model.nll(x)
    rows = {r["metric"]: r for r in model.extra_metrics(x)}
    assert torch.isfinite(nll).all() and (nll > 0).all()  # a discrete NLL bound: -log P >= 0
    assert rows["nll_probe_se"]["value"] > 0 and rows["bpd_probe_se"]["kind"] == "estimate"
    assert rows["nll_nfe"]["value"] == model.nfe_log["nll"][-1] > 0


def test_ot_pairing_is_the_optimal_assignment_by_enumeration():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(6, 1, 2, 2, generator=g), torch.randn(6, 1, 2, 2, generator=g)
    perm = ot_pairing(x0, x1)
    cost = lambda p: ((x0[list(p)] - x1) ** 2).sum().item()  # noqa: E731
    best = min(itertools.permutations(range(6)), key=cost)
    assert cost(perm.tolist()) == pytest.approx(cost(best), abs=1e-9)
    assert sorted(perm.tolist()) == list(range(6))


def test_an_ot_coupled_training_step_runs_and_a_bad_setting_is_refused():
    model = models.build("flow-matching", image_shape=(1, 4, 4), width=8, ot_coupling=True)
    out = model.train_step((torch.randint(0, 256, (8, 1, 4, 4)).float(), None), model.configure_optimizers())
    assert math.isfinite(out["loss"])
    with pytest.raises(ValueError, match="fixed-step solver"):
        models.build("flow-matching", solver="rk45")
    with pytest.raises(ValueError, match="sampling_steps"):
        models.build("flow-matching", sampling_steps=0)
