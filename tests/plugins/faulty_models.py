"""Deliberately broken models for the suite's failure handling (loaded via GENBENCH_PLUGINS)."""
import torch

from models.base import GenerativeModel
from models.registry import register


@register("nan-model")
class NaNModel(GenerativeModel):
    """Trains normally for two steps, then its loss turns NaN: the suite must record a divergence."""
    family, likelihood, track = "flow", None, "binary"

    def __init__(self, image_shape=(1, 28, 28)):
        super().__init__(image_shape)
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.calls = 0

    def train_step(self, batch, optimizers):
        self.calls += 1
        return {"loss": float("nan") if self.calls >= 3 else 1.0}

    def sample(self, n, labels=None):
        return torch.zeros(n, *self.image_shape)


@register("crash-model")
class CrashModel(NaNModel):
    """Raises in training: the suite must record a failure with the reason and go on."""

    def train_step(self, batch, optimizers):
        raise RuntimeError("deliberate crash for the test")
