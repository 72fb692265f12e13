"""The Ray executor against a real cluster: same measurements as the local executor, files carried back
to the driver, a worker killed mid-job recorded as failed while the other job finishes, a lost node too.

Ray advertises this machine's network address, so these tests never start Ray themselves outside a
loopback-only network namespace: they run only under ``.ci/ray-cluster`` (which starts a head node in one
and sets ``$RAY_ADDRESS``), and are skipped otherwise:

    .ci/ray-cluster python -m pytest -m ray tests/test_ray_executor.py -q
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO, bench_env

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(not os.environ.get("RAY_ADDRESS"), reason="needs a Ray cluster in a loopback-only network "
                       "namespace: run under .ci/ray-cluster, which starts one and sets RAY_ADDRESS"),
    pytest.mark.skipif(os.environ.get("GENBENCH_NETNS") != "1", reason="Ray must run inside .ci/ray-cluster's "
                       "loopback-only network namespace (GENBENCH_NETNS=1)"),
]

QUALITY = ("fid", "kid", "is", "precision", "recall", "test_bpd")
MODELS = ("fvsbn", "vae-z2")


def _run_cli(out: Path, *executor_args: str) -> None:
    command = [PYTHON, "-m", "bench", "run", "--models", ",".join(MODELS), "--budget", "smoke", "--no-scaling",
               "--no-progress", "--fid-samples", "200", "--out", str(out), *executor_args]
    done = subprocess.run(command, cwd=REPO, env=bench_env(OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _quality_rows(out: Path) -> dict:
    with open(out / "metrics.csv", newline="") as f:
        return {(r["model"], r["metric"]): float(r["value"]) for r in csv.DictReader(f)
                if r["metric"] in QUALITY and r["value"] not in ("", "nan")}


@pytest.fixture
def ray_nodes():
    """The cluster's alive nodes, from a short-lived connection of this test process (closed again, so
    the executor makes its own, with the code upload)."""
    import ray

    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    try:
        return [node for node in ray.nodes() if node["Alive"]]
    finally:
        ray.shutdown()


def test_ray_run_matches_local_run_and_brings_files_back(tmp_path, ray_nodes):
    local, remote = tmp_path / "local", tmp_path / "ray"
    _run_cli(local, "--executor", "local")
    _run_cli(remote, "--executor", "ray", "--ray-address", os.environ["RAY_ADDRESS"])

    local_rows, ray_rows = _quality_rows(local), _quality_rows(remote)
    assert {model for model, _ in ray_rows} >= set(MODELS)
    assert ray_rows == pytest.approx(local_rows, rel=1e-9, abs=1e-12)  # same seed, deterministic CPU

    hosts = {node["NodeManagerHostname"] for node in ray_nodes}
    for model in MODELS:
        key = f"{model}__mnist5k__seed0"
        assert (remote / "checkpoints" / f"{key}.pt").stat().st_size > 0
        assert (remote / "samples" / f"{key}.png").stat().st_size > 0
        outcome = json.loads((remote / "jobs" / f"{key}.json").read_text())
        assert outcome["status"] == "ok", outcome["reason"]
        assert outcome["job"]["out"] == str(remote)  # rewritten from the worker's temporary folder
        assert outcome["info"]["hardware"]["host"] in hosts
    executor = json.loads((remote / "config.json").read_text())["executor"]
    assert executor["executor"] == "ray" and executor["ray_nodes"] == len(ray_nodes)


def _jobs(out: Path, budgets: dict) -> list:
    from bench.evaluate.classifier import load_or_train
    from bench.data.datasets import load_dataset
    from bench.config.job import Job

    classifier = load_or_train(load_dataset("mnist5k"))
    return [Job(model=model, dataset="mnist5k", seed=0, budget=budget, device="cpu", out=str(out), progress=False,
                throughput_cap_s=1.0, fidelity_samples=100, eval_size=100, classifier_file=str(classifier.path),
                classifier_digest=classifier.weights_digest) for model, budget in budgets.items()]


def _task_pids(job_key: str) -> list[int]:
    """Processes running the Ray task of ``job_key`` (Ray titles a worker ``ray::<task name>`` while it runs)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if cmdline.startswith(f"ray::genbench:{job_key}"):
                pids.append(int(proc.name))
    return pids


def _kill_when_running(job_key: str, after_s: float, killed: list, timeout_s: float = 120.0) -> threading.Thread:
    """SIGKILL the worker of ``job_key`` ``after_s`` seconds after it shows up (mid-training)."""
    def watch():
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not _task_pids(job_key):
            time.sleep(0.2)
        time.sleep(after_s)
        for pid in _task_pids(job_key):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_worker_killed_mid_job_is_recorded_failed_and_the_other_job_finishes(tmp_path):
    from bench.run.executors.ray import RayExecutor

    jobs = _jobs(tmp_path, {"fvsbn": "60s", "vae-z2": "2steps"})
    killed: list[int] = []
    watcher = _kill_when_running(jobs[0].key, after_s=3.0, killed=killed)
    outcomes = {}
    RayExecutor(workers=2, address=os.environ["RAY_ADDRESS"]).run(
        jobs, lambda outcome: outcomes.__setitem__(outcome["job"]["model"], outcome))
    watcher.join(timeout=5)

    assert killed, "the fvsbn task's worker never showed up to be killed"
    assert outcomes["fvsbn"]["status"] == "failed"
    assert "Ray worker or node lost mid-job" in outcomes["fvsbn"]["reason"]
    on_disk = json.loads(jobs[0].outcome_path.read_text())
    assert on_disk["status"] == "failed" and on_disk["reason"] == outcomes["fvsbn"]["reason"]
    assert outcomes["vae-z2"]["status"] == "ok", outcomes["vae-z2"]["reason"]
    assert jobs[1].checkpoint_path.exists()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ancestors(pid: int) -> set[int]:
    seen = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return seen


@pytest.fixture
def three_node_cluster(monkeypatch):
    """A real multi-node cluster on this machine (inside the test's namespace): a head that runs no jobs
    (0 CPUs) and two one-CPU worker nodes, so each of two jobs lands on its own node. Its files (and the
    address file the helper always writes) go to a temp folder of its own, removed afterwards."""
    import shutil
    import tempfile

    from ray.cluster_utils import Cluster

    temp_dir = tempfile.mkdtemp(prefix="ray-t")  # short: Ray's socket paths have a length limit
    monkeypatch.setenv("RAY_TMPDIR", temp_dir)
    common = {"node_ip_address": "127.0.0.1", "dashboard_agent_listen_port": None}
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "gcs_server_port": _free_port(),
                                                                "include_dashboard": False, **common})
        for _ in range(2):
            cluster.add_node(num_cpus=1, **common)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        if cluster is not None:
            cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_node_lost_mid_job_is_recorded_failed_and_the_other_job_finishes(tmp_path, three_node_cluster):
    from bench.run.executors.ray import RayExecutor

    cluster = three_node_cluster
    jobs = _jobs(tmp_path, {"fvsbn": "60s", "vae-z2": "2steps"})
    removed = []

    def remove_node_of_long_job():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not _task_pids(jobs[0].key):
            time.sleep(0.2)
        time.sleep(3.0)
        family = set().union(*(_ancestors(pid) for pid in _task_pids(jobs[0].key)))
        for node in list(cluster.worker_nodes):
            if node.all_processes["raylet"][0].process.pid in family:
                cluster.remove_node(node, allow_graceful=False)
                removed.append(node)

    watcher = threading.Thread(target=remove_node_of_long_job, daemon=True)
    watcher.start()
    outcomes = {}
    RayExecutor(workers=2, address=cluster.address).run(
        jobs, lambda outcome: outcomes.__setitem__(outcome["job"]["model"], outcome))
    watcher.join(timeout=5)

    assert removed, "could not find the node running the fvsbn task"
    assert outcomes["fvsbn"]["status"] == "failed"
    assert "Ray worker or node lost mid-job" in outcomes["fvsbn"]["reason"]
    assert outcomes["vae-z2"]["status"] == "ok", outcomes["vae-z2"]["reason"]
    assert jobs[1].checkpoint_path.exists()
