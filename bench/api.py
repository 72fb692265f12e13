"""The Python API beside the command line, for notebooks and scripts.

    import bench.api as gb
    metrics = gb.run(["fvsbn", "realnvp"], budget="smoke")     # trains, evaluates, writes a run folder
    metrics.query("metric == 'test_bpd'")[["model", "value", "kind"]]
    run = gb.load(metrics.attrs["run_dir"])                   # any stored run: metrics, summary, jobs, ...

``run`` does what ``python -m bench run`` does (each job in its own worker process, tables and report
written to the run folder) and returns the tidy ``metrics.csv`` table as a DataFrame; a user mistake
raises ``bench.config.errors.UserError`` with the fix in its message, as the CLI would print it.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.config.run_config import RunConfig
from bench.results import tables as results


RunTables = results.RunFiles  # folder, config, metrics, summary, jobs, curves


def run(models: str | list[str] | RunConfig = "all", progress: bool = False, scaling: bool = False,
        **settings) -> pd.DataFrame:
    """Run a suite and return its tidy metrics table; ``df.attrs["run_dir"]`` is the run folder.

    ``models`` is ``"all"`` (every model that can model the dataset: as with ``--all``, those whose track it
    lacks are skipped and listed in ``config.json``), a list of registered names, or a whole ``RunConfig``;
    ``settings`` are ``RunConfig``'s fields (``dataset``, ``budget``, ``seeds``, ``device``, ``out``, ``fidelity_samples``,
    ``eval_size``, ``throughput_cap_s``, ``isolate``, ``executor``, ``workers``, ``fresh``, ...). Unlike the
    command line, progress bars and the scaling study are off unless asked for. Like the command line, an
    ``out`` that already holds a run resumes it, and one that another driver holds is refused."""
    from bench.suite import run_suite

    every = isinstance(models, str) and models == "all"  # as --all: models the dataset cannot feed are skipped
    folder, _ = run_suite(config(models, progress=progress, scaling=scaling, **settings), skip_unsupported=every)
    metrics = load(folder).metrics
    metrics.attrs["run_dir"] = str(folder)
    return metrics


def config(models: str | list[str] | RunConfig = "all", **settings) -> RunConfig:
    """The ``RunConfig`` that ``run`` would run: ``"all"`` expands to every registered model."""
    if isinstance(models, RunConfig):
        return models.replace(**settings) if settings else models
    import models as registry

    names = registry.names() if models == "all" else [models] if isinstance(models, str) else list(models)
    return RunConfig.from_options(models=tuple(names), **settings)


def load(run_dir: str | Path) -> RunTables:
    """The tables a ``bench run`` left in ``run_dir`` (metrics, summary, jobs, curves, config)."""
    return results.load_run(run_dir)
