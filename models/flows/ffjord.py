"""FFJORD: a continuous normalizing flow with a stochastic trace (Grathwohl et al. 2019).

A flow defined by an ODE instead of a stack of layers: a small convolutional vector field f(z, t)
carries logit-space data z(0) to a standard normal latent z(1), dz/dt = f(z, t). The density follows
along by the instantaneous change of variables (Chen et al. 2018),

    d log p(z(t)) / dt = -tr(df/dz),
    log p(z(0)) = log N(z(1); 0, I) + int_0^1 tr(df/dz(t)) dt,

so any f is allowed (no coupling masks, no triangular Jacobian). The trace costs D vector-Jacobian
products exactly; Hutchinson's estimator tr(J) = E[e^T J e] (e Rademacher, E[e e^T] = I) costs one.
Since log p is linear in the trace integral, a Hutchinson estimate of log p is *unbiased* (of -log p
too; not of p), up to solver error: the adaptive steps also see the trace state, so they depend slightly
on e. ``nll`` averages ``eval_probes`` estimates and ``extra_metrics`` states their standard error
(``nll_probe_se``); where D <= ``exact_trace_max_dim`` it uses the exact trace. Sampling draws
z(1) ~ N(0, I) and integrates back from t = 1 to t = 0, without the trace.

Both directions use torchdiffeq's adaptive dopri5 through models/ode.py, which flow matching and DDPM's
probability-flow likelihood share; gradients backpropagate through the solver's steps
(no adjoint). Dequantization and the logit transform are RealNVP's, so ``nll`` is the bound on the
discrete NLL: -log p(y) + D ln 256 including the logit Jacobian; likelihood kind 'bound'.

Two traps. The Hutchinson noise e must stay fixed within one solve: a fresh e at every function
evaluation makes the integrand a different function at each stage of the Runge-Kutta step, and the
adaptive solver chases that noise. And the cost depends on the weights: the number of function
evaluations (NFE) the solver needs grows as the field trains, so it is counted on every solve (never
assumed), ``sampling_cost_depends_on_weights`` is True, and ``max_num_steps`` caps a solve (an error,
not a hang, once the field becomes too stiff).

Settings (constructor arguments, kept as attributes): training solves at ``train_rtol``/``train_atol``
(1e-3, looser, to bound the CPU cost) with one probe per image; ``nll`` and ``sample`` at ``rtol``/
``atol`` (1e-4) with ``eval_probes`` probes per image. A tiny field (3 convolutions, 16 channels) and a
batch of 16 at lr 5e-3 keep a smoke job (20 steps) within a minute on a 2-core CPU; per example seen, a
batch of 32 learnt no faster and cost twice the time per step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.base import GenerativeModel, dequantize, discrete_nll_from_dequantized
from models.flows.realnvp import RealNVP
from models.ode import CountedField, DensityDynamics, log_likelihood, probe_error_rows, solve
from models.registry import register


class ConcatConv(nn.Module):
    """A 3x3 convolution that also sees the time t, as one constant extra input channel."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in + 1, c_out, 3, padding=1)

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        time = t.to(z.dtype).expand(z.shape[0], 1, *z.shape[2:])
        return self.conv(torch.cat([z, time], dim=1))


class VectorField(nn.Module):
    """f(z, t): a few time-aware convolutions with softplus (smooth, so the solver's steps stay long)."""

    def __init__(self, channels: int, hidden: int, layers: int):
        super().__init__()
        widths = [channels] + [hidden] * (layers - 1) + [channels]
        self.convs = nn.ModuleList(ConcatConv(a, b) for a, b in zip(widths[:-1], widths[1:]))
        nn.init.zeros_(self.convs[-1].conv.weight)  # f = 0 at the start: the untrained flow is the identity
        nn.init.zeros_(self.convs[-1].conv.bias)

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        for conv in self.convs[:-1]:
            z = F.softplus(conv(t, z))
        return self.convs[-1](t, z)


def _count_from_zero_if_absent(state_dict, prefix, *_):
    """A checkpoint from before the NFE counts were buffers loads with the counts at zero (its train_nfe then
    covers the steps after the resume only), rather than failing as a state_dict with missing keys."""
    for name in ("train_nfe_total", "train_solves"):
        state_dict.setdefault(prefix + name, torch.zeros((), dtype=torch.int64))


def _mean(values) -> float:
    return sum(values) / len(values)


CHECK_RTOL = 1e-6  # the round-trip self-check's solver tolerance (rtol = atol)


@register("ffjord")
class FFJORD(GenerativeModel):
    family = "flow"
    likelihood = "bound"
    track = "8bit"
    default_steps = 65
    sampling_cost_depends_on_weights = True

    # The data <-> logit-space map, RealNVP's (it reads only ``self.logit_alpha``).
    to_logit = RealNVP._to_logit
    from_logit = RealNVP._from_logit

    def __init__(self, image_shape=(1, 28, 28), hidden: int = 16, layers: int = 3,
                 rtol: float = 1e-4, atol: float = 1e-4, train_rtol: float = 1e-3, train_atol: float = 1e-3,
                 eval_probes: int = 2, exact_trace_max_dim: int = 16, max_num_steps: int = 100,
                 logit_alpha: float | None = 0.05, lr: float = 5e-3, batch_size: int = 16):
        super().__init__(image_shape)
        if eval_probes < 1:
            raise ValueError(f"eval_probes must be at least 1, got {eval_probes}")
        self.rtol, self.atol = rtol, atol
        self.train_rtol, self.train_atol = train_rtol, train_atol
        self.eval_probes = eval_probes
        self.exact_trace_max_dim = exact_trace_max_dim
        self.max_num_steps = max_num_steps
        self.logit_alpha = logit_alpha
        self.lr = lr
        self.batch_size = batch_size
        self.field = VectorField(self.image_shape[0], hidden, layers)
        self.dynamics = DensityDynamics(self.field)
        self.sampler_dynamics = CountedField(self.field)
        # NFE of every solve so far, by purpose; and the probe variance of the NLLs scored since the last report.
        self.nfe_log: dict[str, list[int]] = {"train": [], "nll": [], "sample": [], "check": []}
        self._probe_variance: list[torch.Tensor] = []
        # The training solves' NFE summed in buffers, so that a checkpoint carries them: after a resume,
        # train_nfe is the mean over every training step, not only over those since the resume.
        self.register_buffer("train_nfe_total", torch.zeros((), dtype=torch.int64))
        self.register_buffer("train_solves", torch.zeros((), dtype=torch.int64))
        self._register_load_state_dict_pre_hook(_count_from_zero_if_absent)

    def configure_optimizers(self):
        return [torch.optim.Adam(self.parameters(), lr=self.lr)]

    @property
    def exact_trace(self) -> bool:
        return self.dim <= self.exact_trace_max_dim

    # --- solves (models/ode.py) ------------------------------------------------------------------
    def integrate_field(self, z: torch.Tensor, t0: float, t1: float, rtol: float, atol: float,
                        purpose: str = "sample") -> torch.Tensor:
        """z(t1) from z(t0) along f alone (no trace): sampling (t0=1 -> t1=0) and its checks."""
        before = self.sampler_dynamics.calls
        try:
            return solve(self.sampler_dynamics, z, t0, t1, rtol=rtol, atol=atol, max_num_steps=self.max_num_steps,
                         who="FFJORD")
        finally:
            self.nfe_log[purpose].append(self.sampler_dynamics.calls - before)

    # --- likelihood ----------------------------------------------------------------------------
    def nll_continuous(self, y: torch.Tensor, probes: int, rtol: float, atol: float, purpose: str):
        """-log p(y) in nats for y in [0, 1]^D, one estimate per (probe, image): probes x N.

        Exact (no probe) where D <= exact_trace_max_dim: then a single row."""
        z0, logdet_logit = self.to_logit(y)
        before = self.dynamics.calls
        try:
            log_p, _ = log_likelihood(self.dynamics, z0, t_data=0.0, t_noise=1.0, probes=probes,
                                      exact=self.exact_trace, rtol=rtol, atol=atol,
                                      max_num_steps=self.max_num_steps, who="FFJORD")
        finally:
            self.nfe_log[purpose].append(self.dynamics.calls - before)
        return -(log_p + logdet_logit)

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """The dequantization bound on the discrete NLL, at the evaluation tolerances; with Hutchinson
        (D above exact_trace_max_dim) the mean of ``eval_probes`` unbiased estimates."""
        per_probe = self.nll_continuous(dequantize(x), self.eval_probes, self.rtol, self.atol, "nll")
        if per_probe.shape[0] > 1:  # the variance of the probe mean, for the standard error in extra_metrics
            self._probe_variance.append(per_probe.detach().var(0).cpu() / per_probe.shape[0])
        return discrete_nll_from_dequantized(per_probe.mean(0), self.dim)

    def train_step(self, batch, optimizers):
        x, _ = batch
        (opt,) = optimizers
        nll_y = self.nll_continuous(dequantize(x), 1, self.train_rtol, self.train_atol, "train")[0]
        loss = discrete_nll_from_dequantized(nll_y, self.dim).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        nfe = self.nfe_log["train"][-1]
        self.train_nfe_total += nfe
        self.train_solves += 1
        return {"loss": loss.item(), "nfe": nfe}

    # --- sampling ------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, labels=None, generator: torch.Generator | None = None) -> torch.Tensor:
        dtype = next(self.parameters()).dtype
        z1 = torch.randn(n, *self.image_shape, generator=generator, dtype=dtype,
                         device="cpu" if generator else self.device)
        z0 = self.integrate_field(z1.to(self.device), 1.0, 0.0, self.rtol, self.atol)
        return self.from_logit(z0).clamp(0.0, 1.0)

    @property
    def sampling_nfe(self) -> float:
        """Measured mean NFE of the sampling solves so far (one small solve first if there was none)."""
        if not self.nfe_log["sample"]:
            self.sample(2, generator=torch.Generator().manual_seed(0))  # a private generator: no RNG drawn
        return _mean(self.nfe_log["sample"])

    # --- reporting -----------------------------------------------------------------------------
    def extra_metrics(self, x_test: torch.Tensor) -> list[dict]:
        """Solver cost (NFE) and the Monte Carlo error of the test NLL, from the ``nll`` calls that scored
        x_test (the harness scores it just before; scored here if it was not). The standard error covers
        the images scored since the last call, and only the probe noise (not the dequantization noise)."""
        probe_rows_due = self.eval_probes > 1 and not self.exact_trace
        if not self.nfe_log["nll"] or (probe_rows_due and not self._probe_variance):
            with torch.no_grad():
                self.nll(x_test)
        setting = f"dopri5 rtol={self.rtol:g} atol={self.atol:g}"
        training = f"dopri5 rtol={self.train_rtol:g} atol={self.train_atol:g}"
        rows = [{"metric": "nll_nfe", "value": _mean(self.nfe_log["nll"]), "unit": "evaluations",
                 "kind": "measured", "note": f"mean per likelihood solve, {setting}"},
                {"metric": "solver_rtol", "value": self.rtol, "unit": "", "kind": "exact",
                 "note": f"{setting} for nll and sampling; training at {training}"}]
        if int(self.train_solves):
            rows.append({"metric": "train_nfe", "value": int(self.train_nfe_total) / int(self.train_solves),
                         "unit": "evaluations",
                         "kind": "measured",
                         "note": f"mean per training step (the forward solve; backprop not counted), {training}"})
        if self._probe_variance:
            rows += probe_error_rows(self._probe_variance, self.eval_probes, self.dim)
            self._probe_variance.clear()
        return rows

    @torch.no_grad()
    def self_checks(self, x_test: torch.Tensor) -> list[dict]:
        """Forward then reverse solve of a few dequantized test images returns them (data space, [0, 1])."""
        # The check is of the flow's invertibility, so the solves run far tighter than evaluation's (a
        # trained field moves z by several units: at rtol 1e-4 the round trip alone drifts ~5e-3).
        tolerance, rtol = 1e-3, min(self.rtol, CHECK_RTOL)
        y = dequantize(x_test[:8])
        z0, _ = self.to_logit(y)
        steps, self.max_num_steps = self.max_num_steps, max(self.max_num_steps, 20 * self.max_num_steps)
        try:
            z1 = self.integrate_field(z0, 0.0, 1.0, rtol, rtol, purpose="check")
            back = self.from_logit(self.integrate_field(z1, 1.0, 0.0, rtol, rtol, purpose="check"))
        finally:
            self.max_num_steps = steps
        error = (back - y).abs().max().item()
        moved = (z1 - z0).abs().max().item()
        return [{"check": "ffjord_inverse", "passed": error <= tolerance, "value": error, "tolerance": tolerance,
                 "detail": f"max |reverse(forward(y)) - y| on {len(y)} test images in [0, 1] data space, "
                           f"dopri5 rtol=atol={rtol:g}; the flow moved z by up to {moved:.3g}"}]
