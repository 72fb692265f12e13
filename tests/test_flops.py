"""FLOP counting (bench.instruments.flops) against hand formulas, and that counting leaves training untouched."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.instruments import flops
from models.base import GenerativeModel
from models.autoregressive.fvsbn import FVSBN


def test_linear_flops_match_the_hand_formula_forward_and_backward():
    batch, n_in, n_out = 7, 3, 5
    layer = nn.Linear(n_in, n_out)
    forward = 2 * n_in * n_out * batch
    x = torch.randn(batch, n_in)
    assert flops.count(lambda: layer(x)) == forward
    # Backward: one product for the weight gradient, and one more for the input's when it needs one.
    assert flops.count(lambda: layer(x).sum().backward()) == 2 * forward
    x_grad = torch.randn(batch, n_in, requires_grad=True)
    assert flops.count(lambda: layer(x_grad).sum().backward()) == 3 * forward


def test_convolution_flops_match_the_hand_formula_forward_and_backward():
    batch, c_in, c_out, k, side = 2, 3, 4, 3, 9
    conv = nn.Conv2d(c_in, c_out, k, padding=0)
    h_out = w_out = side - k + 1
    forward = 2 * c_in * c_out * k * k * h_out * w_out * batch
    x = torch.randn(batch, c_in, side, side)
    assert flops.count(lambda: conv(x)) == forward
    assert flops.count(lambda: conv(x).sum().backward()) == 2 * forward
    x_grad = x.clone().requires_grad_()
    assert flops.count(lambda: conv(x_grad).sum().backward()) == 3 * forward


def test_gradient_of_a_leaf_is_counted_like_a_backward_pass():
    # An EBM's Langevin step: torch.autograd.grad of the energy with respect to a leaf input, which
    # FlopCounterMode's module tracker refuses; the count falls back to the same per-op formulas.
    batch, n_in, n_out = 4, 6, 3
    energy = nn.Linear(n_in, n_out)
    x = torch.randn(batch, n_in, requires_grad=True)
    counted = flops.count(lambda: torch.autograd.grad(energy(x).sum(), x))
    assert counted == 2 * (2 * n_in * n_out * batch)  # forward, and the input gradient only


class LinearScorer(GenerativeModel):
    """A toy model whose training step is one Linear(D, HIDDEN) forward and backward: 4*D*HIDDEN*batch FLOPs."""

    name = "linear-scorer"
    track = "8bit"
    HIDDEN = 6

    def __init__(self, image_shape=(1, 4, 4)):
        super().__init__(image_shape)
        self.layer = nn.Linear(self.dim, self.HIDDEN)

    def nll(self, x):
        noise = torch.randn_like(x.flatten(1))  # consumes the global RNG, as many train steps do
        return (self.layer(x.flatten(1) / 255 + noise) ** 2).sum(1)

    def sample(self, n, labels=None):
        z = torch.randn(n, self.HIDDEN)
        return torch.sigmoid(z @ self.layer.weight).view(n, *self.image_shape)

    @staticmethod
    def step_flops(batch: int, dim: int) -> float:
        return 4.0 * dim * LinearScorer.HIDDEN * batch  # forward, and the weight gradient (input needs none)


def test_train_step_flops_are_exact_and_leave_model_optimizer_and_rng_untouched():
    torch.manual_seed(0)
    model = LinearScorer()
    (opt,) = model.configure_optimizers()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = (torch.rand(8, 1, 4, 4) * 255, torch.zeros(8, dtype=torch.long))
    rng_before = torch.get_rng_state()
    counted = flops.train_step_flops(model, batch, cache=False)
    assert counted == LinearScorer.step_flops(8, 16)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert opt.state == {}  # the copy trained with its own optimizers


def test_counts_are_cached_per_shape_and_batch():
    model = LinearScorer()
    batch = (torch.rand(4, 1, 4, 4) * 255, torch.zeros(4, dtype=torch.long))
    first = flops.train_step_flops(model, batch)
    assert flops.train_step_flops(model, batch) == first
    bigger = (torch.rand(8, 1, 4, 4) * 255, torch.zeros(8, dtype=torch.long))
    assert flops.train_step_flops(model, bigger) == 2 * first  # another batch: counted anew


def test_sample_flops_per_sample_counts_the_sampler():
    model = LinearScorer()
    # sample(n): one (n x HIDDEN) @ (HIDDEN x D) product.
    assert flops.sample_flops_per_sample(model, 3, cache=False) == 2 * LinearScorer.HIDDEN * model.dim


def test_a_models_own_sampling_flops_take_precedence():
    model = FVSBN(image_shape=(1, 5, 5))
    d = model.dim
    # The counter sees none of FVSBN's addr_ updates; the model's own count is the useful multiply-adds,
    # one per strictly-lower-triangular weight (the mask's ones), 2 FLOPs each.
    assert flops.sample_flops_per_sample(model, 4) == pytest.approx(2 * float(model.mask.sum()))
    assert model.sampling_flops(10) == 10 * d * (d - 1)


def test_steps_for_a_budget_is_the_first_step_reaching_it():
    assert flops.steps_for(100.0, 10.0) == 10
    assert flops.steps_for(101.0, 10.0) == 11
    assert flops.steps_for(1.0, 10.0) == 1
