"""The Python API: a suite run returns the same tidy table the run folder holds; load reads any run."""
import pandas as pd
import pytest

import bench.api as gb
from bench.config.errors import UserError
from bench.config.run_config import RunConfig


def test_run_returns_the_tidy_metrics_table_of_its_folder(tmp_path):
    metrics = gb.run(["fvsbn"], budget="3steps", out=tmp_path / "run", isolate=False, eval_size=50,
                     fidelity_samples=50)
    on_disk = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert metrics.attrs["run_dir"] == str(tmp_path / "run")
    assert len(metrics) == len(on_disk) and set(metrics["metric"]) == set(on_disk["metric"])
    bpd = metrics.query("model == 'fvsbn' and metric == 'test_bpd'")
    assert len(bpd) == 1 and bpd["kind"].item() == "exact" and 0 < bpd["value"].item() < 1.5
    run = gb.load(tmp_path / "run")
    assert run.config["models"] == ["fvsbn"]
    assert run.jobs.set_index("model").loc["fvsbn", "status"] == "ok"
    assert "fvsbn" in run.summary["model"].tolist()
    # config.json records the run configuration whole, resolved; it reads back into an equal object
    asked = gb.config(["fvsbn"], budget="3steps", out=tmp_path / "run", isolate=False, eval_size=50, fidelity_samples=50,
                      progress=False, scaling=False)  # gb.run's own defaults
    assert RunConfig.from_json(run.config) == asked.resolved(run.config["test_size"], "cpu")


def test_unknown_model_and_missing_folder_raise_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown model"):
        gb.run(["nosuch"], budget="smoke", out=tmp_path / "x")
    with pytest.raises(UserError, match="does not exist"):
        gb.load(tmp_path / "nothing")
