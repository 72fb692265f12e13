"""Conditional GAN: shapes and ranges, the label reaches both networks, one training step is sound."""
import pytest
import torch

import models
from models.gan.cgan import ConditionalGAN


def _cgan(shape=(1, 8, 8), seed=0):
    torch.manual_seed(seed)
    return models.build("cgan", image_shape=shape)


@pytest.mark.parametrize("size", [8, 14, 28])
def test_generator_output_shape_and_range(size):
    model = _cgan((1, size, size)).eval()
    labels = torch.tensor([0, 3, 9, 3, 1])
    x = model.sample(5, labels=labels)
    assert x.shape == (5, 1, size, size)
    assert x.min() >= 0 and x.max() <= 1
    assert model.sample(7).shape == (7, 1, size, size)  # labels drawn when none are given
    assert model.sampling_nfe == 1


def test_generator_output_depends_on_the_label():
    model = _cgan().eval()
    with torch.no_grad():
        model.generator.label_embedding.weight.normal_(0, 3.0)
    noise = torch.randn(4, model.noise_dim)
    a = model.generator(noise, torch.tensor([0, 0, 0, 0]))
    b = model.generator(noise, torch.tensor([1, 2, 3, 4]))
    assert not torch.allclose(a, b, atol=1e-4)


def test_discriminator_sees_the_label():
    model = _cgan().eval()  # eval: no dropout, so the only difference is the label
    x = model.to_model_range(torch.randint(0, 256, (6, 1, 8, 8)).float())
    same = model.discriminator(x, torch.full((6,), 2))
    assert torch.equal(same, model.discriminator(x, torch.full((6,), 2)))
    for other in (0, 5, 9):
        changed = model.discriminator(x, torch.full((6,), other))
        assert not torch.allclose(same, changed), other


def test_scaling_to_minus_one_one():
    x = torch.tensor([0.0, 127.5, 255.0])
    assert torch.allclose(ConditionalGAN.to_model_range(x), torch.tensor([-1.0, 0.0, 1.0]))


def test_initialisation_is_the_seeds():
    model = _cgan((1, 28, 28))
    weight = model.discriminator.net[0].weight
    assert abs(weight.std().item() - 0.02) < 0.002 and abs(weight.mean().item()) < 0.002
    assert torch.all(model.discriminator.net[0].bias == 0)
    bn = model.generator.net[3]
    assert isinstance(bn, torch.nn.BatchNorm1d) and abs(bn.weight.mean().item() - 1.0) < 0.01


def test_one_train_step_updates_both_networks_and_returns_finite_losses():
    model = _cgan()
    opt_d, opt_g = model.configure_optimizers()
    assert {id(p) for g in opt_d.param_groups for p in g["params"]} == {id(p) for p in model.discriminator.parameters()}
    assert {id(p) for g in opt_g.param_groups for p in g["params"]} == {id(p) for p in model.generator.parameters()}
    assert opt_d.defaults["lr"] == 2e-4 and opt_d.defaults["betas"] == (0.5, 0.999)
    before_d = [p.detach().clone() for p in model.discriminator.parameters()]
    before_g = [p.detach().clone() for p in model.generator.parameters()]
    images = torch.randint(0, 256, (16, 1, 8, 8)).float()
    stats = model.train_step((images, torch.arange(16) % 10), [opt_d, opt_g])
    assert set(stats) >= {"loss", "d_loss", "g_loss"}
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    assert stats["loss"] == pytest.approx(stats["d_loss"] + stats["g_loss"])
    # at initialisation D outputs ~0 logits: each BCE term is about log 2
    assert stats["d_loss"] == pytest.approx(0.693, abs=0.1) and stats["g_loss"] == pytest.approx(0.693, abs=0.2)
    assert any(not torch.equal(a, b) for a, b in zip(before_d, model.discriminator.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before_g, model.generator.parameters()))


def test_short_training_separates_real_from_fake():
    # A few steps on one fixed bright image: D should learn to score it above fresh generator output.
    model = _cgan()
    optimizers = model.configure_optimizers()
    images = torch.full((32, 1, 8, 8), 255.0)
    labels = torch.zeros(32, dtype=torch.long)
    for _ in range(30):
        stats = model.train_step((images, labels), optimizers)
    assert stats["d_loss"] < 0.69
    model.eval()
    with torch.no_grad():
        real = model.discriminator(model.to_model_range(images), labels).mean()
        fake = model.discriminator(model.generator(torch.randn(32, 100), labels), labels).mean()
    assert real > fake


def test_missing_labels_are_a_clear_error():
    model = _cgan()
    images = torch.zeros(4, 1, 8, 8)
    with pytest.raises(ValueError, match="labelled dataset"):
        model.train_step((images, torch.full((4,), -1)), model.configure_optimizers())
    with pytest.raises(ValueError, match="one label per sample"):
        model.eval().sample(3, labels=torch.tensor([1, 2]))
