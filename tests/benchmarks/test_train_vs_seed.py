"""Training speed against the seeds (pytest-benchmark): for each model, one group with the suite's
``train_step`` and a plain re-statement of the seed's training step, same batch and architecture.

The re-statements follow the seed documents' code (FVSBN 000, conv VAE 001, EBM 002, cGAN 004): their
networks, losses and update order, with nothing of the harness. Images/s = batch / time per step; the
ratio suite/seed is read off one run (``--benchmark-enable --benchmark-only -k seed``). The plain run
(``--benchmark-disable``) runs each step once and checks that its loss is finite.
"""
import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models
from bench.data.datasets import to_track
from models.ebm.ebm import EnergyCNN

IMAGE_SHAPE = (1, 28, 28)
D = 28 * 28


def mnist_like_batch(n: int, track: str):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, *IMAGE_SHAPE), generator=generator, dtype=torch.uint8)
    return to_track(images, track, generator=generator), torch.arange(n) % 10


def run_suite_step(benchmark, name, batch, **overrides):
    torch.manual_seed(0)
    model = models.build(name, image_shape=IMAGE_SHAPE, **overrides).train()
    optimizers = model.configure_optimizers()
    data = mnist_like_batch(batch, model.track)
    benchmark.extra_info.update(batch=batch, code="suite")
    stats = benchmark(model.train_step, data, optimizers)
    assert math.isfinite(float(stats["loss"]))


def run_seed_step(benchmark, step, batch):
    torch.manual_seed(0)
    benchmark.extra_info.update(batch=batch, code="seed")
    loss = benchmark(step)
    assert math.isfinite(loss)


# --- FVSBN (seed 000): masked W in the forward pass, a gradient hook, re-masking after each step ----
FVSBN_BATCHES = [64, 128]  # the suite's default batch, and the seed measurement's


@pytest.mark.benchmark(group="seed-fvsbn")
@pytest.mark.parametrize("batch", FVSBN_BATCHES)
def test_fvsbn_suite(benchmark, batch):
    run_suite_step(benchmark, "fvsbn", batch)


@pytest.mark.benchmark(group="seed-fvsbn")
@pytest.mark.parametrize("batch", FVSBN_BATCHES)
def test_fvsbn_seed(benchmark, batch):
    W = nn.Parameter(torch.zeros(D, D))
    b = nn.Parameter(torch.zeros(1, D))
    mask = torch.tril(torch.ones(D, D), diagonal=-1)
    W.register_hook(lambda g: g * mask)
    opt = torch.optim.Adam([W, b], lr=1e-3)
    x = mnist_like_batch(batch, "binary")[0].flatten(1)

    def step():
        opt.zero_grad(set_to_none=True)
        logits = x @ (W * mask).t() + b
        loss = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=1).mean()
        loss.backward()
        opt.step()
        with torch.no_grad():
            W.mul_(mask)
        return loss.item()

    run_seed_step(benchmark, step, batch)


# --- conv VAE (seed 001), latent 4, batch 100: sigmoid decoder, BCE on probabilities + KL -----------
VAE_BATCH = 100


@pytest.mark.benchmark(group="seed-vae-z4")
def test_vae_suite(benchmark):
    run_suite_step(benchmark, "vae-z4", VAE_BATCH)


@pytest.mark.benchmark(group="seed-vae-z4")
def test_vae_seed(benchmark):
    latent = 4
    encoder = nn.Sequential(nn.Conv2d(1, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
                            nn.Flatten(), nn.Linear(7 * 7 * 64, 2 * latent))
    decoder = nn.Sequential(nn.Linear(latent, 7 * 7 * 64), nn.ReLU(), nn.Unflatten(1, (64, 7, 7)),
                            nn.ConvTranspose2d(64, 64, 3, 2), nn.ReLU(), nn.ConvTranspose2d(64, 32, 3, 2),
                            nn.ReLU(), nn.Conv2d(32, 1, 4), nn.Sigmoid())
    opt = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=1e-3)
    x = mnist_like_batch(VAE_BATCH, "binary")[0]

    def step():
        mean, logvar = encoder(x).chunk(2, dim=1)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        recon = F.binary_cross_entropy(decoder(z), x, reduction="sum")
        kl = -0.5 * torch.sum(1 + logvar - mean ** 2 - logvar.exp())
        loss = (recon + kl) / len(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    run_seed_step(benchmark, step, VAE_BATCH)


# --- conditional GAN (seed 004), batch 64: MLPs with label embeddings, sigmoid + BCELoss ------------
GAN_BATCH = 64


@pytest.mark.benchmark(group="seed-cgan")
def test_cgan_suite(benchmark):
    run_suite_step(benchmark, "cgan", GAN_BATCH)


class SeedGenerator(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 10)

        def block(i, o, norm=True):
            return [nn.Linear(i, o), *([nn.BatchNorm1d(o)] if norm else []), nn.LeakyReLU(0.2)]

        self.net = nn.Sequential(*block(110, 128, norm=False), *block(128, 256), *block(256, 512),
                                 *block(512, 1024), nn.Linear(1024, D), nn.Tanh())

    def forward(self, noise, labels):
        return self.net(torch.cat([noise, self.embed(labels)], 1))


class SeedDiscriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 10)
        self.net = nn.Sequential(nn.Linear(D + 10, 512), nn.LeakyReLU(0.2),
                                 nn.Linear(512, 512), nn.Dropout(0.4), nn.LeakyReLU(0.2),
                                 nn.Linear(512, 512), nn.Dropout(0.4), nn.LeakyReLU(0.2),
                                 nn.Linear(512, 1), nn.Sigmoid())

    def forward(self, images, labels):
        return self.net(torch.cat([images.flatten(1), self.embed(labels)], 1))


@pytest.mark.benchmark(group="seed-cgan")
def test_cgan_seed(benchmark):
    gen, dis = SeedGenerator(), SeedDiscriminator()
    opt_gen = torch.optim.Adam(gen.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_dis = torch.optim.Adam(dis.parameters(), lr=2e-4, betas=(0.5, 0.999))
    loss_func = nn.BCELoss()
    images, labels = mnist_like_batch(GAN_BATCH, "8bit")
    x = images / 127.5 - 1.0

    def step():
        n = len(x)
        real_target, fake_target = torch.ones(n, 1), torch.zeros(n, 1)
        gen.zero_grad()
        fake_labels = torch.randint(0, 10, (n,))
        fake = gen(torch.randn(n, 100), fake_labels)
        loss_gen = loss_func(dis(fake, fake_labels), real_target)
        loss_gen.backward()
        opt_gen.step()
        dis.zero_grad()
        loss_real = loss_func(dis(x, labels), real_target)
        loss_fake = loss_func(dis(fake.detach(), fake_labels), fake_target)
        loss_dis = (loss_real + loss_fake) / 2
        loss_dis.backward()
        opt_dis.step()
        return loss_gen.item() + loss_dis.item()

    run_seed_step(benchmark, step, GAN_BATCH)


# --- EBM (seed 002), batch 128: 60 Langevin steps from a replay buffer, contrastive divergence -------
EBM_BATCH = 128


@pytest.mark.benchmark(group="seed-ebm")
def test_ebm_suite(benchmark):
    run_suite_step(benchmark, "ebm", EBM_BATCH)


@pytest.mark.benchmark(group="seed-ebm")
def test_ebm_seed(benchmark):
    model = EnergyCNN(IMAGE_SHAPE)  # the seed's network; it outputs a score f = -E
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.0, 0.999))
    examples = [torch.rand(1, *IMAGE_SHAPE) * 2 - 1 for _ in range(EBM_BATCH)]
    real = mnist_like_batch(EBM_BATCH, "8bit")[0] * (2.0 / 255.0) - 1.0

    def langevin(inp, steps=60, step_size=10):
        for p in model.parameters():
            p.requires_grad = False
        inp.requires_grad = True
        noise = torch.randn(inp.shape)
        for _ in range(steps):
            noise.normal_(0, 0.005)
            inp.data.add_(noise.data)
            inp.data.clamp_(min=-1.0, max=1.0)
            (-model(inp)).sum().backward()
            inp.grad.data.clamp_(-0.03, 0.03)
            inp.data.add_(-step_size * inp.grad.data)
            inp.grad.detach_()
            inp.grad.zero_()
            inp.data.clamp_(min=-1.0, max=1.0)
        for p in model.parameters():
            p.requires_grad = True
        return inp.detach()

    def step():
        nonlocal examples
        n_new = int(torch.binomial(torch.tensor(float(EBM_BATCH)), torch.tensor(0.05)))
        start = torch.cat([torch.rand((n_new, *IMAGE_SHAPE)) * 2 - 1,
                           *random.choices(examples, k=EBM_BATCH - n_new)])
        fake = langevin(start)
        examples = (list(fake.chunk(EBM_BATCH)) + examples)[:8192]
        noisy_real = (real + 0.005 * torch.randn_like(real)).clamp(-1.0, 1.0)
        real_out, fake_out = model(torch.cat([noisy_real, fake])).chunk(2)
        loss = 0.1 * (real_out ** 2 + fake_out ** 2).mean() + fake_out.mean() - real_out.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    run_seed_step(benchmark, step, EBM_BATCH)
