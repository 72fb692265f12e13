"""Speed benchmark of the sample-quality step: FID, KID, IS, precision and recall of 10,000 samples
against 10,000 reference images in one torch-fidelity call (features extracted once, shared).

Target: under 15 s on a 2-core CPU. The images are 28x28 MNIST digits from the embedded mnist5k set,
each used twice with different one-pixel shifts (so no two images are identical, which would put zeros
into the nearest-neighbour radii). The classifier's quality does not change the cost, so a briefly
trained one is used. With ``--benchmark-disable`` (the ordinary test run) the body runs once on 1,000
against 1,000 images as a correctness check.
"""
import math

import pytest
import torch

from bench.evaluate import sample_quality as fidelity
from bench.evaluate.classifier import TrainingSpec, load_or_train
from bench.data.datasets import load_dataset


def shifted_copies(images: torch.Tensor, shifts) -> torch.Tensor:
    return torch.cat([torch.roll(images, shifts=s, dims=(2, 3)) for s in shifts])


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCH_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        data = load_dataset("mnist5k")
        classifier = load_or_train(data, "cpu", spec=TrainingSpec(epochs=1, min_steps=40, max_steps=40))
    everything = torch.cat([data.train_images, data.valid_images, data.test_images])  # 5,000 digits
    return classifier, everything


def test_metric_step_10k_vs_10k(benchmark, setting):
    classifier, digits = setting
    n = 1000 if benchmark.disabled else 10_000
    pick = torch.randperm(10_000, generator=torch.Generator().manual_seed(0))[:n]
    samples = shifted_copies(digits, [(1, 0), (0, 1)])[pick]
    reference = shifted_copies(digits, [(-1, 0), (0, -1)])[pick]
    benchmark.group = "fidelity"
    benchmark.extra_info.update(samples=n, reference=n, feature_dim=classifier.feature_dim,
                                torch_threads=torch.get_num_threads())
    values, _ = benchmark.pedantic(fidelity.score, args=(samples, reference, classifier), rounds=1 if
                                   benchmark.disabled else 3, iterations=1)
    assert values["n"] == values["m"] == n
    assert all(math.isfinite(values[k]) for k in ("fid", "kid", "is", "precision", "recall"))
