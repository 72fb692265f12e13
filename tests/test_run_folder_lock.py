"""A run folder two drivers cannot corrupt, and the bad inputs that used to end in a traceback."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from bench.run import folder_lock
from bench.config.job import load_outcomes
from bench.cli import main
from tests.conftest import PYTHON, REPO, bench_env
from tests.test_report import write_run

HOLD_THE_LOCK = textwrap.dedent("""
    import sys, time
    from bench.run import folder_lock
    with folder_lock.locked(sys.argv[1], "run"):
        print("held", flush=True)
        time.sleep(120)
""")


@pytest.fixture
def held(tmp_path):
    """A live driver (another process) holding tmp_path/run's lock."""
    folder = tmp_path / "run"
    proc = subprocess.Popen([PYTHON, "-c", HOLD_THE_LOCK, str(folder)], cwd=REPO, env=bench_env(),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield folder, proc
    proc.kill()
    proc.wait()


def run_cli(*args, timeout=120):
    return subprocess.run([PYTHON, "-m", "bench", *args], cwd=REPO, env=bench_env(), capture_output=True,
                          text=True, timeout=timeout)


def test_a_second_driver_on_a_locked_folder_exits_2_naming_the_holder(held):
    folder, holder = held
    proc = run_cli("run", "--models", "fvsbn", "--budget", "smoke", "--out", str(folder), "--no-progress")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "in use by another driver" in proc.stderr and f"process {holder.pid}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (folder / "config.json").exists()  # the refused driver wrote nothing


def test_evaluate_and_report_respect_the_lock(held, tmp_path):
    folder, holder = held
    write_run(folder)  # a stored run in the locked folder
    for command in (["evaluate", str(folder)], ["report", str(folder)]):
        proc = run_cli(*command)
        assert proc.returncode == 2 and f"process {holder.pid}" in proc.stderr, (command, proc.stderr)
    assert not (folder / "report.md").exists()


def test_a_lock_whose_process_is_gone_is_taken_over(tmp_path, capsys):
    folder = tmp_path / "run"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder.mkdir()
    (folder / folder_lock.LOCK_NAME).write_text(json.dumps(
        {"command": "run", "host": "elsewhere", "pid": dead.pid, "started": "2026-01-01T00:00:00"}))
    with folder_lock.locked(folder, "run") as holder:
        assert holder["pid"] == os.getpid()
        assert json.loads((folder / folder_lock.LOCK_NAME).read_text())["pid"] == os.getpid()
    err = capsys.readouterr().err
    assert f"process {dead.pid}" in err and "taking the lock over" in err
    assert (folder / folder_lock.LOCK_NAME).read_text() == ""  # released: names no holder
    with folder_lock.locked(folder, "report"):
        pass
    assert "taking the lock over" not in capsys.readouterr().err  # a released lock is not stale


def test_a_killed_driver_leaves_a_lock_the_next_one_takes_over(held, capsys):
    folder, holder = held
    holder.kill()  # SIGKILL: no chance to release; the kernel drops its flock
    holder.wait()
    with folder_lock.locked(folder, "run") as mine:
        assert mine["pid"] == os.getpid()
    assert f"process {holder.pid}" in capsys.readouterr().err


def test_fresh_keeps_the_lock_it_holds(tmp_path):
    from bench.run import resume

    folder = tmp_path / "run"
    write_run(folder)
    with folder_lock.locked(folder, "run"):
        inode = (folder / folder_lock.LOCK_NAME).stat().st_ino
        resume.start_fresh(folder)
        assert [p.name for p in folder.iterdir()] == [folder_lock.LOCK_NAME]
        assert (folder / folder_lock.LOCK_NAME).stat().st_ino == inode


# --- bad inputs --------------------------------------------------------------------------------------------
def test_a_corrupt_job_file_is_named_and_the_rest_of_the_report_renders(tmp_path):
    folder = tmp_path / "run"
    write_run(folder)
    jobs = folder / "jobs"
    jobs.mkdir()
    good = {"job": {"model": "fvsbn", "dataset": "mnist5k", "seed": 0, "budget": "smoke"}, "status": "ok",
            "reason": "", "rows": [], "curve": [], "notes": [], "wall_seconds": 1.0,
            "info": {"checks": [{"check": "sampler_vs_likelihood", "passed": True, "value": 0.1, "tolerance": 1.0,
                                 "detail": "ok"}]}}
    (jobs / "fvsbn__mnist5k__seed0.json").write_text(json.dumps(good))
    (jobs / "vae-z2__mnist5k__seed1.json").write_text('{"job": {"model": "vae-z2", "dataset"')  # cut short
    proc = run_cli("report", str(folder))
    assert proc.returncode == 0, proc.stderr
    assert "jobs/vae-z2__mnist5k__seed1.json is corrupt" in proc.stderr and "Traceback" not in proc.stderr
    report = (folder / "report.md").read_text()
    assert "CORRUPT: vae-z2 seed 1: jobs/vae-z2__mnist5k__seed1.json is corrupt" in report
    assert "sampler_vs_likelihood" in report  # the good job's checks still render
    outcome = [o for o in load_outcomes(folder) if o["job"]["model"] == "vae-z2"][0]
    assert outcome["status"] == "corrupt" and outcome["job"]["seed"] == 1


@pytest.mark.parametrize("args, message", [
    (["--model-args", "fvsbn:lr=abc"], "lr takes a number"),
    (["--model-args", "fvsbn:lr=true"], "lr takes a number"),
    (["--model-args", "realnvp:hidden=64.5"], "hidden takes a whole number"),
    (["--budget", "1e400flops"], "not a finite amount"),
])
def test_a_setting_of_the_wrong_type_or_an_overflowing_budget_exits_2_before_any_work(args, message, tmp_path,
                                                                                       capsys):
    out = tmp_path / "run"
    models = "realnvp" if "realnvp" in " ".join(args) else "fvsbn"
    assert main(["run", "--models", models, "--budget", "smoke", *args, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()  # refused up front: no folder, no job
