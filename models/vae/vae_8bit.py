"""VAE on 8-bit pixels: the binary track's convolutional VAE (Kingma & Welling 2014) with a discretized
logistic mixture decoder (Salimans et al. 2017), scored by its ELBO and by the importance-weighted
estimate of Burda et al. (2016).

The encoder, decoder and bound are ``vae``'s; only p(x | z) changes. The decoder's last convolution
gives, for every pixel and channel, 3K numbers (K = 5 components: weight logits, means, log-scales;
``models.discretized_logistic``), and p(x | z) is the product of those discrete distributions over the
256 values, so log p(x | z) is a sum of log-probabilities of the data themselves, not of dequantized
values: the ELBO bounds the discrete likelihood directly (kind ``bound``), and ``test_bpd_iwae`` with
its K is the tighter ``estimate``, both in bits/dim on the 8-bit track. The encoder reads the pixels on
the [-1, 1] scale. Colour: the C channels are C planes of the same decoder output; sides as ``vae``
(any H, W of at least 4). Latent size 16 (the binary VAEs keep 2 and 4, the seed's sizes): 8-bit
images hold far more information per image than their binarizations, and a 2- or 4-dimensional
latent leaves the decoder to model nearly all of it pixel by pixel.

Samples are draws from the model, z ~ N(0, I) and then every pixel from its mixture, never the
decoder's means: the sample metrics score the distribution whose likelihood the table reports.

The trap: the decoder's scale. A Gaussian decoder on 8-bit data, or a continuous density evaluated
at the integer values, reports a density, not a probability: its "NLL" can fall below zero as the
variance shrinks, and it is not comparable with any other row. The discretized mixture integrates
each bin (the tests check that the 256 probabilities sum to one), so the bound is a bound on a
probability, comparable with the autoregressive models' exact figures.
"""
from __future__ import annotations

import torch

from models import discretized_logistic as logistic
from models.registry import register
from models.vae.vae import ConvVAE


@register("vae-8bit", latent_dim=16)
class DiscretizedLogisticVAE(ConvVAE):
    track = "8bit"
    default_steps = 240

    def __init__(self, image_shape=(1, 28, 28), latent_dim: int = 16, channels=(32, 64), lr: float = 3e-3,
                 iwae_samples: int = 100, components: int = 5):
        self.components = int(components)
        self.outputs_per_channel = logistic.params_per_value(self.components)
        super().__init__(image_shape, latent_dim=latent_dim, channels=channels, lr=lr, iwae_samples=iwae_samples)

    def encode(self, x: torch.Tensor):
        return super().encode(logistic.to_unit_scale(x))

    def decode_params(self, z: torch.Tensor) -> torch.Tensor:
        """Mixture parameters of p(x | z) per pixel and channel: N x C x H x W x 3K."""
        c = self.image_shape[0]
        return self.decoder(z).unflatten(1, (c, self.outputs_per_channel)).movedim(2, -1)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x | z) per example: the discretized mixture's log-probability summed over pixels."""
        return logistic.log_prob(x, self.decode_params(z)).flatten(1).sum(1)

    @torch.no_grad()
    def sample(self, n: int, labels=None) -> torch.Tensor:
        """8-bit images drawn from the model (values / 255): z ~ N(0, I), then every pixel from its mixture."""
        params = self.decode_params(torch.randn(n, self.latent_dim, device=self.device))
        u = torch.rand(2, *params.shape[:-1], device=self.device)
        return logistic.sample(params, u[0], u[1]) / 255.0

    @torch.no_grad()
    def sample_means(self, n: int) -> torch.Tensor:
        """z ~ N(0, I) decoded to the mean of p(x | z) per pixel, in [0, 1] (for looking, not scoring)."""
        params = self.decode_params(torch.randn(n, self.latent_dim, device=self.device))
        probs = logistic.probabilities(params)
        return (probs * torch.arange(logistic.VALUES, device=self.device)).sum(-1) / 255.0
