"""Glow: generative flow with invertible 1x1 convolutions (Kingma & Dhariwal 2018).

A multi-scale flow from dequantized, logit-space images to a standard normal latent. Each level
squeezes (C x H x W -> 4C x H/2 x W/2), applies K steps and factors half of the channels out to the
prior; the last level sends the rest. One step, with its log|det J| per image:

    actnorm     y = (x + b) * exp(log_a)                                H W sum(log_a)
    1x1 conv    y = W x at each pixel, W = P L (U + diag(sign_s exp(log_s)))   H W sum(log_s)
    coupling    (t, r) = NN(x_a),  y = (x_a, (x_b + t) * sigmoid(r + 2))     sum log sigmoid(r + 2)

P is a fixed permutation, L unit lower- and U strictly upper-triangular: the LU form makes log|det W|
a sum over the diagonal, O(C) instead of O(C^3). The coupling scale is the paper's sigmoid(r + 2), in
(0, 1), about 0.88 at the start (last convolution zero). Unlike the paper, the factored-out halves
have a fixed N(0, I) prior, not a learnt conditional one. Sampling is one inverse pass from
z ~ N(0, T^2 I), T = ``temperature``, default 1.0 (the model's own distribution; T < 1 trades
diversity for cleaner digits).

The trap: actnorm's data-dependent initialisation must run on data before the first optimiser step.
Here the first forward pass in training mode sets each actnorm, in sequence on the activations that
reach it, to zero mean and unit variance per channel, and records that in a buffer (a reloaded or
evaluated model never re-initialises).

Dequantization, the logit transform (Jacobian included) and the bits/dim constant are RealNVP's:
nll(x) = -log p(y) + D ln 256, y = (x + u) / 256, an upper bound on the discrete NLL.
Images: any channel count (grey or colour), sides multiples of 2^levels (4 at the default 2 levels: 8x8,
28x28, 32x32, not 14x14). Defaults for a 2-core CPU (``smoke`` 20 steps, ``default`` 60 s): 2 levels x 4 steps, coupling
width 48, batch 64, Adam at 3e-3 (1e-3 learns much less in 60 s; no warm-up needed at this size).
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from models.base import GenerativeModel, dequantize, discrete_nll_from_dequantized
from models.flows.realnvp import RealNVP, squeeze, unsqueeze
from models.registry import register


class ActNorm(nn.Module):
    """Per-channel affine map, initialised from the first batch it sees in training mode."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, x: torch.Tensor):
        if self.training and not self.initialized:  # data-dependent init: zero mean, unit variance
            with torch.no_grad():
                self.bias.copy_(-x.mean(dim=(0, 2, 3), keepdim=True))
                self.log_scale.copy_(-torch.log(x.std(dim=(0, 2, 3), keepdim=True, unbiased=False) + 1e-6))
                self.initialized.fill_(True)
        h, w = x.shape[2:]
        return (x + self.bias) * torch.exp(self.log_scale), h * w * self.log_scale.sum().expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * torch.exp(-self.log_scale) - self.bias


class InvConv1x1(nn.Module):
    """Invertible 1x1 convolution, LU-parametrised, started at a random rotation."""

    def __init__(self, channels: int):
        super().__init__()
        rotation = torch.linalg.qr(torch.randn(channels, channels))[0]
        perm, lower, upper = torch.linalg.lu(rotation)
        s = torch.diagonal(upper)
        self.register_buffer("perm", perm)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("lower_mask", torch.ones(channels, channels).tril(-1))
        self.register_buffer("eye", torch.eye(channels))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(upper.triu(1))
        self.log_s = nn.Parameter(torch.log(s.abs()))

    def weight(self) -> torch.Tensor:
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.perm @ lower @ upper

    def forward(self, x: torch.Tensor):
        h, w = x.shape[2:]
        return F.conv2d(x, self.weight()[:, :, None, None]), h * w * self.log_s.sum().expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return F.conv2d(y, torch.linalg.inv(self.weight())[:, :, None, None])


class AffineCoupling(nn.Module):
    """The second half of the channels, scaled and shifted by a network of the first half."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels // 2, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1), nn.ReLU(),
            nn.Conv2d(hidden, channels, 3, padding=1))  # a shift and a scale for each of the other half
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def _shift_scale(self, x_a: torch.Tensor):
        shift, raw = self.net(x_a).chunk(2, dim=1)
        return shift, torch.sigmoid(raw + 2.0)

    def forward(self, x: torch.Tensor):
        x_a, x_b = x.chunk(2, dim=1)
        shift, scale = self._shift_scale(x_a)
        return torch.cat([x_a, (x_b + shift) * scale], 1), torch.log(scale).flatten(1).sum(1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y_a, y_b = y.chunk(2, dim=1)
        shift, scale = self._shift_scale(y_a)
        return torch.cat([y_a, y_b / scale - shift], 1)


@register("glow")
class Glow(GenerativeModel):
    sampler_settings = ("temperature",)
    family = "flow"
    likelihood = "bound"
    track = "8bit"
    batch_size = 64
    default_steps = 600
    side_multiple = 4  # 2 ** levels at the default 2 levels (each level squeezes by 2)

    # The data <-> logit-space preprocessing is RealNVP's, Jacobian included (reads self.logit_alpha).
    _to_logit = RealNVP._to_logit
    _from_logit = RealNVP._from_logit

    def __init__(self, image_shape=(1, 28, 28), levels: int = 2, steps_per_level: int = 4, hidden: int = 48,
                 temperature: float = 1.0, logit_alpha: float | None = 0.05, lr: float = 3e-3):
        super().__init__(image_shape)
        c, h, w = self.image_shape
        if h % 2 ** levels or w % 2 ** levels:
            raise ValueError(f"Glow squeezes {levels} times: height and width must be multiples of "
                             f"{2 ** levels}, got {h}x{w}; use fewer levels")
        self.side_multiple = 2 ** levels
        self.temperature, self.logit_alpha, self.lr = temperature, logit_alpha, lr
        self.levels = nn.ModuleList()
        self.latent_shapes = []  # shape of each block sent to the prior, in forward order
        for level in range(levels):
            c, h, w = 4 * c, h // 2, w // 2
            self.levels.append(nn.ModuleList(  # K steps, each actnorm -> 1x1 conv -> coupling
                layer for _ in range(steps_per_level)
                for layer in (ActNorm(c), InvConv1x1(c), AffineCoupling(c, hidden))))
            if level < levels - 1:
                c = c // 2
                self.latent_shapes.append((c, h, w))
        self.latent_shapes.append((c, h, w))

    def configure_optimizers(self):
        return [torch.optim.Adam(self.parameters(), lr=self.lr)]

    def forward_flow(self, z: torch.Tensor):
        """Logit-space images -> (latent N x D, the blocks factored out at each level concatenated; log|det J|)."""
        logdet = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        factored = []
        for level, layers in enumerate(self.levels):
            z = squeeze(z)
            for layer in layers:
                z, ld = layer(z)
                logdet = logdet + ld
            if level < len(self.levels) - 1:
                z, out = z.chunk(2, dim=1)
                factored.append(out.flatten(1))
        factored.append(z.flatten(1))
        return torch.cat(factored, dim=1), logdet

    def inverse_flow(self, latent: torch.Tensor) -> torch.Tensor:
        n = latent.shape[0]
        blocks = [b.view(n, *shape) for b, shape in
                  zip(latent.split([math.prod(s) for s in self.latent_shapes], dim=1), self.latent_shapes)]
        z = blocks[-1]
        for level in reversed(range(len(self.levels))):
            if level < len(self.levels) - 1:
                z = torch.cat([z, blocks[level]], dim=1)
            for layer in reversed(self.levels[level]):
                z = layer.inverse(z)
            z = unsqueeze(z)
        return z

    def nll_continuous(self, y: torch.Tensor) -> torch.Tensor:
        """-log p(y) in nats for y in [0, 1]^D (the dequantized data)."""
        z, logdet_logit = self._to_logit(y)
        latent, logdet_flow = self.forward_flow(z)
        log_prior = -0.5 * (latent ** 2 + math.log(2 * math.pi)).sum(1)
        return -(log_prior + logdet_logit + logdet_flow)

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        return discrete_nll_from_dequantized(self.nll_continuous(dequantize(x)), self.dim)

    @torch.no_grad()
    def sample(self, n: int, labels=None) -> torch.Tensor:
        weight = next(self.parameters())
        latent = self.temperature * torch.randn(n, self.dim, dtype=weight.dtype, device=weight.device)
        return self._from_logit(self.inverse_flow(latent)).clamp(0.0, 1.0)

    @torch.no_grad()
    def self_checks(self, x_test: torch.Tensor) -> list[dict]:
        """inverse(forward(y)) = y on 64 dequantized test images. In float64 the maths must be exact; in
        float32 (as trained and sampled) rounding in inner layers is amplified by inverting strongly
        contracting couplings, so the bar there is one 8-bit grey level."""
        y = dequantize(x_test[:64].to(self.device))
        checks = []
        for flow, precision, tolerance in ((copy.deepcopy(self).double(), "float64", 1e-8), (self, "float32", 1 / 256)):
            y_p = y.to(next(flow.parameters()).dtype)
            back = flow._from_logit(flow.inverse_flow(flow.forward_flow(flow._to_logit(y_p)[0])[0]))
            error = (back - y_p).abs().max().item()
            checks.append({"check": f"inverse(forward(x)) = x ({precision})", "passed": error <= tolerance,
                           "value": error, "tolerance": tolerance,
                           "detail": f"max |y - f^-1(f(y))| over {len(y)} dequantized test images, pixels in [0, 1]"})
        return checks
