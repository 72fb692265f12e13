"""The small time-conditioned U-Net that DDPM (noise prediction) and flow matching (velocity) share.

Three resolutions (H, H/2, H/4, rounded up), one residual block each way, skip connections, and the time
fed to every block through a sinusoidal embedding (Ho et al. 2020's network, narrowed for a CPU). The
output layer starts at zero, so an untrained network predicts 0 (no noise; no velocity).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


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
        emb = self.time_mlp(timestep_embedding(t, self.t_dim).to(x.dtype))
        h0 = self.down0(self.conv_in(x), emb)
        h1 = self.down1(self.pool0(h0), emb)
        h = self.mid(self.pool1(h1), emb)
        h = self.up1(torch.cat([F.interpolate(h, size=h1.shape[-2:], mode="nearest"), h1], 1), emb)
        h = self.up0(torch.cat([F.interpolate(h, size=h0.shape[-2:], mode="nearest"), h0], 1), emb)
        return self.conv_out(F.silu(self.norm_out(h)))
