"""cifar10: read from torchvision's folder layout, digests checked, split, labelled when not the real data."""
import hashlib
import pickle

import numpy as np
import pytest
import torch

from bench.config.errors import DatasetError, UserError
from bench.data import datasets
from bench.data.datasets import SPLIT_SIZES, load_dataset
from tests.conftest import write_cifar10_folder


def test_a_folder_in_cifar10_format_loads_labelled_as_not_the_real_cifar10(cifar10_root):
    data = load_dataset("cifar10", cifar10_root)
    assert data.image_shape == (3, 32, 32) and data.train_images.dtype == torch.uint8
    assert data.train_labels.dtype == torch.int64 and data.num_classes == 10
    # 5 x 60 training images, 10% of them (stratified) for validation; the test batch whole
    assert data.sizes == {"train": 270, "valid": 30, "test": 40}
    assert torch.equal(torch.bincount(data.valid_labels, minlength=10), torch.full((10,), 3))
    for images, labels in ((data.train_images, data.train_labels), (data.valid_images, data.valid_labels),
                           (data.test_images, data.test_labels)):
        assert torch.equal(images[:, 0, 0, 0].long(), 25 * labels)  # each image kept its own label
        assert torch.equal(images[:, 1, :, 0], (7 * torch.arange(32)).expand(len(images), -1).to(torch.uint8))
        assert torch.equal(images[:, 2, 0, :], (7 * torch.arange(32)).expand(len(images), -1).to(torch.uint8))
    assert data.verified is False and data.description.startswith("NOT the real CIFAR-10")
    assert "data_batch_1" in data.description and "test_batch" in data.description
    assert data.tracks == ("8bit",) and torch.equal(data.test_split("8bit"), data.test_images.float())
    for split in (data.test_split, data.valid_split):
        with pytest.raises(UserError, match="no binary track"):
            split("binary")


def test_the_published_digests_make_it_the_real_cifar10(cifar10_root, monkeypatch):
    folder = cifar10_root / "cifar-10-batches-py"
    digests = {name: hashlib.md5((folder / name).read_bytes()).hexdigest() for name in datasets.CIFAR10_MD5}
    monkeypatch.setattr(datasets, "CIFAR10_MD5", digests)
    data = load_dataset("cifar10", cifar10_root)
    assert data.verified is True and data.description.startswith("CIFAR-10 (every file matches")
    assert "NOT" not in data.description
    train, valid, test = SPLIT_SIZES["cifar10"]
    assert (train, valid, test) == (45000, 5000, 10000)
    assert data.sizes["valid"] * train == data.sizes["train"] * valid  # the real split's proportions


def test_the_digest_table_is_torchvisions():
    from torchvision.datasets import CIFAR10

    assert datasets.CIFAR10_MD5 == dict(CIFAR10.train_list + CIFAR10.test_list)


def _pickle(entry) -> bytes:
    return pickle.dumps(entry, protocol=2)


@pytest.mark.parametrize("name,content,what", [
    ("data_batch_3", b"not a pickle at all", "not a readable"),
    ("data_batch_2", _pickle({b"pixels": np.zeros((60, 3072), np.uint8), b"labels": [0] * 60}), "no data entry"),
    ("test_batch", _pickle({b"data": np.zeros((40, 1024), np.uint8), b"labels": [0] * 40}), "3072 uint8"),
    ("data_batch_5", _pickle({b"data": np.zeros((60, 3072), np.uint8), b"labels": [11] * 60}), "labels in 0..9"),
    ("data_batch_1", _pickle({b"data": np.zeros((60, 3072), np.uint8), b"labels": [0] * 59}), "59 labels"),
    ("batches.meta", _pickle({b"label_names": [b"a", b"b"]}), "names 2 classes"),
    # a pickle that would run code (any global but numpy's arrays) is refused, not executed
    ("data_batch_4", b"cos\nsystem\n(S'echo owned'\ntR.", "refusing to load os.system"),
])
def test_a_corrupt_file_is_a_dataset_error_naming_it(cifar10_root, name, content, what):
    (cifar10_root / "cifar-10-batches-py" / name).write_bytes(content)
    with pytest.raises(DatasetError, match=what) as info:
        load_dataset("cifar10", cifar10_root)
    assert name in str(info.value) and "\n" not in str(info.value)


def test_a_missing_file_or_folder_is_a_dataset_error_saying_where_to_put_it(cifar10_root, tmp_path):
    (cifar10_root / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DatasetError, match="missing .*test_batch.*--data-root / BENCH_DATA_ROOT"):
        load_dataset("cifar10", cifar10_root)
    with pytest.raises(DatasetError, match="missing .*cifar-10-batches-py.*data_batch_1"):
        load_dataset("cifar10", tmp_path / "empty")


def test_too_few_images_to_stratify_is_a_dataset_error(tmp_path, isolated_cache):
    root = write_cifar10_folder(tmp_path, n_train=4, n_test=4)
    with pytest.raises(DatasetError, match="too few training images"):
        load_dataset("cifar10", root)


def test_the_colour_classifier_is_trained_without_binarization(cifar10_root, monkeypatch):
    from bench.evaluate import classifier as clf

    data = load_dataset("cifar10", cifar10_root)
    assert clf.default_spec(data).binarize_prob == 0.0
    assert clf.default_spec(load_dataset("digits")) is clf.DEFAULT_SPEC
    monkeypatch.setattr(clf, "DEFAULT_SPEC", clf.TrainingSpec(epochs=1, min_steps=3, max_steps=3, batch_size=16))
    trained = clf.load_or_train(data)
    assert trained.model.image_shape == (3, 32, 32) and trained.test_accuracy_binarized is None
    features, logits = trained.model.features_and_logits(data.test_images[:5])
    assert features.shape == (5, clf.FEATURE_DIM) and logits.shape == (5, 10)
    # augment, as training calls it, keeps colour images colour: a zero shift is the identity
    still = clf.augment(data.train_images[:4], clf.TrainingSpec(max_shift=0.0, binarize_prob=0.0),
                        torch.Generator().manual_seed(0))
    assert torch.allclose(still, data.train_images[:4].float(), atol=1e-3)


# --- `bench run --all` on a colour dataset: the models it cannot feed are skipped, with the reason --------
@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors on a busy 2-core machine: one thread is much the faster
    yield
    torch.set_num_threads(before)


def test_check_tracks_skips_with_all_and_refuses_a_named_model(cifar10_root):
    from bench.suite import check_tracks

    data = load_dataset("cifar10", cifar10_root)
    runnable, skipped = check_tracks(["fvsbn", "realnvp", "made", "cgan"], data, skip=True)
    assert runnable == ["realnvp", "cgan"]
    assert skipped == {"fvsbn": "a binary-track model; cifar10 offers only the 8bit track",
                       "made": "a binary-track model; cifar10 offers only the 8bit track"}
    assert check_tracks(["realnvp"], data) == (["realnvp"], {})
    with pytest.raises(UserError, match="models fvsbn, made need the binary track, which dataset 'cifar10'.*--all skips such models"):
        check_tracks(["fvsbn", "realnvp", "made"], data)
    with pytest.raises(UserError, match="no model of this run can model dataset 'cifar10'"):
        check_tracks(["fvsbn"], data, skip=True)


def test_all_reaches_run_suite_as_skip_and_models_as_refuse(monkeypatch, tmp_path):
    import bench.api as gb
    import models
    from bench import suite
    from bench.cli import main

    calls = []

    def fake_run_suite(run, skip_unsupported=False):
        calls.append((run.models, skip_unsupported))
        return tmp_path, []

    monkeypatch.setattr(suite, "run_suite", fake_run_suite)
    assert main(["run", "--all", "--dataset", "cifar10", "--budget", "smoke", "--no-scaling"]) == 0
    assert main(["run", "--models", "fvsbn,ddpm", "--dataset", "cifar10", "--budget", "smoke"]) == 0
    assert calls == [(tuple(models.names()), True), (("fvsbn", "ddpm"), False)]
    monkeypatch.setattr(gb, "load", lambda folder: type("Run", (), {"metrics": __import__("pandas").DataFrame()}))
    gb.run("all", dataset="cifar10")
    gb.run(["fvsbn"], dataset="cifar10")
    assert [skip for _, skip in calls[2:]] == [True, False]


def test_a_run_of_all_on_cifar10_skips_the_binary_models_and_says_why(cifar10_root, tmp_path, monkeypatch,
                                                                        capsys, one_thread):
    import json

    from PIL import Image

    from bench.config.run_config import RunConfig
    from bench.evaluate import classifier as clf
    from bench.suite import run_suite

    monkeypatch.setattr(clf, "DEFAULT_SPEC", clf.TrainingSpec(epochs=1, min_steps=5, max_steps=5, batch_size=32))
    out = tmp_path / "run"
    run = RunConfig(models=("fvsbn", "cgan", "realnvp", "ebm"), dataset="cifar10", data_root=str(cifar10_root),
                    budget="2steps", out=str(out), isolate=False, scaling=False, progress=False, eval_size=20,
                    fidelity_samples=20, throughput_cap_s=0.5,
                    model_args={"ebm": {"batch_size": 8, "train_langevin_steps": 3, "sampling_steps": 5}})
    _, outcomes = run_suite(run, skip_unsupported=True)  # what `bench run --all` does
    assert "skipped fvsbn: a binary-track model; cifar10 offers only the 8bit track" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["models"] == ["cgan", "realnvp", "ebm"] and list(config["skipped"]) == ["fvsbn"]
    assert config["dataset_verified"] is False and config["image_shape"] == [3, 32, 32]
    jobs = {o["job"]["model"]: o for o in outcomes}
    assert {m: o["status"] for m, o in jobs.items() if m != "data"} == {"cgan": "ok", "realnvp": "ok", "ebm": "ok"}
    for model in ("cgan", "realnvp", "ebm"):
        metrics = {r["metric"] for r in jobs[model]["rows"]}
        assert {"fid", "copy_rate"} <= metrics, (model, jobs[model]["notes"])
        with Image.open(out / jobs[model]["info"]["sample_grid"]) as grid:
            assert grid.mode == "RGB"
    assert "test_bpd" in {r["metric"] for r in jobs["realnvp"]["rows"]}
    assert any(r.get("steps") for r in jobs["ebm"]["rows"])  # the steps curve on colour samples
    report = (out / "report.md").read_text()
    assert "skipped fvsbn: a binary-track model; cifar10 offers only the 8bit track" in report
    assert "NOT the real CIFAR-10" in report
