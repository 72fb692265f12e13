"""Speed benchmarks (pytest-benchmark): one training step and one sampling batch per registered model.

Every model in ``models.names()`` is picked up, at 28x28 (the suite's image size): a training step on
a batch of 16 in the model's track, and one call of its sampler, 16 samples for a one-pass sampler and
2 for a sequential one (FVSBN's 784 pixel steps, an EBM's Langevin chain, a diffusion chain), so that
the ordinary test run (``--benchmark-disable``: each body runs once) stays a few seconds per model.
Results are grouped by model. Timing is measured with ``--benchmark-enable --benchmark-only``; the
plain run checks only that each step gives a finite loss and each sampler images of the right shape.
"""
import math

import pytest
import torch

import models
from bench.data.datasets import to_track

IMAGE_SHAPE = (1, 28, 28)
TRAIN_BATCH = 16
ONE_PASS_SAMPLE_BATCH = 16
SEQUENTIAL_SAMPLE_BATCH = 2


def sample_batch_size(model) -> int:
    """Sequential samplers (more than one network evaluation per sample) get a tiny batch."""
    return ONE_PASS_SAMPLE_BATCH if model.sampling_nfe <= 1 else SEQUENTIAL_SAMPLE_BATCH


def labels_for(model, n: int):
    return torch.arange(n) % model.num_classes if model.conditional else None


def training_batch(model, n: int = TRAIN_BATCH):
    """Random 8-bit images in the model's track (binary: a binarization), with labels 0..9."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, *IMAGE_SHAPE), generator=generator, dtype=torch.uint8)
    return to_track(images, model.track, generator=generator), torch.arange(n) % model.num_classes


@pytest.mark.parametrize("name", models.names())
def test_train_step(benchmark, name):
    torch.manual_seed(0)
    model = models.build(name, image_shape=IMAGE_SHAPE)
    model.train()
    optimizers = model.configure_optimizers()
    batch = training_batch(model)
    benchmark.group = name
    benchmark.extra_info.update(batch=TRAIN_BATCH, image_shape=list(IMAGE_SHAPE))
    stats = benchmark(model.train_step, batch, optimizers)
    assert math.isfinite(float(stats["loss"]))


@pytest.mark.parametrize("name", models.names())
def test_sample_batch(benchmark, name):
    torch.manual_seed(0)
    model = models.build(name, image_shape=IMAGE_SHAPE)
    model.eval()
    n = sample_batch_size(model)
    labels = labels_for(model, n)
    benchmark.group = name
    benchmark.extra_info.update(batch=n, sampling_nfe=model.sampling_nfe, image_shape=list(IMAGE_SHAPE))

    @torch.no_grad()
    def draw():
        return model.sample(n, labels=labels) if labels is not None else model.sample(n)

    images = benchmark(draw)
    assert images.shape == (n, *IMAGE_SHAPE)
    assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
