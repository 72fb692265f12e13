"""EBM: the Langevin sampler against a quadratic energy solved by hand, the replay buffer's 95/5 mix,
the divergence signal, and a training step."""
import math

import pytest
import torch

import models
from models.ebm.ebm import EBM, ReplayBuffer, langevin


def quadratic_energy(center: torch.Tensor, curvature: float):
    """E(x) = curvature / 2 * |x - center|^2: exp(-E) is a Gaussian with mean ``center``."""
    return lambda x: 0.5 * curvature * ((x - center) ** 2).flatten(1).sum(1)


def test_langevin_converges_to_the_minimiser_with_the_predicted_spread():
    g = torch.Generator().manual_seed(0)
    center = torch.linspace(-0.5, 0.5, 16).view(1, 16)
    energy = quadratic_energy(center, curvature=0.05)
    start = torch.rand(2000, 16, generator=g) * 2 - 1
    with torch.no_grad():  # the sampler must work where the harness calls it: under no_grad
        end = langevin(energy, start, steps=60, step_size=10.0, noise_std=0.005, grad_clip=0.03, generator=g)
    assert energy(end).mean() < 0.01 * energy(start).mean()
    assert (end - center).abs().mean() < 0.01 * (start - center).abs().mean()
    # Near the centre the gradient is unclipped: e' = r (e + noise) with r = 1 - step * curvature = 0.5,
    # whose stationary spread is noise_std * r / sqrt(1 - r^2).
    r = 1 - 10.0 * 0.05
    predicted_std = 0.005 * r / math.sqrt(1 - r * r)
    error = end - center
    assert error.mean().abs() < 5 * predicted_std / math.sqrt(error.numel())
    assert error.std().item() == pytest.approx(predicted_std, rel=0.05)


def test_langevin_clamps_the_gradient_and_the_pixels():
    steep = lambda x: 100.0 * x.flatten(1).sum(1)  # noqa: E731  gradient 100 everywhere
    x = torch.full((3, 1, 2, 2), 0.5)
    one = langevin(steep, x, steps=1, step_size=10.0, noise_std=0.0, grad_clip=0.03)
    assert torch.allclose(one, torch.full_like(x, 0.5 - 10.0 * 0.03))  # 100 clipped to 0.03
    many = langevin(steep, x, steps=10, step_size=10.0, noise_std=0.0, grad_clip=0.03)
    assert torch.equal(many, torch.full_like(x, -1.0))  # clamped to [-1, 1]
    assert torch.equal(x, torch.full_like(x, 0.5))  # the input is not modified in place


def test_replay_buffer_mixes_95_percent_old_with_5_percent_fresh_noise():
    sentinel = 5.0  # outside [-1, 1]: a buffer entry is told apart from fresh noise by its value
    buffer = ReplayBuffer((1, 2, 2), capacity=256, fresh_fraction=0.05, initial=0)
    buffer.push(torch.full((256, 1, 2, 2), sentinel))
    g = torch.Generator().manual_seed(0)
    fresh_total, n, rounds = 0, 128, 400
    for _ in range(rounds):
        x, n_fresh = buffer.draw(n, generator=g)
        is_fresh = (x != sentinel).flatten(1).all(1)
        assert x.shape == (n, 1, 2, 2)
        assert int(is_fresh.sum()) == n_fresh
        if n_fresh:
            assert x[is_fresh].abs().max() <= 1.0  # fresh uniform noise on [-1, 1]
        fresh_total += n_fresh
    draws = n * rounds
    assert abs(fresh_total / draws - 0.05) < 4 * math.sqrt(0.05 * 0.95 / draws)


def test_replay_buffer_drops_the_oldest_samples_first():
    buffer = ReplayBuffer((1,), capacity=4, initial=0)
    buffer.push(torch.arange(3.0).view(3, 1))
    buffer.push(torch.arange(3.0, 6.0).view(3, 1))  # 6 pushed into 4 slots: 0 and 1 are gone
    assert buffer.size == 4
    assert sorted(buffer.storage.flatten().tolist()) == [2.0, 3.0, 4.0, 5.0]


def test_train_step_returns_a_finite_loss_and_fills_the_buffer():
    torch.manual_seed(0)
    model = EBM(image_shape=(1, 8, 8), batch_size=16, train_langevin_steps=5)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randint(0, 256, (16, 1, 8, 8)).float()
    stats = model.train_step((x, None), model.configure_optimizers())
    assert math.isfinite(stats["loss"])
    # loss = CD term + alpha * (E_real^2 + E_fake^2) >= the CD term, from the reported mean energies.
    assert stats["loss"] >= stats["energy_real"] - stats["energy_fake"]
    assert model.buffer.size == 32  # 16 initial noise images + 16 new samples
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_exploding_energies_raise_a_floating_point_error():
    model = EBM(image_shape=(1, 8, 8), batch_size=4, train_langevin_steps=1)
    x = torch.randint(0, 256, (4, 1, 8, 8)).float()
    with torch.no_grad():
        model.energy_net.out.bias.fill_(1e6)
    with pytest.raises(FloatingPointError, match="exploded"):
        model.train_step((x, None), model.configure_optimizers())
    with torch.no_grad():
        model.energy_net.out.bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite"):
        model.train_step((x, None), model.configure_optimizers())


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 14, 14), (1, 28, 28)])
def test_builds_and_samples_at_every_study_size(shape):
    model = models.build("ebm", image_shape=shape, sampling_steps=3)
    x = model.sample(5)
    assert x.shape == (5, *shape)
    assert x.min() >= 0 and x.max() <= 1
    assert model.sampling_nfe == 3
    assert model.family == "ebm" and model.likelihood is None and model.track == "8bit"


def test_langevin_steps_are_a_setting_that_sets_the_chain_length_and_the_cost():
    model = EBM(image_shape=(1, 8, 8), sampling_steps=7)
    calls = []
    original = model.energy_net.forward
    model.energy_net.forward = lambda x: calls.append(1) or original(x)
    model.sample(3)
    assert len(calls) == 7 == model.sampling_nfe  # one energy evaluation per Langevin step
    model.sampling_steps = 2
    calls.clear()
    model.sample(3)
    assert len(calls) == 2 == model.sampling_nfe
    calls.clear()
    model.sample(3, steps=4)  # a one-call override leaves the setting alone
    assert len(calls) == 4 and model.sampling_nfe == 2
    assert model.sampler_description().startswith("Langevin, 2 steps from uniform noise")
    assert EBM().sampling_steps == 60  # the seed's chain length
