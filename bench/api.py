"""The Python API beside the command line, for notebooks and scripts.

    import bench.api as gb
    metrics = gb.run(["fvsbn", "realnvp"], budget="smoke")     # trains, evaluates, writes a run folder
    metrics.query("metric == 'test_bpd'")[["model", "value", "kind"]]
    run = gb.load(metrics.attrs["run_dir"])                   # any stored run: metrics, summary, jobs, ...

``run`` does what ``python -m bench run`` does (each job in its own worker process, tables and report
written to the run folder) and returns the tidy ``metrics.csv`` table as a DataFrame; a user mistake
raises ``bench.errors.UserError`` with the fix in its message, as the CLI would print it.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench import results


RunTables = results.RunFiles  # folder, config, metrics, summary, jobs, curves


def run(models: str | list[str] = "all", dataset: str = "mnist5k", budget: str = "default",
        seeds: list[int] | tuple[int, ...] = (0,), device: str = "auto", out: str | Path | None = None,
        data_root: str | None = None, progress: bool = False, scaling: bool = False,
        **options) -> pd.DataFrame:
    """Run a suite and return its tidy metrics table; ``df.attrs["run_dir"]`` is the run folder.

    ``models`` is ``"all"`` or a list of registered names; ``options`` are ``bench.suite.run_suite``'s
    keywords (``fidelity_samples``, ``eval_size``, ``throughput_cap_s``, ``isolate``, ``executor``, ``workers``,
    ``ray_address``, ``fresh``, ``checkpoint_every``, ``classifier_file``). Like the command line, an ``out``
    that already holds a run resumes it, and one that another driver holds is refused."""
    from bench.suite import resolve_models, run_suite

    names = resolve_models(None if models == "all" else list(models), models == "all")
    folder, _ = run_suite(names, dataset, budget, list(seeds), device, out, data_root, progress=progress,
                          scaling=scaling, **options)
    metrics = load(folder).metrics
    metrics.attrs["run_dir"] = str(folder)
    return metrics


def load(run_dir: str | Path) -> RunTables:
    """The tables a ``bench run`` left in ``run_dir`` (metrics, summary, jobs, curves, config)."""
    return results.load_run(run_dir)
