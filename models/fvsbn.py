"""FVSBN: the fully visible sigmoid belief network (Frey 1998; seed 000).

An autoregressive model of binary images in raster order: p(x) = prod_i p(x_i | x_<i) with

    p(x_i = 1 | x_<i) = sigmoid(b_i + sum_{j<i} W_ij x_j),

W strictly lower-triangular. The likelihood is exact and one matrix product; sampling needs D
sequential steps, one per pixel, which is the cost the benchmark contrasts with a flow's single pass.

The seed's sampler read column i of the masked W (weights *from* pixel i to later, still-zero
pixels), so its samples ignored every earlier pixel. Here both the likelihood and the sampler go
through the same logits: the sampler keeps running logits and, once pixel i is drawn, adds its
contribution W[:, i] * x_i to every later pixel's logit, which is exactly ``x @ W.T + b`` restricted
to the pixels drawn so far.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.base import GenerativeModel
from models.registry import register


@register("fvsbn")
class FVSBN(GenerativeModel):
    family = "autoregressive"
    likelihood = "exact"
    track = "binary"

    def __init__(self, image_shape=(1, 28, 28), lr: float = 1e-3, init_bias_logit: float = 0.0,
                 weight_decay: float = 0.0):
        super().__init__(image_shape)
        d = self.dim
        self.lr = lr
        self.weight_decay = weight_decay  # L2 on the D^2/2 weights: FVSBN overfits 50,000 images
        self.weight = nn.Parameter(torch.zeros(d, d))
        self.bias = nn.Parameter(torch.full((d,), float(init_bias_logit)))
        self.register_buffer("mask", torch.ones(d, d).tril(diagonal=-1))

    def configure_optimizers(self):
        return [torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)]

    def masked_weight(self) -> torch.Tensor:
        # Masking in the forward pass (not by a gradient hook) keeps the upper triangle out of
        # both the function and its gradient, whatever the optimiser does to the raw entries.
        return self.weight * self.mask

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logit of p(x_i = 1 | x_<i) for every pixel, N x D (teacher forcing)."""
        return x.flatten(1) @ self.masked_weight().T + self.bias

    def conditionals(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        return F.binary_cross_entropy_with_logits(self.logits(x), flat, reduction="none").sum(1)

    @property
    def sampling_nfe(self) -> int:
        return self.dim

    @torch.no_grad()
    def sample(self, n: int, labels=None) -> torch.Tensor:
        return self.sample_with_conditionals(n)[0]

    @torch.no_grad()
    def sample_with_conditionals(self, n: int, generator: torch.Generator | None = None):
        """Samples and the probability p(x_i = 1 | x_<i) the sampler used at each pixel."""
        d = self.dim
        # Row i of W^T holds pixel i's weights onto every later pixel; contiguous rows keep each step's
        # update a streaming read rather than a strided column gather.
        outgoing = self.masked_weight().T.contiguous()
        x = torch.zeros(n, d, device=self.bias.device)
        probs = torch.empty(n, d, device=self.bias.device)
        running_logits = self.bias.expand(n, d).clone()
        uniforms = torch.rand(n, d, generator=generator, device=self.bias.device)
        for i in range(d):
            p = torch.sigmoid(running_logits[:, i])
            probs[:, i] = p
            xi = (uniforms[:, i] < p).to(x.dtype)
            x[:, i] = xi
            # Pixel i now feeds every later pixel's conditional (row j, column i of W, j > i).
            running_logits.addr_(xi, outgoing[i])
        return x.view(n, *self.image_shape), probs
