"""MADE: masked autoencoder for distribution estimation (Germain, Gregor, Murray & Larochelle 2015).

An autoencoder whose weight matrices are masked so that output i sees only the inputs that come
before pixel i in an ordering; its D outputs are then the logits of p(x_i = 1 | x_<i), and one
forward pass gives the exact likelihood p(x) = prod_i p(x_i | x_<i). Every unit k gets a degree
m(k) in 1..D-1 and may only listen to units of degree <= m(k) (inputs: the pixel's rank in the
ordering); output i listens to hidden units of degree < rank(i).

Defaults: one hidden layer of 500 ReLU units (``hidden_sizes``), one mask: the natural raster
ordering with degrees spread evenly over 1..D-1. ``num_masks = K > 1`` trains with a random one
of K masks (a random ordering and random degrees, mask 0 staying the raster one) per step, as in
the paper's order-agnostic training; the model is then the uniform mixture of the K
autoregressive models, whose likelihood -log(1/K sum_k p_k(x)) is still exact, and ``sample``
draws each image from one mask chosen uniformly.

Sampling needs D sequential steps (``sampling_nfe = D``). The naive sampler re-runs the whole
network per pixel; the cached one keeps the first layer's pre-activations b1 + W1 x, which are
linear in x, and (as FVSBN's running logits) adds W1[:, i] x_i once pixel i is drawn, so that pixel
i+1 needs only the layers above, and of the output layer only row i+1. Both draw from the
likelihood's conditionals with the same uniforms. With one hidden layer this removes almost all
the work (1,000 samples: about 1 s against 90 s naive on a loaded CPU core); with two, the
second layer's full pass per pixel remains (about 3.5x).

That cached loop, in torch, is the reference (``method="cached"``) and the oracle of the compiled
sampler in ``models/autoregressive/made_kernels.py``, the default on a CPU for one hidden layer: the
same loop in numba, per sample for a few samples, blocked (64 samples at a time, each weight row read
once per block) from there, skipping the masks' zeros (hidden units sorted by degree: each pixel feeds
a suffix of them, each output reads a prefix). Measured at 28x28, one thread (``OMP_NUM_THREADS=1
python -m pytest tests/benchmarks --benchmark-only -k made``, medians, untrained weights): batch 1,
0.40 ms per sample against 54 ms cached and 165 ms naive; batch 1,024, 21,000 samples/s against
2,100 cached, 33 GFLOP/s on ``sampling_flops``' count, 21% of the same run's 1024 x 1024 GEMM
(158 GFLOP/s). Deeper nets fall back to the cached loop; on a GPU it is replayed as a CUDA graph
(``method="cuda-graph"``, written but NEVER RUN: no GPU here).

The trap: the strict inequality. Hidden units may listen to degrees <= their own, but output i
only to degrees < rank(i), and hidden degrees stop at D-1; a non-strict output mask lets x_i into
its own conditional, the training loss falls towards zero and the samples are noise. The tests
flip each pixel and check that no conditional at or before it moves.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.base import GenerativeModel, sampler_conditionals_check
from models.registry import register

SAMPLER_METHODS = ("auto", "naive", "cached", "compiled", "cuda-graph")
_cuda_graphs: dict = {}  # the CUDA-graph sampler's captures (models/cuda_graphs.py)


def ordering_degrees(order: torch.Tensor) -> torch.Tensor:
    """Input degree of each pixel: its rank 1..D in the ordering (``order[t]`` = pixel drawn at step t)."""
    rank = torch.empty_like(order)
    rank[order] = torch.arange(1, len(order) + 1)
    return rank


def hidden_degrees(size: int, d: int, previous_min: int, generator=None) -> torch.Tensor:
    """Degrees in previous_min..D-1: evenly spread without a generator, uniform draws with one.

    Degree D would feed no output (none may see pixel D), so D-1 is the ceiling."""
    if generator is None:
        return previous_min + torch.arange(size) * (d - previous_min) // size
    return torch.randint(previous_min, d, (size,), generator=generator)


def made_masks(order: torch.Tensor, hidden_sizes, generator=None, outputs_per_pixel: int = 1) -> list[torch.Tensor]:
    """One 0/1 mask per layer (out x in) for the given ordering; pixel i's ``outputs_per_pixel`` outputs
    (rows i * P .. i * P + P - 1 of the last layer) share its mask row."""
    d = len(order)
    degrees = [ordering_degrees(order)]
    for size in hidden_sizes:
        degrees.append(hidden_degrees(size, d, int(degrees[-1].min().clamp(max=d - 1)), generator))
    masks = [(out[:, None] >= inp[None, :]).float() for inp, out in zip(degrees[:-1], degrees[1:])]
    output = (degrees[0][:, None] > degrees[-1][None, :]).float()  # output i: hidden degree < rank(i)
    masks.append(output.repeat_interleave(outputs_per_pixel, dim=0) if outputs_per_pixel > 1 else output)
    return masks


@register("made")
class MADE(GenerativeModel):
    family = "autoregressive"
    likelihood = "exact"
    track = "binary"
    default_steps = 6200

    outputs_per_pixel = 1  # one Bernoulli logit (the 8-bit MADE: a mixture's parameters)

    def __init__(self, image_shape=(1, 28, 28), hidden_sizes=(500,), num_masks: int = 1, lr: float = 1e-3,
                 mask_seed: int = 0):
        super().__init__(image_shape)
        d, per_pixel = self.dim, self.outputs_per_pixel
        self.lr = lr
        self.num_masks = num_masks
        sizes = [d, *hidden_sizes, d * per_pixel]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        generator = torch.Generator().manual_seed(mask_seed)
        orders, masks = [torch.arange(d)], [made_masks(torch.arange(d), hidden_sizes, outputs_per_pixel=per_pixel)]
        for _ in range(num_masks - 1):
            orders.append(torch.randperm(d, generator=generator))
            masks.append(made_masks(orders[-1], hidden_sizes, generator, outputs_per_pixel=per_pixel))
        self.register_buffer("orders", torch.stack(orders))  # K x D
        for layer in range(len(self.layers)):  # masks{layer}: K x out x in
            self.register_buffer(f"masks{layer}", torch.stack([m[layer] for m in masks]))

    def configure_optimizers(self):
        return [torch.optim.Adam(self.parameters(), lr=self.lr)]

    def masked_weights(self, mask: int) -> list[torch.Tensor]:
        return [layer.weight * getattr(self, f"masks{i}")[mask] for i, layer in enumerate(self.layers)]

    def logits(self, x: torch.Tensor, mask: int = 0, weights: list | None = None) -> torch.Tensor:
        """Logit of p(x_i = 1 | x before i in ordering ``mask``) for every pixel, N x D (teacher forcing);
        ``weights``: ``masked_weights(mask)`` if already at hand."""
        h = x.flatten(1)
        weights = self.masked_weights(mask) if weights is None else weights
        for i, (weight, layer) in enumerate(zip(weights, self.layers)):
            h = F.linear(h, weight, layer.bias)
            if i < len(self.layers) - 1:
                h = torch.relu(h)
        return h

    def conditionals(self, x: torch.Tensor, mask: int = 0) -> torch.Tensor:
        return torch.sigmoid(self.logits(x, mask))

    def nll_under_mask(self, x: torch.Tensor, mask: int) -> torch.Tensor:
        flat = x.flatten(1)
        return F.binary_cross_entropy_with_logits(self.logits(x, mask), flat, reduction="none").sum(1)

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """-log p(x) of the mixture over masks (one mask: the plain autoregressive model)."""
        per_mask = torch.stack([self.nll_under_mask(x, k) for k in range(self.num_masks)])
        return -(torch.logsumexp(-per_mask, dim=0) - math.log(self.num_masks))

    def train_step(self, batch, optimizers):
        # Order-agnostic training: one random mask per step (the paper's connectivity-agnostic training).
        x, _ = batch
        (opt,) = optimizers
        mask = int(torch.randint(self.num_masks, ())) if self.num_masks > 1 else 0
        loss = self.nll_under_mask(x, mask).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item()}

    @property
    def sampling_nfe(self) -> int:
        return self.dim

    @torch.no_grad()
    def sample(self, n: int, labels=None) -> torch.Tensor:
        if self.num_masks == 1:
            return self.draw(n)
        chosen = torch.randint(self.num_masks, (n,), device=self.device)
        x = torch.empty(n, *self.image_shape, device=self.device)
        for k in chosen.unique().tolist():
            picked = chosen == k
            x[picked] = self.draw(int(picked.sum()), mask=k)
        return x

    def draw(self, n: int, mask: int = 0) -> torch.Tensor:
        """``n`` images of mask ``mask``'s model, in [0, 1]."""
        return self.sample_with_conditionals(n, mask=mask)[0]

    @torch.no_grad()
    def sample_with_conditionals(self, n: int, generator: torch.Generator | None = None, mask: int = 0,
                                 method: str = "auto"):
        """Samples of mask ``mask``'s model and the p(x_i = 1 | x_<i) the sampler used at each pixel.

        ``method``: "naive" (a full network pass per pixel), "cached" (the first layer's pre-activations
        kept, the torch loop of ``_sample_loop``: the reference), "compiled" (the cached loop compiled with
        numba, CPU, one hidden layer: ``models/autoregressive/made_kernels.py``), "cuda-graph" (the cached
        loop replayed as a CUDA graph via ``models/cuda_graphs.py``; NEVER RUN: no GPU here), or "auto":
        compiled on the CPU when numba is installed and the net has one hidden layer, the CUDA graph on a
        GPU, else cached. Every method draws the same uniforms from ``generator`` (N x D, up front), so
        they draw the same samples."""
        uniforms = torch.rand(n, self.dim, generator=generator, device=self.device)
        x, probs = self._sample_by(method, uniforms, mask)
        return x.view(n, *self.image_shape), probs

    def _resolve_method(self, method: str) -> str:
        if method not in SAMPLER_METHODS:
            raise ValueError(f"unknown MADE sampler method {method!r}; one of {SAMPLER_METHODS}")
        one_hidden_layer = len(self.layers) == 2
        from models.autoregressive import made_kernels

        if method == "compiled" and not (one_hidden_layer and made_kernels.numba_available()):
            raise ValueError("the compiled MADE sampler needs numba and one hidden layer; use method='cached'")
        if method != "auto":
            return method
        if self.device.type == "cuda":
            return "cuda-graph"
        return "compiled" if one_hidden_layer and made_kernels.numba_available() else "cached"

    def _sample_by(self, method: str, uniforms: torch.Tensor, mask: int):
        """(x, the sampler's per-pixel outputs), N x D flat, from the uniforms drawn up front."""
        method = self._resolve_method(method)
        if method == "compiled":
            x, outputs = self._run_kernel(self._compiled_weights(mask), uniforms)
            return x.to(uniforms.device, uniforms.dtype), outputs.to(uniforms.device, uniforms.dtype)
        order = self.orders[mask].tolist()  # before any capture: .tolist() synchronises
        if method == "cuda-graph":
            from models import cuda_graphs

            key = (type(self).__name__, uniforms.device, len(uniforms), mask, tuple(self.image_shape),
                   cuda_graphs.parameters_key(self))
            loop = lambda u: self._sample_loop(u, mask, order, cached=True)  # noqa: E731
            return cuda_graphs.replay(_cuda_graphs, key, loop, (uniforms,))
        return self._sample_loop(uniforms, mask, order, cached=method == "cached")

    def _sample_loop(self, uniforms: torch.Tensor, mask: int, order: list, cached: bool):
        """The torch sampler, one Python step per pixel in ``order``: cached (the compiled kernels'
        oracle) or naive. No host synchronisation inside, so that it can be captured as a CUDA graph."""
        n, d = uniforms.shape
        x = torch.zeros(n, d, device=uniforms.device)
        probs = torch.empty(n, d, device=uniforms.device)
        weights = self.masked_weights(mask)
        incoming = weights[0].T.contiguous()  # row i: pixel i's weights into the first hidden layer
        first_pre = self.layers[0].bias.expand(n, -1).clone()  # b1 + W1 x over the pixels drawn so far
        for i in order:
            if cached:
                logit = self._logit_from_first_layer(first_pre, weights, i)
            else:
                logit = self.logits(x, mask, weights)[:, i]
            probs[:, i] = torch.sigmoid(logit)
            x[:, i] = (uniforms[:, i] < probs[:, i]).to(x.dtype)
            if cached:
                first_pre.addr_(x[:, i], incoming[i])
        return x, probs

    def _run_kernel(self, weights: tuple, uniforms: torch.Tensor):
        from models.autoregressive import made_kernels

        return made_kernels.sample_binary(weights, uniforms)

    def _first_pre_activations(self, weights) -> torch.Tensor:
        """The first layer's pre-activations before any pixel is drawn (all pixels 0): b1."""
        return self.layers[0].bias

    def _compiled_weights(self, mask: int) -> tuple:
        """The compiled kernels' inputs for mask ``mask`` (``made_kernels.sample_binary``), float32 / int64
        numpy on the CPU. The hidden units are sorted by degree (the number of pixels each listens to), so
        that the units pixel j feeds are a suffix, from ``update_from[j]``, and those pixel i's outputs read
        a prefix, up to ``read_to[i]``: the kernels skip the masks' zeros (about half of each layer)."""
        # Kept while no parameter or mask changes (an optimiser step bumps ``_version``): the copies cost
        # more than sampling one image (8-bit: 23 MB of output weights).
        key = tuple((t._version, t.data_ptr(), t.device, t.dtype) for t in [*self.parameters(), *self.buffers()])
        cache = self.__dict__.setdefault("_compiled_cache", {})
        if mask not in cache or cache[mask][0] != key:
            with torch.no_grad():
                weights = self.masked_weights(mask)
                d, p, hidden = self.dim, self.outputs_per_pixel, weights[-1].shape[1]
                into, out_of = getattr(self, "masks0")[mask], getattr(self, f"masks{len(self.layers) - 1}")[mask]
                by_degree = torch.argsort(into.sum(1), stable=True)
                into = into[by_degree] != 0  # H x D
                out_of = (out_of.view(d, p, hidden)[:, :, by_degree] != 0).any(1)  # D x H
                # The ranges hold every unmasked weight whatever the masks are; tight for MADE's degrees.
                update_from = torch.where(into.any(0), into.float().argmax(0), hidden)
                read_to = torch.where(out_of.any(1), hidden - out_of.flip(1).float().argmax(1), 0)
                w_out = weights[-1].view(d, p, hidden)[:, :, by_degree].transpose(1, 2)  # D x H x P
                bias = self.layers[-1].bias.view(d, p)
                arrays = (self._first_pre_activations(weights)[by_degree], weights[0].T[:, by_degree],
                          w_out.squeeze(2) if p == 1 else w_out, bias.squeeze(1) if p == 1 else bias)
                arrays = tuple(np.ascontiguousarray(t.detach().float().cpu().numpy()) for t in arrays)
                ranks = (self.orders[mask], update_from, read_to)
                cache[mask] = (key, (*arrays, *(np.ascontiguousarray(t.cpu().numpy(), dtype=np.int64) for t in ranks)))
        return cache[mask][1]

    def sampling_flops(self, n: int) -> float:
        """The cached sampler's multiply-adds, x2, counted by hand (torch's counter sees no ``addr_`` or
        matrix-vector product): per pixel, the first layer's rank-one update, the upper layers in full,
        and one output row (P rows for P outputs per pixel). The compiled kernels skip the masks' zeros,
        about half of these; the count stays the dense one, as a roofline's numerator."""
        sizes = [self.layers[0].out_features] + [layer.out_features for layer in self.layers[1:-1]]
        per_pixel = sizes[0] + sum(a * b for a, b in zip(sizes, sizes[1:])) + sizes[-1] * self.outputs_per_pixel
        return 2.0 * n * self.dim * per_pixel

    def _logit_from_first_layer(self, first_pre, weights, i: int) -> torch.Tensor:
        """Pixel i's logit from the first layer's pre-activations: the upper layers, output row i only."""
        return self._top_hidden(first_pre, weights) @ weights[-1][i] + self.layers[-1].bias[i]

    def _top_hidden(self, first_pre, weights) -> torch.Tensor:
        """The last hidden layer from the first layer's pre-activations (the layers above it in full)."""
        h = torch.relu(first_pre)
        for weight, layer in zip(weights[1:-1], self.layers[1:-1]):
            h = torch.relu(F.linear(h, weight, layer.bias))
        return h

    def self_checks(self, x_test: torch.Tensor) -> list[dict]:
        """The cached sampler's conditionals (mask 0) equal the likelihood's on 64 fresh samples."""
        return [sampler_conditionals_check(self, n=64)]
