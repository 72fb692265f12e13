"""Executors: how a run's jobs reach worker processes. One interface (``base.Executor``), one registry.

``local`` (the default) runs N isolated worker processes on this machine; ``ray`` runs each job as a
Ray task on a cluster. Adding one is a module with an ``Executor`` subclass and a line in ``EXECUTORS``
(``module:Class``, imported only when chosen, so Ray is never imported by a local run).
"""
from __future__ import annotations

import importlib

from bench.config.errors import UserError

EXECUTORS = {"local": "bench.run.executors.local:LocalExecutor", "ray": "bench.run.executors.ray:RayExecutor",
             "in-process": "bench.run.executors.inprocess:InProcessExecutor"}


def names() -> list[str]:
    return list(EXECUTORS)


def register_executor(name: str, target: str) -> None:
    """Register ``module:Class`` under ``name`` (an executor of a plugin)."""
    EXECUTORS[name] = target


def check_options(name: str, workers: int | None, address: str | None) -> None:
    """Refuse, before any work starts, an executor option that cannot run (``run`` and ``evaluate`` alike)."""
    if name not in EXECUTORS:
        raise UserError(f"unknown executor {name!r}; known executors: {', '.join(names())}")
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if address and name != "ray":
        raise UserError("--ray-address needs --executor ray")


def default_workers(name: str, device: str, jobs: int) -> int:
    """Jobs at once when ``--workers`` is not given: on a CPU, locally, one job per ``job_threads()`` cores
    (each job then has the cores it would have alone, so a time budget buys it the same training:
    docs/long-runs.md, "Parallel workers"); on CUDA one per visible device; on Ray one task in flight.
    Never more than there are jobs."""
    import os

    from bench.config.job import job_threads

    if name != "local":
        return 1
    if str(device).startswith("cuda"):
        import torch

        slots = max(1, torch.cuda.device_count())
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        slots = max(1, cores // job_threads())
    return max(1, min(slots, jobs))


def create(name: str, **options):
    """The executor called ``name``, built with ``options`` (workers, device, address, ...)."""
    if name not in EXECUTORS:
        raise UserError(f"unknown executor {name!r}; known executors: {', '.join(EXECUTORS)}")
    module, cls = EXECUTORS[name].split(":")
    return getattr(importlib.import_module(module), cls)(**options)
