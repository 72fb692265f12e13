"""Models that memorise: they hand back training images they were shown (loaded via GENBENCH_PLUGINS).

``copy-train`` returns the images verbatim, ``copy-train-shifted`` moves each by one pixel (zero fill), so
a copy test comparing pixels at fixed positions would miss it. Both must score copy_rate near 1."""
import torch

from models.base import GenerativeModel
from models.registry import register

KEEP = 2000  # training images remembered


@register("copy-train")
class CopyTrain(GenerativeModel):
    family, likelihood, track = "baseline", None, "8bit"  # not a real family: a memoriser
    shift = (0, 0)

    def __init__(self, image_shape=(1, 28, 28)):
        super().__init__(image_shape)
        self.unused = torch.nn.Parameter(torch.zeros(1))  # the optimiser and .device need one parameter
        self.register_buffer("memory", torch.zeros(0, *self.image_shape))

    def train_step(self, batch, optimizers):
        x, _ = batch
        if len(self.memory) < KEEP:
            self.memory = torch.cat([self.memory, x.detach().to(self.memory.device)])[:KEEP]
        return {"loss": 0.0}

    def sample(self, n, labels=None):
        if len(self.memory) == 0:
            raise RuntimeError("copy-train has seen no training images")
        index = torch.randint(0, len(self.memory), (n,), device=self.memory.device)
        return move(self.memory[index] / 255.0, *self.shift)


@register("copy-train-shifted")
class CopyTrainShifted(CopyTrain):
    shift = (1, 1)


def move(images, dy, dx):
    """Shift the content by (dy, dx) pixels, zero fill."""
    h, w = images.shape[-2:]
    padded = torch.nn.functional.pad(images, (abs(dx), abs(dx), abs(dy), abs(dy)))
    top, left = abs(dy) - dy, abs(dx) - dx
    return padded[..., top:top + h, left:left + w]
