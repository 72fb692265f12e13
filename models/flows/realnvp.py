"""RealNVP: real-valued non-volume-preserving flows (Dinh, Sohl-Dickstein & Bengio 2017; seed 003).

An invertible map f from images to a standard normal latent, built from affine coupling layers:
half of the units (a checkerboard or a channel mask) pass unchanged and parameterise a scale s and a
translation t for the other half,

    y = x_m + (1 - m) * (x * exp(s(x_m)) + t(x_m)),     log|det J| = sum (1 - m) * s,

inverted exactly by x = y_m + (1 - m) * (y - t(y_m)) * exp(-s(y_m)). The *density* is exact by the
change of variables, and sampling is one inverse pass: the other end of the sampling-cost story from
FVSBN's D sequential steps.

The trap: the data are discrete (8-bit pixels). A continuous density scored on uniformly dequantized
pixels gives, by Jensen, an upper bound on the discrete NLL, not the NLL itself (Theis, van den Oord
& Bethge 2016), so the likelihood kind is ``bound``, never ``exact``.

Image version as in the paper, at small scale: uniform dequantization (8bit track), a logit
transform, checkerboard couplings at full resolution (one mask for all C channels: grey or colour), a
squeeze (C x H x W -> 4C x H/2 x W/2), channel couplings, then checkerboard couplings at the lower
resolution. The squeeze needs even sides (``side_multiple`` 2): 8x8, 28x28, 32x32, not 7x7. The seed's tanh-bounded
scales are kept (with a learnt gain); each coupling's last convolution starts at zero, so the
untrained flow is the identity on the logit-space data.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from models.base import GenerativeModel, dequantize, discrete_nll_from_dequantized
from models.registry import register


def checkerboard_mask(h: int, w: int, parity: int) -> torch.Tensor:
    rows = torch.arange(h).view(-1, 1)
    cols = torch.arange(w).view(1, -1)
    return ((rows + cols + parity) % 2).float().view(1, 1, h, w)


def channel_mask(c: int, parity: int) -> torch.Tensor:
    mask = torch.zeros(1, c, 1, 1)
    half = c // 2
    if parity:
        mask[:, half:] = 1.0
    else:
        mask[:, :half] = 1.0
    return mask


def squeeze(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    x = x.view(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(n, c * 4, h // 2, w // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    x = x.view(n, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(n, c // 4, h * 2, w * 2)


class AffineCoupling(nn.Module):
    """One affine coupling layer with a fixed binary mask (1 = passes through unchanged)."""

    def __init__(self, mask: torch.Tensor, hidden: int):
        super().__init__()
        channels = mask.shape[1] if mask.shape[1] > 1 else 1
        self.register_buffer("mask", mask)
        self.net = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, 2 * channels, 3, padding=1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.scale_gain = nn.Parameter(torch.ones(1, channels, 1, 1))

    def _scale_shift(self, x_masked: torch.Tensor):
        s_raw, t = self.net(x_masked).chunk(2, dim=1)
        s = self.scale_gain * torch.tanh(s_raw)
        free = 1.0 - self.mask
        return s * free, t * free

    def forward(self, x: torch.Tensor):
        s, t = self._scale_shift(x * self.mask)
        y = x * self.mask + (1.0 - self.mask) * (x * torch.exp(s) + t)
        return y, s.flatten(1).sum(1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        s, t = self._scale_shift(y * self.mask)
        return y * self.mask + (1.0 - self.mask) * (y - t) * torch.exp(-s)


@register("realnvp")
class RealNVP(GenerativeModel):
    family = "flow"
    likelihood = "bound"  # a continuous density on dequantized 8-bit data: an upper bound on the discrete NLL
    track = "8bit"
    default_steps = 230
    side_multiple = 2  # the squeeze halves the sides

    def __init__(self, image_shape=(1, 28, 28), hidden: int = 32, n_full: int = 3, n_channel: int = 3,
                 n_half: int = 3, logit_alpha: float | None = 0.05, lr: float = 1e-3):
        super().__init__(image_shape)
        c, h, w = self.image_shape
        if h % 2 or w % 2:
            raise ValueError(f"RealNVP squeezes by 2: image height and width must be even (multiples of 2), "
                             f"got {h}x{w}")
        self.logit_alpha = logit_alpha
        self.lr = lr
        self.full_res = nn.ModuleList(  # the checkerboard across all C channels (C = 1: the mask itself)
            AffineCoupling(checkerboard_mask(h, w, i % 2).expand(1, c, -1, -1).clone(), hidden)
            for i in range(n_full))
        self.channel_wise = nn.ModuleList(
            AffineCoupling(channel_mask(4 * c, i % 2), hidden) for i in range(n_channel))
        self.half_res = nn.ModuleList(
            AffineCoupling(checkerboard_mask(h // 2, w // 2, i % 2).expand(1, 4 * c, -1, -1).clone(), hidden)
            for i in range(n_half))

    def configure_optimizers(self):
        return [torch.optim.Adam(self.parameters(), lr=self.lr)]

    # --- the data <-> logit-space preprocessing, part of the flow ---------------------------
    def _to_logit(self, y: torch.Tensor):
        if self.logit_alpha is None:
            return y, torch.zeros(y.shape[0], device=y.device)
        a = self.logit_alpha
        s = a + (1 - 2 * a) * y
        z = torch.log(s) - torch.log1p(-s)
        logdet = (math.log(1 - 2 * a) - torch.log(s) - torch.log1p(-s)).flatten(1).sum(1)
        return z, logdet

    def _from_logit(self, z: torch.Tensor) -> torch.Tensor:
        if self.logit_alpha is None:
            return z
        a = self.logit_alpha
        return (torch.sigmoid(z) - a) / (1 - 2 * a)

    # --- the flow proper -------------------------------------------------------------------
    def forward_flow(self, z: torch.Tensor):
        """Map logit-space data to the latent; returns (latent, log|det J|)."""
        logdet = torch.zeros(z.shape[0], device=z.device)
        for layer in self.full_res:
            z, ld = layer(z)
            logdet = logdet + ld
        z = squeeze(z)
        for layer in (*self.channel_wise, *self.half_res):
            z, ld = layer(z)
            logdet = logdet + ld
        return unsqueeze(z), logdet

    def inverse_flow(self, latent: torch.Tensor) -> torch.Tensor:
        z = squeeze(latent)
        for layer in reversed((*self.channel_wise, *self.half_res)):
            z = layer.inverse(z)
        z = unsqueeze(z)
        for layer in reversed(self.full_res):
            z = layer.inverse(z)
        return z

    def nll_continuous(self, y: torch.Tensor) -> torch.Tensor:
        """-log p(y) in nats for y in [0, 1]^D (the dequantized data)."""
        z, logdet_logit = self._to_logit(y)
        latent, logdet_flow = self.forward_flow(z)
        log_prior = -0.5 * (latent ** 2 + math.log(2 * math.pi)).flatten(1).sum(1)
        return -(log_prior + logdet_logit + logdet_flow)

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        return discrete_nll_from_dequantized(self.nll_continuous(dequantize(x)), self.dim)

    @torch.no_grad()
    def sample(self, n: int, labels=None) -> torch.Tensor:
        latent = torch.randn(n, *self.image_shape, device=self.device)
        return self._from_logit(self.inverse_flow(latent)).clamp(0.0, 1.0)

    @torch.no_grad()
    def self_checks(self, x_test: torch.Tensor) -> list[dict]:
        """inverse(forward(y)) = y on test images (pixel midpoints (x + 0.5) / 256, through the logit map)."""
        y = (x_test[:64].float() + 0.5) / 256.0
        z, _ = self._to_logit(y)
        latent, _ = self.forward_flow(z)
        gap = (self._from_logit(self.inverse_flow(latent)) - y).abs().max().item()
        tolerance = 1e-4  # in [0, 1] pixel units: 1/40 of one 8-bit grey level
        return [{"check": "inverse_of_forward", "passed": gap <= tolerance, "value": gap, "tolerance": tolerance,
                 "detail": f"largest absolute difference inverse(forward(y)) - y over {len(y)} test images, "
                           f"y in [0, 1]"}]
