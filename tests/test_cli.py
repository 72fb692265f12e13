"""The command line end to end, and every kind of bad input it must refuse clearly."""
import gzip
import json
import subprocess

import pandas as pd
import pytest

from bench.cli import main
from tests.conftest import PYTHON, REPO, bench_env


def run_bench(*args, env=None, timeout=600):
    return subprocess.run([PYTHON, "-m", "bench", *args], cwd=REPO, env=env or bench_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "run"
    # A generous throughput cap: the test checks that every batch size is measured, also on a busy machine.
    # Four families here; CI's regression gate runs the smoke suite of every model (`--all`) after the tests.
    proc = run_bench("run", "--models", "fvsbn,realnvp,vae-z2,cgan", "--budget", "smoke", "--out", str(out),
                     "--no-progress", "--throughput-cap", "120")
    return proc, out


def test_smoke_suite_end_to_end(smoke_run):
    proc, out = smoke_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ["config.json", "metrics.csv", "summary.csv", "report.md", "report.html", "jobs.csv",
                 "scaling.csv", "scaling_fit.csv"]:
        assert (out / name).is_file(), name
    metrics = pd.read_csv(out / "metrics.csv")
    for model in ["fvsbn", "realnvp"]:
        rows = metrics[metrics.model == model]
        assert set(rows.metric) >= {"test_nll", "test_bpd", "sample_throughput", "train_throughput",
                                    "train_seconds", "train_steps", "peak_memory", "params"}
        kind = "exact" if model == "fvsbn" else "bound"  # realnvp: a continuous density, dequantized
        assert (rows[rows.metric == "test_bpd"].kind == kind).all()
        assert rows[rows.metric == "train_steps"].value.item() == 20
        train_flops = rows[rows.metric == "train_flops"]
        assert train_flops.unit.item() == "FLOP" and train_flops.value.item() > 0  # 20 x a step's FLOPs
        assert (out / "samples" / f"{model}__mnist5k__seed0.png").is_file()
    for model in ["fvsbn", "realnvp"]:
        throughput = metrics[(metrics.model == model) & (metrics.metric == "sample_throughput")]
        assert sorted(throughput.batch) == [16, 256, 1024] and (throughput.value > 0).all()
    assert "## Sampling cost against image size" in (out / "report.md").read_text()
    fits = pd.read_csv(out / "scaling_fit.csv").set_index("model")
    assert {"fvsbn", "realnvp"} <= set(fits.index)
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"] == "mnist5k" and config["budget"] == "smoke" and "torch" in config["versions"]
    # smoke evaluates on a 200-image subset (CI minutes); the config says so
    assert config["eval_size"] == 200 and config["fidelity_samples"] == 200
    from bench.run import executors
    assert config["executor"]["workers"] == executors.default_workers("local", "cpu", 4)  # --workers not given


def test_jobs_table_says_where_each_jobs_time_went(smoke_run):
    """Training and evaluation are timed apart, each measurement within evaluation, all within the job's wall."""
    _, out = smoke_run
    jobs = pd.read_csv(out / "jobs.csv").set_index("model")
    for model in ["fvsbn", "realnvp", "vae-z2", "cgan"]:
        job = jobs.loc[model]
        assert 0 < job.training_s and 0 < job.evaluation_s
        assert job.training_s + job.evaluation_s <= job.wall_seconds
        outcome = json.loads((out / "jobs" / f"{model}__mnist5k__seed0.json").read_text())
        seconds = outcome["info"]["evaluation_seconds"]
        assert {"throughput", "sample quality", "checks"} <= set(seconds)
        assert ("likelihood" in seconds) == (model != "cgan")  # only what applies is measured (and timed)
        assert sum(seconds.values()) <= job.evaluation_s + 0.05
        slowest = max(seconds, key=seconds.get)
        assert job.slowest_measurements.startswith(f"{slowest} {seconds[slowest]:.1f} s")


def test_unknown_model_exits_2_naming_the_known_models(capsys):
    assert main(["run", "--models", "nosuch", "--budget", "smoke"]) == 2
    err = capsys.readouterr().err
    assert "nosuch" in err and "fvsbn" in err and "realnvp" in err


def test_unknown_model_through_the_real_entry_point():
    proc = run_bench("run", "--models", "nosuch")
    assert proc.returncode == 2 and "known models: fvsbn" in proc.stderr


def test_unknown_dataset_exits_2_naming_the_known_datasets(capsys):
    assert main(["run", "--models", "fvsbn", "--dataset", "cifar", "--budget", "smoke"]) == 2
    err = capsys.readouterr().err
    assert "cifar" in err and "mnist5k" in err


@pytest.mark.parametrize("budget", ["lots", "10parsecs", "0steps", "2.5steps", "-3s"])
def test_malformed_budget_says_what_forms_are_accepted(budget, capsys):
    assert main(["run", "--models", "fvsbn", f"--budget={budget}"]) == 2
    err = capsys.readouterr().err
    assert budget in err and "500steps" in err


def test_missing_dataset_file_names_the_file(tmp_path, isolated_cache, capsys):
    code = main(["run", "--models", "fvsbn", "--dataset", "binarized-mnist", "--budget", "smoke",
                 "--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "binarized_mnist_train.amat" in err and "--data-root" in err


def test_corrupt_dataset_file_names_the_file(tmp_path, isolated_cache, capsys):
    folder = tmp_path / "root" / "binarized_mnist"
    folder.mkdir(parents=True)
    for split in ["train", "test"]:
        with gzip.open(folder / f"binarized_mnist_{split}.amat.gz", "wt") as f:
            f.write("0 1 2\nnot numbers\n")
    code = main(["run", "--models", "fvsbn", "--dataset", "binarized-mnist", "--budget", "smoke",
                 "--data-root", str(tmp_path / "root"), "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "binarized_mnist_train.amat.gz" in err and "corrupt" in err


def test_missing_torchvision_files_name_the_folder(tmp_path, isolated_cache, capsys):
    code = main(["run", "--models", "fvsbn", "--dataset", "mnist", "--budget", "smoke",
                 "--data-root", str(tmp_path / "empty"), "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "MNIST" in err and "train-images-idx3-ubyte.gz" in err


def test_8bit_model_on_a_binary_only_dataset_is_refused(tmp_path, isolated_cache, capsys):
    folder = tmp_path / "root" / "binarized_mnist"
    folder.mkdir(parents=True)
    for split in ["train", "valid", "test"]:
        (folder / f"binarized_mnist_{split}.amat").write_text(("0 1 " * 392 + "\n") * 3)
    code = main(["run", "--models", "realnvp", "--dataset", "binarized-mnist", "--budget", "smoke",
                 "--data-root", str(tmp_path / "root"), "--out", str(tmp_path / "out")])
    assert code == 2 and "8bit" in capsys.readouterr().err


def test_failing_and_diverging_models_are_recorded_and_the_others_still_run(tmp_path):
    out = tmp_path / "run"
    env = bench_env(GENBENCH_PLUGINS="tests.plugins.faulty_models")
    proc = run_bench("run", "--models", "nan-model,crash-model,fvsbn", "--budget", "smoke", "--out", str(out),
                     "--no-progress", env=env)
    assert proc.returncode == 1, proc.stderr[-2000:]  # a failed job is the suite's failure to report
    jobs = pd.read_csv(out / "jobs.csv").set_index("model")
    assert jobs.loc["nan-model", "status"] == "diverged" and "step 3" in jobs.loc["nan-model", "reason"]
    assert jobs.loc["crash-model", "status"] == "failed" and "deliberate crash" in jobs.loc["crash-model", "reason"]
    assert jobs.loc["fvsbn", "status"] == "ok"
    metrics = pd.read_csv(out / "metrics.csv")
    assert {"test_bpd", "sample_throughput"} <= set(metrics[metrics.model == "fvsbn"].metric)
    # the third step ran and produced the NaN: three steps were bought, the last one diverged
    assert metrics[(metrics.model == "nan-model") & (metrics.metric == "train_steps")].value.item() == 3
    assert "diverged" in (out / "report.md").read_text()


def test_an_output_path_that_is_a_file_exits_2_and_leaves_it_alone(tmp_path, capsys):
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    assert main(["run", "--models", "fvsbn", "--budget", "smoke", "--out", str(target)]) == 2
    assert "is a file" in capsys.readouterr().err and target.read_text() == "keep me"


def test_evaluate_on_a_folder_without_a_run_exits_2(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "holds no config.json" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--executor", "dask"], "unknown executor 'dask'; known executors: local, ray"),
    (["--workers", "0"], "--workers must be at least 1"),
    (["--ray-address", "10.0.0.1:6379"], "--ray-address needs --executor ray"),
    (["--checkpoint-every", "3epochs"], "--checkpoint-every takes a time or a step count"),
])
def test_bad_executor_options_exit_2_naming_the_fix(args, message, tmp_path, capsys):
    code = main(["run", "--models", "fvsbn", "--budget", "smoke", "--out", str(tmp_path / "run"), "--no-scaling",
                 *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "jobs").exists()  # refused before any work
