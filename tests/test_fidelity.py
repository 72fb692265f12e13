"""Sample-quality metrics: torch-fidelity's numbers against independent numpy/scipy computations on the
same classifier features, the classifier cache, small sets, and the whole suite end to end."""
import math
import subprocess
import time
import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import torch

from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

from bench.evaluate import classifier as clf_module
from bench.evaluate import sample_quality as fidelity
from bench.evaluate.classifier import TrainingSpec, load_or_train
from bench.data.datasets import load_dataset
from tests.conftest import PYTHON, REPO, bench_env

TINY = TrainingSpec(epochs=1, min_steps=40, max_steps=40, batch_size=64)  # seconds, about 85-90% accurate


@pytest.fixture(scope="module")
def mnist5k(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCH_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield load_dataset("mnist5k")


@pytest.fixture(scope="module")
def tiny(mnist5k, tmp_path_factory):
    """A quickly trained classifier in a private cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCH_CACHE_DIR", str(tmp_path_factory.mktemp("classifier-cache")))
        yield load_or_train(mnist5k, "cpu", spec=TINY)


def shifted(images, pixels=2):
    return torch.roll(images, shifts=(pixels, pixels), dims=(2, 3))


# --- FID -------------------------------------------------------------------------------------------------
def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dead ReLU units make the covariances singular; sqrtm copes
        covmean = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean))


def test_fid_equals_scipy_frechet_distance(mnist5k, tiny):
    samples, reference = shifted(mnist5k.train_images[:600]), mnist5k.test_images
    values, _ = fidelity.score(samples, reference, tiny)
    fa, _ = fidelity.extract(tiny, samples)
    fb, _ = fidelity.extract(tiny, reference)
    expected = frechet_distance(fa.double().numpy(), fb.double().numpy())
    assert expected > 1.0  # a real distance, so the relative tolerance means something
    assert values["fid"] == pytest.approx(expected, rel=1e-6)


def test_fid_of_a_set_against_itself_is_zero(mnist5k, tiny):
    x = mnist5k.test_images[:500]
    values, _ = fidelity.score(x, x, tiny)
    features, _ = fidelity.extract(tiny, x)
    scale = np.trace(np.cov(features.double().numpy(), rowvar=False))
    assert abs(values["fid"]) < 1e-6 * scale
    assert values["precision"] == 1.0 and values["recall"] == 1.0  # every point lies in its own ball


def test_noise_fid_far_above_real_data(mnist5k, tiny):
    real = fidelity.held_out_images(mnist5k, 1000, "8bit")
    noise = torch.randint(0, 256, (1000, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    data_row, _ = fidelity.score(real, mnist5k.test_images, tiny)
    noise_row, _ = fidelity.score(noise, mnist5k.test_images, tiny)
    assert noise_row["fid"] > 20 * data_row["fid"]
    assert noise_row["kid"] > 20 * data_row["kid"]
    assert data_row["precision"] > 0.5 and data_row["recall"] > 0.5


# --- IS --------------------------------------------------------------------------------------------------
def entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.clip(p, 1e-300, None))).sum(-1)


def test_is_of_test_split_matches_numpy(mnist5k, tiny):
    x = mnist5k.test_images
    values, _ = fidelity.score(x, x, tiny, isc_splits=1)
    _, logits = fidelity.extract(tiny, x)
    p = torch.softmax(logits.double(), 1).numpy()
    marginal_entropy, mean_entropy = entropy(p.mean(0)), entropy(p).mean()
    assert values["is"] == pytest.approx(math.exp(marginal_entropy - mean_entropy), rel=1e-6)
    # Balanced classes: exp(H(mean p)) is about the number of classes; exp(-mean H(p)) is the confidence.
    assert math.exp(marginal_entropy) == pytest.approx(10, rel=0.05)
    assert 0.5 * 10 * math.exp(-mean_entropy) < values["is"] <= 10
    # The default 10 splits of 100 images agree to within a few percent.
    split_values, _ = fidelity.score(x, x, tiny)
    assert split_values["is"] == pytest.approx(values["is"], rel=0.1)


def test_is_of_one_repeated_image_is_one(mnist5k, tiny):
    same = mnist5k.test_images[:1].repeat(300, 1, 1, 1)
    values, _ = fidelity.score(same, mnist5k.test_images, tiny)
    assert values["is"] == pytest.approx(1.0, abs=1e-9)


# --- KID -------------------------------------------------------------------------------------------------
def unbiased_mmd2_poly(x: np.ndarray, y: np.ndarray) -> float:
    d, m, n = x.shape[1], len(x), len(y)
    kernel = lambda a, b: (a @ b.T / d + 1.0) ** 3  # noqa: E731 - torch-fidelity's default kernel
    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    off = lambda k: k.sum() - np.trace(k)  # noqa: E731
    return float(off(kxx) / (m * (m - 1)) + off(kyy) / (n * (n - 1)) - 2 * kxy.mean())


def test_kid_equals_numpy_unbiased_mmd(mnist5k, tiny):
    samples, reference = shifted(mnist5k.train_images[:500]), mnist5k.test_images[:500]
    values, _ = fidelity.score(samples, reference, tiny)  # subset size 500 = both sets: one exact subset
    assert values["kid_subsets"] == 1 and values["kid_subset_size"] == 500
    fa, _ = fidelity.extract(tiny, samples)
    fb, _ = fidelity.extract(tiny, reference)
    expected = unbiased_mmd2_poly(fa.double().numpy(), fb.double().numpy())
    assert expected > 0
    assert values["kid"] == pytest.approx(expected, rel=1e-4)  # torch-fidelity sums float32 kernels


def test_features_are_extracted_once_for_all_metrics(mnist5k, tiny, monkeypatch):
    seen = []
    forward = fidelity.ClassifierFeatureExtractor.forward
    monkeypatch.setattr(fidelity.ClassifierFeatureExtractor, "forward",
                        lambda self, images: seen.append(len(images)) or forward(self, images))
    fidelity.score(mnist5k.train_images[:300], mnist5k.test_images[:400], tiny)
    assert sum(seen) == 300 + 400  # one pass over each set, shared by FID, KID, IS and precision/recall


# --- small sets, notes ------------------------------------------------------------------------------------
def test_small_sets_adapt_kid_subset_and_say_so(mnist5k, tiny):
    values, notes = fidelity.score(mnist5k.train_images[:200], mnist5k.test_images, tiny)
    assert values["kid_subset_size"] == 200 and values["kid_subsets"] == 100
    assert any("KID subset size lowered from 1000 to 200" in n for n in notes)
    assert any("IS over 2 split(s)" in n for n in notes)
    assert all(math.isfinite(values[k]) for k in ("fid", "kid", "is", "precision", "recall"))


def test_bad_input_names_the_problem(mnist5k, tiny):
    with pytest.raises(TypeError, match="uint8"):
        fidelity.score(mnist5k.test_images.float(), mnist5k.test_images, tiny)
    with pytest.raises(ValueError, match="shape"):
        fidelity.score(torch.zeros(10, 1, 8, 8, dtype=torch.uint8), mnist5k.test_images, tiny)


def real_images_of(data, labels):
    """Test images of the given classes, in turn: what a perfect conditional model would draw."""
    pools = [data.test_images[data.test_labels == k] for k in range(10)]
    return torch.stack([pools[int(y)][i % len(pools[int(y)])] for i, y in enumerate(labels)])


def test_model_rows_for_a_conditional_model(mnist5k, tiny, monkeypatch, tmp_path):
    """The worker hook: rows with notes, a class_accuracy row, and the small-set note on the job. The job
    carries the run's classifier (here the tiny one), as the driver ships it."""

    class Oracle(torch.nn.Module):
        conditional, num_classes, track, name = True, 10, "8bit", "oracle"

        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))

        def sample(self, n, labels):
            return real_images_of(mnist5k, labels).float() / 255

    job = SimpleNamespace(fidelity_samples=200, seed=0, out=str(tmp_path), progress=False,
                          classifier_file=str(tiny.path), classifier_digest=tiny.weights_digest)
    outcome = SimpleNamespace(notes=[], info={})
    rows = fidelity.model_rows(Oracle(), mnist5k, torch.device("cpu"), job, outcome)
    by_metric = {r["metric"]: r for r in rows}
    assert set(by_metric) == {"fid", "kid", "is", "precision", "recall", "class_accuracy", "fid_inf",
                              "copy_rate", "density", "coverage", "intra_fid", "fid_wide"}, outcome.notes
    assert "200 samples" in by_metric["fid"]["note"] and "test images" in by_metric["fid"]["note"]
    for metric in ("fid", "kid", "precision", "recall", "density", "coverage"):  # bootstrap intervals around them
        assert by_metric[metric]["ci_low"] <= by_metric[metric]["value"] <= by_metric[metric]["ci_high"]
    assert [c["check"] for c in outcome.info["checks"]] == ["fid_recompute"] and outcome.info["checks"][0]["passed"]
    # The labels asked for are 0, 1, ..., 9 in turn; the classifier's verdict on those real images is the answer.
    labels = torch.arange(200) % 10
    predicted = clf_module.predict_logits(tiny.model, real_images_of(mnist5k, labels)).argmax(1)
    assert by_metric["class_accuracy"]["value"] == pytest.approx((predicted == labels).double().mean().item())
    assert any("KID subset size lowered" in n for n in outcome.notes)
    # Intra-class FID: the mean of per-class FIDs, each recomputed by torch-fidelity from the stored features.
    features = np.load(tmp_path / "features" / "oracle__mnist5k__seed0.npz")
    per_class = []
    for c in range(10):
        a = features["samples"][labels.numpy() == c]
        b = features["reference"][mnist5k.test_labels.numpy() == c]
        stats = [fid_features_to_statistics(torch.from_numpy(f).double()) for f in (a, b)]
        per_class.append(fid_statistics_to_metric(*stats, verbose=False)["frechet_inception_distance"])
    assert by_metric["intra_fid"]["value"] == pytest.approx(np.mean(per_class), rel=1e-5)
    assert by_metric["intra_fid"]["value"] > by_metric["fid"]["value"]  # ~20 points per class: a larger bias
    # The second feature space: torch-fidelity's FID of the wide encoder's features of the same images.
    second = clf_module.second_for_dataset(mnist5k)
    wide = [fidelity.extract(second, images)[0].double()
            for images in (real_images_of(mnist5k, labels), fidelity.reference_images(mnist5k, "8bit"))]
    expected = fid_statistics_to_metric(*map(fid_features_to_statistics, wide), verbose=False)
    assert by_metric["fid_wide"]["value"] == pytest.approx(expected["frechet_inception_distance"], rel=1e-5)
    assert by_metric["fid_wide"]["value"] != pytest.approx(by_metric["fid"]["value"], rel=1e-3)  # another space


def test_unlabelled_dataset_is_skipped_with_a_note(mnist5k):
    unlabelled = SimpleNamespace(name="binarized-mnist", num_classes=0, train_labels=torch.full((5,), -1))
    outcome = SimpleNamespace(notes=[], info={})
    assert fidelity.model_rows(None, unlabelled, "cpu", None, outcome) == []
    assert "no class labels" in outcome.notes[0]
    config = {}
    assert fidelity.prepare_run(config, unlabelled, "cpu", "unused", False) == []
    assert "no class labels" in config["fidelity_skipped"]


# --- the classifier cache --------------------------------------------------------------------------------
def test_cache_reuses_and_retrains_when_the_definition_changes(mnist5k, monkeypatch, tmp_path):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))
    calls = []
    real_fit = clf_module.fit
    monkeypatch.setattr(clf_module, "fit", lambda *a, **k: calls.append(1) or real_fit(*a, **k))
    spec = TrainingSpec(epochs=1, min_steps=5, max_steps=5, batch_size=32)

    first = load_or_train(mnist5k, "cpu", spec=spec)
    mtime = first.path.stat().st_mtime_ns
    second = load_or_train(mnist5k, "cpu", spec=spec)
    assert len(calls) == 1 and first.trained_now and not second.trained_now
    assert first.path.stat().st_mtime_ns == mtime
    assert second.weights_digest == first.weights_digest and second.test_accuracy == first.test_accuracy
    assert 0.0 <= first.test_accuracy <= 1.0

    other_spec = load_or_train(mnist5k, "cpu", spec=TrainingSpec(epochs=1, min_steps=5, max_steps=5, batch_size=32,
                                                                   seed=1))
    assert len(calls) == 2 and other_spec.trained_now and other_spec.path != first.path

    def other_code():  # a change to the classifier's code changes the hash
        pass
    monkeypatch.setattr(clf_module, "DEFINITION", clf_module.DEFINITION + (other_code,))
    changed = load_or_train(mnist5k, "cpu", spec=spec)
    assert len(calls) == 3 and changed.trained_now and changed.definition_hash != first.definition_hash
    assert fidelity.extractor_name(changed) != fidelity.extractor_name(first)


def test_digits_classifier_works_at_8x8(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path))
    digits = load_dataset("digits")
    classifier = load_or_train(digits, "cpu", spec=TrainingSpec(epochs=1, min_steps=60, max_steps=60))
    assert classifier.test_accuracy > 0.5
    values, notes = fidelity.score(digits.train_images[:360], digits.test_images, classifier)
    assert math.isfinite(values["fid"]) and any("KID subset size lowered" in n for n in notes)


# --- end to end --------------------------------------------------------------------------------------------
def test_suite_scores_uniform_noise_far_below_a_trained_model(tmp_path):
    """`bench run` with the noise plugin: fid/kid/is/precision/recall rows for every model and for the data
    rows, and the noise model far worse than the data row of its track. On the 8x8 digits to stay fast."""
    out = tmp_path / "run"
    env = bench_env(GENBENCH_PLUGINS="tests.plugins.noise_model", BENCH_CACHE_DIR=str(tmp_path / "cache"))
    start = time.perf_counter()
    proc = subprocess.run([PYTHON, "-m", "bench", "run", "--models", "fvsbn,uniform-noise", "--dataset", "digits",
                           "--budget", "smoke", "--out", str(out), "--no-progress", "--throughput-cap", "2"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = pd.read_csv(out / "metrics.csv")
    quality = metrics[metrics.metric.isin(["fid", "kid", "is", "precision", "recall"])]
    for model in ("fvsbn", "uniform-noise", "data"):
        assert set(quality[quality.model == model].metric) == {"fid", "kid", "is", "precision", "recall"}, model
    assert set(quality[quality.model == "data"].track) == {"binary", "8bit"}  # one data row per track
    fid = quality[quality.metric == "fid"].set_index(["model", "track"])["value"]
    assert fid[("uniform-noise", "8bit")] > 10 * fid[("data", "8bit")]
    assert fid[("uniform-noise", "8bit")] > fid[("fvsbn", "binary")]  # even 20 steps of training beat noise
    # smoke evaluates 200 samples (the preset's evaluation size) against all 360 test images
    assert quality.note.str.contains("200 samples|200 real held-out validation images").all()
    assert quality[quality.metric == "fid"].note.str.contains("vs 360").all()
    config = pd.read_json(out / "config.json", typ="series")
    assert 0.5 < config["classifier_accuracy"] <= 1.0 and config["fidelity_reference_split"] == "test"
    print(f"bench run (digits, fvsbn + uniform-noise, smoke): {seconds:.1f}s")


def test_a_shipped_classifier_is_checked_against_the_runs_digest(mnist5k, tiny, tmp_path):
    """Every model of a run is scored by the driver's classifier: a worker's copy must match its digest."""
    from bench.evaluate.classifier import ClassifierMismatch, load_shipped

    shipped = load_shipped(tiny.path, tiny.weights_digest)
    assert shipped.weights_digest == tiny.weights_digest
    for a, b in zip(shipped.model.state_dict().values(), tiny.model.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ClassifierMismatch, match="one classifier"):
        load_shipped(tiny.path, "0" * 12)
    payload = torch.load(tiny.path, weights_only=False)
    first = next(iter(payload["state_dict"]))
    payload["state_dict"][first] = payload["state_dict"][first] + 1  # another classifier under the same digest
    altered = tmp_path / "altered.pt"
    torch.save(payload, altered)
    with pytest.raises(ClassifierMismatch):
        load_shipped(altered, tiny.weights_digest)


def test_a_classifier_mismatch_fails_the_job_instead_of_scoring_it(mnist5k, tiny, tmp_path):
    job = SimpleNamespace(fidelity_samples=50, seed=0, out=str(tmp_path), progress=False,
                          classifier_file=str(tiny.path), classifier_digest="0" * 12)
    model = SimpleNamespace(track="8bit", conditional=False, name="m")
    with pytest.raises(clf_module.ClassifierMismatch):
        fidelity.model_rows(model, mnist5k, torch.device("cpu"), job, SimpleNamespace(notes=[], info={}))
