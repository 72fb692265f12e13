"""Sample quality that reproduces: the shipped mnist5k classifier, deterministic training for the rest,
``--classifier FILE``, and comparisons that know which classifier scored them."""
import json
import shutil
import subprocess
import textwrap

import pandas as pd
import pytest
import torch

from bench.evaluate import classifier as clf
from bench.results import compare
from bench.cli import main
from bench.data.datasets import load_dataset
from bench.config.errors import UserError
from tests.conftest import PYTHON, REPO, bench_env
from tests.test_compare import BASE_VALUES, write_run

QUALITY = ["fid", "kid", "is", "precision", "recall"]


# --- the shipped classifier ---------------------------------------------------------------------------------
def test_the_shipped_classifier_is_the_pinned_file():
    pinned = clf.PINNED["mnist5k"]
    assert clf.file_sha256(pinned.path) == pinned.sha256
    shipped = clf.load_pinned("mnist5k")
    assert shipped.source == "shipped" and shipped.dataset == "mnist5k"
    assert clf.weights_digest(shipped.model.state_dict()) == shipped.weights_digest
    assert shipped.test_accuracy > 0.95  # what `bench classifier` measured when it wrote the file


def test_the_shipped_classifier_is_what_todays_code_would_train():
    """The file's definition hash is today's (network, augmentation, training loop, spec, data): a change to
    any of them must come with a retrained file (`python -m bench classifier --dataset mnist5k --out ...`)."""
    data = load_dataset("mnist5k")
    shipped = clf.load_pinned("mnist5k")
    assert shipped.definition_hash == clf.definition_hash(data, clf.DEFAULT_SPEC)
    assert clf.for_dataset(data).weights_digest == shipped.weights_digest  # a run of mnist5k scores with it


def test_the_second_feature_spaces_encoder_is_pinned_and_what_todays_code_would_train():
    """fid_wide's encoder: shipped, SHA-256 checked, another network (twice as wide) from another seed, so its
    weights are not the first's; its definition hash is what `bench classifier --second` trains today."""
    data = load_dataset("mnist5k")
    pinned = clf.PINNED_SECOND["mnist5k"]
    assert clf.file_sha256(pinned.path) == pinned.sha256
    second = clf.second_for_dataset(data)
    assert second.source == "shipped" and second.test_accuracy > 0.95
    assert second.definition_hash == clf.definition_hash(data, clf.second_spec(data), clf.SECOND_ARCH)
    assert second.model.convs[0].out_channels == 2 * clf.load_pinned("mnist5k").model.convs[0].out_channels
    assert second.weights_digest != clf.load_pinned("mnist5k").weights_digest


def test_a_changed_byte_in_the_shipped_classifier_is_refused(tmp_path, monkeypatch):
    copy = tmp_path / clf.PINNED["mnist5k"].file
    shutil.copy(clf.PINNED["mnist5k"].path, copy)
    monkeypatch.setattr(clf, "ASSETS", tmp_path)
    assert clf.load_pinned("mnist5k").weights_digest  # the intact copy loads
    raw = bytearray(copy.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    copy.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="SHA-256 .* not the pinned .*git checkout"):
        clf.load_pinned("mnist5k")
    copy.unlink()
    with pytest.raises(UserError, match="is missing"):
        clf.load_pinned("mnist5k")


# --- deterministic training ---------------------------------------------------------------------------------
TRAIN_IN_A_FRESH_PROCESS = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(int(sys.argv[1]))  # the caller's thread count must not matter
    torch.manual_seed(int(sys.argv[2]))      # nor its random state
    from bench.evaluate import classifier as clf
    from bench.data.datasets import load_dataset
    spec = clf.TrainingSpec(epochs=1, min_steps=30, max_steps=30, batch_size=64)
    trained = clf.load_or_train(load_dataset("digits"), "cpu", spec=spec)
    print(trained.weights_digest, trained.source, torch.get_num_threads())
""")


def test_training_twice_in_fresh_processes_and_caches_gives_identical_weights(tmp_path):
    procs = [subprocess.Popen([PYTHON, "-c", TRAIN_IN_A_FRESH_PROCESS, str(threads), str(seed)], cwd=REPO,
                              env=bench_env(BENCH_CACHE_DIR=str(tmp_path / f"cache{i}")), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for i, (threads, seed) in enumerate([(1, 0), (2, 123)])]
    digests = []
    for proc, threads in zip(procs, (1, 2)):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        digest, source, threads_after = out.split()
        assert source == "trained" and int(threads_after) == threads  # the caller's threads restored
        digests.append(digest)
    assert digests[0] == digests[1]


def test_training_leaves_the_callers_random_state_and_threads_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    threads = torch.get_num_threads()
    data = load_dataset("digits")
    clf.fit({"image_shape": data.image_shape, "num_classes": 10}, data.train_images[:64], data.train_labels[:64],
            clf.TrainingSpec(epochs=1, min_steps=2, max_steps=2, batch_size=32))
    assert torch.equal(torch.rand(3), expected) and torch.get_num_threads() == threads


# --- --classifier FILE ---------------------------------------------------------------------------------------
def test_bench_classifier_writes_a_file_that_classifier_flag_loads(tmp_path, capsys):
    out = tmp_path / "digits.pt"
    assert main(["classifier", "--dataset", "digits", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    data = load_dataset("digits")
    loaded = clf.for_dataset(data, classifier_file=out)
    assert loaded.source == "file" and loaded.weights_digest in printed and clf.file_sha256(out) in printed
    with pytest.raises(UserError, match="shape"):  # a digits classifier cannot score 28x28 images
        clf.for_dataset(load_dataset("mnist5k"), classifier_file=out)
    code = main(["run", "--models", "fvsbn", "--budget", "smoke", "--out", str(tmp_path / "run"),
                 "--classifier", str(out), "--no-progress"])
    assert code == 2 and "give a classifier for this dataset" in capsys.readouterr().err


# --- two fresh caches, one score -------------------------------------------------------------------------------
def test_two_fresh_cache_smoke_runs_give_identical_sample_quality(tmp_path):
    """What a new user and a CI runner see: an empty BENCH_CACHE_DIR each, the same FID, KID, IS, precision
    and recall, to the last digit (the two runs go side by side, one per core)."""
    procs = []
    for name in ("first", "second"):
        env = bench_env(BENCH_CACHE_DIR=str(tmp_path / f"cache-{name}"))
        procs.append(subprocess.Popen(
            [PYTHON, "-m", "bench", "run", "--models", "fvsbn", "--budget", "smoke", "--out", str(tmp_path / name),
             "--no-progress", "--no-scaling", "--throughput-cap", "1", "--eval-size", "100"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out
    scores = []
    for name in ("first", "second"):
        metrics = pd.read_csv(tmp_path / name / "metrics.csv")
        quality = metrics[metrics.metric.isin(QUALITY)].set_index(["model", "track", "metric"])["value"]
        assert set(quality.index.get_level_values("model")) == {"fvsbn", "data"}
        config = json.loads((tmp_path / name / "config.json").read_text())
        assert config["classifier_source"].startswith("shipped")
        scores.append((quality.sort_index(), config["classifier_weights_digest"]))
    pd.testing.assert_series_equal(scores[0][0], scores[1][0], check_exact=True)
    assert scores[0][1] == scores[1][1] == clf.load_pinned("mnist5k").weights_digest


# --- compare across classifiers ---------------------------------------------------------------------------------
def scored(digest: str) -> dict:
    return {"classifier_weights_digest": digest, "classifier_source": "trained on this machine",
            "classifier_path": f"/cache/{digest}.pt"}


def test_compare_refuses_sample_quality_scored_by_two_classifiers(tmp_path, capsys):
    values = {m: {**v, "fid": 12.0, "kid": 0.3} for m, v in BASE_VALUES.items()}
    base = compare.write_baseline(write_run(tmp_path / "base", values, config_changes=scored("aaaaaaaaaaaa")),
                                  tmp_path / "base.json")
    assert json.loads(base.read_text())["classifier"]["classifier_weights_digest"] == "aaaaaaaaaaaa"
    slower = {m: {**v, "fid": 99.0, "test_bpd": v["test_bpd"] * 1.5} for m, v in values.items()}
    run = write_run(tmp_path / "now", slower, config_changes=scored("bbbbbbbbbbbb"))

    assert main(["compare", str(run), "--baseline", str(base)]) == 2
    err = capsys.readouterr().err
    assert "aaaaaaaaaaaa" in err and "bbbbbbbbbbbb" in err and "--classifier /cache/aaaaaaaaaaaa.pt" in err
    assert "Traceback" not in err

    # Likelihood and speed still compare: the worse bits/dim is caught, FID is left out.
    assert main(["compare", str(run), "--baseline", str(base), "--no-sample-quality"]) == 1
    out = capsys.readouterr().out
    assert "test_bpd" in out and "fid" not in out and "kid" not in out

    same = write_run(tmp_path / "same", values, config_changes=scored("aaaaaaaaaaaa"))
    assert main(["compare", str(same), "--baseline", str(base)]) == 0


def test_a_baseline_names_the_shipped_classifier_by_its_path_in_the_repository(tmp_path):
    config = scored("cccccccccccc")
    config["classifier_path"] = str(clf.PINNED["mnist5k"].path)
    base = compare.write_baseline(write_run(tmp_path / "base", BASE_VALUES, config_changes=config),
                                  tmp_path / "base.json")
    assert json.loads(base.read_text())["classifier"]["classifier_path"] == "bench/assets/classifier-mnist5k.pt"


def test_the_committed_baseline_was_scored_by_the_shipped_classifier():
    baseline = json.loads((REPO / "results" / "baselines" / "smoke-cpu.json").read_text())
    assert baseline["classifier"]["classifier_weights_digest"] == clf.load_pinned("mnist5k").weights_digest


def test_evaluate_rescores_with_a_classifier_file_and_later_runs_keep_it(tmp_path):
    """`bench evaluate RUN --classifier F` rescores every model with F (the config names F's digest, the FID
    moves); a later `bench run` on the folder keeps F instead of refusing the folder's classifier."""
    data = load_dataset("digits")
    other, _ = clf.train_payload(data, clf.TrainingSpec(epochs=1, min_steps=20, max_steps=20, seed=1))
    clf.save_payload(other, tmp_path / "other.pt")
    env = bench_env(BENCH_CACHE_DIR=str(tmp_path / "cache"))
    out = tmp_path / "run"
    run = [PYTHON, "-m", "bench", "run", "--models", "fvsbn", "--dataset", "digits", "--budget", "smoke", "--out",
           str(out), "--no-progress", "--no-scaling", "--throughput-cap", "1"]

    def bench(args):
        proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        metrics = pd.read_csv(out / "metrics.csv")
        fid = metrics[(metrics.model == "fvsbn") & (metrics.metric == "fid")]["value"].item()
        return fid, json.loads((out / "config.json").read_text())

    fid_before, config = bench(run)
    assert config["classifier_weights_digest"] != other["weights_digest"]
    fid_after, config = bench([PYTHON, "-m", "bench", "evaluate", str(out), "--classifier", str(tmp_path / "other.pt"),
                               "--no-progress"])
    assert config["classifier_weights_digest"] == other["weights_digest"] and fid_after != fid_before
    assert config["classifier_source"].startswith("--classifier")
    _, config = bench(run)  # no --classifier: the folder's stays, and the finished job is kept
    assert config["classifier_weights_digest"] == other["weights_digest"]
    assert config["invocations"][-1]["kept"] == ["fvsbn__digits__seed0"]


def test_evaluate_refuses_a_classifier_for_some_models_only(tmp_path, capsys):
    """One table, one classifier: rescoring a subset would mix two classifiers' figures."""
    out = tmp_path / "run"
    (out / "jobs").mkdir(parents=True)
    (out / "config.json").write_text(json.dumps({"dataset": "mnist5k", "device": "cpu"}))
    for model in ("fvsbn", "made"):
        outcome = {"job": {"model": model, "dataset": "mnist5k", "seed": 0, "budget": "smoke"}, "status": "ok",
                   "reason": "", "rows": [], "curve": [], "notes": [], "info": {}, "wall_seconds": 1.0}
        (out / "jobs" / f"{model}__mnist5k__seed0.json").write_text(json.dumps(outcome))
    assert main(["evaluate", str(out), "--models", "fvsbn", "--classifier", str(tmp_path / "other.pt")]) == 2
    assert "drop --models" in capsys.readouterr().err
    assert not (out / "history").exists()  # refused before anything was archived
