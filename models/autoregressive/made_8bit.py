"""MADE on 8-bit pixels: the masked autoencoder of Germain et al. (2015) with a discretized logistic
mixture per pixel (Salimans et al. 2017) instead of a Bernoulli.

The same masks as the binary ``made``: output group i listens only to hidden units of degree below
pixel i's rank, so p(x) = prod_i p(x_i | x_<i) in one pass. The input is the pixel values on the
[-1, 1] scale; pixel i's group holds 3K numbers (K = 5 components: weight logits, means, log-scales,
``models.discretized_logistic``), every row of the group under pixel i's output mask. Colour needs
nothing new: the C x H x W values are D subpixels in one ordering (channel planes one after another in
the raster one), and each conditions on all those before it. The likelihood of the discrete data is
exact (kind ``exact``). The mixture rather than a 256-way softmax keeps the output layer at 3K = 15 rows
per pixel instead of 256 (500 x 784 x 256 = 100 million weights at 28x28).

Sampling is the binary MADE's cached loop (``sampling_nfe = D``): the first layer's pre-activations
b1 + W1 x are kept and updated by W1[:, i] x_i once pixel i is drawn, and each step computes the
layers above and only pixel i's output group, then draws x_i from its mixture with two uniforms. The
naive sampler (a full pass per pixel) draws the same values from the same uniforms. On a CPU, with one
hidden layer, the default is that loop compiled (``models/autoregressive/made_kernels.py``, the mixture
draw included; as the binary MADE's). Measured at 28x28, one thread, medians, untrained weights
(``tables=False``): batch 1, 1.5 ms per sample against 97 ms cached and 1.2 s naive; batch 1,024, 3,840
samples/s against 1,280 cached, 48 GFLOP/s on ``sampling_flops``' count (15 outputs per pixel), 30% of
the same run's 1024 x 1024 GEMM (158 GFLOP/s).

The trap, as for the binary MADE: the strict output mask. Here it must hold for every row of a pixel's
group: masking only the group's first row (the weight logits) leaves the means free to read x_i, the
loss falls and the samples are noise. The tests flip each pixel and check that no conditional at or
before it moves, and that the 65,536 probabilities of a 1 x 1 x 2 image sum to one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from models import discretized_logistic as logistic
from models.autoregressive.made import MADE
from models.base import sampler_conditionals_check
from models.registry import register


@register("made-8bit")
class MADE8bit(MADE):
    track = "8bit"
    default_steps = 480

    def __init__(self, image_shape=(1, 28, 28), hidden_sizes=(500,), components: int = 5, num_masks: int = 1,
                 lr: float = 1e-3, mask_seed: int = 0):
        self.components = int(components)
        self.outputs_per_pixel = logistic.params_per_value(self.components)
        super().__init__(image_shape, hidden_sizes=hidden_sizes, num_masks=num_masks, lr=lr, mask_seed=mask_seed)

    def params(self, x: torch.Tensor, mask: int = 0, weights: list | None = None) -> torch.Tensor:
        """Every pixel's mixture parameters given the pixels before it (teacher forcing): N x D x 3K."""
        return self.logits(logistic.to_unit_scale(x), mask, weights).unflatten(1, (self.dim, self.outputs_per_pixel))

    def nll_under_mask(self, x: torch.Tensor, mask: int) -> torch.Tensor:
        return -logistic.log_prob(x.flatten(1), self.params(x, mask)).sum(1)

    def conditionals(self, x: torch.Tensor, mask: int = 0) -> torch.Tensor:
        """P(x_i = v | x_<i) for every pixel i and value v: N x D x 256."""
        return logistic.probabilities(self.params(x, mask))

    def draw(self, n: int, mask: int = 0) -> torch.Tensor:
        """``n`` images of mask ``mask``'s model, values / 255 (the mixture parameters, not the 256-value
        tables, kept on the way)."""
        return self.sample_with_conditionals(n, mask=mask, tables=False)[0] / 255.0

    @torch.no_grad()
    def sample_with_conditionals(self, n: int, generator: torch.Generator | None = None, mask: int = 0,
                                 method: str = "auto", tables: bool = True):
        """Samples (values 0..255) of mask ``mask``'s model and the P(x_i = v | x_<i) tables the sampler used
        (N x D x 256; ``tables=False``: the N x D x 3K mixture parameters). ``method`` as the binary MADE's:
        "naive", "cached" (the torch reference), "compiled" (numba, CPU, one hidden layer), "cuda-graph"
        (NEVER RUN) or "auto"; all draw the same two uniforms per pixel (N x D x 2, up front) from
        ``generator``, hence the same samples."""
        uniforms = torch.rand(n, self.dim, 2, generator=generator, device=self.device)
        x, used = self._sample_by(method, uniforms, mask)
        return x.view(n, *self.image_shape), (logistic.probabilities(used) if tables else used)

    def _sample_loop(self, uniforms: torch.Tensor, mask: int, order: list, cached: bool):
        """The torch sampler (cached: the compiled kernel's oracle; or naive): values N x D and the mixture
        parameters N x D x 3K it drew them with."""
        n, d, p = uniforms.shape[0], self.dim, self.outputs_per_pixel
        x = torch.zeros(n, d, device=uniforms.device)
        used = torch.empty(n, d, p, device=uniforms.device)
        weights = self.masked_weights(mask)
        incoming = weights[0].T.contiguous()  # row i: pixel i's weights into the first hidden layer
        first_pre = F.linear(logistic.to_unit_scale(x), weights[0], self.layers[0].bias)  # all pixels at 0
        for i in order:
            if cached:
                rows = slice(i * p, (i + 1) * p)
                params = F.linear(self._top_hidden(first_pre, weights), weights[-1][rows], self.layers[-1].bias[rows])
            else:
                params = self.params(x, mask, weights)[:, i]
            used[:, i] = params
            x[:, i] = logistic.sample(params, uniforms[:, i, 0], uniforms[:, i, 1])
            if cached:  # the first layer saw pixel i at value 0 (-1 on the unit scale): add the difference
                first_pre.addr_(logistic.to_unit_scale(x[:, i]) + 1.0, incoming[i])
        return x, used

    def _run_kernel(self, weights: tuple, uniforms: torch.Tensor):
        from models.autoregressive import made_kernels

        return made_kernels.sample_mixture(weights, uniforms)

    def _first_pre_activations(self, weights) -> torch.Tensor:
        """Before any pixel is drawn every pixel is 0, -1 on the network's scale: b1 - W1 1."""
        zeros = torch.zeros(1, self.dim, device=weights[0].device, dtype=weights[0].dtype)
        return F.linear(logistic.to_unit_scale(zeros), weights[0], self.layers[0].bias)[0]

    def self_checks(self, x_test: torch.Tensor) -> list[dict]:
        """The cached sampler's conditionals (mask 0; all 256 values per pixel) equal the likelihood's."""
        return [sampler_conditionals_check(self, n=16, what="P(x_i = v | x_<i) over the 256 values v")]
