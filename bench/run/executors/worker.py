"""A worker process's entry point: set its environment and signal handling, run one job, report back.

Kept free of torch at import so that the environment (``CUDA_VISIBLE_DEVICES``: one device per local
worker) is set before torch is first imported in the fresh process.
"""
from __future__ import annotations

import os
import signal


def stop_on_signal(signum, _frame):
    """SIGTERM or SIGINT: training checkpoints and stops after its current step; anything else stops now."""
    from bench.train.trainer import request_stop

    if not request_stop():
        raise KeyboardInterrupt(signal.Signals(signum).name)


def install_handlers() -> None:
    signal.signal(signal.SIGTERM, stop_on_signal)
    signal.signal(signal.SIGINT, stop_on_signal)


def main(job: dict, connection, env: dict) -> None:
    install_handlers()
    os.environ.update(env)
    from dataclasses import asdict

    from bench.config.job import Job
    from bench.run.runner import run_job

    outcome = run_job(Job(**job))  # never raises; the outcome is already on disk
    for signum in (signal.SIGTERM, signal.SIGINT):  # done: a late stop request must not interrupt the exit
        signal.signal(signum, signal.SIG_IGN)
    connection.send(asdict(outcome))
    connection.close()
