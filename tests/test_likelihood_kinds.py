"""Every likelihood is labelled with what it is: ``exact`` only for a discrete likelihood computed exactly.

A continuous density scored on dequantized 8-bit pixels is an upper bound on the discrete NLL (Jensen
over the dequantization noise), so it must say ``bound``. The test finds such models without a list:
their NLL of the same images changes with the dequantization noise (the random seed), which an exact
discrete likelihood never does.
"""
import pytest
import torch

import models
from bench.data.datasets import load_dataset

LIKELIHOOD_MODELS = [n for n in models.names() if models.model_class(n).likelihood is not None]


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("mnist5k")
    return {"binary": data.test_split("binary")[:3], "8bit": data.test_split("8bit")[:3]}


def nll_with_seed(model, x, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        return model.nll(x).double()


@pytest.mark.parametrize("name", LIKELIHOOD_MODELS)
def test_a_random_nll_is_never_labelled_exact(name, digits):
    torch.manual_seed(0)
    model = models.build(name).eval()
    x = digits[model.track]
    a, b = nll_with_seed(model, x, 1), nll_with_seed(model, x, 2)
    if not torch.allclose(a, b, rtol=0, atol=1e-6):
        assert model.likelihood != "exact", f"{name}: its NLL depends on the seed, so it is a bound or an estimate"
    if model.track == "8bit" and model.family in {"flow", "diffusion", "vae"}:
        assert model.likelihood == "bound", f"{name}: a continuous density on the 8bit track gives a bound"


def test_named_kinds():
    assert models.model_class("fvsbn").likelihood == "exact"  # discrete, computed exactly
    assert models.model_class("realnvp").likelihood == "bound"  # continuous, dequantized 8-bit pixels
