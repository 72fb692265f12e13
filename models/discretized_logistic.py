"""The discretized logistic mixture: a distribution over the 256 values of an 8-bit pixel
(Salimans, Karpathy, Chen & Kingma 2017, PixelCNN++, section 2.1).

A value x in 0..255 sits at y = x / 127.5 - 1 in [-1, 1]; bin x covers y +- 1/255. With K logistic
components (weights pi_k, means mu_k, scales s_k, sigma the logistic CDF),

    P(x) = sum_k pi_k [sigma((y + 1/255 - mu_k) / s_k) - sigma((y - 1/255 - mu_k) / s_k)],

and the edge bins take the tails: bin 0 from -inf, bin 255 to +inf, so the 256 probabilities sum to
one exactly. Against a 256-way softmax it needs 3K numbers per pixel instead of 256, and neighbouring
values share mass, which a softmax must learn value by value. The 8-bit autoregressive models and the
8-bit VAE all use it, so one function computes every such likelihood and one draws every such sample.

Sampling: a component from one uniform, a logistic draw from another (inverse CDF), rounded to the
nearest bin and clamped to 0..255. That is exactly the discretized distribution, because the bins the
rounding uses are the ones the likelihood integrates over.

The trap: the log of a difference of two sigmoids. Computed as log(sigma(a) - sigma(b)) it underflows
to log 0 for a bin far in a tail or a very sharp component; PixelCNN++'s code then substitutes the
density at the bin's centre, an approximation. Here the difference is factored exactly,

    sigma(a) - sigma(b) = sigma(a) sigma(-b) (1 - exp(b - a)),

so its log is logsigmoid(a) + logsigmoid(-b) + log(-expm1(b - a)): no cancellation, no substitute.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

VALUES = 256
HALF_BIN = 1.0 / 255.0  # half a bin's width on the [-1, 1] scale
MIN_LOG_SCALE = -7.0  # as PixelCNN++: scales below e^-7 (far narrower than a bin) add nothing


def to_unit_scale(x: torch.Tensor) -> torch.Tensor:
    """8-bit values 0..255 to the [-1, 1] scale on which the components live (and networks read)."""
    return x / 127.5 - 1.0


def params_per_value(components: int) -> int:
    """Numbers one pixel's distribution takes: K weight logits, K means, K log-scales."""
    return 3 * components


def split(params: torch.Tensor):
    """(..., 3K) -> weight logits, means, log-scales, each (..., K); log-scales clamped below."""
    logits, means, log_scales = params.chunk(3, dim=-1)
    return logits, means, log_scales.clamp(min=MIN_LOG_SCALE)


def _log_bin_masses(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """log P(x | component k) for each k: x (...) integer values 0..255, parameters (..., K)."""
    y = to_unit_scale(x).unsqueeze(-1)
    inv_scale = torch.exp(-log_scales)
    upper = (y + HALF_BIN - means) * inv_scale  # a
    lower = (y - HALF_BIN - means) * inv_scale  # b
    middle = F.logsigmoid(upper) + F.logsigmoid(-lower) + torch.log(-torch.expm1(lower - upper))
    first = F.logsigmoid(upper)  # bin 0: sigma(a) - sigma(-inf)
    last = F.logsigmoid(-lower)  # bin 255: 1 - sigma(b)
    x = x.unsqueeze(-1)
    return torch.where(x <= 0, first, torch.where(x >= VALUES - 1, last, middle))


def log_prob(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """log P(x) per value: x (...) holding integers 0..255 (as floats), params (..., 3K)."""
    logits, means, log_scales = split(params)
    return torch.logsumexp(F.log_softmax(logits, dim=-1) + _log_bin_masses(x, means, log_scales), dim=-1)


def probabilities(params: torch.Tensor) -> torch.Tensor:
    """The whole distribution: (..., 3K) -> (..., 256), P(x = v) for every value v."""
    values = torch.arange(VALUES, device=params.device, dtype=params.dtype)
    expanded = params.unsqueeze(-2).expand(*params.shape[:-1], VALUES, params.shape[-1])
    return log_prob(values.expand(params.shape[:-1] + (VALUES,)), expanded).exp()


def sample(params: torch.Tensor, u_component: torch.Tensor, u_value: torch.Tensor) -> torch.Tensor:
    """Values 0..255 (floats) drawn from (..., 3K) parameters with two uniforms in [0, 1) of shape (...).

    The component is the first whose cumulative weight exceeds ``u_component``; the value is the logistic
    quantile mu + s log(u / (1 - u)) at ``u_value``, rounded to its bin. The same uniforms give the same
    values, which is how a cached sampler is checked against a naive one."""
    logits, means, log_scales = split(params)
    cumulative = torch.softmax(logits, dim=-1).cumsum(-1)
    k = (cumulative <= u_component.unsqueeze(-1)).sum(-1, keepdim=True).clamp(max=logits.shape[-1] - 1)
    mean, log_scale = means.gather(-1, k).squeeze(-1), log_scales.gather(-1, k).squeeze(-1)
    y = mean + torch.exp(log_scale) * torch.logit(u_value)
    return torch.round((y + 1.0) * 127.5).clamp(0, VALUES - 1)
