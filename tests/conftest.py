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


def write_cifar10_folder(root, n_train: int = 60, n_test: int = 40, seed: int = 0, images=None) -> "Path":
    """A folder in CIFAR-10's own format under ``root``: five training batches of ``n_train`` images, a test
    batch of ``n_test`` and batches.meta (pickles with bytes keys, N x 3072 uint8 channel-major rows).

    Each image says what it is: its red plane is 25 x its label, its green plane 7 x the row, its blue
    plane 7 x the column (so the channel order and the layout can be checked). ``images(n, labels, rng)``
    may draw other N x 3 x 32 x 32 uint8 images."""
    import pickle

    import numpy as np

    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def structured(n, labels, rng):
        x = np.empty((n, 3, 32, 32), dtype=np.uint8)
        x[:, 0] = (25 * labels)[:, None, None]
        x[:, 1] = (7 * np.arange(32))[None, :, None]
        x[:, 2] = (7 * np.arange(32))[None, None, :]
        return x

    draw = images or structured
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        n = n_test if name == "test_batch" else n_train
        labels = (np.arange(n) + i) % 10
        data = draw(n, labels, rng).reshape(n, 3072)
        entry = {b"batch_label": name.encode(), b"labels": labels.tolist(), b"data": data,
                 b"filenames": [f"{name}_{j}.png".encode() for j in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)], b"num_cases_per_batch": n_train,
                     b"num_vis": 3072}, f, protocol=2)
    return Path(root)


@pytest.fixture
def cifar10_root(tmp_path, isolated_cache):
    """A small CIFAR-10-format folder (5 x 60 training, 40 test images) under a data root."""
    return write_cifar10_folder(tmp_path / "data")


def one_latent_vae_nlls(model, x, k: int = 4000, seed: int = 5):
    """For a VAE with a one-dimensional latent, per image of ``x``: the exact NLL, log ∫ p(x | z) N(z; 0, 1) dz
    by quadrature on a fine grid; the IWAE estimate with K = ``k`` and its delta-method standard error
    (std(w) / (sqrt(K) mean(w))); and the ELBO averaged over ``k`` draws. All float64, in nats."""
    import math

    import torch

    grid = torch.linspace(-8, 8, 4001)
    with torch.no_grad():
        log_joint = torch.stack([model.log_likelihood(xi.expand(len(grid), *x.shape[1:]), grid.view(-1, 1))
                                 for xi in x]).double() - 0.5 * (math.log(2 * math.pi) + grid.double() ** 2)
        exact_nll = -(torch.logsumexp(log_joint, dim=1) + math.log(grid[1] - grid[0]))
        torch.manual_seed(seed)
        log_w = model.log_importance_weights(x, k).double()
        elbo = model.nll(x.repeat(k, 1, 1, 1)).double().view(k, len(x)).mean(0)
    iwae = math.log(k) - torch.logsumexp(log_w, dim=1)
    w = torch.exp(log_w - log_w.max(dim=1, keepdim=True).values)
    stderr = w.std(dim=1) / (math.sqrt(k) * w.mean(dim=1))
    return exact_nll, iwae, stderr, elbo
