"""RealNVP: exact inverse, log-determinant against autograd, and a sampler that inverts the likelihood."""
import torch

import models


def _random_realnvp(shape=(1, 4, 4), seed=0, **kwargs):
    torch.manual_seed(seed)
    model = models.build("realnvp", image_shape=shape, hidden=8, **kwargs).double()
    with torch.no_grad():  # leave the identity start: give every coupling a real transformation
        for layer in [*model.full_res, *model.channel_wise, *model.half_res]:
            layer.net[-1].weight.normal_(0, 0.3)
            layer.net[-1].bias.normal_(0, 0.3)
    return model


def test_inverse_of_forward_is_identity():
    model = _random_realnvp((1, 6, 6))
    z = torch.randn(5, 1, 6, 6, dtype=torch.float64)
    latent, _ = model.forward_flow(z)
    assert not torch.allclose(latent, z, atol=1e-2)
    assert torch.allclose(model.inverse_flow(latent), z, atol=1e-5)


def test_inverse_of_forward_is_identity_in_float32():
    model = _random_realnvp((1, 8, 8)).float()
    z = torch.randn(5, 1, 8, 8)
    assert torch.allclose(model.inverse_flow(model.forward_flow(z)[0]), z, atol=1e-5)


def test_flow_logdet_equals_autograd_jacobian():
    model = _random_realnvp((1, 4, 4))
    z = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: model.forward_flow(v.view(1, 1, 4, 4))[0].flatten(),
                                             z.flatten())
    _, expected = torch.linalg.slogdet(jac)
    assert torch.allclose(model.forward_flow(z)[1], expected.view(1), atol=1e-8)


def test_logit_preprocessing_logdet_equals_autograd_jacobian():
    model = _random_realnvp((1, 2, 2))
    y = torch.rand(1, 1, 2, 2, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: model._to_logit(v.view(1, 1, 2, 2))[0].flatten(), y.flatten())
    assert torch.allclose(model._to_logit(y)[1], torch.linalg.slogdet(jac)[1].view(1), atol=1e-10)


def test_sample_is_the_inverse_of_the_likelihood_map():
    # The sampler draws z ~ N(0, I) and inverts; mapping the sample back must give the same z, and
    # the likelihood of the sample is the prior density of z corrected by the log-determinants.
    model = _random_realnvp((1, 4, 4))
    torch.manual_seed(1)
    samples = model.sample(6)
    torch.manual_seed(1)
    z = torch.randn(6, 1, 4, 4, dtype=torch.float64)
    logit_space = model.inverse_flow(z)
    back, _ = model.forward_flow(model._to_logit(model._from_logit(logit_space))[0])
    assert torch.allclose(back, z, atol=1e-6)
    assert samples.min() >= 0 and samples.max() <= 1 and samples.shape == (6, 1, 4, 4)


def test_nll_is_finite_and_gradients_flow():
    model = models.build("realnvp", image_shape=(1, 8, 8))
    x = torch.randint(0, 256, (4, 1, 8, 8)).float()
    loss = model.nll(x).mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())
