import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """``--benchmark-only`` on the command line wins over ``--benchmark-disable`` in pyproject's addopts
    (pytest-benchmark refuses the two together; addopts keeps the ordinary run a one-shot check)."""
    if getattr(config.option, "benchmark_only", False):
        config.option.benchmark_disable = False


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """A private cache folder (prepared datasets, classifiers) for tests that write caches."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("BENCH_CACHE_DIR", str(cache))
    return cache


def bench_env(**extra) -> dict:
    """Environment for running `python -m bench` from the repository root in a subprocess."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


PYTHON = sys.executable


def sampler_frequency_chi2(model, n: int = 40000, seed: int = 5) -> tuple[float, "torch.Tensor", "torch.Tensor"]:
    """Chi-square of ``model.sample`` frequencies against ``exp(-model.nll)`` over all 16 binary 2x2
    images: (chi2, frequencies, probabilities). With 15 degrees of freedom its 99.9% quantile is 37.7."""
    import itertools

    import torch

    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4))).view(16, 1, 2, 2)
    probs = torch.exp(-model.nll(images)).detach()
    torch.manual_seed(seed)
    codes = (model.sample(n).flatten(1) * torch.tensor([8.0, 4.0, 2.0, 1.0])).sum(1).long()
    freq = torch.bincount(codes, minlength=16).float() / n
    return (n * (freq - probs) ** 2 / probs).sum().item(), freq, probs
