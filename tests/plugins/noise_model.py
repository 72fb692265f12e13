"""A model that ignores the data and samples uniform noise (loaded via GENBENCH_PLUGINS).

The floor of every sample-quality metric: any trained model must score far better. Its likelihood is
exact and trivial: each of the 256^D 8-bit images has probability 256^-D, so 8 bits/dim.
"""
import math

import torch

from models.base import GenerativeModel
from models.registry import register


@register("uniform-noise")
class UniformNoise(GenerativeModel):
    family, likelihood, track = "baseline", "exact", "8bit"  # not a real family: a floor

    def __init__(self, image_shape=(1, 28, 28)):
        super().__init__(image_shape)
        self.unused = torch.nn.Parameter(torch.zeros(1))  # the optimiser and .device need one parameter

    def train_step(self, batch, optimizers):
        x, _ = batch
        return {"loss": self.nll(x).mean().item()}  # nothing to learn

    def nll(self, x):
        return torch.full((len(x),), self.dim * math.log(256.0), device=x.device)

    def sample(self, n, labels=None):
        levels = torch.randint(0, 256, (n, *self.image_shape), device=self.device)
        return levels.float() / 255.0  # to_uint8 maps these back to the same 256 levels
