import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """``--benchmark-only`` on the command line wins over ``--benchmark-disable`` in pyproject's addopts
    (pytest-benchmark refuses the two together; addopts keeps the ordinary run a one-shot check)."""
    if getattr(config.option, "benchmark_only", False):
        config.option.benchmark_disable = False


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """A private cache folder (prepared datasets, classifiers) for tests that write caches."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("BENCH_CACHE_DIR", str(cache))
    return cache


def bench_env(**extra) -> dict:
    """Environment for running `python -m bench` from the repository root in a subprocess."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


PYTHON = sys.executable
