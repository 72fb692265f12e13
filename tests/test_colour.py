"""Colour (C = 3) through every 8-bit model: build, one training step, the likelihood, samples.

Every registered model whose track is ``8bit`` takes part (a new one joins by registering). Each builds at
its smallest colour size of side at least 8 allowed by its ``side_multiple`` (height and width must be
multiples of it) and refuses other sides with a ValueError naming the multiple."""
import math

import pytest
import torch

import models

EIGHT_BIT = [name for name in models.names() if models.model_class(name).track == "8bit"]
LIMITED = [name for name in EIGHT_BIT if models.model_class(name).side_multiple > 1]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is faster, and on a busy machine two can be many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def colour_shape(name: str, at_least: int = 8) -> tuple[int, int, int]:
    multiple = models.model_class(name).side_multiple
    side = multiple * math.ceil(at_least / multiple)
    return 3, side, side


def random_pixels(n: int, shape, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, *shape), generator=torch.Generator().manual_seed(seed)).float()


@pytest.mark.parametrize("name", EIGHT_BIT)
def test_an_8bit_model_trains_scores_and_samples_colour_images(name):
    torch.manual_seed(0)
    shape = colour_shape(name)
    model = models.build(name, image_shape=shape)
    x, labels = random_pixels(8, shape), torch.arange(8) % 10
    stats = model.train_step((x, labels), model.configure_optimizers())
    assert math.isfinite(stats["loss"])
    model.eval()
    if model.likelihood:
        with torch.no_grad():
            nll = model.nll(x)
        assert nll.shape == (8,) and torch.isfinite(nll).all()
    samples = model.sample(4, labels=labels[:4]) if model.conditional else model.sample(4)
    # models/base.py: samples in [0, 1], N x C x H x W (bench.evaluate.samples turns them into uint8)
    assert samples.shape == (4, *shape) and torch.isfinite(samples).all()
    assert samples.min() >= 0.0 and samples.max() <= 1.0


@pytest.mark.parametrize("name", EIGHT_BIT)
def test_an_8bit_model_takes_a_non_square_colour_size_its_side_multiple_allows(name):
    multiple = models.model_class(name).side_multiple
    shape = (3, 2 * multiple, 3 * multiple) if multiple > 1 else (3, 5, 7)
    model = models.build(name, image_shape=shape)
    model.eval()
    samples = model.sample(2, labels=torch.tensor([0, 1])) if model.conditional else model.sample(2)
    assert samples.shape == (2, *shape)


@pytest.mark.parametrize("name", LIMITED)
def test_a_model_refuses_a_side_it_cannot_take_naming_the_sides_it_can(name):
    multiple = models.model_class(name).side_multiple
    side = 2 * multiple + 1
    with pytest.raises(ValueError, match=f"multiples of {multiple}"):
        models.build(name, image_shape=(3, side, side))
