"""``--executor ray``: each job is a Ray task, a fresh worker process per job, on a local or remote cluster.

``--ray-address`` (or ``$RAY_ADDRESS``) connects to an existing cluster, left running afterwards; without
either, ``ray.init()`` starts a local cluster for the run and shuts it down after it. Every task asks for
``job_threads()`` CPUs (and one GPU on ``cuda``), so Ray never packs more jobs on a node than it has cores.

Two traps:

- No shared filesystem is assumed. A task runs its job in a temporary folder on its worker and returns
  every file it wrote (``base.pack_files``); the driver writes them into the run's folder
  (``base.unpack_files``). The driver ships the run's evaluation classifier once (``ray.put``, shared by
  all tasks; each worker checks its digest) and a job's existing checkpoint, so an interrupted job
  resumes on whichever node it lands.
- The network address. Ray binds to and advertises this machine's network address even when told
  127.0.0.1, so a "local" cluster is reachable from (and talks to) the network. Where only loopback is
  allowed (tests, CI), start Ray inside a loopback-only network namespace: ``.ci/ray-cluster CMD``.

Workers run the driver's code: the ``bench`` and ``models`` packages are uploaded with the job
(``runtime_env`` ``py_modules``), so a node needs the project's dependencies installed, not this checkout.
(If the caller has already called ``ray.init`` itself, its runtime_env rules, and the nodes run whatever
``bench`` they have installed.)
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import ray

from bench.run.executors.base import Executor, failed_outcome, pack_files, unpack_files
from bench.config.job import Job, job_threads

STOP_GRACE_S = 30.0  # how long cancelled tasks get to checkpoint and send their files back
POLL_S = 5.0  # how often ``run`` wakes with nothing finished (lets Ctrl-C through promptly)
FORWARDED_ENV = ("GENBENCH_THREADS", "BENCH_CACHE_DIR", "BENCH_DATA_ROOT", "OMP_NUM_THREADS")
UPLOAD_EXCLUDES = ["__pycache__", "*.pyc"]


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, workers: int = 1, device: str = "cpu", address: str | None = None, **_ignored):
        self.workers = max(1, int(workers))
        self.device = device
        self.address = address
        self.running: dict = {}  # ObjectRef of a task -> its job (the driver's, pointing at the run folder)
        self._shipped: dict = {}  # classifier file -> ObjectRef of its bytes, put once per run
        self._connected_here = False  # ray.init called by this executor: ours to shut down
        # The variables that shape a job, per task too: they hold on a connection made by the caller.
        self._runtime_env = {"env_vars": {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}}

    # --- the cluster -----------------------------------------------------------------------------
    def _connect(self) -> None:
        if ray.is_initialized():
            return  # the caller's own ray.init: its runtime_env says what code the workers run
        # The code goes at this level: Ray uploads local folders (py_modules) only for a whole job.
        options = {"runtime_env": {**self._runtime_env, **_code_env()}, "log_to_driver": True}
        if self.address:
            ray.init(address=self.address, **options)
        elif os.environ.get("RAY_ADDRESS"):
            ray.init(**options)  # Ray's own convention: $RAY_ADDRESS names the cluster to join
        else:
            # "local": a new cluster for this run only, never one found running on this machine
            ray.init(address="local", include_dashboard=False, **options)
        self._connected_here = True

    def close(self) -> None:
        """Disconnect; a cluster this run started is shut down with it, a joined one keeps running."""
        if self._connected_here and ray.is_initialized():
            ray.shutdown()
        self._connected_here = False
        self._shipped.clear()

    def describe(self) -> dict:
        self._connect()
        return {"executor": self.name, "workers": self.workers,
                "ray_address": ray.get_runtime_context().gcs_address,
                "ray_nodes": sum(1 for node in ray.nodes() if node.get("Alive")),
                "ray_version": ray.__version__}

    # --- jobs ------------------------------------------------------------------------------------
    def _submit(self, job: Job) -> None:
        task = _run_remote.options(num_cpus=job_threads(),
                                   num_gpus=1 if self.device.startswith("cuda") else 0,
                                   name=f"genbench:{job.key}", runtime_env=self._runtime_env)
        checkpoint = job.checkpoint_path.read_bytes() if job.checkpoint_path.exists() else None
        self.running[task.remote(asdict(job), self._classifier(job), checkpoint)] = job

    def _classifier(self, job: Job):
        """The bytes of the run's classifier in the object store, put once and shared by every task."""
        if not job.classifier_file:
            return None
        if job.classifier_file not in self._shipped:
            self._shipped[job.classifier_file] = ray.put(Path(job.classifier_file).read_bytes())
        return self._shipped[job.classifier_file]

    def _finish(self, ref) -> dict:
        """A finished task's outcome with its files written into the run folder; a task that ended
        without one (worker or node lost, cancelled before reporting) is recorded as failed."""
        job = self.running.pop(ref)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as exc:
            return failed_outcome(job, f"Ray worker or node lost mid-job: {type(exc).__name__}: {_short(exc)}")
        return unpack_files(result["files"], job, result["outcome"])

    def run(self, jobs, on_done) -> None:
        self._connect()
        pending = list(jobs)
        pending.reverse()  # pop() from the end keeps the given order
        while pending or self.running:
            while pending and len(self.running) < self.workers:
                self._submit(pending.pop())
            ready, _ = ray.wait(list(self.running), num_returns=1, timeout=POLL_S)
            for ref in ready:
                on_done(self._finish(ref))
        self.close()

    def stop(self) -> list[dict]:
        """Cancel running tasks (their training checkpoints and ends as ``interrupted``), collect what
        comes back within ``STOP_GRACE_S``, record the rest as failed, then disconnect."""
        if not ray.is_initialized():
            return []
        for ref in self.running:
            ray.cancel(ref)
        outcomes = []
        deadline = time.monotonic() + STOP_GRACE_S
        while self.running and time.monotonic() < deadline:
            ready, _ = ray.wait(list(self.running), num_returns=1, timeout=1.0)
            outcomes += [self._finish(ref) for ref in ready]
        for ref, job in list(self.running.items()):
            ray.cancel(ref, force=True)
            self.running.pop(ref)
            outcomes.append(failed_outcome(job, f"stopped: the Ray task did not report within {STOP_GRACE_S:.0f} s"))
        self.close()
        return outcomes


def _code_env() -> dict:
    """The driver's ``bench`` and ``models`` packages, uploaded for every worker of the run to import."""
    import bench
    import models

    return {"py_modules": [str(Path(bench.__file__).parent), str(Path(models.__file__).parent)],
            "excludes": UPLOAD_EXCLUDES}


def _short(exc: BaseException, limit: int = 200) -> str:
    """The first sentence of a Ray error (or of its cause, for an error raised inside the task): Ray's
    messages go on with advice about log files that means nothing in a results table."""
    cause = getattr(exc, "cause", None)
    text = f"{type(cause).__name__}: {cause}" if isinstance(cause, BaseException) else str(exc)
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return line.split(". ", 1)[0].rstrip(".")[:limit]


def _scratch_root() -> str:
    """Where a task keeps its job's files: under the node's Ray temp folder, so that what a killed worker
    leaves behind (it cannot clean up) is found with, and removed with, the cluster's own files."""
    root = Path(ray.get_runtime_context().get_temp_dir()) / "genbench-jobs"
    root.mkdir(parents=True, exist_ok=True)
    return str(root)


# max_calls=1: a fresh worker process per job, so a job's peak memory is its own and a crash stays in it.
# max_retries=0: a lost job is recorded as failed rather than silently run again.
@ray.remote(max_calls=1, max_retries=0)
def _run_remote(job_fields: dict, classifier: bytes | None, checkpoint: bytes | None) -> dict:
    """One job on a worker, in a temporary folder; returns its outcome and every file it wrote."""
    from bench.run.executors.worker import install_handlers
    from bench.run.runner import run_job

    # ray.cancel interrupts the task as SIGINT would: with this handler training checkpoints and stops
    # at its next step (``interrupted``) instead of dying mid-step.
    install_handlers()
    with tempfile.TemporaryDirectory(prefix="genbench-job-", dir=_scratch_root()) as tmp:
        out = Path(tmp) / "out"
        job = replace(Job(**job_fields), out=str(out))
        if classifier is not None:  # outside ``out``: shipped in, not a result to send back
            job.classifier_file = str(Path(tmp) / "classifier.pt")
            Path(job.classifier_file).write_bytes(classifier)
        if checkpoint is not None:
            job.checkpoint_path.parent.mkdir(parents=True)
            job.checkpoint_path.write_bytes(checkpoint)
        outcome = run_job(job)
        return {"outcome": asdict(outcome), "files": pack_files(out)}
