"""EBM: a deep energy-based model trained by contrastive divergence with Langevin sampling
(Du & Mordatch 2019, "Implicit Generation and Generalization in Energy-Based Models"; seed 002).

p(x) = exp(-E(x)) / Z with a CNN energy E(x) (Swish activations, a linear last layer, so E takes any
real value). Sign convention, used everywhere in this file: the network outputs the *energy* E, low
energy = likely. (The seed's network outputs a score f = -E: its sampler descends -f and its loss is
f(fake) - f(real); with E = -f this is the same algorithm.)

Sampling (``langevin``), as in the seed: start from uniform noise on [-1, 1]; each step adds N(0, 0.005^2)
noise, clamps to [-1, 1], takes dE/dx, clamps that gradient to [-0.03, 0.03], moves x by
-step_size * gradient (step size 10) and clamps again. ``sample(n)`` runs ``sampling_steps`` (default 60,
the seed's; a setting a harness may sweep over ``sampling_step_options``) such steps from fresh noise, so
``sampling_nfe`` = ``sampling_steps`` (each step is one forward and one backward pass through E). The trap:
the model is trained with 60-step chains started mostly from its replay buffer, so chains from fresh
noise of another length sample another distribution; more steps are not necessarily better.

Training: contrastive divergence with a replay buffer (``ReplayBuffer``): each batch of negatives starts
95% from past Langevin samples and 5% from fresh noise, runs ``train_langevin_steps`` = 60 steps, and
goes back into the buffer (capacity 8,192, oldest dropped). Loss, with alpha = 0.1 keeping energies near 0:

    E(real) - E(fake) + alpha * (E(real)^2 + E(fake)^2)      (means over the batch)

The real images get the same N(0, 0.005^2) noise the sampler adds. Adam with lr 1e-4 and betas (0, 0.999)
as in the seed's code (its per-epoch learning-rate decay is left out: the harness budgets are short).
Data: 8-bit pixels k in 0..255 are mapped to 2k/255 - 1 in [-1, 1]; samples are returned in [0, 1].
No tractable likelihood (Z is unknown): ``likelihood = None``.

Divergence: if an energy is non-finite or |E| exceeds ``energy_limit``, ``train_step`` raises
FloatingPointError naming what exploded, which the harness records as "diverged at step N".
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from models.base import GenerativeModel
from models.registry import register


def langevin(energy: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, steps: int,
             step_size: float = 10.0, noise_std: float = 0.005, grad_clip: float = 0.03,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """``steps`` of the seed's clamped Langevin dynamics on ``energy`` (a callable returning one energy
    per row) from ``x``; returns the final samples (detached). Works under ``torch.no_grad()``."""
    x = x.detach().clone()
    with torch.enable_grad():
        for _ in range(steps):
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = (x + noise_std * noise).clamp_(-1.0, 1.0).requires_grad_(True)
            # Gradient with respect to the input only: the parameters' .grad stay untouched.
            (grad,) = torch.autograd.grad(energy(x).sum(), x)
            x = (x.detach() - step_size * grad.clamp(-grad_clip, grad_clip)).clamp_(-1.0, 1.0)
    return x


class ReplayBuffer:
    """Past Langevin samples, the starting points of the next chains (a ring: the oldest go first)."""

    def __init__(self, image_shape, capacity: int = 8192, fresh_fraction: float = 0.05, initial: int = 128):
        self.capacity, self.fresh_fraction = capacity, fresh_fraction
        self.storage = torch.empty(capacity, *image_shape)
        self.size, self.next = 0, 0
        self.push(uniform_noise(min(initial, capacity), image_shape))

    def push(self, samples: torch.Tensor):
        samples = samples.detach().to(self.storage.device)[-self.capacity:]
        if len(samples) == 0:
            return
        idx = (self.next + torch.arange(len(samples))) % self.capacity
        self.storage[idx] = samples
        self.next = int(idx[-1] + 1) % self.capacity
        self.size = min(self.capacity, self.size + len(samples))

    def draw(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
        """n starting points: Binomial(n, fresh_fraction) fresh uniform noise first, the rest drawn
        (with replacement) from the buffer. Returns (points, number of fresh ones)."""
        n_fresh = int(torch.binomial(torch.tensor(float(n)), torch.tensor(self.fresh_fraction),
                                     generator=generator))
        if self.size == 0:  # nothing stored yet: all fresh
            n_fresh = n
        old = self.storage[torch.randint(0, self.size, (n - n_fresh,), generator=generator)]
        fresh = uniform_noise(n_fresh, self.storage.shape[1:], generator)
        return torch.cat([fresh, old]), n_fresh


def uniform_noise(n: int, image_shape, generator=None, device=None) -> torch.Tensor:
    return torch.rand((n, *image_shape), generator=generator, device=device) * 2.0 - 1.0


class EnergyCNN(nn.Module):
    """The seed's energy network: four stride-2 convolutions with Swish, then two linear layers.
    The flatten size is computed for the image shape (8x8 -> 1x1, 14x14 and 28x28 -> 2x2)."""

    def __init__(self, image_shape, hidden: int = 32):
        super().__init__()
        c1, c2, c3 = hidden // 2, hidden, 2 * hidden
        self.convs = nn.ModuleList([
            nn.Conv2d(image_shape[0], c1, 5, stride=2, padding=4),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1),
            nn.Conv2d(c2, c3, 3, stride=2, padding=1),
            nn.Conv2d(c3, c3, 3, stride=2, padding=1),
        ])
        with torch.no_grad():
            flat = self._features(torch.zeros(1, *image_shape)).shape[1]
        self.hidden = nn.Linear(flat, c3)
        self.out = nn.Linear(c3, 1)

    def _features(self, x):
        for conv in self.convs:
            x = F.silu(conv(x))  # Swish: x * sigmoid(x)
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.silu(self.hidden(self._features(x)))).squeeze(1)


@register("ebm")
class EBM(GenerativeModel):
    family = "ebm"
    likelihood = None
    track = "8bit"
    default_steps = 70

    sampler_settings = ("sampling_steps",)  # the Langevin step size and noise are training's too
    sampling_step_options = (10, 30, 60, 120)  # Langevin step counts worth sweeping

    def __init__(self, image_shape=(1, 28, 28), hidden: int = 32, alpha: float = 0.1, lr: float = 1e-4,
                 batch_size: int = 128, sampling_steps: int = 60, train_langevin_steps: int = 60,
                 step_size: float = 10.0, noise_std: float = 0.005, grad_clip: float = 0.03,
                 buffer_size: int = 8192, fresh_fraction: float = 0.05, energy_limit: float = 1e3):
        super().__init__(image_shape)
        if sampling_steps < 1 or train_langevin_steps < 1:
            raise ValueError("sampling_steps and train_langevin_steps must be at least 1 Langevin step")
        self.energy_net = EnergyCNN(self.image_shape, hidden)
        self.alpha, self.lr, self.batch_size = alpha, lr, batch_size
        self.sampling_steps, self.train_langevin_steps = int(sampling_steps), train_langevin_steps
        self.langevin_args = dict(step_size=step_size, noise_std=noise_std, grad_clip=grad_clip)
        self.energy_limit = energy_limit
        self.buffer = ReplayBuffer(self.image_shape, buffer_size, fresh_fraction, initial=batch_size)

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """E(x) for images on [-1, 1]; one value per row."""
        return self.energy_net(x)

    @staticmethod
    def to_model_space(x: torch.Tensor) -> torch.Tensor:
        """8-bit pixel values 0..255 -> [-1, 1]."""
        return x * (2.0 / 255.0) - 1.0

    def configure_optimizers(self):
        return [torch.optim.Adam(self.parameters(), lr=self.lr, betas=(0.0, 0.999))]

    def training_state(self) -> dict:
        b = self.buffer  # the chains' starting points are part of what training has built
        return {"storage": b.storage[:b.size].clone(), "size": b.size, "next": b.next}

    def load_training_state(self, state: dict) -> None:
        if state:
            self.buffer.storage[:state["size"]] = state["storage"]
            self.buffer.size, self.buffer.next = state["size"], state["next"]

    @property
    def sampling_nfe(self) -> int:
        return self.sampling_steps

    def sampler_description(self) -> str:
        a = self.langevin_args
        return (f"Langevin, {self.sampling_steps} steps from uniform noise (step size {a['step_size']:g}, "
                f"noise std {a['noise_std']:g}, gradient clipped at {a['grad_clip']:g})")

    def train_step(self, batch, optimizers):
        x, _ = batch
        (opt,) = optimizers
        real = self.to_model_space(x)
        real = (real + self.langevin_args["noise_std"] * torch.randn_like(real)).clamp(-1.0, 1.0)
        start, _ = self.buffer.draw(len(real))
        fake = langevin(self.energy, start.to(real.device), self.train_langevin_steps, **self.langevin_args)
        self.buffer.push(fake)
        e_real, e_fake = self.energy(torch.cat([real, fake])).split([len(real), len(fake)])
        self._check_energies(e_real, e_fake)
        loss = e_real.mean() - e_fake.mean() + self.alpha * (e_real ** 2 + e_fake ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item(), "energy_real": e_real.mean().item(), "energy_fake": e_fake.mean().item()}

    def _check_energies(self, e_real: torch.Tensor, e_fake: torch.Tensor):
        for what, e in (("real data", e_real), ("Langevin samples", e_fake)):
            if not torch.isfinite(e).all():
                raise FloatingPointError(f"energy of the {what} became non-finite")
            worst = e.abs().max().item()
            if worst > self.energy_limit:
                raise FloatingPointError(f"energy of the {what} exploded: |E| = {worst:.3g} "
                                         f"> limit {self.energy_limit:g}")

    @torch.no_grad()
    def sample(self, n: int, labels=None, *, steps: int | None = None) -> torch.Tensor:
        """``n`` images in [0, 1] after ``steps`` (default: ``sampling_steps``) Langevin steps from noise."""
        start = uniform_noise(n, self.image_shape, device=self.device)
        x = langevin(self.energy, start, steps or self.sampling_steps, **self.langevin_args)
        return (x + 1.0) / 2.0
