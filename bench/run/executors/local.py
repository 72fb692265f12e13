"""``--executor local --workers N``: N worker processes on this machine, a fresh one per job.

A fresh spawned process per job keeps each job's peak memory its own and confines a crash to it. A worker
that dies without reporting (SIGKILL, the out-of-memory killer, a crash in native code) is recorded as a
failed job with the signal, and the other jobs go on. On GPUs, worker slot i sees only device i modulo
the visible devices (``CUDA_VISIBLE_DEVICES``), so N workers on N GPUs run one job per device.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections import deque
from dataclasses import asdict
from multiprocessing.connection import wait

from bench.run.executors.base import Executor, failed_outcome
from bench.config.job import Job

STOP_GRACE_S = 60.0  # how long stopped workers get to checkpoint and report before they are killed


class LocalExecutor(Executor):
    name = "local"

    def __init__(self, workers: int = 1, device: str = "cpu", **_ignored):
        self.workers = max(1, int(workers))
        self.device = device
        self.running: dict = {}  # receiving end of the worker's pipe -> (process, job, slot)
        self.context = multiprocessing.get_context("spawn")

    def describe(self) -> dict:
        return {"executor": self.name, "workers": self.workers}

    def _env(self, slot: int) -> dict:
        if not self.device.startswith("cuda"):
            return {}
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        devices = visible.split(",") if visible else [str(i) for i in range(_cuda_count())]
        return {"CUDA_VISIBLE_DEVICES": devices[slot % len(devices)]} if devices else {}

    def _start(self, job: Job, slot: int) -> None:
        from bench.run.executors import worker

        receiver, sender = self.context.Pipe(duplex=False)
        process = self.context.Process(target=worker.main, args=(asdict(job), sender, self._env(slot)),
                                       name=f"genbench-{job.key}", daemon=False)
        process.start()
        sender.close()  # the child holds the only sending end: EOF here means it is gone
        self.running[receiver] = (process, job, slot)

    def _finish(self, receiver) -> dict:
        """The worker's outcome (the pipe is readable: its report, or EOF when it died without one)."""
        process, job, _slot = self.running.pop(receiver)
        try:
            outcome = receiver.recv()
        except (EOFError, OSError):
            outcome = None
        process.join()
        receiver.close()
        if outcome is None:
            outcome = failed_outcome(job, _death_reason(process.exitcode))
        return outcome

    def run(self, jobs, on_done) -> None:
        pending = deque(jobs)
        free = deque(range(self.workers))
        while pending or self.running:
            while pending and free:
                self._start(pending.popleft(), free.popleft())
            for receiver in wait(list(self.running), timeout=5.0):
                free.append(self.running[receiver][2])
                on_done(self._finish(receiver))

    def stop(self) -> list[dict]:
        """SIGTERM every running worker (training checkpoints at its next step), wait for their reports,
        SIGKILL whoever is still there after ``STOP_GRACE_S``."""
        for process, *_ in list(self.running.values()):
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        outcomes = []
        while self.running and time.monotonic() < deadline:
            for receiver in wait(list(self.running), timeout=1.0):
                outcomes.append(self._finish(receiver))
        for receiver, (process, *_rest) in list(self.running.items()):
            process.kill()
            outcomes.append(self._finish(receiver))
        return outcomes


def _death_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        why = " (the out-of-memory killer, or killed by hand)" if name == "SIGKILL" else ""
        return f"worker process killed by {name}{why} before it reported"
    return f"worker process exited with code {exitcode} before it reported (a crash in native code?)"


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count()
