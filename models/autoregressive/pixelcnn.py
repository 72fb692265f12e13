"""PixelCNN: masked convolutions for binary images (van den Oord, Kalchbrenner & Kavukcuoglu 2016).

An autoregressive model in raster order, p(x) = prod_i p(x_i | x_<i), whose conditionals all come
from one convolutional network: every kernel is masked so that a position sees only the pixels
above it and to its left. The first layer (type A, 7x7) also hides the centre pixel, the later ones
(type B, 3x3) may see their own position, whose features already exclude the input pixel. Plain
(not gated) PixelCNN: residual blocks x + conv_B(relu(x)), then two 1x1 convolutions to one
Bernoulli logit per pixel. The likelihood is one pass; sampling needs D sequential passes in raster
order (``sampling_nfe = D``). Like the original plain PixelCNN it has a blind spot: stacked masked
kernels miss part of the region above and to the right; the gated PixelCNN's two stacks remove it.

Defaults (calibrated so that 1,000 28x28 samples take well under a minute on one CPU core): 32
channels, a 7x7 type-A layer, 5 residual 3x3 type-B layers, 1x1 layers of 32 channels; Adam, lr
1e-3, batch 64.

Kernels keep only their rows down to the centre (the masked rows below are dropped), and every
convolution is 'valid': the image is padded once with zeros (``reach`` rows above, ``reach``
columns either side) and each layer trims its own border. Position (r, c)'s logit is then a
function of the (reach + 1) x (2 reach + 1) window of padded input ending on row r around
column c. The samplers draw from the likelihood's conditionals with the same uniforms (drawn up
front): "naive" (the whole image through the network per pixel), "windowed" (the network on that
window only), "cached", the torch reference: a layer's activation at a position depends on the rows
above and on the pixels left of it in its own row only, so it is final once those are drawn, and each
pixel step computes one position per layer from activations kept from earlier steps (~20 torch calls
per step); "compiled", the default on a CPU: the cached algorithm with no Python per pixel
(``models/autoregressive/pixelcnn_kernels.py``: a numba kernel per sample, and from 64 samples at one
thread BLAS products over the batch); and "cuda-graph", the cached loop replayed as a CUDA graph, the
default on a GPU (never run: no GPU here). At 28x28, one thread, on a 2-core CPU whose other core was
busy (tests/benchmarks/test_pixelcnn_sampler.py, medians of two runs): batch 1, naive 1.2-2.2 s, cached
280-374 ms, compiled 1.9-2.0 ms per sample; batch 1,024, cached 70-94 samples/s, compiled 946-1,281
(43-54% of the same run's GEMM rate, 140-150 GFLOP/s, in ``sampling_flops``: 6.31e7 per sample; the
scaling study, ``python -m bench scaling``: 1,034-1,051 samples/s, 50-54%). 16 samples, in an earlier
run on a loaded core: cached 0.9 s, windowed 4.0 s, naive 85 s.

The trap: the masks, not the architecture, make the model autoregressive. A type-B mask in the first
layer (or a kernel row below the centre) lets each logit see its own pixel, and the training loss
then drops to near zero while samples are noise; the tests perturb each pixel and check that no
conditional at or before it moves.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.base import GenerativeModel, sampler_conditionals_check
from models.registry import register

SAMPLING_METHODS = ("auto", "compiled", "cuda-graph", "cached", "windowed", "naive")
_cuda_graphs: dict = {}  # captured cached loops (models/cuda_graphs.py), by device, batch, shape and parameters


class CausalConv(nn.Conv2d):
    """A k x k masked convolution kept as its top k//2 + 1 rows; 'valid' in both directions.

    Output (i, j) is centred on input (i + k//2, j + k//2): the kernel's last row is the centre row,
    masked right of the centre (type B) or from the centre on (type A)."""

    def __init__(self, c_in: int, c_out: int, k: int, mask_type: str):
        super().__init__(c_in, c_out, (k // 2 + 1, k))
        self.half = k // 2
        mask = torch.ones(k // 2 + 1, k)
        mask[-1, self.half + (mask_type == "B"):] = 0.0
        self.register_buffer("mask", mask)

    def forward(self, x):
        return F.conv2d(x, self.weight * self.mask, self.bias)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = CausalConv(channels, channels, 3, "B")

    def forward(self, h):
        # The valid convolution trims one row above and a column either side; the skip path is trimmed to match.
        return h[:, :, 1:, 1:-1] + self.conv(torch.relu(h))


@register("pixelcnn")
class PixelCNN(GenerativeModel):
    family = "autoregressive"
    likelihood = "exact"
    track = "binary"
    batch_size = 64
    default_steps = 250
    components = 0  # mixture components per subpixel; 0: one Bernoulli logit (the compiled kernels read it)

    def __init__(self, image_shape=(1, 28, 28), channels: int = 32, layers: int = 5, first_kernel: int = 7,
                 lr: float = 1e-3):
        super().__init__(image_shape)
        c_in = image_shape[0]
        self.lr = lr
        self.first = CausalConv(c_in, channels, first_kernel, "A")
        self.blocks = nn.Sequential(*[ResidualBlock(channels) for _ in range(layers)])
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(),
                                  nn.Conv2d(channels, self.head_outputs(c_in), 1))
        self.reach = first_kernel // 2 + layers  # rows above (and columns either side) a logit can see

    def head_outputs(self, c_in: int) -> int:
        """Numbers the head gives per position: here one Bernoulli logit."""
        if c_in != 1:
            raise ValueError("pixelcnn models one binary channel (no colour masks); pixelcnn-8bit models colour")
        return 1

    def configure_optimizers(self):
        return [torch.optim.Adam(self.parameters(), lr=self.lr)]

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        r = self.reach
        return F.pad(x, (r, r, r, 0))

    def network(self, padded: torch.Tensor) -> torch.Tensor:
        """Logits for a zero-padded input: reach rows and 2 reach columns fewer than it came in."""
        return self.head(self.blocks(self.first(padded)))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logit of p(x_i = 1 | x_<i) for every pixel, N x D (teacher forcing)."""
        return self.network(self.pad(x)).flatten(1)

    def conditionals(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(self.logits(x), x.flatten(1), reduction="none").sum(1)

    @property
    def sampling_nfe(self) -> int:
        return self.dim

    @torch.no_grad()
    def sample(self, n: int, labels=None) -> torch.Tensor:
        return self.sample_with_conditionals(n)[0]

    @torch.no_grad()
    def sample_with_conditionals(self, n: int, generator: torch.Generator | None = None, method: str = "auto"):
        """Samples and the p(x_i = 1 | x_<i) the sampler used at each pixel, in raster order.

        ``method``: "cached" (the torch reference: each pixel step computes one new position per layer),
        "compiled" (the same algorithm in ``models/autoregressive/pixelcnn_kernels.py``, CPU), "cuda-graph"
        (the cached loop replayed as a CUDA graph; never run), "windowed" (the network on the pixel's
        window), "naive" (the whole image per pixel), or "auto": compiled on the CPU when numba is
        installed, the CUDA graph on a GPU, else cached. Every method draws the same uniforms from
        ``generator`` (``draw_uniforms``, once, up front), hence the same samples."""
        method = self._resolve_method(method, self.device)
        uniforms = self.draw_uniforms(n, generator)
        if method == "compiled":
            from models.autoregressive import pixelcnn_kernels

            return self.compiled_outputs(*pixelcnn_kernels.sample(self, uniforms))
        if method == "cuda-graph":
            return self._sample_cuda_graph(uniforms)
        return self._sample_torch(uniforms, method)

    @staticmethod
    def _resolve_method(method: str, device: torch.device) -> str:
        if method not in SAMPLING_METHODS:
            raise ValueError(f"unknown sampling method {method!r}: "
                             "auto, compiled, cuda-graph, cached, windowed or naive")
        if method == "compiled" and device.type != "cpu":
            raise ValueError("the compiled PixelCNN sampler runs on the CPU; on a GPU use cuda-graph or cached")
        if method != "auto":
            return method
        if device.type == "cuda":
            return "cuda-graph"
        from models.autoregressive import pixelcnn_kernels

        return "compiled" if device.type == "cpu" and pixelcnn_kernels.numba_available() else "cached"

    def _sample_torch(self, uniforms: torch.Tensor, method: str):
        """The torch samplers (cached, windowed, naive) on the given uniforms."""
        c, h, w = self.image_shape
        r, n = self.reach, len(uniforms)
        draws = self.start_draws(uniforms)
        padded = self.pad(torch.zeros(n, c, h, w, device=uniforms.device))  # image (i, j) sits at (i + r, j + r)
        if method == "cached":
            self._sample_cached(padded, draws)
            return self.finish_draws(padded, draws)
        for i in range(h):
            for j in range(w):
                if method == "windowed":  # the window ending on row i, centred on column j: one position
                    head = self.network(padded[:, :, i:i + r + 1, j:j + 2 * r + 1])[:, :, 0, 0]
                else:
                    head = self.network(padded)[:, :, i, j]
                self.draw_pixel(head, padded, draws, i, j)
        return self.finish_draws(padded, draws)

    def _sample_cuda_graph(self, uniforms: torch.Tensor):
        """The cached loop as one CUDA graph per (device, batch, image shape, parameters)
        (``models/cuda_graphs.py``): a replay launches every pixel step's kernels with no Python in
        between. The loop's uniforms come in as an input (no random draw inside the capture), and it reads
        no value back to the host. NEVER RUN: written for CUDA on a machine without a GPU."""
        from models import cuda_graphs

        key = (uniforms.device, len(uniforms), tuple(self.image_shape), type(self).__qualname__,
               tuple(tuple(p.shape) for p in self.parameters()), cuda_graphs.parameters_key(self))
        return cuda_graphs.replay(_cuda_graphs, key, lambda u: tuple(self._sample_torch(u, "cached")), (uniforms,))

    def sampling_flops(self, n: int) -> float:
        """matmul/conv FLOPs of the torch cached sampler on n samples, counted by hand (2 per multiply-add,
        as torch's FLOP counter counts them): the compiled sampler runs outside torch, where the counter
        sees nothing, and does the same algorithm. Counted as the reference runs it: dense kernels (the
        masked taps included), every layer's border positions, and the rows above the image (the layers on
        the top padding, once per sample). Of this count (28x28, default model) the compiled per-sample
        kernel performs 78% (it skips the masked taps, and computes the rows above once per call), the
        batched form 99% (dense taps and a bias channel; the rows above once per call)."""
        c, h, w = self.image_shape
        f, layers = self.first.out_channels, len(self.blocks)
        kh0, kw0 = self.first.kernel_size
        half0 = self.first.half
        first_taps, block_taps = c * kh0 * kw0, f * 2 * 3
        cols = w + 2 * self.reach - (kw0 - 1)  # the first layer's valid columns; each residual layer 2 fewer
        # The rows above: the first layer on the reach top-padding rows (``layers`` output rows), then
        # residual layers 1 .. layers - 1 (the last one's row above is never read), each a row fewer.
        macs = f * first_taps * layers * cols
        macs += sum(f * block_taps * (layers - l) * (cols - 2 * l) for l in range(1, layers))
        # Per image row: every layer at every column of its span, and the head at the image's columns.
        border = self.reach - half0  # columns each side beyond the image in the first layer's span
        per_row = f * first_taps * (w + 2 * border)
        per_row += sum(f * block_taps * (w + 2 * (border - l)) for l in range(1, layers + 1))
        per_row += w * f * (f + self.head[-1].out_channels)
        return 2.0 * n * (macs + h * per_row)

    # --- one pixel's draw: what the 8-bit model changes -------------------------------------------
    def draw_uniforms(self, n: int, generator) -> torch.Tensor:
        """The uniforms every pixel is drawn with, all drawn up front so that every sampler uses the same ones."""
        _, h, w = self.image_shape
        return torch.rand(n, h, w, generator=generator, device=self.device)

    def start_draws(self, uniforms: torch.Tensor) -> dict:
        """The uniforms and room for the conditionals the sampler uses."""
        _, h, w = self.image_shape
        return {"uniforms": uniforms, "probs": torch.empty(len(uniforms), h, w, device=uniforms.device)}

    def draw_pixel(self, head: torch.Tensor, padded: torch.Tensor, draws: dict, i: int, j: int) -> None:
        """Draw pixel (i, j) from the head's outputs there (n x outputs) into the padded image."""
        r = self.reach
        draws["probs"][:, i, j] = torch.sigmoid(head[:, 0])
        padded[:, 0, i + r, j + r] = (draws["uniforms"][:, i, j] < draws["probs"][:, i, j]).to(padded.dtype)

    def finish_draws(self, padded: torch.Tensor, draws: dict):
        """(samples, the conditionals the sampler used, N x D)."""
        r, w = self.reach, self.image_shape[2]
        return padded[:, :, r:, r:r + w].clone(), draws["probs"].flatten(1)

    def compiled_outputs(self, values: torch.Tensor, stats: torch.Tensor):
        """``finish_draws``'s result from the compiled kernels' (values N x C x H x W, N x H x W x 1)."""
        return values, stats.flatten(1)

    def _sample_cached(self, padded, draws):
        """Raster sampling that computes each layer's activation at each position once.

        Layer l's output at padded (p, q) depends on the pixels of rows < p and of row p left of q
        only, so once the pixel left of q is drawn it is final. Each layer keeps two rows (the row
        above, final; the current one, filled left to right): a pixel step computes one position per
        layer; each row also computes, per layer, the border positions left of the image (before the
        row: they see no pixel of it) and right of it (after the row: they see all of it)."""
        n, _, h, w = padded.shape[0], *self.image_shape
        r = self.reach
        convs = [self.first] + [block.conv for block in self.blocks]
        first_half = self.first.half
        spans = [(first_half + l, w + 2 * r - first_half - l) for l in range(len(convs))]  # valid columns per layer
        rows = [torch.zeros(n, conv.out_channels, 2, w + 2 * r, device=padded.device) for conv in convs]
        # The row above the image: the layers on the all-zero top padding.
        above = self.first(padded[:, :, :r])
        for l, conv in enumerate(convs):
            if l > 0:
                if l == len(convs) - 1:
                    break  # the last layer's row above is never read
                above = above[:, :, 1:, 1:-1] + conv(torch.relu(above))
            rows[l][:, :, 0, spans[l][0]:spans[l][1]] = above[:, :, -1]

        kernels = [conv.weight * conv.mask for conv in convs]  # masked once, not once per step
        # One position of a layer is one product: its (c_in * kh * kw) input patch times the kernel.
        flat_kernels = [kernel.flatten(1).T.contiguous() for kernel in kernels]
        hidden, out = (m for m in self.head if isinstance(m, nn.Conv2d))

        def compute(l: int, p: int, q0: int, q1: int):
            """Layer l's outputs on row p, columns q0..q1-1, from its inputs' rows up to p."""
            if q0 >= q1:
                return
            if l == 0:
                patch = padded[:, :, p - first_half:p + 1, q0 - first_half:q1 + first_half]
            else:
                below = rows[l - 1][:, :, :, q0 - 1:q1 + 1]
                patch = torch.relu(below)
            if q1 - q0 == 1:
                value = torch.addmm(convs[l].bias, patch.reshape(n, -1), flat_kernels[l])[:, :, None, None]
            else:
                value = F.conv2d(patch, kernels[l], convs[l].bias)
            if l > 0:
                value = value + below[:, :, 1:, 1:-1]
            rows[l][:, :, 1:, q0:q1] = value

        def head_output(q: int) -> torch.Tensor:
            features = torch.relu(F.linear(torch.relu(rows[-1][:, :, 1, q]), hidden.weight.flatten(1), hidden.bias))
            return F.linear(features, out.weight.flatten(1), out.bias)

        for i in range(h):
            p = i + r
            for l in range(len(convs)):
                compute(l, p, spans[l][0], r)
            for j in range(w):
                q = j + r
                for l in range(len(convs)):
                    compute(l, p, q, q + 1)
                self.draw_pixel(head_output(q), padded, draws, i, j)
            for l in range(len(convs)):
                compute(l, p, r + w, spans[l][1])
            for row in rows:  # row p becomes the row above, once every layer has read its own row above
                row[:, :, 0] = row[:, :, 1]

    def self_checks(self, x_test: torch.Tensor) -> list[dict]:
        """The cached sampler's conditionals equal the likelihood's (teacher-forced) on fresh samples."""
        return [sampler_conditionals_check(self)]
