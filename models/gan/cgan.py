"""Conditional GAN (Mirza & Osindero 2014; seed 004).

A generator G(noise, y) and a discriminator D(x, y) both receive the class label y, through a learnt
label embedding concatenated to their input, and play the GAN game (Goodfellow et al. 2014) on
(image, label) pairs: D learns to tell real pairs from generated ones, G to produce images that D
accepts as real *for the requested label*. There is no likelihood (likelihood = None): the benchmark
judges a GAN by its samples only. Sampling is one generator pass.

As in the seed: MLPs, noise 100 + embedding 10 -> 128 -> 256 -> 512 -> 1024 (BatchNorm on the last
three, LeakyReLU 0.2) -> D pixels, tanh; D: pixels + embedding 10 -> 512 -> 512 -> 512 (Dropout 0.4 on
the last two, LeakyReLU 0.2) -> 1. BCE losses, D loss = (real + fake) / 2, non-saturating G loss
(-log D(G(z, y), y)), Adam lr 2e-4 betas (0.5, 0.999), batch 64, weights N(0, 0.02). Images are
scaled to [-1, 1] inside the model (the harness hands over 8-bit values 0..255). D outputs a logit and
the losses use BCE-with-logits: the seed's Sigmoid + BCELoss, computed stably.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.base import GenerativeModel
from models.registry import register


class Generator(nn.Module):
    def __init__(self, noise_dim: int, num_classes: int, out_dim: int):
        super().__init__()
        self.label_embedding = nn.Embedding(num_classes, num_classes)
        self.net = nn.Sequential(
            nn.Linear(noise_dim + num_classes, 128), nn.LeakyReLU(0.2),
            nn.Linear(128, 256), nn.BatchNorm1d(256), nn.LeakyReLU(0.2),
            nn.Linear(256, 512), nn.BatchNorm1d(512), nn.LeakyReLU(0.2),
            nn.Linear(512, 1024), nn.BatchNorm1d(1024), nn.LeakyReLU(0.2),
            nn.Linear(1024, out_dim), nn.Tanh(),
        )

    def forward(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Flattened images in [-1, 1]."""
        return self.net(torch.cat([self.label_embedding(labels), noise], dim=1))


class Discriminator(nn.Module):
    def __init__(self, num_classes: int, in_dim: int, dropout: float = 0.4):
        super().__init__()
        self.label_embedding = nn.Embedding(num_classes, num_classes)
        self.net = nn.Sequential(
            nn.Linear(in_dim + num_classes, 512), nn.LeakyReLU(0.2),
            nn.Linear(512, 512), nn.Dropout(dropout), nn.LeakyReLU(0.2),
            nn.Linear(512, 512), nn.Dropout(dropout), nn.LeakyReLU(0.2),
            nn.Linear(512, 1),
        )

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The logit of P(real | image, label), one per example."""
        return self.net(torch.cat([images.flatten(1), self.label_embedding(labels)], dim=1)).squeeze(1)


def init_weights(module: nn.Module):
    """The seed's (DCGAN's) initialisation: Linear N(0, 0.02), BatchNorm scale N(1, 0.02), biases 0."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, 0.0, 0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm1d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


@register("cgan")
class ConditionalGAN(GenerativeModel):
    family = "gan"
    likelihood = None
    track = "8bit"
    conditional = True
    batch_size = 64  # the seed's minibatch
    default_steps = 1400

    def __init__(self, image_shape=(1, 28, 28), noise_dim: int = 100, num_classes: int = 10,
                 lr: float = 2e-4, betas=(0.5, 0.999)):
        super().__init__(image_shape)
        self.noise_dim = noise_dim
        self.num_classes = num_classes
        self.lr, self.betas = lr, tuple(betas)
        self.generator = Generator(noise_dim, num_classes, self.dim)
        self.discriminator = Discriminator(num_classes, self.dim)
        self.apply(init_weights)

    def configure_optimizers(self):
        """[opt_D, opt_G], the order ``train_step`` expects."""
        return [torch.optim.Adam(self.discriminator.parameters(), lr=self.lr, betas=self.betas),
                torch.optim.Adam(self.generator.parameters(), lr=self.lr, betas=self.betas)]

    @staticmethod
    def to_model_range(x: torch.Tensor) -> torch.Tensor:
        """8-bit pixel values 0..255 -> [-1, 1], the range of the generator's tanh."""
        return x / 127.5 - 1.0

    def _check_labels(self, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.long()
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"{self.name} is conditional and needs class labels in 0..{self.num_classes - 1}, got values "
                f"in {labels.min().item()}..{labels.max().item()} (-1 means the dataset has no labels); "
                f"train it on a labelled dataset such as mnist5k, mnist or digits")
        return labels

    def train_step(self, batch, optimizers) -> dict[str, float]:
        """One discriminator step, then one generator step on the same generated batch."""
        images, labels = batch
        opt_d, opt_g = optimizers
        real = self.to_model_range(images).flatten(1)
        labels = self._check_labels(labels)
        n = real.shape[0]
        noise = torch.randn(n, self.noise_dim, device=real.device)
        fake_labels = torch.randint(0, self.num_classes, (n,), device=real.device)
        fake = self.generator(noise, fake_labels)
        ones, zeros = torch.ones(n, device=real.device), torch.zeros(n, device=real.device)

        real_logits = self.discriminator(real, labels)
        fake_logits = self.discriminator(fake.detach(), fake_labels)
        d_loss = 0.5 * (F.binary_cross_entropy_with_logits(real_logits, ones)
                        + F.binary_cross_entropy_with_logits(fake_logits, zeros))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()

        # Non-saturating generator loss: maximise log D(G(z, y), y) rather than minimise log(1 - D).
        g_loss = F.binary_cross_entropy_with_logits(self.discriminator(fake, fake_labels), ones)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        d, g = d_loss.item(), g_loss.item()
        return {"loss": d + g, "d_loss": d, "g_loss": g}

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` images in [0, 1] for ``labels`` (uniformly random classes when None)."""
        if labels is None:
            labels = torch.randint(0, self.num_classes, (n,), device=self.device)
        labels = self._check_labels(labels.to(self.device))
        if len(labels) != n:
            raise ValueError(f"sample({n}) was given {len(labels)} labels; pass one label per sample")
        noise = torch.randn(n, self.noise_dim, device=self.device)
        flat = self.generator(noise, labels)
        return ((flat + 1.0) / 2.0).view(n, *self.image_shape)
