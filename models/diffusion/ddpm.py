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

Samplers (settings ``sampling_steps``, ``sampler``, ``eta``; ``sample(n, steps=, sampler=, eta=)``
overrides them for one call). Both run on a sub-chain of ``sampling_steps`` evenly spaced timesteps,
always ending at T (Nichol & Dhariwal's respacing: the sub-chain's betas are recomputed from abar, so
it is a shorter chain with the same marginals q(x_t | x_0)); ``sampling_steps`` = T is the full chain.
- ``"ancestral"`` (default): p(x_{t-1} | x_t) above, on the sub-chain.
- ``"ddim"`` (Song, Meng & Ermon 2021): x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - s_t^2) eps_hat
  + s_t z with s_t = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s). eta = 0 is
  deterministic given x_T; eta = 1 gives s_t^2 = the posterior variance, the ancestral sampler's law.
Fewer steps cost variance, not just detail: with the exact denoiser of N(0.2, 0.3^2) pixels (the tests'),
x_0 keeps 97% of the data's variance on the full T = 1000 chain, 82% at 100 respaced ancestral steps
and 71% at 50 (DDIM with eta = 0: 84% at 50), since each step's fixed-small variance ignores the
uncertainty of x0_hat. The trap: the bound (``nll``) is always that of the full T-step chain, while the samples come from the
sampler's (shorter) chain, so a report must say which chain each figure is for
(``likelihood_description``, ``sampler_description``).

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

import torch
import torch.nn.functional as F
from torch import nn

from models.base import GenerativeModel
from models.registry import register

BIN_HALF_WIDTH = 1.0 / 255.0  # 8-bit values on [-1, 1] sit 2/255 apart


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


# --- the noise-prediction network -----------------------------------------------------------------
def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the time embedding added in between, and a residual connection."""

    def __init__(self, c_in: int, c_out: int, t_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(math.gcd(8, c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(t_dim, c_out)
        self.norm2 = nn.GroupNorm(math.gcd(8, c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, t_emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(t_emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class UNet(nn.Module):
    """Three resolutions (H, H/2, H/4, rounded up), one residual block each way, skip connections.

    Stride-2 convolutions round odd sizes up (14 -> 7 -> 4); the way up interpolates to the size of
    the matching skip, so any H x W works (8x8, 14x14, 28x28)."""

    def __init__(self, channels: int = 1, width: int = 32):
        super().__init__()
        c0, c1 = max(8, width // 2), width
        t_dim = 4 * c0
        self.t_dim = c0
        self.time_mlp = nn.Sequential(nn.Linear(c0, t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
        self.conv_in = nn.Conv2d(channels, c0, 3, padding=1)
        self.down0 = ResBlock(c0, c0, t_dim)
        self.pool0 = nn.Conv2d(c0, c1, 3, stride=2, padding=1)
        self.down1 = ResBlock(c1, c1, t_dim)
        self.pool1 = nn.Conv2d(c1, c1, 3, stride=2, padding=1)
        self.mid = ResBlock(c1, c1, t_dim)
        self.up1 = ResBlock(2 * c1, c1, t_dim)
        self.up0 = ResBlock(c1 + c0, c0, t_dim)
        self.norm_out = nn.GroupNorm(math.gcd(8, c0), c0)
        self.conv_out = nn.Conv2d(c0, channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # starts by predicting eps = 0
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.t_dim))
        h0 = self.down0(self.conv_in(x), emb)
        h1 = self.down1(self.pool0(h0), emb)
        h = self.mid(self.pool1(h1), emb)
        h = self.up1(torch.cat([F.interpolate(h, size=h1.shape[-2:], mode="nearest"), h1], 1), emb)
        h = self.up0(torch.cat([F.interpolate(h, size=h0.shape[-2:], mode="nearest"), h0], 1), emb)
        return self.conv_out(F.silu(self.norm_out(h)))


# --- the model ----------------------------------------------------------------------------------
@register("ddpm")
class DDPM(GenerativeModel):
    family = "diffusion"
    likelihood = "bound"
    track = "8bit"

    sampler_settings = ("sampling_steps", "sampler", "eta")
    sampling_step_options = (10, 20, 50, 100, 1000)  # step counts worth sweeping (capped at T)
    samplers = ("ancestral", "ddim")

    def __init__(self, image_shape=(1, 28, 28), T: int = 1000, schedule: str = "linear",
                 sampling_steps: int | None = 50, sampler: str = "ancestral", eta: float = 0.0,
                 width: int = 32, nll_t_samples: int | None = 8,
                 lr: float = 2e-3, batch_size: int = 64, max_eval_batch: int = 1024):
        super().__init__(image_shape)
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown noise schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
        if T < 2:
            raise ValueError(f"T must be at least 2 diffusion steps, got {T}")
        self.T, self.schedule, self.lr, self.batch_size = T, schedule, lr, batch_size
        self.nll_t_samples, self.max_eval_batch = nll_t_samples, max_eval_batch
        self.chain = GaussianChain(SCHEDULES[schedule](T))
        self.sampler, self.eta = self._check_sampler(sampler), float(eta)
        self.sampling_steps = sampling_steps  # builds the sampling sub-chain (the setter below)
        self.net = UNet(image_shape[0], width)

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

    def sampler_description(self) -> str:
        """What the samples (and so FID, samples/s and NFE) come from, in words."""
        name = "ancestral" if self.sampler == "ancestral" else f"DDIM (eta={self.eta:g})"
        k = self.sampling_steps
        steps = f"all {k} steps" if k == self.T else f"{k} respaced steps"
        return f"{name}, {steps} of the T={self.T} {self.schedule} chain"

    def likelihood_description(self) -> str:
        """Which chain the bound (bits/dim) is for: always the full T-step chain."""
        how = ("every term summed" if self.nll_t_samples is None
               else f"diffusion terms estimated at {self.nll_t_samples} stratified timesteps per image")
        return f"bound of the T={self.T} {self.schedule} chain ({how})"

    def configure_optimizers(self):
        return [torch.optim.Adam(self.parameters(), lr=self.lr)]

    @property
    def sampling_nfe(self) -> int:
        return len(self.sample_timesteps)

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
               eta: float | None = None) -> torch.Tensor:
        """``n`` images in [0, 1]; ``steps``, ``sampler`` and ``eta`` default to the model's settings."""
        timesteps, chain = (self.sample_timesteps, self.sample_chain) if steps is None else self.sub_chain(steps)
        x_T = torch.randn(n, *self.image_shape, device=self.device)
        x = self.denoise(x_T, timesteps, chain, sampler or self.sampler, self.eta if eta is None else eta)
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0)

    def denoise(self, x_T: torch.Tensor, timesteps: torch.Tensor, chain: GaussianChain, sampler: str,
                eta: float = 0.0) -> torch.Tensor:
        """Run a sampler on ``chain`` (network timesteps ``timesteps``) from x_T; returns x_0 on [-1, 1]."""
        if self._check_sampler(sampler) == "ddim":
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
