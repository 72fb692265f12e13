"""Run-time self-checks: each passes on a correct model and fails on a deliberately broken one; the
harness's FID check and the check plumbing (a raising or malformed check is a failed check)."""
import math

import numpy as np
import pytest
import torch

import models
import models.diffusion.ddpm as ddpm_module
from bench.evaluate import self_checks as checks
from bench.results import report
from bench.evaluate import uncertainty
from models.autoregressive.fvsbn import FVSBN
from models.vae.vae import ConvVAE


def only(found):
    assert len(found) == 1 and set(found[0]) == set(checks.KEYS)
    return found[0]


def binary_images(n=16, shape=(1, 8, 8), seed=0):
    return torch.bernoulli(torch.full((n, *shape), 0.3), generator=torch.Generator().manual_seed(seed))


# --- FVSBN: the sampler's conditionals against the likelihood's ----------------------------------------
def random_fvsbn():
    torch.manual_seed(0)
    model = FVSBN(image_shape=(1, 6, 6))
    with torch.no_grad():
        model.weight.normal_(0, 1.0)  # untrained weights are zero: any sampler would agree with them
        model.bias.normal_(0, 0.5)
    return model


class WrongSideFVSBN(FVSBN):
    """The seed's bug: the sampler reads column i of W (weights onto later pixels) as pixel i's inputs."""

    @torch.no_grad()
    def sample_with_conditionals(self, n, generator=None):
        w = self.masked_weight()
        x = torch.zeros(n, self.dim)
        probs = torch.empty(n, self.dim)
        uniforms = torch.rand(n, self.dim, generator=generator)
        for i in range(self.dim):
            p = torch.sigmoid(self.bias[i] + x @ w[:, i])
            probs[:, i] = p
            x[:, i] = (uniforms[:, i] < p).float()
        return x.view(n, *self.image_shape), probs


def test_fvsbn_check_passes_and_catches_the_wrong_side_of_w():
    good = random_fvsbn()
    assert only(good.self_checks(binary_images(shape=(1, 6, 6))))["passed"]
    broken = WrongSideFVSBN(image_shape=(1, 6, 6))
    broken.load_state_dict(good.state_dict())
    found = only(broken.self_checks(binary_images(shape=(1, 6, 6))))
    assert not found["passed"] and found["value"] > 0.01


# --- RealNVP: inverse(forward(x)) ------------------------------------------------------------------------
def trained_like_realnvp():
    torch.manual_seed(0)
    model = models.build("realnvp", image_shape=(1, 8, 8), hidden=8)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # away from the identity-at-init couplings
    return model


def test_realnvp_check_passes_and_catches_an_inverse_that_is_off():
    x = torch.randint(0, 256, (16, 1, 8, 8)).float()
    model = trained_like_realnvp()
    found = only(model.self_checks(x))
    assert found["passed"] and found["value"] < 1e-5
    inverse = model.inverse_flow
    model.inverse_flow = lambda latent: inverse(latent * 1.01)  # a slightly wrong inverse
    broken = only(model.self_checks(x))
    assert not broken["passed"]


# --- VAE: the importance-weighted estimate against K ------------------------------------------------------
class RisingIWAE(ConvVAE):
    """A broken estimator: biased upwards by 3 log K, so it rises as K grows."""

    def iwae_nll(self, x, k=None, batch_size=100):
        return super().iwae_nll(x, k, batch_size) + 3 * math.log(k)


def test_vae_check_passes_and_catches_an_estimate_rising_with_k():
    x = binary_images(32, (1, 8, 8))
    torch.manual_seed(0)
    good = ConvVAE((1, 8, 8), latent_dim=2)
    found = only(good.self_checks(x))
    assert found["passed"], found
    broken = RisingIWAE((1, 8, 8), latent_dim=2)
    broken.load_state_dict(good.state_dict())
    found = only(broken.self_checks(x))
    assert not found["passed"] and found["value"] > found["tolerance"]


# --- DDPM: the bound's terms are non-negative -------------------------------------------------------------
def small_ddpm():
    torch.manual_seed(0)
    return ddpm_module.DDPM(image_shape=(1, 8, 8), T=20, width=8, nll_t_samples=4)


def test_ddpm_check_passes_and_catches_a_negative_kl(monkeypatch):
    x = torch.randint(0, 256, (8, 1, 8, 8)).float()
    model = small_ddpm()
    assert only(model.self_checks(x))["passed"]
    kl = ddpm_module.normal_kl
    monkeypatch.setattr(ddpm_module, "normal_kl", lambda *a: -kl(*a))  # a sign slip in the KL
    found = only(model.self_checks(x))
    assert not found["passed"] and found["value"] < 0


# --- the harness's checks ----------------------------------------------------------------------------------
def test_fid_recompute_check():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 16)), rng.normal(0.3, 1.0, size=(300, 16))
    fid = uncertainty.frechet_distance(a, b)
    assert checks.fid_recompute_check(fid * (1 + 1e-6), a, b)["passed"]
    assert not checks.fid_recompute_check(fid * 1.01, a, b)["passed"]  # a reported FID off by 1%


class Raising(FVSBN):
    def self_checks(self, x_test):
        raise RuntimeError("boom")


class Malformed(FVSBN):
    def self_checks(self, x_test):
        return [{"check": "half", "passed": True}]


def test_a_raising_or_malformed_check_is_a_failed_check():
    x = binary_images(4, (1, 4, 4))
    raised = only(checks.model_checks(Raising((1, 4, 4)), x, "cpu"))
    assert not raised["passed"] and "boom" in raised["detail"]
    malformed = only(checks.model_checks(Malformed((1, 4, 4)), x, "cpu"))
    assert not malformed["passed"] and "lacks" in malformed["detail"]


def test_summary_marks_a_failed_check():
    passed = checks.check("a", True, 0.0, 1.0, "")
    assert report.checks_cell([passed, passed]) == "pass (2)"
    assert report.checks_cell([passed, checks.check("b", False, 2.0, 1.0, "")]) == "FAIL: b"
    assert report.checks_cell(None) == "-"
