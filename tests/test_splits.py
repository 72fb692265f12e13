"""Splits: models and the evaluation classifier train on the train split only; the validation split is
disjoint from train and test; the ``data`` row scores validation images, which nothing trained on."""
import numpy as np
import pytest
import torch

from bench.evaluate import classifier as classifier_module
from bench.evaluate import sample_quality as fidelity
from bench.run import runner
from bench.evaluate.classifier import TrainingSpec, load_or_train
from bench.data.datasets import SPLIT_SIZES, dataset_summaries, load_dataset

SMALL = ["mnist5k", "digits"]  # the datasets that need no files


def rows(images: torch.Tensor) -> set[bytes]:
    return {bytes(x.numpy()) for x in images}


@pytest.mark.parametrize("name", SMALL)
def test_validation_is_disjoint_from_train_and_test(name):
    data = load_dataset(name)
    assert tuple(data.sizes.values()) == SPLIT_SIZES[name]
    train_idx, valid_idx = set(data.train_source_index.tolist()), set(data.valid_source_index.tolist())
    assert not train_idx & valid_idx  # by index into the original training set
    assert len(train_idx | valid_idx) == len(data.train_images) + len(data.valid_images)
    assert not rows(data.valid_images) & rows(data.test_images)  # test images are another set altogether


def test_binarized_mnist_uses_its_own_validation_file(tmp_path, isolated_cache):
    folder = tmp_path / "binarized_mnist"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for split, n in [("train", 5), ("valid", 4), ("test", 3)]:
        np.savetxt(folder / f"binarized_mnist_{split}.amat", rng.integers(0, 2, size=(n, 784)), fmt="%d")
    data = load_dataset("binarized-mnist", tmp_path)
    assert data.sizes == {"train": 5, "valid": 4, "test": 3}


def test_bench_list_names_the_split_sizes():
    for name, summary in dataset_summaries().items():
        train, valid, test = SPLIT_SIZES[name]
        assert f"{valid:,} validation" in summary and f"{train:,} train" in summary, name


@pytest.mark.parametrize("name", SMALL)
def test_data_row_images_were_never_trained_on(name, isolated_cache, monkeypatch, tmp_path):
    data = load_dataset(name)
    seen = {}

    def recording_fit(model, images, labels, *args, **kwargs):
        seen["classifier"] = images.clone()
        return original_fit(model, images, labels, *args, **kwargs)

    class Stop(Exception):
        pass

    def recording_train(model, images, *args, **kwargs):
        seen["model"] = images.clone()
        raise Stop

    original_fit = classifier_module.fit
    monkeypatch.setattr(classifier_module, "fit", recording_fit)
    monkeypatch.setattr(runner, "train", recording_train)
    load_or_train(data, "cpu", spec=TrainingSpec(epochs=1, min_steps=2, max_steps=2))
    runner.run_job(runner.Job("fvsbn", name, 0, "1steps", "cpu", str(tmp_path), progress=False))
    held_out = fidelity.held_out_images(data, 10_000, "8bit")
    assert len(held_out) == len(data.valid_images)
    assert len(seen["classifier"]) == len(data.train_images) and len(seen["model"]) == len(data.train_images)
    assert not rows(held_out) & rows(seen["classifier"])
    assert not rows(held_out) & rows(seen["model"])
    binary_pick = fidelity.held_out_indices(data, 10_000)
    assert set(binary_pick.tolist()) <= set(range(len(data.valid_images)))  # binary track: the same images


def test_binarized_mnist_borrows_the_mnist_classifier_only_when_mnist_is_there(tmp_path, isolated_cache):
    folder = tmp_path / "binarized_mnist"
    folder.mkdir()
    for split, n in [("train", 5), ("valid", 4), ("test", 3)]:
        np.savetxt(folder / f"binarized_mnist_{split}.amat", np.zeros((n, 784), dtype=int), fmt="%d")
    data = load_dataset("binarized-mnist", tmp_path)
    assert fidelity.classifier_data(data, tmp_path) is None  # no MNIST files under this root: no sample quality
    mnist5k = load_dataset("mnist5k")
    assert fidelity.classifier_data(mnist5k) is mnist5k  # a labelled dataset uses its own
