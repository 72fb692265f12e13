"""A model whose sampler touches a buffer of a known size (loaded via GENBENCH_PLUGINS).

The memory tests' yardstick: ``peak_memory_sample`` must rise by at least ``sample_buffer_mib`` over
the same model with no buffer. Training allocates nothing beyond the model's one parameter.
"""
import torch

from models.base import GenerativeModel
from models.registry import register


@register("memory-hog")
class MemoryHog(GenerativeModel):
    family, likelihood, track = "baseline", None, "8bit"  # not a real family: a yardstick

    def __init__(self, image_shape=(1, 28, 28), sample_buffer_mib: int = 0):
        super().__init__(image_shape)
        self.sample_buffer_mib = sample_buffer_mib
        self.unused = torch.nn.Parameter(torch.zeros(1))  # the optimiser and .device need one parameter

    def train_step(self, batch, optimizers):
        return {"loss": 0.0}

    def sample(self, n, labels=None):
        if self.sample_buffer_mib:
            buffer = torch.ones(self.sample_buffer_mib * 2**20 // 4, device=self.device)  # written: resident
            buffer.add_(1.0)
            del buffer
        return torch.zeros(n, *self.image_shape, device=self.device)
