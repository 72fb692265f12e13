"""``--benchmark-only`` on the command line wins over ``--benchmark-disable`` in pyproject's addopts.

pytest-benchmark refuses the two together; the addopts entry is there so that the ordinary test run
executes each benchmark body once, so asking for benchmarks explicitly should simply enable them.
"""
import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    if getattr(config.option, "benchmark_only", False):
        config.option.benchmark_disable = False
