"""``--in-process``: every job in the driver's own process, one after another (debugging: a breakpoint
reaches the model; peak memory is then the whole run's, and a crash in one job ends the run)."""
from __future__ import annotations

from dataclasses import asdict

from bench.run.executors.base import Executor


class InProcessExecutor(Executor):
    name = "in-process"

    def __init__(self, **_ignored):
        pass

    def run(self, jobs, on_done) -> None:
        from bench.run.runner import run_job

        for job in jobs:
            on_done(asdict(run_job(job)))
