"""Glow: exact inverse, log-determinants against slogdet and autograd, actnorm's data-dependent start,
and a sampler that inverts the likelihood."""
import math

import torch

import models
from models.flows.glow import ActNorm, AffineCoupling, InvConv1x1


def _random_glow(shape=(1, 4, 4), seed=0, **kwargs):
    torch.manual_seed(seed)
    model = models.build("glow", image_shape=shape, hidden=8, steps_per_level=2, **kwargs).double()
    with torch.no_grad():  # leave the near-identity start: give every layer a real transformation
        for name, p in model.named_parameters():
            if any(key in name for key in ("bias", "log_scale", "net.4")):
                p.normal_(0, 0.3)
            elif name.endswith("log_s"):  # the 1x1 convolutions start as rotations (log|det| = 0)
                p.add_(torch.randn_like(p), alpha=0.2)
    return model.eval()  # eval: actnorm keeps these parameters instead of initialising from data


def _flat_jacobian(f, v: torch.Tensor) -> torch.Tensor:
    return torch.autograd.functional.jacobian(lambda u: f(u.view(v.shape)).flatten(), v.flatten())


def test_inverse_of_forward_is_identity():
    model = _random_glow((1, 8, 8))
    z = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    latent, _ = model.forward_flow(z)
    assert not torch.allclose(latent.view_as(z), z, atol=1e-2)
    assert (model.inverse_flow(latent) - z).abs().max() < 1e-4


def test_inverse_of_forward_is_identity_in_float32_on_rgb():
    model = _random_glow((3, 8, 8)).float()
    z = torch.randn(5, 3, 8, 8)
    assert (model.inverse_flow(model.forward_flow(z)[0]) - z).abs().max() < 1e-4


def test_1x1_convolution_logdet_is_slogdet_of_its_weight_times_pixels():
    torch.manual_seed(0)
    conv = InvConv1x1(6).double()
    with torch.no_grad():
        conv.log_s.normal_(0, 0.5)
        conv.upper.normal_(0, 0.5)
        conv.lower.normal_(0, 0.5)
    x = torch.randn(2, 6, 3, 5, dtype=torch.float64)
    y, logdet = conv(x)
    _, expected = torch.linalg.slogdet(conv.weight())
    assert torch.allclose(logdet, (3 * 5 * expected).expand(2), atol=1e-10)
    # and it is the convolution it claims: W applied at every pixel
    assert torch.allclose(y, torch.einsum("oc,nchw->nohw", conv.weight(), x), atol=1e-12)


def test_flow_logdet_equals_autograd_jacobian():
    model = _random_glow((1, 4, 4))
    z = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    jac = _flat_jacobian(lambda v: model.forward_flow(v)[0], z)
    assert jac.shape == (16, 16)
    assert torch.allclose(model.forward_flow(z)[1], torch.linalg.slogdet(jac)[1].view(1), atol=1e-8)


def test_actnorm_initialises_to_zero_mean_unit_variance_on_its_first_batch():
    torch.manual_seed(0)
    norm = ActNorm(3)
    std, mean = torch.tensor([0.2, 3.0, 7.0]).view(1, 3, 1, 1), torch.tensor([5.0, -1.0, 2.0]).view(1, 3, 1, 1)
    x = torch.randn(16, 3, 5, 5) * std + mean
    y, logdet = norm(x)  # training mode: the first call initialises
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(y.var(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    expected_logdet = -25 * torch.log(x.std(dim=(0, 2, 3), unbiased=False)).sum()  # H W sum(log_a), a = 1/std
    assert torch.allclose(logdet, expected_logdet.expand(16), atol=1e-4)
    # later batches use the learnt parameters, not their own statistics
    y2, _ = norm(2 * x)
    assert torch.allclose(y2.var(dim=(0, 2, 3), unbiased=False), torch.full((3,), 4.0), atol=1e-3)


def test_actnorm_of_the_whole_model_initialises_in_the_first_training_step_only():
    model = models.build("glow", image_shape=(1, 8, 8), hidden=8, steps_per_level=2)
    norms = [m for m in model.modules() if isinstance(m, ActNorm)]
    model.eval()
    model.nll(torch.randint(0, 256, (8, 1, 8, 8)).float())
    assert not any(bool(n.initialized) for n in norms)  # evaluation never initialises
    model.train()
    model.train_step((torch.randint(0, 256, (8, 1, 8, 8)).float(), None), model.configure_optimizers())
    assert all(bool(n.initialized) for n in norms) and any(n.log_scale.abs().sum() > 0 for n in norms)


def test_nll_equals_change_of_variables_with_the_autograd_jacobian():
    model = _random_glow((1, 4, 4))
    assert model.likelihood == "bound" and model.track == "8bit"
    x = torch.randint(0, 256, (1, 1, 4, 4)).double()
    torch.manual_seed(3)
    nll = model.nll(x)
    torch.manual_seed(3)
    y = (x + torch.rand(x.shape, dtype=x.dtype)) / 256  # the same dequantization draw

    def to_latent(v):
        return model.forward_flow(model._to_logit(v)[0])[0]

    latent = to_latent(y)
    log_prior = -0.5 * (latent ** 2).sum() - 8 * math.log(2 * math.pi)
    log_det = torch.linalg.slogdet(_flat_jacobian(to_latent, y))[1]
    expected = -(log_prior + log_det) + 16 * math.log(256)
    assert torch.allclose(nll, expected.view(1), atol=1e-8)


def test_sample_is_the_inverse_of_the_likelihood_map_at_a_temperature():
    # The sampler draws z ~ N(0, T^2 I) and inverts; mapping the sample back must give the same z.
    model = _random_glow((1, 4, 4), temperature=0.7)
    torch.manual_seed(1)
    samples = model.sample(6)
    torch.manual_seed(1)
    z = 0.7 * torch.randn(6, 16, dtype=torch.float64)
    pixels = model._from_logit(model.inverse_flow(z))
    assert torch.allclose(samples, pixels.clamp(0, 1))
    back, _ = model.forward_flow(model._to_logit(pixels)[0])
    assert torch.allclose(back, z, atol=1e-6)
    assert samples.min() >= 0 and samples.max() <= 1 and samples.shape == (6, 1, 4, 4)


def test_nll_is_finite_and_gradients_reach_every_parameter():
    model = models.build("glow", image_shape=(1, 8, 8), hidden=8, steps_per_level=2)
    loss = model.nll(torch.randint(0, 256, (4, 1, 8, 8)).float()).mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())


def test_self_checks_pass_on_a_random_flow_and_catch_a_wrong_inverse(monkeypatch):
    model = _random_glow((1, 8, 8)).float()
    x = torch.randint(0, 256, (4, 1, 8, 8)).float()
    checks = model.self_checks(x)
    assert [c["check"] for c in checks] == ["inverse(forward(x)) = x (float64)", "inverse(forward(x)) = x (float32)"]
    assert all(c["passed"] and c["value"] <= c["tolerance"] for c in checks)
    assert next(model.parameters()).dtype == torch.float32  # the float64 check worked on a copy

    def inverse_forgetting_the_scale(coupling, y):
        y_a, y_b = y.chunk(2, dim=1)
        return torch.cat([y_a, y_b - coupling._shift_scale(y_a)[0]], 1)

    monkeypatch.setattr(AffineCoupling, "inverse", inverse_forgetting_the_scale)
    assert not any(c["passed"] for c in model.self_checks(x))  # shift undone, scale forgotten
