"""Each job runs with a chosen torch thread count, recorded in config.json's hardware."""
import pytest
import torch

from bench.config import environment
from bench.run import runner
from bench.config.errors import UserError


def test_default_thread_count(monkeypatch):
    monkeypatch.delenv(runner.THREADS_ENV, raising=False)
    assert runner.job_threads() == runner.DEFAULT_THREADS
    assert environment.hardware(torch.device("cpu"))["torch_threads"] == runner.DEFAULT_THREADS


def test_thread_count_from_the_environment(monkeypatch):
    monkeypatch.setenv(runner.THREADS_ENV, "3")
    assert runner.job_threads() == 3
    assert environment.hardware(torch.device("cpu"))["torch_threads"] == 3


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_bad_thread_count_is_a_user_error(monkeypatch, value):
    monkeypatch.setenv(runner.THREADS_ENV, value)
    with pytest.raises(UserError, match=runner.THREADS_ENV):
        runner.job_threads()


def test_limit_threads_limits_numpys_blas_pool_as_well_as_torch(tmp_path):
    """A job's thread count holds for numpy's BLAS too (FID's bootstrap runs there); in a fresh process,
    so this test process keeps its own pools."""
    import json
    import subprocess
    import sys

    code = ("import json, torch; from threadpoolctl import threadpool_info; from bench.config.job import limit_threads; "
            "limit_threads(1); print(json.dumps([torch.get_num_threads()] + "
            "[p['num_threads'] for p in threadpool_info() if p['user_api'] == 'blas']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"})
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(counts) >= 2 and set(counts) == {1}  # torch, and at least one BLAS library, at one thread


def test_default_workers_fill_the_cores_with_jobs_of_the_job_thread_count(monkeypatch):
    from bench.run import executors

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setenv(runner.THREADS_ENV, "2")
    assert executors.default_workers("local", "cpu", jobs=20) == 4  # 8 cores / 2 threads per job
    assert executors.default_workers("local", "cpu", jobs=3) == 3  # never more workers than jobs
    monkeypatch.setenv(runner.THREADS_ENV, "16")
    assert executors.default_workers("local", "cpu", jobs=20) == 1
    assert executors.default_workers("ray", "cpu", jobs=20) == 1  # Ray: one task in flight unless asked
    executors.check_options("local", None, None)  # not given is allowed; a count below one is not
    with pytest.raises(UserError, match="--workers"):
        executors.check_options("local", 0, None)
