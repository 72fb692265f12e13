"""Datasets, tracks and budgets."""
import numpy as np
import pytest
import torch

from bench.config.budgets import parse_budget
from bench.data.datasets import load_dataset, to_track
from bench.config.errors import UserError


def test_mnist5k_split_is_stratified_disjoint_and_cached(isolated_cache):
    data = load_dataset("mnist5k")
    assert data.train_images.shape == (3000, 1, 28, 28) and data.test_images.shape == (1000, 1, 28, 28)
    assert data.valid_images.shape == (1000, 1, 28, 28)
    assert torch.equal(torch.bincount(data.valid_labels), torch.full((10,), 100))
    assert data.train_images.dtype == torch.uint8
    assert torch.equal(torch.bincount(data.test_labels), torch.full((10,), 100))
    train = {bytes(x.numpy()) for x in data.train_images}
    assert not any(bytes(x.numpy()) in train for x in data.test_images[:200])
    assert (isolated_cache / "datasets" / "mnist5k-v1.npz").is_file()
    again = load_dataset("mnist5k")
    assert torch.equal(again.test_images, data.test_images)


def test_binary_track_test_split_is_fixed_and_training_binarization_is_dynamic(isolated_cache):
    data = load_dataset("digits")
    a, b = data.test_split("binary"), data.test_split("binary")
    assert torch.equal(a, b) and set(a.unique().tolist()) <= {0.0, 1.0}
    x = data.train_images[:200]
    first, second = to_track(x, "binary"), to_track(x, "binary")
    assert not torch.equal(first, second)
    # E[binarized pixel] = intensity / 255
    many = torch.stack([to_track(x, "binary") for _ in range(200)]).mean(0)
    assert torch.allclose(many, x.float() / 255, atol=0.15)


def test_8bit_track_keeps_integer_levels():
    data = load_dataset("digits")
    x = data.test_split("8bit")
    assert x.max() == 255 and torch.equal(x, x.round())
    assert data.image_shape == (1, 8, 8)


@pytest.mark.parametrize("text,kind,amount", [("500steps", "steps", 500), ("90s", "seconds", 90),
                                              ("2min", "seconds", 120), ("3epochs", "epochs", 3),
                                              ("smoke", "steps", 20), ("60s", "seconds", 60)])
def test_budget_forms(text, kind, amount):
    budget = parse_budget(text)
    assert (budget.kind, budget.amount) == (kind, amount)


def test_budget_stops_at_its_amount():
    budget = parse_budget("3epochs")
    assert not budget.exhausted(steps=10, seconds=1e9, epochs=2.9) and budget.exhausted(10, 0, 3.0)


def test_bad_budget_is_a_user_error():
    with pytest.raises(UserError, match="500steps"):
        parse_budget("fast")


def test_binarized_mnist_reads_amat_files(tmp_path, isolated_cache):
    folder = tmp_path / "binarized_mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    arrays = {s: rng.integers(0, 2, size=(n, 784)) for s, n in [("train", 6), ("valid", 3), ("test", 4)]}
    for split, array in arrays.items():
        np.savetxt(folder / f"binarized_mnist_{split}.amat", array, fmt="%d")
    data = load_dataset("binarized-mnist", tmp_path)
    assert torch.equal(data.test_split("binary").flatten(1), torch.from_numpy(arrays["test"]).float())
    assert torch.equal(to_track(data.train_images, "binary").flatten(1), torch.from_numpy(arrays["train"]).float())
    assert torch.equal(data.valid_split("binary").flatten(1), torch.from_numpy(arrays["valid"]).float())
