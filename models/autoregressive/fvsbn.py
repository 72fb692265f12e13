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

That loop, in torch, is the reference (``backend="torch"``) and the oracle of the fast samplers in
``models/autoregressive/fvsbn_kernels.py``: on a CPU the default is the same loop compiled with numba (per sample
for small batches; for large ones blocked, sequential only inside blocks of 64 pixels with one matrix
product per block onto the later pixels). Its cost, B D (D - 1) / 2 multiply-adds, does not depend on
the weights: no zero pixel's update is skipped.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.base import GenerativeModel, sampler_conditionals_check
from models.registry import register

SAMPLER_BACKENDS = ("auto", "torch", "numba", "blocked", "cuda-graph")


@register("fvsbn")
class FVSBN(GenerativeModel):
    family = "autoregressive"
    likelihood = "exact"
    track = "binary"
    # The batch the seed's training was timed at: a step is one D x D matrix product, so 128 images
    # per step train ~1.5x more images/s than the harness default of 64 on a CPU.
    batch_size = 128
    default_steps = 7200

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

    def sampling_flops(self, n: int) -> float:
        # Pixel i's update adds its weight to the D-1-i later logits: sum_i (D-1-i) = D(D-1)/2
        # multiply-adds per sample, 2 FLOPs each. (torch's counter does not see addr_.)
        return float(n * self.dim * (self.dim - 1))

    @torch.no_grad()
    def sample(self, n: int, labels=None) -> torch.Tensor:
        return self.sample_with_conditionals(n)[0]

    @torch.no_grad()
    def sample_with_conditionals(self, n: int, generator: torch.Generator | None = None,
                                 backend: str = "auto"):
        """Samples and the probability p(x_i = 1 | x_<i) the sampler used at each pixel.

        ``backend``: "torch" (the reference loop below, one Python step per pixel), "numba" (the same
        loop compiled, CPU), "blocked" (one matrix product per block of pixels, any device),
        "cuda-graph" (the blocked loop replayed as a CUDA graph; never run), or "auto": numba on the
        CPU when it is installed, the CUDA graph on a GPU, else torch. Every backend draws the same
        uniforms from ``generator`` (B x D, once), so they draw the same samples.
        """
        d = self.dim
        device = self.bias.device
        outgoing = self._outgoing_weights()
        uniforms = torch.rand(n, d, generator=generator, device=device)
        backend = self._resolve_backend(backend, device)
        if backend == "torch":
            x, probs = self._sample_reference(outgoing, uniforms)
        else:
            from models.autoregressive import fvsbn_kernels

            if backend == "numba":
                x, probs = fvsbn_kernels.sample_numba(outgoing, self.bias, uniforms)
                x, probs = x.to(device, uniforms.dtype), probs.to(device, uniforms.dtype)
            elif backend == "blocked":
                x, probs = fvsbn_kernels.sample_blocked(outgoing, self.bias, uniforms)
            else:
                x, probs = fvsbn_kernels.sample_cuda_graph(outgoing, self.bias, uniforms)
        return x.view(n, *self.image_shape), probs

    def _outgoing_weights(self) -> torch.Tensor:
        """(W * mask)^T, contiguous: row i holds pixel i's weights onto every later pixel, so each
        step's update is a streaming read rather than a strided column gather."""
        # Kept between calls while W is unchanged (any in-place change, an optimiser step included,
        # bumps its version): the D x D copy costs ~20x the compiled sampler's time for one sample.
        key = (self.weight._version, self.weight.data_ptr(), self.weight.device, self.mask._version)
        cached = getattr(self, "_outgoing_cache", None)
        if cached is None or cached[0] != key:
            self._outgoing_cache = (key, self.masked_weight().detach().T.contiguous())
        return self._outgoing_cache[1]

    @staticmethod
    def _resolve_backend(backend: str, device: torch.device) -> str:
        if backend not in SAMPLER_BACKENDS:
            raise ValueError(f"unknown FVSBN sampler backend {backend!r}; one of {SAMPLER_BACKENDS}")
        if backend != "auto":
            return backend
        if device.type == "cuda":
            return "cuda-graph"
        from models.autoregressive import fvsbn_kernels

        return "numba" if device.type == "cpu" and fvsbn_kernels.numba_available() else "torch"

    def _sample_reference(self, outgoing: torch.Tensor, uniforms: torch.Tensor):
        """The running-logits loop in plain torch: the oracle the compiled backends must match."""
        n, d = uniforms.shape
        x = torch.zeros_like(uniforms)
        probs = torch.empty_like(uniforms)
        running_logits = self.bias.expand(n, d).clone()
        for i in range(d):
            p = torch.sigmoid(running_logits[:, i])
            probs[:, i] = p
            xi = (uniforms[:, i] < p).to(x.dtype)
            x[:, i] = xi
            # Pixel i now feeds every later pixel's conditional (row j, column i of W, j > i).
            running_logits.addr_(xi, outgoing[i])
        return x, probs

    def self_checks(self, x_test: torch.Tensor) -> list[dict]:
        """The sampler's conditionals equal the likelihood's (teacher-forced) on fresh samples."""
        return [sampler_conditionals_check(self)]
