"""PixelCNN on 8-bit pixels: the binary PixelCNN's masked network with a discretized logistic mixture
per subpixel (van den Oord et al. 2016 for the network; Salimans et al. 2017, PixelCNN++, for the output
distribution and its colour coupling).

The same causal network as ``pixelcnn`` (a 7x7 type-A layer, residual 3x3 type-B layers, 1x1 head): at
each position it sees only the pixels above and to the left, all channels of the current pixel hidden.
The head gives, per position, K mixture components for every channel (``models.discretized_logistic``:
weight logits, means, log-scales) and, for colour, K coefficients per pair of channels that shift the
later channels' means by the earlier ones' values, as in PixelCNN++:

    mu_G = mu'_G + alpha_k x_R,   mu_B = mu'_B + beta_k x_R + gamma_k x_G   (x on the [-1, 1] scale).

So p(x) = prod over pixels in raster order, and within a pixel R, G, B in turn, of one discretized
logistic mixture each: an exact likelihood of the discrete data (kind ``exact``), one network pass.
Unlike PixelCNN++, each channel has its own mixture weights (PixelCNN++ shares one indicator per
pixel); then every subpixel's conditional is one mixture, the object the sampler draws from and the
self-check compares. The mixture rather than a 256-way softmax: 3K numbers per subpixel instead of
256 (K = 5: 15), and neighbouring values share mass, which a softmax must learn one value at a time.

Sampling draws pixel by pixel in raster order (``sampling_nfe = D``), through the binary model's
samplers: each pixel step computes one position per layer and reads the head there; the channels of a
pixel are then drawn R, G, B from their mixtures, each value fixing the next channel's means (two
uniforms per subpixel, drawn up front: the component, the value). The compiled sampler (the default on a
CPU, ``models/autoregressive/pixelcnn_kernels.py``) makes the same draw in numba, the torch cached loop
is its reference, and the naive sampler (the whole image through the network per pixel) draws the same
values from the same uniforms. At 28x28, grey, K = 5, one thread on a 2-core CPU whose other core was
busy (tests/benchmarks/test_pixelcnn_sampler.py, medians of two runs): batch 1, naive 1.6-3.2 s, cached
368-435 ms, compiled 2.0-2.8 ms per sample; batch 1,024, cached 92-149 samples/s, compiled 585-812
(27-35% of the same run's GEMM rate in ``sampling_flops``: 6.38e7 per sample; the scaling study: 834-863
samples/s, 42-43%). The draw costs more than the binary one (K + 2 exp/log per subpixel, and in colour
a tanh per coefficient): 0.2-0.4 us per grey pixel and sample, 1-1.5 us per colour pixel.

The trap: the channel coupling must use only earlier channels, and only through the coefficients. If
the first layer's centre were visible to any channel (a type-B first layer, or a colour mask that lets
G see its own pixel's G), or a coefficient multiplied the channel's own value, the loss falls and the
samples are noise. The tests perturb each subpixel and check that no conditional at or before it moves.
"""
from __future__ import annotations

import torch

from models import discretized_logistic as logistic
from models.autoregressive.pixelcnn import PixelCNN
from models.base import sampler_conditionals_check
from models.registry import register


@register("pixelcnn-8bit")
class PixelCNN8bit(PixelCNN):
    track = "8bit"
    batch_size = 64
    default_steps = 200

    def __init__(self, image_shape=(1, 28, 28), channels: int = 32, layers: int = 5, first_kernel: int = 7,
                 components: int = 5, lr: float = 1e-3):
        self.components = int(components)
        super().__init__(image_shape, channels=channels, layers=layers, first_kernel=first_kernel, lr=lr)

    def head_outputs(self, c_in: int) -> int:
        """Per position: 3K mixture numbers per channel, and K coupling coefficients per pair of channels."""
        k = self.components
        return c_in * logistic.params_per_value(k) + k * c_in * (c_in - 1) // 2

    # --- the distribution of one pixel's channels ------------------------------------------------------
    def pixel_params(self, head: torch.Tensor, x_unit: torch.Tensor) -> torch.Tensor:
        """Mixture parameters of each channel given the earlier channels' values.

        ``head``: (..., outputs) at the pixel; ``x_unit``: (..., C) the pixel's values on [-1, 1] (only
        channels before c are read for channel c). Returns (..., C, 3K)."""
        c, k = self.image_shape[0], self.components
        per_channel = head[..., :c * 3 * k].unflatten(-1, (c, 3 * k))
        weights, means, log_scales = per_channel.split(k, dim=-1)  # each (..., C, K)
        coefficients = torch.tanh(head[..., c * 3 * k:]).unflatten(-1, (-1, k))  # (..., pairs, K)
        shifted, pair = [means[..., 0, :]], 0
        for channel in range(1, c):
            mean = means[..., channel, :]
            for earlier in range(channel):
                mean = mean + coefficients[..., pair, :] * x_unit[..., earlier:earlier + 1]
                pair += 1
            shifted.append(mean)
        return torch.cat([weights, torch.stack(shifted, dim=-2), log_scales], dim=-1)

    def teacher_forced_params(self, x: torch.Tensor) -> torch.Tensor:
        """Every subpixel's mixture parameters given the true earlier values: N x H x W x C x 3K."""
        x_unit = logistic.to_unit_scale(x)
        head = self.network(self.pad(x_unit)).permute(0, 2, 3, 1)
        return self.pixel_params(head, x_unit.permute(0, 2, 3, 1))

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """-log P(x) in nats: the sum of every subpixel's discretized-mixture log-probability."""
        log_p = logistic.log_prob(x.permute(0, 2, 3, 1), self.teacher_forced_params(x))
        return -log_p.flatten(1).sum(1)

    def conditionals(self, x: torch.Tensor) -> torch.Tensor:
        """P(x_i = v | x_<i) for every subpixel i (raster order, channels inner) and value v: N x D x 256."""
        return logistic.probabilities(self.teacher_forced_params(x)).flatten(1, 3)

    # --- sampling: the binary model's samplers, this pixel draw ---------------------------------------
    def draw_uniforms(self, n: int, generator) -> torch.Tensor:
        """Two uniforms per subpixel (the component, the value): N x H x W x C x 2."""
        c, h, w = self.image_shape
        return torch.rand(n, h, w, c, 2, generator=generator, device=self.device)

    def start_draws(self, uniforms: torch.Tensor) -> dict:
        (c, h, w), n, device = self.image_shape, len(uniforms), uniforms.device
        return {"uniforms": uniforms, "values": torch.empty(n, c, h, w, device=device),
                "params": torch.empty(n, h, w, c, logistic.params_per_value(self.components), device=device)}

    def draw_pixel(self, head: torch.Tensor, padded: torch.Tensor, draws: dict, i: int, j: int) -> None:
        """Channels R, G, B of pixel (i, j) in turn, each from its mixture given the ones drawn before it."""
        r, c = self.reach, self.image_shape[0]
        u = draws["uniforms"][:, i, j]
        x_unit = torch.zeros(head.shape[0], c, device=head.device, dtype=head.dtype)
        for channel in range(c):
            params = self.pixel_params(head, x_unit)[:, channel]
            value = logistic.sample(params, u[:, channel, 0], u[:, channel, 1])
            draws["params"][:, i, j, channel] = params
            draws["values"][:, channel, i, j] = value
            x_unit[:, channel] = logistic.to_unit_scale(value)
        padded[:, :, i + r, j + r] = x_unit

    def finish_draws(self, padded: torch.Tensor, draws: dict):
        """(values 0..255, the parameters the sampler drew each subpixel with, N x H x W x C x 3K)."""
        return draws["values"], draws["params"]

    def compiled_outputs(self, values: torch.Tensor, stats: torch.Tensor):
        """``finish_draws``'s result from the compiled kernels' (values N x C x H x W, N x H x W x C 3K)."""
        return values, stats.unflatten(-1, (self.image_shape[0], logistic.params_per_value(self.components)))

    @torch.no_grad()
    def sample(self, n: int, labels=None) -> torch.Tensor:
        return self.sample_with_conditionals(n, tables=False)[0] / 255.0

    @torch.no_grad()
    def sample_with_conditionals(self, n: int, generator: torch.Generator | None = None, method: str = "auto",
                                 tables: bool = True):
        """Samples (values 0..255) and the P(x_i = v | x_<i) tables the sampler drew with (N x D x 256;
        ``tables=False``: the mixture parameters instead, which are 256 / 3K times smaller)."""
        values, params = super().sample_with_conditionals(n, generator, method)
        return values, (logistic.probabilities(params).flatten(1, 3) if tables else params)

    def self_checks(self, x_test: torch.Tensor) -> list[dict]:
        """The cached sampler's conditionals (all 256 values per subpixel) equal the likelihood's."""
        return [sampler_conditionals_check(self, n=8, what="P(x_i = v | x_<i) over the 256 values v")]
