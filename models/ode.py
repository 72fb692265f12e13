"""Continuous-time machinery shared by FFJORD, flow matching and DDPM's probability-flow ODE.

Each of them defines a vector field dz/dt = f(z, t) that carries data to Gaussian noise. Two things
follow from the field alone, and live here so that every model computes them the same way:

- **Sampling**: integrate f from the noise end to the data end (``solve`` a ``CountedField``).
- **Likelihood**, by the instantaneous change of variables (Chen et al. 2018):
  d log p(z(t)) / dt = -tr(df/dz), so, integrating from the data end t_data to the noise end t_noise,

      log p(z(t_data)) = log p_noise(z(t_noise)) - delta,   delta = -int_{t_data}^{t_noise} tr(df/dz) dt,

  the same formula whichever way time runs (FFJORD: data at 0, noise at 1; flow matching: data at 1,
  noise at 0; DDPM: data at the smallest noise level). ``log_likelihood`` is that one function.

The trace costs D vector-Jacobian products exactly; Hutchinson's estimator tr(J) = E[e^T J e] (e
Rademacher, E[e e^T] = I) costs one. log p is linear in the trace integral, so a Hutchinson estimate of
log p is unbiased (of -log p too; not of p), up to the solver's error. The trap: the probe e must stay
fixed within one solve. A fresh e at every function evaluation makes the integrand a different function
at each stage of a Runge-Kutta step, and an adaptive solver chases that noise.

Every solve counts its function evaluations (NFE): an adaptive solver's count depends on the field,
so it is measured, never assumed. ``max_num_steps`` caps an adaptive solve, so that a stiff field is
an error rather than a hang. The solvers are torchdiffeq's: dopri5 (adaptive), and euler, midpoint
and rk4 on a grid of equal steps (1, 2 and 4 evaluations per step).
"""
from __future__ import annotations

import math

import torch
from torchdiffeq import odeint

from models.base import bits_per_dim

ADAPTIVE = ("dopri5",)
FIXED_STEP = {"euler": 1, "midpoint": 2, "rk4": 4}  # solver -> evaluations per step


class SolverStepLimit(RuntimeError):
    """An adaptive solve needed more than ``max_num_steps`` steps."""


def exact_divergence(dz: torch.Tensor, z: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """tr(df/dz) per example: D vector-Jacobian products with the basis vectors (small D only)."""
    flat = dz.flatten(1)
    div = torch.zeros(dz.shape[0], dtype=dz.dtype, device=dz.device)
    for i in range(flat.shape[1]):
        grad = torch.autograd.grad(flat[:, i].sum(), z, create_graph=create_graph, retain_graph=True)[0]
        div = div + grad.flatten(1)[:, i]
    return div


def hutchinson_divergence(dz: torch.Tensor, z: torch.Tensor, probe: torch.Tensor,
                          create_graph: bool) -> torch.Tensor:
    """e^T (df/dz) e per example, one vector-Jacobian product; unbiased for the trace when E[e e^T] = I."""
    vjp = torch.autograd.grad(dz, z, probe, create_graph=create_graph)[0]
    return (vjp * probe).flatten(1).sum(1)


def rademacher_like(z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random signs shaped like ``z`` (drawn on the CPU when a generator is given, so it reproduces)."""
    if generator is None:
        return torch.randint(0, 2, z.shape, device=z.device).to(z.dtype) * 2 - 1
    return (torch.randint(0, 2, z.shape, generator=generator).to(z.dtype) * 2 - 1).to(z.device)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) per example."""
    return -0.5 * (z ** 2 + math.log(2 * math.pi)).flatten(1).sum(1)


class CountedField:
    """dz/dt = f(z, t) alone (sampling), counting its calls. Holds the model's field, not a copy."""

    def __init__(self, field):
        self.field = field
        self.calls = 0

    def __call__(self, t, z):
        self.calls += 1
        return self.field(t, z)


class DensityDynamics:
    """The augmented ODE d(z, delta)/dt = (f, -tr(df/dz)), counting its calls.

    ``probe`` is the Hutchinson noise for the current solve, set once before it (None: exact trace)."""

    def __init__(self, field):
        self.field = field
        self.calls = 0
        self.probe: torch.Tensor | None = None

    def __call__(self, t, state):
        z, _ = state
        self.calls += 1
        create_graph = torch.is_grad_enabled()  # training: the trace itself must be differentiable
        with torch.enable_grad():
            if not z.requires_grad:  # evaluation, or the data at t0: differentiate at a fresh leaf
                z = z.detach().requires_grad_(True)
            dz = self.field(t, z)
            if self.probe is None:
                div = exact_divergence(dz, z, create_graph)
            else:
                div = hutchinson_divergence(dz, z, self.probe, create_graph)
        if not create_graph:
            dz, div = dz.detach(), div.detach()
        return dz, -div


def solve(func, state, t0: float, t1: float, *, method: str = "dopri5", rtol: float = 1e-4, atol: float = 1e-4,
          steps: int | None = None, max_num_steps: int = 100, who: str = "an ODE solve"):
    """The state at t1 of dz/dt = func(t, z) from ``state`` at t0 (a tensor, or a tuple of tensors).

    ``method`` dopri5 adapts its steps to rtol/atol (at most ``max_num_steps``); euler, midpoint and rk4
    take ``steps`` equal steps."""
    ref = state[0] if isinstance(state, tuple) else state
    if method in FIXED_STEP:
        if not steps or steps < 1:
            raise ValueError(f"{method} needs a step count of at least 1, got {steps}")
        times = torch.linspace(t0, t1, steps + 1, dtype=ref.dtype, device=ref.device)
        out = odeint(func, state, times, method=method)
    elif method in ADAPTIVE:
        times = torch.tensor([t0, t1], dtype=ref.dtype, device=ref.device)
        try:
            out = odeint(func, state, times, method=method, rtol=rtol, atol=atol,
                         options={"max_num_steps": max_num_steps})
        except AssertionError as exc:
            if "max_num_steps" not in str(exc):
                raise
            raise SolverStepLimit(
                f"{who}: a {method} solve (rtol={rtol:g}, atol={atol:g}) needed more than {max_num_steps} "
                f"steps; the field has become stiff: raise max_num_steps or loosen the tolerances") from None
    else:
        raise ValueError(f"unknown ODE solver {method!r}; use one of {', '.join(ADAPTIVE + tuple(FIXED_STEP))}")
    return tuple(s[-1] for s in out) if isinstance(out, tuple) else out[-1]


def log_likelihood(dynamics: DensityDynamics, z: torch.Tensor, *, t_data: float, t_noise: float, probes: int,
                   exact: bool, rtol: float, atol: float, max_num_steps: int, log_prior=standard_normal_log_prob,
                   generator: torch.Generator | None = None, who: str = "an ODE likelihood"):
    """log p(z) of each row of ``z`` (the data end) under the flow of ``dynamics.field``: (probes x N, NFE).

    ``exact``: the exact trace, one row. Otherwise ``probes`` Hutchinson estimates per image, each with
    its own Rademacher probe, fixed for the whole solve; the probes ride along as copies of the batch.
    ``log_prior``: log p at the noise end per example (default: standard normal)."""
    n = z.shape[0]
    if exact:
        probes, probe = 1, None
    else:
        z = z.repeat(probes, *([1] * (z.dim() - 1)))
        probe = rademacher_like(z, generator)
    dynamics.probe = probe
    before = dynamics.calls
    delta0 = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
    try:
        z_noise, delta = solve(dynamics, (z, delta0), t_data, t_noise, rtol=rtol, atol=atol,
                               max_num_steps=max_num_steps, who=who)
    finally:
        dynamics.probe = None
    return (log_prior(z_noise) - delta).view(probes, n), dynamics.calls - before


def probe_error_rows(variances: list[torch.Tensor], probes: int, dim: int) -> list[dict]:
    """``nll_probe_se`` and ``bpd_probe_se``: the standard error of a mean test NLL from the Hutchinson
    probes alone, from the per-image variances of each image's probe mean (``variances``, as ``nll``
    collects them). The dequantization noise is not in it."""
    variance = torch.cat(variances)
    se = variance.sum().sqrt().item() / len(variance)
    return [{"metric": "nll_probe_se", "value": se, "unit": "nats", "kind": "estimate",
             "note": f"standard error of test_nll from Hutchinson noise, {probes} probes x {len(variance)} images"},
            {"metric": "bpd_probe_se", "value": bits_per_dim(se, dim), "unit": "bits/dim", "kind": "estimate",
             "note": "nll_probe_se in bits/dim"}]
