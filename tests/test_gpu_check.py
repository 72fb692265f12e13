"""The GPU check's logic (.ci/gpu_check.py), on a CPU: the no-CUDA path, the summary and exit code, the
time budget (a fake clock), the timing table's maths, and the verdicts on pytest's and the smoke run's
files. Nothing here needs a GPU, and nothing asserts on real elapsed time."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / ".ci" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check = _load()


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- the no-CUDA path ------------------------------------------------------------------------------
def test_without_cuda_the_command_says_so_and_exits_0(tmp_path):
    # CUDA_VISIBLE_DEVICES="" hides every device, so this path is taken on a GPU machine too.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "python"  # `.ci/gpu` runs the python on PATH: this one (a venv's, by its full path)
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = tmp_path / "out"
    done = subprocess.run([str(REPO / ".ci" / "gpu"), "--out", str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    import torch

    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines == [f"gpu check: no CUDA device here (torch {torch.__version__}, cuda available: False); "
                     f"nothing to run"]
    assert not out.exists()  # nothing else ran: no summary, no logs


# --- exit code and summary -------------------------------------------------------------------------
def _result(step: str, status: str, **extra) -> dict:
    return {"step": step, "status": status, "seconds": 1.5, "detail": "", **extra}


def test_exit_code_is_0_only_when_every_step_passed():
    passed = [_result("cuda-tests", "passed"), _result("timing", "passed"), _result("smoke-run", "passed")]
    assert gpu_check.exit_code(passed) == 0
    assert gpu_check.exit_code(passed[:2] + [_result("smoke-run", "failed")]) == 1
    assert gpu_check.exit_code(passed[:2] + [_result("smoke-run", "skipped")]) == 1
    assert gpu_check.exit_code([]) == 1


def test_summary_is_written_with_steps_smoke_models_and_timing_table(tmp_path):
    table = [gpu_check.timing_row("fvsbn train_step", [2.0], [0.5], kind="train_step", model="fvsbn")]
    results = [_result("cuda-tests", "passed", counts={"tests": 14}),
               _result("timing", "passed", table=table),
               _result("smoke-run", "failed", models={"fvsbn": "ok", "ddpm": "failed"})]
    clock = FakeClock()
    budget = gpu_check.Budget(480, clock)
    clock.advance(123.4)
    env = {"device": "NVIDIA H200", "torch": "2.14.1", "cuda": "13.0"}
    summary = gpu_check.build_summary(env, results, budget)
    path = gpu_check.write_summary(summary, tmp_path / "gpu-check")
    assert path == tmp_path / "gpu-check" / "summary.json"
    stored = json.loads(path.read_text())
    assert stored["passed"] is False  # the smoke run failed
    assert stored["device"] == "NVIDIA H200" and stored["torch"] == "2.14.1"
    assert stored["elapsed_s"] == 123.4 and stored["budget_s"] == 480
    assert [(s["step"], s["status"], s["seconds"]) for s in stored["steps"]] == [
        ("cuda-tests", "passed", 1.5), ("timing", "passed", 1.5), ("smoke-run", "failed", 1.5)]
    assert stored["smoke_models"] == {"fvsbn": "ok", "ddpm": "failed"}
    assert stored["timing"][0]["speedup"] == 4.0
    assert all("models" not in s and "table" not in s for s in stored["steps"])  # lifted, not repeated
    all_passed = [dict(r, status="passed") for r in results]
    assert gpu_check.build_summary(env, all_passed, budget)["passed"] is True


# --- the budget ------------------------------------------------------------------------------------
def test_steps_past_the_budget_are_recorded_as_skipped():
    clock = FakeClock()
    budget = gpu_check.Budget(250, clock)
    given = {}

    def step(name, seconds):
        def run(allowed):
            given[name] = allowed
            clock.advance(seconds)
            return {"status": "passed", "detail": "fine"}

        return gpu_check.Step(name, run, limit_s=1000.0, min_s=50.0)

    steps = [step("a", 100), step("b", 100), step("c", 100), step("d", 1)]
    results = gpu_check.run_steps(steps, budget, log=lambda message: None)
    assert [(r["step"], r["status"]) for r in results] == [("a", "passed"), ("b", "passed"),
                                                           ("c", "skipped"), ("d", "skipped")]
    # a: 250 - 20 s reserve; b: 150 left - 20; c would get 30 < 50 and is not started
    assert given == {"a": 230.0, "b": 130.0}
    assert [r["seconds"] for r in results] == [100.0, 100.0, 0.0, 0.0]
    assert all(r["detail"].startswith("skipped: over the 4.16667-minute budget") for r in results[2:])
    assert gpu_check.Budget(480).skip_message() == "skipped: over the 8-minute budget"


def test_a_step_is_capped_by_its_own_limit_and_a_failing_step_does_not_stop_the_next():
    clock = FakeClock()
    budget = gpu_check.Budget(480, clock)
    given = []

    def broken(allowed):
        given.append(allowed)
        clock.advance(5)
        raise RuntimeError("no such device")

    def fine(allowed):
        given.append(allowed)
        return {"status": "passed"}

    results = gpu_check.run_steps([gpu_check.Step("broken", broken, limit_s=60.0, min_s=10.0),
                                   gpu_check.Step("fine", fine, limit_s=600.0, min_s=10.0)],
                                  budget, log=lambda message: None)
    assert given == [60.0, 480 - 5 - 20.0]
    assert results[0]["status"] == "failed" and "RuntimeError: no such device" in results[0]["detail"]
    assert results[1]["status"] == "passed"
    assert gpu_check.exit_code(results) == 1


def test_plan_orders_the_steps_and_runs_only_those_asked(tmp_path):
    args = gpu_check.parse_args([])
    assert [s.name for s in gpu_check.plan(args, tmp_path)] == ["cuda-tests", "timing", "smoke-run"]
    assert args.out == "results/gpu-check" and args.budget_s == 480
    args = gpu_check.parse_args(["--only", "smoke-run,cuda-tests"])
    assert [s.name for s in gpu_check.plan(args, tmp_path)] == ["cuda-tests", "smoke-run"]
    with pytest.raises(SystemExit):
        gpu_check.plan(gpu_check.parse_args(["--only", "benchmarks"]), tmp_path)
    assert gpu_check.default_smoke_workers(devices=1, cores=16) == 4
    assert gpu_check.default_smoke_workers(devices=8, cores=16) == 8
    assert gpu_check.default_smoke_workers(devices=1, cores=1) == 1


# --- the timing table's maths ----------------------------------------------------------------------
def test_timing_row_medians_and_speedup():
    row = gpu_check.timing_row("ddpm train_step", [3.0, 1.0, 2.0], [0.5, 0.25, 1.0, 0.5], model="ddpm")
    assert row["cpu_median_s"] == 2.0
    assert row["cuda_median_s"] == 0.5
    assert row["speedup"] == 4.0
    assert (row["cpu_calls"], row["cuda_calls"], row["model"]) == (3, 4, "ddpm")
    slower = gpu_check.timing_row("tiny", [0.1, 0.1], [0.4, 0.2, 0.3])
    assert slower["cuda_median_s"] == 0.3 and slower["speedup"] == pytest.approx(1 / 3, abs=1e-3)
    missing = gpu_check.timing_row("untimed", [1.0], [])
    assert missing["cuda_median_s"] is None and missing["speedup"] is None


def test_time_calls_skips_the_warm_up_and_stops_at_its_caps():
    clock = FakeClock(0.0)
    costs = iter([9.0, 9.0, 1.0, 3.0, 2.0, 4.0, 5.0])  # two warm-up calls, then the timed ones

    def call():
        clock.advance(next(costs))

    synced = []
    times = gpu_check.time_calls(call, lambda: synced.append(clock()), warmup=2, repeats=4, max_seconds=100.0,
                                 deadline=1e9, clock=clock)
    assert times == [1.0, 3.0, 2.0, 4.0]
    assert len(synced) == 5  # after the warm-up and after every timed call
    costs = iter([1.0] * 2 + [4.0] * 10)
    clock.now = 0.0
    assert gpu_check.time_calls(call, lambda: None, 2, 10, max_seconds=10.0, deadline=1e9, clock=clock) == [4.0] * 3
    costs = iter([1.0] * 20)
    clock.now = 0.0
    assert gpu_check.time_calls(call, lambda: None, 2, 10, max_seconds=100.0, deadline=5.0, clock=clock) == [1.0] * 3


# --- the verdicts on the steps' files ---------------------------------------------------------------
def _junit(path: Path, tests: int, failures: int = 0, errors: int = 0, skipped: int = 0) -> Path:
    path.write_text(f'<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" '
                    f'errors="{errors}" failures="{failures}" skipped="{skipped}" tests="{tests}" time="1.0">'
                    f'</testsuite></testsuites>')
    return path


def test_pytest_verdict_needs_every_test_run_and_passed(tmp_path):
    ok = gpu_check.pytest_verdict(0, _junit(tmp_path / "ok.xml", 14))
    assert ok["status"] == "passed" and ok["counts"]["tests"] == 14
    skipped = gpu_check.pytest_verdict(0, _junit(tmp_path / "skip.xml", 14, skipped=14))
    assert skipped["status"] == "failed" and "14 skipped" in skipped["detail"]
    failed = gpu_check.pytest_verdict(1, _junit(tmp_path / "fail.xml", 14, failures=2))
    assert failed["status"] == "failed" and "2 failures" in failed["detail"]
    assert gpu_check.pytest_verdict(0, _junit(tmp_path / "late.xml", 14), timed_out=True)["status"] == "failed"
    assert gpu_check.pytest_verdict(None, tmp_path / "absent.xml")["status"] == "failed"


def _smoke_run(folder: Path, statuses: dict, report: bool = True) -> Path:
    folder.mkdir()
    lines = ["model,dataset,seed,status,reason,wall_seconds,resumed,host,notes"]
    lines += [f"{m},mnist5k,0,{s},{'boom' if s != 'ok' else ''},1.0,,gpu,," for m, s in statuses.items()]
    (folder / "jobs.csv").write_text("\n".join(lines) + "\n")
    if report:
        (folder / "report.md").write_text("# report\n")
    return folder


def test_smoke_verdict_reads_every_jobs_status(tmp_path):
    good = gpu_check.smoke_verdict(0, _smoke_run(tmp_path / "good", {"data": "ok", "fvsbn": "ok", "ddpm": "ok"}))
    assert good["status"] == "passed"
    assert good["models"] == {"data": "ok", "fvsbn": "ok", "ddpm": "ok"}
    assert good["report"].endswith("report.md")
    bad = gpu_check.smoke_verdict(1, _smoke_run(tmp_path / "bad", {"fvsbn": "ok", "ddpm": "failed"}))
    assert bad["status"] == "failed" and "ddpm failed" in bad["detail"] and bad["models"]["ddpm"] == "failed"
    unreported = gpu_check.smoke_verdict(0, _smoke_run(tmp_path / "noreport", {"fvsbn": "ok"}, report=False))
    assert unreported["status"] == "failed" and "no report.md" in unreported["detail"]
    assert gpu_check.smoke_verdict(0, tmp_path / "nothing")["status"] == "failed"


def test_a_command_past_its_timeout_is_stopped_and_says_so(tmp_path):
    done = gpu_check.run_command([sys.executable, "-c", "print('started', flush=True); import time; time.sleep(60)"],
                                 timeout_s=1.0, log_path=tmp_path / "slow.log")
    assert done["timed_out"] is True
    assert done["exit_code"] != 0
    assert "started" in done["output_tail"]
    quick = gpu_check.run_command([sys.executable, "-c", "print('hello')"], timeout_s=60.0,
                                  log_path=tmp_path / "quick.log")
    assert (quick["timed_out"], quick["exit_code"], quick["output_tail"].strip()) == (False, 0, "hello")
