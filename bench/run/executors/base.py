"""The executor interface, and what every executor shares: failed outcomes, and moving a job's files.

An executor runs jobs (``bench.config.job.Job``) in fresh worker processes and hands each outcome back to the
driver, in the order jobs end, through ``on_done``. By then the job's files (its outcome, checkpoint,
sample grid, features) are under the run's folder: written there by a local worker, or carried back by
the executor from a remote one (``pack_files``/``unpack_files``), so no shared filesystem is assumed.
"""
from __future__ import annotations

import base64
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from bench.config.job import Job, JobOutcome, save_outcome

# A worker's folders that stay with it: torch-fidelity's cache of the reference set's features.
LOCAL_ONLY = ("fidelity",)


class Executor:
    name = "executor"

    def run(self, jobs: list[Job], on_done: Callable[[dict], None]) -> None:
        """Run every job; call ``on_done(outcome)`` (a dict) in the driver as each ends, its files in place.
        ``KeyboardInterrupt`` (Ctrl-C, or SIGTERM turned into it by the driver) propagates after ``stop``."""
        raise NotImplementedError

    def stop(self) -> list[dict]:
        """Ask running jobs to stop (training checkpoints and ends as ``interrupted``); returns the outcomes
        that still came back."""
        return []

    def describe(self) -> dict:
        return {"executor": self.name}


def failed_outcome(job: Job, reason: str, status: str = "failed") -> dict:
    """Record a job whose worker never reported (killed, out of memory, node lost) in the run's folder."""
    outcome = JobOutcome(job=asdict(job), status=status, reason=reason)
    if job.checkpoint_path.exists():
        outcome.notes.append(f"a checkpoint is at {job.checkpoint_path.relative_to(job.out)}: the next "
                             f"`bench run` on this folder continues from it")
    save_outcome(outcome, job.outcome_path)
    return asdict(outcome)


def pack_files(folder: Path) -> dict[str, str]:
    """Every file a worker wrote under ``folder`` (but its local caches), as base64 text by relative path."""
    folder = Path(folder)
    packed = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and rel.parts[0] not in LOCAL_ONLY and not path.name.endswith(".tmp"):
            packed[str(rel)] = base64.b64encode(path.read_bytes()).decode()
    return packed


def unpack_files(packed: dict[str, str], job: Job, outcome: dict) -> dict:
    """Write a remote job's files into the driver's run folder (``job.out``), its outcome last (a job counts
    as finished only once its outcome is there), with the outcome's job being the driver's ``job``."""
    out = Path(job.out)
    for rel, data in packed.items():
        if rel.startswith("jobs/"):
            continue  # the outcome is rewritten below, pointing at the driver's folder
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(base64.b64decode(data))
        tmp.replace(target)
    outcome = {**outcome, "job": asdict(job)}
    save_outcome(JobOutcome(**outcome), job.outcome_path)
    return outcome
