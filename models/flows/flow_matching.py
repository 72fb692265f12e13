"""Flow matching: a continuous normalizing flow trained without solving an ODE (Lipman et al. 2023; the
same straight paths are Liu et al. 2023's rectified flow).

FFJORD's model class, trained another way. A velocity field v(x, t) carries noise x(0) ~ N(0, I) to data
x(1) along dx/dt = v. FFJORD fits such a field by maximum likelihood, so every training step solves the
ODE. Flow matching regresses v onto a path chosen in advance instead. Take the straight line from a noise
draw x_0 to a data point x_1,

    x_t = (1 - t) x_0 + t x_1,   whose velocity is   u = x_1 - x_0,

and minimise the conditional flow-matching loss E_{t ~ U[0,1], x_0, x_1} ||v(x_t, t) - u||^2. Its
minimiser is v*(x, t) = E[x_1 - x_0 | x_t = x], the velocity that moves the whole distribution of x_t
from N(0, I) at t = 0 to the data at t = 1. A training step costs one network pass, as DDPM's does.

The trained model is then an ODE like FFJORD's and is measured the same way, by the same code
(models/ode.py):
- **Likelihood** by the instantaneous change of variables, solving from the data (t = 1) back to the
  noise (t = 0) with dopri5, Hutchinson probes fixed within a solve (``eval_probes`` per image; their
  standard error is reported as ``bpd_probe_se``), the exact trace where D <= ``exact_trace_max_dim``.
- **Sampling** from t = 0 to t = 1: ``sampling_steps`` None (the default) solves with adaptive dopri5,
  whose NFE is measured on every solve; an integer k takes k equal steps of ``solver`` (euler: k
  evaluations, midpoint: 2k). ``sampling_step_options`` is the quality-against-steps curve.

Data: 8-bit pixels are dequantized, y = (k + u) / 256 on [0, 1], then x_1 = 2y - 1 on [-1, 1]. So
log p(y) = log p(x_1) + D ln 2, and ``nll`` is the bound on the discrete NLL, -log p(y) + D ln 256
(models/base.py), kind 'bound'. The velocity network is DDPM's U-Net (models/unet.py).

Optional, ``ot_coupling``: minibatch optimal transport (Tong et al. 2024; Pooladian et al. 2023). Each
batch's noise is re-paired with its data by the exact optimal assignment under squared distance (for
two equal batches with uniform weights the OT plan is a permutation: scipy's linear_sum_assignment).
Straighter paths, so fewer solver steps for the same samples.

Three traps. First, the U-Net's sinusoidal time embedding was sized for DDPM's integer timesteps 0..999,
where sin(t) changes a lot from one step to the next. An ODE solver evaluates the field at every real t,
and at DDPM's scale (t in [0, 1] times 1000) the field oscillates in t with a period of 0.006: an adaptive
solve of the untrained 4x4 test field at rtol 1e-5 took 1,016 evaluations, against 296 at scale 50, 74 at
10 and 32 with t in [0, 1] itself, which is what this model feeds the network (``TIME_SCALE``). Second,
the loss is not a likelihood: it is a regression error that does not go to zero (its minimum is the
conditional variance of u given x_t), a lower loss need not mean a lower bits/dim, and the bits/dim comes
only from solving the ODE. Third, time runs the other way from FFJORD's (noise at t = 0 here), so the
likelihood solve runs from t = 1 to t = 0.

Size and cost: DDPM's U-Net at half its width (16: about 12 MFLOPs a forward pass at 28x28, near FFJORD's
field), batch 64, lr 2e-3. Evaluation solves at rtol = atol = 1e-3 (``rtol``/``atol``), looser than
FFJORD's 1e-4, because each function evaluation is a U-Net pass and a vector-Jacobian product on the whole
batch. Measured in a default run (60 s of training, mnist5k, the 2-core CPU, beside FFJORD and DDPM): 465
training steps (FFJORD: 53), then the likelihood solves took 302 s of the 400 s evaluation (1,000 test
images x 2 probes, NFE 62), against 106 s for FFJORD's.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.base import GenerativeModel, dequantize, discrete_nll_from_dequantized
from models.ode import FIXED_STEP, CountedField, DensityDynamics, log_likelihood, probe_error_rows, solve
from models.registry import register
from models.unet import UNet

TIME_SCALE = 1.0  # the U-Net sees t in [0, 1] itself: see the module docstring's trap
CHECK_RTOL = 1e-6  # the round-trip self-check's solver tolerance (rtol = atol)


class VelocityField(nn.Module):
    """v(x, t) for the ODE solver: ``t`` a scalar tensor, broadcast to the batch."""

    def __init__(self, net: UNet):
        super().__init__()
        self.net = net

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, (t * TIME_SCALE).expand(x.shape[0]))


def straight_path(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The point x_t = (1 - t) x_0 + t x_1 and its velocity x_1 - x_0 (t per example)."""
    t = t.view(-1, *([1] * (x0.dim() - 1)))
    return (1 - t) * x0 + t * x1, x1 - x0


def ot_pairing(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """The permutation of ``x0`` that minimises sum_i ||x0[perm[i]] - x1[i]||^2 (exact, Hungarian)."""
    from scipy.optimize import linear_sum_assignment

    cost = torch.cdist(x0.flatten(1).double(), x1.flatten(1).double()).pow(2).cpu().numpy()
    rows, cols = linear_sum_assignment(cost)
    perm = torch.empty(len(x1), dtype=torch.long)
    perm[torch.as_tensor(cols)] = torch.as_tensor(rows)
    return perm.to(x0.device)


def _mean(values) -> float:
    return sum(values) / len(values)


@register("flow-matching")
class FlowMatching(GenerativeModel):
    family = "flow"
    likelihood = "bound"
    track = "8bit"
    default_steps = 600

    sampler_settings = ("sampling_steps", "solver")
    sampling_step_options = (2, 4, 8, 16, 32)  # the fixed-step points of the quality-against-steps curve
    solvers = tuple(FIXED_STEP)

    def __init__(self, image_shape=(1, 28, 28), width: int = 16, sampling_steps: int | None = None,
                 solver: str = "euler", rtol: float = 1e-3, atol: float = 1e-3, eval_probes: int = 2,
                 exact_trace_max_dim: int = 16, max_num_steps: int = 200, ot_coupling: bool = False,
                 lr: float = 2e-3, batch_size: int = 64):
        super().__init__(image_shape)
        if eval_probes < 1:
            raise ValueError(f"eval_probes must be at least 1, got {eval_probes}")
        if solver not in FIXED_STEP:
            raise ValueError(f"unknown fixed-step solver {solver!r}; use one of {', '.join(FIXED_STEP)}")
        self.solver, self.rtol, self.atol = solver, rtol, atol
        self.sampling_steps = sampling_steps
        self.eval_probes, self.exact_trace_max_dim, self.max_num_steps = eval_probes, exact_trace_max_dim, max_num_steps
        self.ot_coupling, self.lr, self.batch_size = ot_coupling, lr, batch_size
        self.field = VelocityField(UNet(image_shape[0], width))
        self.dynamics = DensityDynamics(self.field)
        self.sampler_dynamics = CountedField(self.field)
        # NFE of every solve so far, by purpose ("sample": adaptive sampling solves only).
        self.nfe_log: dict[str, list[int]] = {"nll": [], "sample": [], "fixed": [], "check": []}
        self._probe_variance: list[torch.Tensor] = []

    def configure_optimizers(self):
        return [torch.optim.Adam(self.parameters(), lr=self.lr)]

    @property
    def sampling_steps(self) -> int | None:
        return self._sampling_steps

    @sampling_steps.setter
    def sampling_steps(self, steps: int | None):
        if steps is not None and int(steps) < 1:
            raise ValueError(f"sampling_steps must be at least 1 (or None: adaptive dopri5), got {steps}")
        self._sampling_steps = None if steps is None else int(steps)

    @property
    def adaptive(self) -> bool:
        return self.sampling_steps is None

    @property
    def sampling_cost_depends_on_weights(self) -> bool:
        return self.adaptive  # an adaptive solver's NFE grows as the field trains

    @property
    def exact_trace(self) -> bool:
        return self.dim <= self.exact_trace_max_dim

    @staticmethod
    def to_flow_space(y: torch.Tensor) -> torch.Tensor:
        """Dequantized data on [0, 1] -> [-1, 1] (log-density changes by D ln 2)."""
        return 2.0 * y - 1.0

    # --- training: conditional flow matching ---------------------------------------------------
    def loss(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.to_flow_space(dequantize(x))
        x0 = torch.randn_like(x1)
        if self.ot_coupling:
            x0 = x0[ot_pairing(x0, x1)]
        t = torch.rand(len(x1), device=x1.device, dtype=x1.dtype)
        xt, target = straight_path(x0, x1, t)
        return F.mse_loss(self.field.net(xt, t * TIME_SCALE), target)

    def train_step(self, batch, optimizers):
        x, _ = batch
        (opt,) = optimizers
        loss = self.loss(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item()}

    # --- likelihood (models/ode.py) --------------------------------------------------------------
    def nll_continuous(self, y: torch.Tensor, probes: int, rtol: float, atol: float,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """-log p(y) in nats for y in [0, 1]^D, one estimate per (probe, image): probes x N (one row when
        the trace is exact)."""
        before = self.dynamics.calls
        try:
            log_p, _ = log_likelihood(self.dynamics, self.to_flow_space(y), t_data=1.0, t_noise=0.0,
                                      probes=probes, exact=self.exact_trace, rtol=rtol, atol=atol,
                                      max_num_steps=self.max_num_steps, generator=generator, who="flow matching")
        finally:
            self.nfe_log["nll"].append(self.dynamics.calls - before)
        return -(log_p + self.dim * math.log(2.0))  # density of y = density of 2y - 1 times 2^D

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """The dequantization bound on the discrete NLL, the mean of ``eval_probes`` unbiased estimates."""
        per_probe = self.nll_continuous(dequantize(x), self.eval_probes, self.rtol, self.atol)
        if per_probe.shape[0] > 1:  # the variance of the probe mean, for the standard error in extra_metrics
            self._probe_variance.append(per_probe.detach().var(0).cpu() / per_probe.shape[0])
        return discrete_nll_from_dequantized(per_probe.mean(0), self.dim)

    # --- sampling ------------------------------------------------------------------------------
    def integrate(self, x: torch.Tensor, t0: float, t1: float, purpose: str, rtol: float | None = None,
                  atol: float | None = None) -> torch.Tensor:
        """x(t1) from x(t0) along v, by the model's sampler setting (or dopri5 at rtol/atol if given)."""
        adaptive = self.adaptive or rtol is not None
        before = self.sampler_dynamics.calls
        try:
            if adaptive:
                return solve(self.sampler_dynamics, x, t0, t1, rtol=rtol or self.rtol, atol=atol or self.atol,
                             max_num_steps=self.max_num_steps, who="flow matching")
            return solve(self.sampler_dynamics, x, t0, t1, method=self.solver, steps=self.sampling_steps)
        finally:
            self.nfe_log[purpose if adaptive or purpose != "sample" else "fixed"].append(
                self.sampler_dynamics.calls - before)

    @torch.no_grad()
    def sample(self, n: int, labels=None, generator: torch.Generator | None = None) -> torch.Tensor:
        dtype = next(self.parameters()).dtype
        x0 = torch.randn(n, *self.image_shape, generator=generator, dtype=dtype,
                         device="cpu" if generator else self.device)
        x1 = self.integrate(x0.to(self.device), 0.0, 1.0, "sample")
        return ((x1 + 1.0) / 2.0).clamp(0.0, 1.0)

    @property
    def sampling_nfe(self) -> float:
        """Fixed steps: k steps x the solver's evaluations per step. Adaptive: the measured mean NFE of the
        sampling solves so far (one small private solve first if there was none)."""
        if not self.adaptive:
            return self.sampling_steps * FIXED_STEP[self.solver]
        if not self.nfe_log["sample"]:
            self.sample(2, generator=torch.Generator().manual_seed(0))  # a private generator: no RNG drawn
        return _mean(self.nfe_log["sample"])

    def sampler_description(self) -> str:
        if self.adaptive:
            return f"adaptive dopri5, rtol={self.rtol:g} atol={self.atol:g} (NFE measured)"
        return f"{self.solver}, {self.sampling_steps} equal steps ({self.sampling_nfe} evaluations)"

    def likelihood_description(self) -> str:
        probes = "exact trace" if self.exact_trace else f"{self.eval_probes} Hutchinson probes per image"
        return f"instantaneous change of variables, dopri5 rtol={self.rtol:g} atol={self.atol:g}, {probes}"

    # --- reporting -----------------------------------------------------------------------------
    def extra_metrics(self, x_test: torch.Tensor) -> list[dict]:
        """The likelihood solves' NFE and the Monte Carlo error of test_nll from the probes, from the
        ``nll`` calls that scored x_test (scored here if they were not)."""
        probe_rows_due = self.eval_probes > 1 and not self.exact_trace
        if not self.nfe_log["nll"] or (probe_rows_due and not self._probe_variance):
            with torch.no_grad():
                self.nll(x_test)
        setting = f"dopri5 rtol={self.rtol:g} atol={self.atol:g}"
        rows = [{"metric": "nll_nfe", "value": _mean(self.nfe_log["nll"]), "unit": "evaluations",
                 "kind": "measured", "note": f"mean per likelihood solve, {setting}"},
                {"metric": "solver_rtol", "value": self.rtol, "unit": "", "kind": "exact",
                 "note": f"{setting} for nll and adaptive sampling; training solves nothing"}]
        if self._probe_variance:
            rows += probe_error_rows(self._probe_variance, self.eval_probes, self.dim)
            self._probe_variance.clear()
        return rows

    @torch.no_grad()
    def self_checks(self, x_test: torch.Tensor) -> list[dict]:
        """Data -> noise -> data at a tight tolerance returns a few dequantized test images."""
        tolerance = 1e-3
        y = dequantize(x_test[:8])
        x1 = self.to_flow_space(y)
        steps, self.max_num_steps = self.max_num_steps, max(self.max_num_steps, 10 * self.max_num_steps)
        try:
            x0 = self.integrate(x1, 1.0, 0.0, "check", CHECK_RTOL, CHECK_RTOL)
            back = (self.integrate(x0, 0.0, 1.0, "check", CHECK_RTOL, CHECK_RTOL) + 1.0) / 2.0
        finally:
            self.max_num_steps = steps
        error = (back - y).abs().max().item()
        return [{"check": "flow_inverse", "passed": error <= tolerance, "value": error, "tolerance": tolerance,
                 "detail": f"max |sample(likelihood solve(y)) - y| on {len(y)} test images in [0, 1], dopri5 "
                           f"rtol=atol={CHECK_RTOL:g}; the flow moved x by up to {(x0 - x1).abs().max().item():.3g}"}]
