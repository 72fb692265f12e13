"""DDPM: denoising diffusion probabilistic models (Ho, Jain & Abbeel 2020; the step after EBMs in seed 002).

A fixed forward process adds Gaussian noise over T steps, q(x_t | x_{t-1}) = N(sqrt(1 - b_t) x_{t-1}, b_t I),
so that q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) with abar_t = prod_{s<=t} (1 - b_s). A small
U-Net eps(x_t, t) learns the noise; training minimises Ho's simple loss ||eps - eps(x_t, t)||^2 at a
uniform t. The reverse model is p(x_{t-1} | x_t) = N(mu(x_t, t), sigma_t^2 I) with
mu = posterior mean of q(x_{t-1} | x_t, x_0 = x0_hat), x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
clipped to [-1, 1] (the same p is used for sampling and for the bound, so the bound is the sampler's),
and sigma_t^2 = the posterior variance beta~_t, its first value (0) replaced by the second ("fixed small",
as in Nichol & Dhariwal's code).

Data: 8-bit pixels k in 0..255 are mapped to x_0 = 2k/255 - 1 in [-1, 1].

Likelihood (``nll``): the variational bound of Ho et al., in nats per example of the *discrete* data,

    -log P(x) <= L_T + sum_{t=2..T} L_{t-1} + L_0,
    L_T = KL(q(x_T | x_0) || N(0, I))                            (closed form),
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))      (Gaussian KL, one draw x_t ~ q(x_t | x_0)),
    L_0 = -log p(x_0 | x_1)                                      (discretized Gaussian decoder),

the decoder giving each pixel the Gaussian mass of its bin [x - 1/255, x + 1/255], the end bins
extended to -inf and +inf, so the probabilities of the 256 values sum to one. The bound is already a
bound on the discrete NLL: bits/dim = nll / (D ln 2), with no D ln 256 term (models/base.py contract).

How the T - 1 diffusion terms are summed (constructor ``nll_t_samples``):
- ``None``: exactly, all T - 1 terms (T network calls per image; each term at one draw of x_t, as in
  Ho et al.'s evaluation);
- an integer K (default 8): an unbiased stratified Monte Carlo estimate. The timesteps 2..T are
  cut into K strata, geometrically spaced so that the small t (where the terms are large and change
  fast) get narrow strata and the late, flat terms wide ones; one t is drawn uniformly in each
  stratum per image and its term weighted by the stratum's size. L_T and L_0 are always exact.
  Cost: K + 1 network calls per image, against T for the exact sum. Measured on MNIST after a minute
  of training: per-image spread of the estimate about 90 nats around about 740 (K = 8), so about
  3 nats (0.005 bits/dim) of standard error on a 1,000-image mean; its mean agreed with the exact sum.

Second likelihood (``extra_metrics``: ``test_nll_ode``, ``test_bpd_ode``): the probability-flow ODE of the
same network (Song et al. 2021, "Score-Based Generative Modeling through SDEs"), a deterministic flow whose
marginals are q(x_t) when eps is exact. In DDIM's form (Song, Meng & Ermon 2021, eq. 14): with
xbar = x_t / sqrt(abar) and sigma = sqrt((1 - abar) / abar), q(x_t | x_0) reads xbar = x_0 + sigma eps, and

    d xbar / d sigma = eps(sqrt(abar) xbar, t(sigma)),   abar = 1 / (1 + sigma^2),

solved in lambda = log sigma, d xbar / d lambda = sigma eps(...): sigma spans four decades (0.01 to 158 for
Ho's schedule), and in log sigma the solver's steps need not shrink with it. abar and sigma are exact
functions of lambda; only the network's timestep is interpolated, linearly in lambda between the integer
timesteps 0..T-1 it was trained at (the sinusoidal embedding takes a float t). Data end: index 0, the
chain's first step (sigma_0 = 0.01); noise end: index T - 1, where the prior is xbar ~ N(0, (1 + sigma_max^2) I),
i.e. x_T ~ N(0, I) as in the chain. log p(xbar) comes from models/ode.py's ``log_likelihood``, the one
FFJORD and flow matching use: dopri5 at ``ode_rtol``/``ode_atol``, ``ode_probes`` Hutchinson probes per
image (fixed within a solve), the exact trace where D <= ``ode_exact_trace_max_dim``. Then x = sqrt(abar_0) xbar
gives log p(x) = log p(xbar) - D log sqrt(abar_0).
What it is the density of: the ODE model's x at the smallest noise level, used as a density on [-1, 1]^D
for dequantized data: y = (k + u) / 256, x = 2y - 1, log p(y) = log p(x) + D ln 2, and by Jensen
-log P(k) <= E_u[-log p(y)] + D ln 256 (Theis et al. 2016; models/base.py), so kind "bound". It is a
bound for another model than the VLB's: the ODE is a continuous flow defined by the network, which equals
the T-step chain's marginals only if eps were exact. Neither figure bounds the other.
Noise and cost: the first ``ode_images`` (32) test images, one dequantization draw and ``ode_probes`` (1)
probe each, from a private generator (``ODE_SEED``), so the global RNG, and every other metric's draw,
is untouched; each NFE is a U-Net pass and a vector-Jacobian product on that batch. The note gives the
measured NFE and the standard error over images (probe noise included). Measured on MNIST (1x28x28, the
2-core CPU, after 50 to 400 training steps, on 8 images; the cost grows with the images, the error as
one over their square root): NFE 280 to 410 at rtol = atol = 1e-4, the two rows 7 to 10 s
(one thread beside another job: 7 to 14 s; an untrained net, whose eps is 0: NFE 50, 2 s); standard error
over the 8 images 0.09 to 0.15 bits/dim (probe noise alone about 0.02); solver error about 0.003 bits/dim
on the mean (rtol = atol = 1e-5: NFE 870, 18 s; 1e-3: NFE 92, 2 s, 0.01 bits/dim off).
A single image's log p moves by 1 to 3 nats (of 2,300) under a 1e-6 nudge: the log-det state is
error-controlled at rtol x |delta| per step. A solve past ``ode_max_steps`` (200) gives no rows and a warning.

Samplers (settings ``sampling_steps``, ``sampler``, ``eta``, ``ode_sample_tol``; ``sample(n, steps=,
sampler=, eta=)`` overrides them for one call). The first two run on a sub-chain of ``sampling_steps``
evenly spaced timesteps, always ending at T (Nichol & Dhariwal's respacing: the sub-chain's betas are
recomputed from abar, so it is a shorter chain with the same marginals q(x_t | x_0)); ``sampling_steps`` = T
is the full chain.
- ``"ancestral"`` (default): p(x_{t-1} | x_t) above, on the sub-chain.
- ``"ddim"`` (Song, Meng & Ermon 2021): x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - s_t^2) eps_hat
  + s_t z with s_t = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s). eta = 0 is
  deterministic given x_T; eta = 1 gives s_t^2 = the posterior variance, the ancestral sampler's law.
- ``"ode"``: the probability-flow ODE above, from x_T ~ N(0, I) at the noise end to the first step, by
  dopri5 at rtol = atol = ``ode_sample_tol`` (1e-3), through models/ode.py's ``solve``; its NFE is counted
  on every solve and ``sampling_nfe`` is their mean (``sampling_steps`` is unused, and the steps curve
  does not apply). DDIM with eta = 0 is this ODE's Euler discretisation in sigma: divided by sqrt(abar_s)
  its step reads xbar_s = xbar_t + (sigma_s - sigma_t) eps(x_t, t) (exactly so while the x0_hat clip
  does not act).
``ode_sample_tol`` is a sampler setting (it changes the samples, never training); the ``ode_*`` likelihood
settings are not: they change an evaluation row, not how samples are drawn.
Fewer steps cost variance, not just detail: with the exact denoiser of N(0.2, 0.3^2) pixels (the tests'),
x_0 keeps 97% of the data's variance on the full T = 1000 chain, 82% at 100 respaced ancestral steps
and 71% at 50 (DDIM with eta = 0: 84% at 50), since each step's fixed-small variance ignores the
uncertainty of x0_hat. The trap: the bound (``nll``) is always that of the full T-step chain, while the
samples come from the sampler's (shorter) chain or the ODE, and the ODE rows are another model's density,
so a report must say which model each figure is for (``likelihood_description``, ``sampler_description``).

Size and cost (the whole ``bench run`` evaluation of one model has to fit in about three minutes on
a 2-core CPU after 60 s of training): T = 1000 with Ho's linear schedule (b from 1e-4 to 0.02), which
keeps the bound tight, while sampling uses ``sampling_steps`` = 50 (``sampling_step_options`` lists the
step counts a harness may sweep). The U-Net is narrow (``width`` = 32 channels at 14x14 and 7x7, half that at
full resolution, where convolutions cost most) so that 60 s of CPU training buys several hundred steps,
and 1,000 samples at 50 steps cost under a minute. Adam at lr 2e-3 (Ho et al. use 2e-4, for 800k steps;
a minute of CPU buys a few hundred, and 2e-3 gave a lower bound and cleaner strokes than 1e-3 there).
No weight EMA: it needs far more steps than a minute buys.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from models.base import GenerativeModel, bits_per_dim, dequantize, discrete_nll_from_dequantized
from models.ode import CountedField, DensityDynamics, SolverStepLimit, log_likelihood, solve
from models.registry import register
from models.unet import UNet

BIN_HALF_WIDTH = 1.0 / 255.0  # 8-bit values on [-1, 1] sit 2/255 apart
ODE_SEED = 0  # the private generator of the ODE likelihood's dequantization noise and probes


# --- noise schedules -----------------------------------------------------------------------------
def linear_betas(T: int, max_beta: float = 0.999) -> torch.Tensor:
    """Ho et al.: b from 1e-4 to 0.02 for T = 1000, the ends scaled by 1000 / T for other T
    (clipped at ``max_beta`` for very short chains, T < 50)."""
    scale = 1000.0 / T
    return torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64).clamp(max=max_beta)


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal: abar(t) = cos^2(((t/T + s) / (1 + s)) pi / 2), betas clipped at ``max_beta``."""
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    abar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)


SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas}


class GaussianChain:
    """The coefficients of one Markov chain with variances ``betas`` (index i is timestep i + 1)."""

    def __init__(self, betas: torch.Tensor):
        self.betas = betas.double()
        self.abar = torch.cumprod(1 - self.betas, 0)
        self.abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.abar[:-1]])
        self.posterior_var = self.betas * (1 - self.abar_prev) / (1 - self.abar)
        # beta~ at the first step is 0; "fixed small" uses the second value there.
        first = self.posterior_var[1] if len(betas) > 1 else self.betas[0]
        self.model_log_var = torch.log(torch.cat([first.view(1), self.posterior_var[1:]]))
        self.coef_x0 = self.betas * self.abar_prev.sqrt() / (1 - self.abar)
        self.coef_xt = (1 - self.abar_prev) * (1 - self.betas).sqrt() / (1 - self.abar)

    def __len__(self):
        return len(self.betas)


def _at(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] shaped to broadcast over an image batch like ``like``."""
    return values.to(like.device)[t].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


# --- Gaussian likelihood helpers ------------------------------------------------------------------
def normal_kl(mean1, log_var1, mean2, log_var2):
    """KL(N(mean1, exp(log_var1)) || N(mean2, exp(log_var2))), elementwise, in nats."""
    return 0.5 * (log_var2 - log_var1 + torch.exp(log_var1 - log_var2)
                  + (mean1 - mean2) ** 2 * torch.exp(-log_var2) - 1.0)


def _log_gaussian_mass(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """log(Phi(hi) - Phi(lo)) for standardised bin edges lo < hi, accurate in both tails."""
    # Work in the tail where both edges lie below zero (flip the upper tail by symmetry).
    flip = (lo + hi) > 0
    a = torch.where(flip, -hi, lo)
    b = torch.where(flip, -lo, hi)
    log_b, log_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    return log_b + torch.log(-torch.expm1(log_a - log_b))


def discretized_gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """log P(x) per pixel for 8-bit values x on [-1, 1] under N(mean, exp(log_var)) binned:
    bin [x - 1/255, x + 1/255], the first bin extended to -inf and the last to +inf."""
    inv_std = torch.exp(-0.5 * log_var)
    lo = torch.where(x < -1 + 1e-3, torch.full_like(x, -math.inf), (x - BIN_HALF_WIDTH - mean) * inv_std)
    hi = torch.where(x > 1 - 1e-3, torch.full_like(x, math.inf), (x + BIN_HALF_WIDTH - mean) * inv_std)
    return _log_gaussian_mass(lo, hi)


def stratified_timesteps(first: int, last: int, k: int, n: int, generator=None, device=None):
    """k timesteps per example from the integers first..last, one uniform draw in each of k
    geometrically spaced strata, and the strata sizes as weights: sum_j w_j f(t_j) is an unbiased
    estimate of sum_{t=first..last} f(t). Returns (t: n x k long, weights: k float)."""
    count = last - first + 1
    k = min(k, count)
    edges = torch.logspace(0, math.log10(count), k + 1, dtype=torch.float64).round().long() - 1
    edges[0], edges[-1] = 0, count
    for j in range(1, k + 1):  # strictly increasing, leaving room for the strata still to come
        edges[j] = min(max(int(edges[j]), int(edges[j - 1]) + 1), count - (k - j))
    sizes = edges[1:] - edges[:-1]
    u = torch.rand(n, k, generator=generator, dtype=torch.float64)
    t = first + edges[:-1] + (u * sizes).floor().long().clamp(max=sizes - 1)
    return t.to(device), sizes.double().to(device)


# --- the model ----------------------------------------------------------------------------------
@register("ddpm")
class DDPM(GenerativeModel):
    family = "diffusion"
    likelihood = "bound"
    track = "8bit"
    default_steps = 320

    sampler_settings = ("sampling_steps", "sampler", "eta", "ode_sample_tol")
    samplers = ("ancestral", "ddim", "ode")

    def __init__(self, image_shape=(1, 28, 28), T: int = 1000, schedule: str = "linear",
                 sampling_steps: int | None = 50, sampler: str = "ancestral", eta: float = 0.0,
                 width: int = 32, nll_t_samples: int | None = 8,
                 lr: float = 2e-3, batch_size: int = 64, max_eval_batch: int = 1024,
                 ode_images: int = 32, ode_probes: int = 1, ode_rtol: float = 1e-4, ode_atol: float = 1e-4,
                 ode_max_steps: int = 200, ode_exact_trace_max_dim: int = 16, ode_sample_tol: float = 1e-3):
        super().__init__(image_shape)
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown noise schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
        if T < 2:
            raise ValueError(f"T must be at least 2 diffusion steps, got {T}")
        if ode_probes < 1:
            raise ValueError(f"ode_probes must be at least 1, got {ode_probes}")
        self.T, self.schedule, self.lr, self.batch_size = T, schedule, lr, batch_size
        self.nll_t_samples, self.max_eval_batch = nll_t_samples, max_eval_batch
        self.chain = GaussianChain(SCHEDULES[schedule](T))
        self.sampler, self.eta = self._check_sampler(sampler), float(eta)
        self.sampling_steps = sampling_steps  # builds the sampling sub-chain (the setter below)
        self.net = UNet(image_shape[0], width)
        # The probability-flow ODE (module docstring): its likelihood settings, and the ODE sampler's tolerance.
        self.ode_images, self.ode_probes = ode_images, ode_probes
        self.ode_rtol, self.ode_atol, self.ode_max_steps = ode_rtol, ode_atol, ode_max_steps
        self.ode_exact_trace_max_dim, self.ode_sample_tol = ode_exact_trace_max_dim, ode_sample_tol
        # log sigma_t at each 0-based timestep, sigma_t^2 = (1 - abar_t) / abar_t: the ODE's time grid
        # (a plain tensor, not a buffer: derived from T and the schedule, so checkpoints need not hold it).
        self.ode_lambdas = 0.5 * torch.log((1 - self.chain.abar) / self.chain.abar)
        self.ode_sample_nfe: list[int] = []  # NFE of every ODE sampling solve so far

    # --- sampler settings ------------------------------------------------------------------------
    def _check_sampler(self, sampler: str) -> str:
        if sampler not in self.samplers:
            raise ValueError(f"unknown sampler {sampler!r}; use one of {', '.join(self.samplers)}")
        return sampler

    @property
    def sampling_steps(self) -> int:
        return len(self.sample_timesteps)

    @sampling_steps.setter
    def sampling_steps(self, steps: int | None):
        self.sample_timesteps, self.sample_chain = self.sub_chain(steps)

    def sub_chain(self, steps: int | None) -> tuple[torch.Tensor, GaussianChain]:
        """(0-based timesteps, their chain) of ``steps`` evenly spaced timesteps ending at T (None: all T;
        more than T: capped at T)."""
        steps = self.T if steps is None else min(int(steps), self.T)
        if steps < 1:
            raise ValueError(f"sampling_steps must be at least 1 (or None for all T = {self.T}), got {steps}")
        timesteps = torch.linspace(0, self.T - 1, steps).round().long().unique()
        abar_sub = self.chain.abar[timesteps]
        abar_sub_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar_sub[:-1]])
        return timesteps, GaussianChain(1 - abar_sub / abar_sub_prev)

    @property
    def sampling_step_options(self) -> tuple[int, ...]:
        """Step counts worth sweeping (capped at T); none for the ODE sampler, whose steps are adaptive."""
        return () if self.sampler == "ode" else (10, 20, 50, 100, 1000)

    @property
    def sampling_cost_depends_on_weights(self) -> bool:
        return self.sampler == "ode"  # an adaptive solver's NFE grows as the network trains

    def sampler_description(self) -> str:
        """What the samples (and so FID, samples/s and NFE) come from, in words."""
        if self.sampler == "ode":
            return (f"probability-flow ODE, adaptive dopri5 at rtol=atol={self.ode_sample_tol:g}, from the noise end "
                    f"to the first step of the T={self.T} {self.schedule} chain")
        name = "ancestral" if self.sampler == "ancestral" else f"DDIM (eta={self.eta:g})"
        k = self.sampling_steps
        steps = f"all {k} steps" if k == self.T else f"{k} respaced steps"
        return f"{name}, {steps} of the T={self.T} {self.schedule} chain"

    def likelihood_description(self) -> str:
        """Which model each likelihood is of: test_nll/test_bpd, the variational bound of the full T-step
        chain (whatever the sampler); test_nll_ode/test_bpd_ode, the probability-flow ODE's density."""
        how = ("every term summed" if self.nll_t_samples is None
               else f"diffusion terms estimated at {self.nll_t_samples} stratified timesteps per image")
        return (f"variational bound of the T={self.T} {self.schedule} chain ({how}); the probability-flow ODE's "
                f"bits/dim (test_bpd_ode) is a dequantization bound for another model, the continuous flow of the "
                f"same network, at the chain's first step")

    def configure_optimizers(self):
        return [torch.optim.Adam(self.parameters(), lr=self.lr)]

    @property
    def sampling_nfe(self) -> float:
        """Network evaluations per batch of samples: the sub-chain's steps, or for the ODE sampler the
        measured mean NFE of its solves so far (one small solve first if there was none)."""
        if self.sampler != "ode":
            return len(self.sample_timesteps)
        if not self.ode_sample_nfe:
            self.sample(2, generator=torch.Generator().manual_seed(ODE_SEED))  # a private generator: no RNG drawn
        return sum(self.ode_sample_nfe) / len(self.ode_sample_nfe)

    @staticmethod
    def to_model_space(x: torch.Tensor) -> torch.Tensor:
        """8-bit pixel values 0..255 -> [-1, 1]."""
        return x * (2.0 / 255.0) - 1.0

    # --- forward process and loss ------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """A draw of x_t ~ q(x_t | x_0) (t is the 0-based index, timestep t + 1)."""
        return _at(self.chain.abar.sqrt(), t, x0) * x0 + _at((1 - self.chain.abar).sqrt(), t, x0) * noise

    def train_step(self, batch, optimizers):
        x, _ = batch
        (opt,) = optimizers
        x0 = self.to_model_space(x)
        t = torch.randint(0, self.T, (len(x0),), device=x0.device)
        noise = torch.randn_like(x0)
        loss = F.mse_loss(self.net(self.q_sample(x0, t, noise), t), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item()}

    # --- the reverse model ---------------------------------------------------------------------
    def _p_mean(self, chain: GaussianChain, x_t, t_chain, t_net):
        """Mean of p(x_{t-1} | x_t): the posterior mean at the clipped x0 estimate. ``t_chain`` indexes
        ``chain``; ``t_net`` is the timestep the network sees (they differ on the strided sub-chain)."""
        eps = self.net(x_t, t_net)
        abar = _at(chain.abar, t_chain, x_t)
        x0_hat = ((x_t - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1.0, 1.0)
        return _at(chain.coef_x0, t_chain, x_t) * x0_hat + _at(chain.coef_xt, t_chain, x_t) * x_t

    @torch.no_grad()
    def sample(self, n: int, labels=None, *, steps: int | None = None, sampler: str | None = None,
               eta: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images in [0, 1]; ``steps``, ``sampler`` and ``eta`` default to the model's settings.
        ``generator`` (a CPU generator) draws x_T instead of the global RNG; the stochastic samplers'
        later noise still comes from the global RNG."""
        timesteps, chain = (self.sample_timesteps, self.sample_chain) if steps is None else self.sub_chain(steps)
        if generator is None:
            x_T = torch.randn(n, *self.image_shape, device=self.device)
        else:
            x_T = torch.randn(n, *self.image_shape, generator=generator).to(self.device)
        x = self.denoise(x_T, timesteps, chain, sampler or self.sampler, self.eta if eta is None else eta)
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0)

    def denoise(self, x_T: torch.Tensor, timesteps: torch.Tensor, chain: GaussianChain, sampler: str,
                eta: float = 0.0) -> torch.Tensor:
        """Run a sampler on ``chain`` (network timesteps ``timesteps``) from x_T; returns x_0 on [-1, 1].
        The ODE sampler ignores ``timesteps``, ``chain`` and ``eta``: it solves on the full chain's times."""
        sampler = self._check_sampler(sampler)
        if sampler == "ode":
            return self.ode_sample(x_T)
        if sampler == "ddim":
            return self._ddim(x_T, timesteps, chain, eta)
        return self._ancestral(x_T, timesteps, chain)

    def _ancestral(self, x, timesteps, chain):
        n, device = len(x), x.device
        for i in reversed(range(len(chain))):
            t_chain = torch.full((n,), i, device=device, dtype=torch.long)
            t_net = timesteps.to(device)[t_chain]
            mean = self._p_mean(chain, x, t_chain, t_net)
            if i == 0:
                x = mean  # the last step shows the decoder's mean, without noise (Ho et al.)
            else:
                x = mean + (0.5 * _at(chain.model_log_var, t_chain, x)).exp() * torch.randn_like(x)
        return x

    def _ddim(self, x, timesteps, chain, eta: float):
        for i in reversed(range(len(chain))):
            t_net = torch.full((len(x),), int(timesteps[i]), device=x.device, dtype=torch.long)
            eps = self.net(x, t_net)
            a_t, a_s = chain.abar[i].item(), chain.abar_prev[i].item()
            x0_hat = ((x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)).clamp(-1.0, 1.0)
            eps = (x - math.sqrt(a_t) * x0_hat) / math.sqrt(1 - a_t)  # the noise that x0_hat implies
            sigma = eta * math.sqrt((1 - a_s) / (1 - a_t) * (1 - a_t / a_s))
            x = math.sqrt(a_s) * x0_hat + math.sqrt(max(1 - a_s - sigma ** 2, 0.0)) * eps
            if sigma > 0:
                x = x + sigma * torch.randn_like(x)
        return x

    # --- the variational bound -----------------------------------------------------------------
    def prior_term(self, x0: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I)) per example, in closed form."""
        # KL(N(sqrt(a) x, 1 - a) || N(0, 1)) = (a (x^2 - 1) - log(1 - a)) / 2 per pixel, a = abar_T,
        # in float64: a is about 4e-5 for Ho's schedule, so float32 would lose the difference.
        abar_T = self.chain.abar[-1].item()
        kl = 0.5 * (abar_T * (x0.double() ** 2 - 1) - math.log1p(-abar_T))
        return kl.flatten(1).sum(1)

    def _terms_at(self, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The bound's term at 0-based index t for each row: -log p(x_0 | x_1) where t = 0,
        else KL(q(x_t | x_{t+1}, x_0) || p(x_t | x_{t+1})) (Ho's L_t), at one draw of x_{t+1}."""
        chain = self.chain
        x_t = self.q_sample(x0, t, torch.randn_like(x0))
        model_mean = self._p_mean(chain, x_t, t, t)
        model_log_var = _at(chain.model_log_var, t, x0)
        true_mean = _at(chain.coef_x0, t, x0) * x0 + _at(chain.coef_xt, t, x0) * x_t
        true_log_var = _at(chain.posterior_var.clamp(min=1e-30).log(), t, x0)
        kl = normal_kl(true_mean, true_log_var, model_mean, model_log_var.expand_as(x0)).flatten(1).sum(1)
        decoder = -discretized_gaussian_log_prob(x0, model_mean, model_log_var).flatten(1).sum(1)
        return torch.where(t == 0, decoder, kl)

    def _terms_batched(self, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``_terms_at`` over a long flat batch, in chunks of at most ``max_eval_batch``."""
        return torch.cat([self._terms_at(x0[i:i + self.max_eval_batch], t[i:i + self.max_eval_batch])
                          for i in range(0, len(x0), self.max_eval_batch)])

    @torch.no_grad()
    def bound_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The bound per example, split as {"prior": L_T, "diffusion": sum of L_1..L_{T-1},
        "decoder": L_0}, in nats; ``nll`` is their sum. The diffusion sum is exact or estimated
        according to ``nll_t_samples`` (module docstring)."""
        x0 = self.to_model_space(x)
        n, device = len(x0), x0.device
        decoder = self._terms_batched(x0, torch.zeros(n, dtype=torch.long, device=device))
        if self.nll_t_samples is None:
            diffusion = torch.zeros(n, dtype=torch.float64, device=device)
            for t in range(1, self.T):
                diffusion += self._terms_batched(x0, torch.full((n,), t, dtype=torch.long, device=device)).double()
        else:
            t, weights = stratified_timesteps(1, self.T - 1, self.nll_t_samples, n, device=device)
            k = t.shape[1]
            x_rep = x0.repeat_interleave(k, dim=0)
            terms = self._terms_batched(x_rep, t.flatten()).double().view(n, k)
            diffusion = (terms * weights).sum(1)
        return {"prior": self.prior_term(x0).double(), "diffusion": diffusion, "decoder": decoder.double()}

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        terms = self.bound_terms(x)
        return (terms["prior"] + terms["diffusion"] + terms["decoder"]).float()

    @torch.no_grad()
    def self_checks(self, x_test: torch.Tensor) -> list[dict]:
        """Every term of the variational bound is non-negative: the prior and diffusion terms are KL
        divergences and the decoder term is minus the log of a probability mass (at most 1)."""
        terms = self.bound_terms(x_test[:8])
        smallest = {name: value.min().item() for name, value in terms.items()}
        worst = min(smallest, key=smallest.get)
        tolerance = -1e-3  # nats per image: float32 round-off of a sum over pixels
        return [{"check": "bound_terms_nonnegative", "passed": smallest[worst] >= tolerance,
                 "value": smallest[worst], "tolerance": tolerance,
                 "detail": "smallest bound term (nats) over 8 test images, per term: "
                           + ", ".join(f"{k} {v:.4g}" for k, v in smallest.items())}]

    # --- the probability-flow ODE (models/ode.py) ------------------------------------------------
    def ode_timestep(self, lam: torch.Tensor) -> torch.Tensor:
        """The network's (float) timestep at log sigma = ``lam``: the 0-based index, interpolated linearly
        in log sigma between the chain's integer timesteps (extrapolated linearly outside them)."""
        grid = self.ode_lambdas.to(lam.device)
        lam64 = lam.double().reshape(1)
        i = torch.searchsorted(grid, lam64).clamp(1, self.T - 1)
        lo, hi = grid[i - 1], grid[i]
        return ((i - 1).double() + (lam64 - lo) / (hi - lo)).reshape(lam.shape).to(lam.dtype)

    def probability_flow(self, lam: torch.Tensor, xbar: torch.Tensor) -> torch.Tensor:
        """d xbar / d lambda = sigma eps(sqrt(abar) xbar, t(lambda)), sigma = e^lambda, abar = 1 / (1 + sigma^2).

        abar and sigma are exact functions of lambda; only the network's timestep is interpolated."""
        sigma = torch.exp(lam)
        x_t = xbar * torch.rsqrt(1 + sigma * sigma)
        t = self.ode_timestep(lam).to(xbar.dtype).expand(xbar.shape[0])
        return sigma * self.net(x_t, t)

    @property
    def ode_ends(self) -> tuple[float, float]:
        """(lambda at the data end, lambda at the noise end): log sigma at timestep index 0 and T - 1."""
        return self.ode_lambdas[0].item(), self.ode_lambdas[-1].item()

    def ode_log_prior(self, xbar: torch.Tensor) -> torch.Tensor:
        """log N(xbar; 0, (1 + sigma_max^2) I) per example: x_T = sqrt(abar_T) xbar ~ N(0, I), as in the chain."""
        var = 1.0 / self.chain.abar[-1].item()  # 1 + sigma_max^2
        return -0.5 * (xbar.double() ** 2 / var + math.log(2 * math.pi * var)).flatten(1).sum(1).to(xbar.dtype)

    @property
    def ode_exact_trace(self) -> bool:
        return self.dim <= self.ode_exact_trace_max_dim

    def ode_log_density(self, x: torch.Tensor, *, probes: int | None = None, exact: bool | None = None,
                        generator: torch.Generator | None = None, rtol: float | None = None,
                        atol: float | None = None) -> tuple[torch.Tensor, int]:
        """log p(x) of each row of ``x`` (model space, the data end) under the probability-flow ODE:
        (probes x N, NFE). One row when the trace is exact (default: where D <= ode_exact_trace_max_dim)."""
        a0 = self.chain.abar[0].item()
        lam_data, lam_noise = self.ode_ends
        exact = self.ode_exact_trace if exact is None else exact
        log_p, nfe = log_likelihood(DensityDynamics(self.probability_flow), x / math.sqrt(a0), t_data=lam_data,
                                    t_noise=lam_noise, probes=probes or self.ode_probes, exact=exact,
                                    rtol=rtol or self.ode_rtol, atol=atol or self.ode_atol,
                                    max_num_steps=self.ode_max_steps, log_prior=self.ode_log_prior,
                                    generator=generator, who="DDPM's probability-flow ODE")
        # x = sqrt(abar_0) xbar: log p(x) = log p(xbar) - D log sqrt(abar_0).
        return log_p - 0.5 * self.dim * math.log(a0), nfe

    @torch.no_grad()
    def ode_nll(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, list[int]]:
        """The dequantization bound on the discrete NLL of 8-bit ``x`` under the ODE, in nats: (probes x N,
        the NFE of each solve). Dequantization noise and probes come from ``generator`` (CPU) if given."""
        dtype = next(self.net.parameters()).dtype
        y = dequantize(x.detach().cpu().to(dtype), generator).to(x.device)
        z = 2.0 * y - 1.0  # density of y = density of z times 2^D
        per_solve = max(1, self.max_eval_batch // (1 if self.ode_exact_trace else self.ode_probes))
        parts, nfes = [], []
        for i in range(0, len(z), per_solve):
            log_p, nfe = self.ode_log_density(z[i:i + per_solve], generator=generator)
            parts.append(log_p)
            nfes.append(nfe)
        nll_y = -(torch.cat(parts, dim=1) + self.dim * math.log(2.0))
        return discrete_nll_from_dequantized(nll_y, self.dim), nfes

    @torch.no_grad()
    def ode_sample(self, x_T: torch.Tensor) -> torch.Tensor:
        """x at the chain's first step from x_T, along the probability-flow ODE (dopri5 at ode_sample_tol,
        NFE counted into ``ode_sample_nfe``); on [-1, 1] up to that step's small noise (not clipped)."""
        lam_data, lam_noise = self.ode_ends
        field = CountedField(self.probability_flow)
        try:
            xbar = solve(field, x_T / math.sqrt(self.chain.abar[-1].item()), lam_noise, lam_data,
                         rtol=self.ode_sample_tol, atol=self.ode_sample_tol, max_num_steps=self.ode_max_steps,
                         who="DDPM's probability-flow ODE sampler")
        finally:
            self.ode_sample_nfe.append(field.calls)
        return math.sqrt(self.chain.abar[0].item()) * xbar

    def extra_metrics(self, x_test: torch.Tensor) -> list[dict]:
        """test_nll_ode and test_bpd_ode: the ODE likelihood of the first ``ode_images`` test images (none if
        the solve hits ode_max_steps). A private generator draws the dequantization noise and the probes, so
        the global RNG (and every other metric's draw) is untouched."""
        x = x_test[:self.ode_images]
        if len(x) == 0:
            return []
        try:
            per, nfes = self.ode_nll(x, generator=torch.Generator().manual_seed(ODE_SEED))
        except SolverStepLimit as exc:
            warnings.warn(f"DDPM: no ODE likelihood rows: {exc}", RuntimeWarning, stacklevel=2)
            return []
        per = per.double().cpu()
        probes, n = per.shape
        per_image = per.mean(0)
        nll = per_image.mean().item()
        se = (per_image.std().item() / math.sqrt(n)) if n > 1 else float("nan")
        probe_se = (per.var(0).sum().sqrt().item() / (math.sqrt(probes) * n)) if probes > 1 else None
        trace = "exact trace" if self.ode_exact_trace else f"{probes} Hutchinson probe(s) per image"
        nfe = (f"NFE {nfes[0]}" if len(nfes) == 1 else
               f"NFE {sum(nfes) / len(nfes):.1f} per solve over {len(nfes)} solves")

        def note(scale, unit):
            spread = f"standard error over images {se * scale:.3g} {unit}"
            if probe_se is not None:
                spread += f" (of it, probe noise {probe_se * scale:.3g})"
            elif not self.ode_exact_trace:
                spread += " (probe noise included)"
            return (f"probability-flow ODE (DDIM's, in log sigma), dopri5 rtol={self.ode_rtol:g} "
                    f"atol={self.ode_atol:g}; the first {n} test images, {trace}; {nfe}; {spread}")

        bpd_scale = bits_per_dim(1.0, self.dim)
        return [{"metric": "test_nll_ode", "value": nll, "unit": "nats", "kind": "bound", "note": note(1.0, "nats")},
                {"metric": "test_bpd_ode", "value": bits_per_dim(nll, self.dim), "unit": "bits/dim", "kind": "bound",
                 "note": note(bpd_scale, "bits/dim")}]
