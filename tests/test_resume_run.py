"""Runs that survive: a driver stopped mid-run, a worker killed mid-training, re-measuring without training,
a changed configuration refused. Each drives the real command line in a subprocess, as a user would."""
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.run import resume
from tests.conftest import PYTHON, REPO, bench_env

MODELS = "fvsbn,made,vae-z2"
SMOKE = ["--budget", "smoke", "--no-progress", "--no-scaling"]
# Figures that do not depend on the machine's speed: likelihoods, sample quality, counts.
TIMING_FREE_KINDS = ("exact", "bound", "estimate", "counted")
TIMING_FREE_METRICS = ("train_steps", "train_examples", "params", "sampling_nfe")


def bench(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "bench", *map(str, args)], cwd=REPO, env=bench_env(), capture_output=True,
                          text=True, timeout=600, **kwargs)


def start_bench(*args) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, "-m", "bench", *map(str, args)], cwd=REPO, env=bench_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def model_outcomes(out: Path) -> dict[str, dict]:
    found = {}
    for path in (out / "jobs").glob("*.json"):
        if not path.name.startswith("data__"):
            try:
                found[path.stem] = json.loads(path.read_text())
            except ValueError:  # being written
                pass
    return found


def wait_for(condition, timeout: float = 300.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def timing_free(out: Path) -> pd.DataFrame:
    metrics = pd.read_csv(out / "metrics.csv")
    keep = metrics["kind"].isin(TIMING_FREE_KINDS) | metrics["metric"].isin(TIMING_FREE_METRICS)
    keys = ["model", "seed", "metric", "batch", "steps"]
    return metrics[keep][keys + ["value", "kind"]].sort_values(keys).reset_index(drop=True)


def worker_pids(driver_pid: int) -> list[int]:
    """The driver's spawned job workers (not multiprocessing's resource tracker)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == driver_pid and "spawn_main" in cmdline:
            pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The reference: the same smoke run, uninterrupted, with two workers."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    done = bench("run", "--models", MODELS, "--out", out, "--workers", 2, *SMOKE)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_a_stopped_driver_is_resumed_with_only_the_remaining_jobs(tmp_path, uninterrupted):
    out = tmp_path / "run"
    # One worker, as this test was written for: with two, the stop can land in a worker still importing torch.
    driver = start_bench("run", "--models", MODELS, "--out", out, "--workers", 1, *SMOKE)
    finished = wait_for(lambda: len([o for o in model_outcomes(out).values() if o["status"] == "ok"]) >= 2 and
                        model_outcomes(out), what="two finished jobs")
    driver.send_signal(signal.SIGTERM)
    _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130, stderr[-3000:]
    assert "interrupted" in stderr and "Traceback" not in stderr, stderr[-3000:]
    # What the stopped driver left finished on disk: the two seen above, and with two workers possibly a third
    # that finished its evaluation while the driver was stopping (it is finished, so it is kept too).
    kept = sorted(k for k, o in model_outcomes(out).items() if o["status"] == "ok")
    assert set(k for k, o in finished.items() if o["status"] == "ok") <= set(kept) and len(kept) >= 2
    stamps = {k: (out / "jobs" / f"{k}.json").stat().st_mtime_ns for k in kept}
    assert pd.read_csv(out / "jobs.csv")["status"].tolist().count("ok") >= 2  # the tables say what is on disk

    again = bench("run", "--models", MODELS, "--out", out, *SMOKE)
    assert again.returncode == 0, again.stderr[-3000:]
    last = json.loads((out / "config.json").read_text())["invocations"][-1]
    assert sorted(last["kept"]) == kept
    assert set(last["ran"]) == {"fvsbn__mnist5k__seed0", "made__mnist5k__seed0", "vae-z2__mnist5k__seed0"} - set(kept)
    assert {k: (out / "jobs" / f"{k}.json").stat().st_mtime_ns for k in kept} == stamps  # not run again
    pd.testing.assert_frame_equal(timing_free(out), timing_free(uninterrupted))
    curves = [pd.read_csv(o / "curves.csv").sort_values(["model", "step"]).reset_index(drop=True) for o in (out, uninterrupted)]
    pd.testing.assert_series_equal(curves[0]["loss"], curves[1]["loss"])


def test_a_worker_killed_mid_training_is_recorded_and_its_job_continues_from_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    # One worker, so the one worker alive at the EBM's first checkpoint is the EBM's (with two, FVSBN's may be
    # alive beside it). The EBM is planned first; FVSBN runs after the kill.
    args = ["run", "--models", "ebm,fvsbn", "--out", out, "--budget", "30steps", "--checkpoint-every", "3steps",
            "--fid-samples", 100, "--eval-size", 100, "--throughput-cap", 1, "--no-progress", "--no-scaling",
            "--workers", 1]
    driver = start_bench(*args)
    checkpoint = out / "checkpoints" / "ebm__mnist5k__seed0.pt"
    wait_for(checkpoint.exists, what="the EBM's first periodic checkpoint")
    (worker,) = wait_for(lambda: worker_pids(driver.pid), what="the worker process")
    assert "ebm__mnist5k__seed0" not in model_outcomes(out), "the EBM finished before it could be killed"
    os.kill(worker, signal.SIGKILL)
    _, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 1, stderr[-3000:]
    outcomes = model_outcomes(out)
    assert outcomes["ebm__mnist5k__seed0"]["status"] == "failed"
    assert "SIGKILL" in outcomes["ebm__mnist5k__seed0"]["reason"]
    assert outcomes["fvsbn__mnist5k__seed0"]["status"] == "ok"  # the other job went on

    again = bench(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    ebm = model_outcomes(out)["ebm__mnist5k__seed0"]
    assert ebm["status"] == "ok"
    assert ebm["info"]["resumed_from_step"] >= 3
    steps = {r["metric"]: r["value"] for r in ebm["rows"]}["train_steps"]
    assert steps == 30
    last = json.loads((out / "config.json").read_text())["invocations"][-1]
    assert last["kept"] == ["fvsbn__mnist5k__seed0"] and "ebm__mnist5k__seed0" in last["continued"]
    assert "resumed" in (out / "report.md").read_text()


def test_evaluate_measures_again_without_training(tmp_path, uninterrupted):
    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    curves_before = (out / "curves.csv").read_text()
    steps_before = timing_free(out).query("metric == 'train_steps'")
    done = bench("evaluate", out, "--fid-samples", 150, "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "curves.csv").read_text() == curves_before  # no training-curve rows added
    pd.testing.assert_frame_equal(timing_free(out).query("metric == 'train_steps'"), steps_before)
    metrics = pd.read_csv(out / "metrics.csv")
    fid = metrics[(metrics["metric"] == "fid") & (metrics["model"] != "data")]
    assert len(fid) == 3 and fid["note"].str.startswith("150 samples").all()
    (archived,) = (out / "history").iterdir()
    old = pd.read_csv(archived / "metrics.csv")
    assert old[(old["metric"] == "fid") & (old["model"] != "data")]["note"].str.startswith("200 samples").all()
    config = json.loads((out / "config.json").read_text())
    assert config["fidelity_samples"] == 150
    # the run's configuration from now on: a later `bench run` on the folder compares against 150 samples
    assert config["run_config"]["fidelity_samples"] == 150


def test_a_changed_budget_in_a_run_folder_is_refused_and_names_the_difference(tmp_path, uninterrupted):
    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    before = (out / "metrics.csv").read_text()
    refused = bench("run", "--models", MODELS, "--out", out, "--budget", "30steps", "--no-progress", "--no-scaling")
    assert refused.returncode == 2
    assert "budget is 'smoke' in the folder, '30steps' now" in refused.stderr
    assert "--fresh" in refused.stderr and "Traceback" not in refused.stderr
    assert (out / "metrics.csv").read_text() == before


def test_fresh_removes_only_a_run_folder(tmp_path):
    run = tmp_path / "run"
    (run / "jobs").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    other = tmp_path / "papers"
    other.mkdir()
    (other / "draft.tex").write_text("keep me")
    resume.start_fresh(run)
    resume.start_fresh(other)
    assert list(run.iterdir()) == [] and (other / "draft.tex").exists()  # the folder stays (its lock lives there)
