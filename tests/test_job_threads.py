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
