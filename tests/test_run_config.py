"""One run configuration: the command line, a YAML file and the Python API build equal objects; config.json
reads back into an equal one; the resume check names every setting that changes what a run measures."""
import dataclasses
import json

import pytest

import bench.api as gb
from bench.cli import _apply_config_file, build_parser
from bench.config.errors import UserError
from bench.config.run_config import RunConfig, from_cli
from bench.run import executors, resume


def cli_config(argv: list[str]) -> RunConfig:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        args = _apply_config_file(parser, argv, args)
    return from_cli(args)


WANTED = RunConfig(models=("fvsbn", "realnvp"), dataset="digits", budget="50steps", seeds=(0, 1), eval_size=40,
                   fidelity_samples=30, throughput_cap_s=5.0, scaling=False, progress=False, isolate=False,
                   workers=2, checkpoint_every="10steps", model_args={"fvsbn": {"lr": 0.002}}, out="runs/x")


def test_flags_yaml_and_the_api_build_equal_configurations(tmp_path):
    flags = cli_config(["run", "--models", "fvsbn,realnvp", "--dataset", "digits", "--budget", "50steps",
                        "--seeds", "0,1", "--eval-size", "40", "--fid-samples", "30", "--throughput-cap", "5",
                        "--no-scaling", "--no-progress", "--in-process", "--workers", "2",
                        "--checkpoint-every", "10steps", "--model-args", "fvsbn:lr=0.002", "--out", "runs/x"])
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("models: [fvsbn, realnvp]\ndataset: digits\nbudget: 50steps\nseeds: [0, 1]\neval-size: 40\n"
                         "fid_samples: 30\nthroughput-cap: 5.0\nno_scaling: true\nno_progress: true\nin_process: true\n"
                         "workers: 2\ncheckpoint_every: 10steps\nmodel_args: {fvsbn: {lr: 0.002}}\nout: runs/x\n")
    from_yaml = cli_config(["run", "--config", str(yaml_file)])
    from_api = gb.config(["fvsbn", "realnvp"], dataset="digits", budget="50steps", seeds=[0, 1], eval_size=40,
                         fidelity_samples=30, throughput_cap_s=5.0, scaling=False, progress=False, isolate=False,
                         workers=2, checkpoint_every="10steps", model_args={"fvsbn": {"lr": 0.002}}, out="runs/x")
    assert flags == WANTED and from_yaml == WANTED and from_api == WANTED


def test_defaults_agree_across_front_ends():
    assert cli_config(["run", "--models", "fvsbn"]) == gb.config(["fvsbn"], progress=True, scaling=True) \
        == RunConfig(models=("fvsbn",))
    assert cli_config(["run", "--all"]).models == gb.config("all").models


def test_a_flag_wins_over_the_file(tmp_path):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("models: fvsbn\nbudget: 50steps\nseeds: 3\n")
    got = cli_config(["run", "--config", str(yaml_file), "--budget", "smoke"])
    assert (got.budget, got.seeds, got.models) == ("smoke", (3,), ("fvsbn",))


def test_the_json_record_reads_back_into_an_equal_configuration():
    resolved = WANTED.resolved(test_size=500, device="cpu")
    assert RunConfig.from_json(json.loads(json.dumps({"run_config": resolved.to_json()}))) == resolved
    assert resolved.eval_size == 40 and resolved.fidelity_samples == 30 and resolved.device == "cpu"


def test_resolving_fills_the_budgets_and_the_datasets_defaults():
    smoke = RunConfig(models=("fvsbn",), budget="smoke").resolved(test_size=1000, device="cpu")
    assert (smoke.eval_size, smoke.fidelity_samples, smoke.throughput_cap_s) == (200, 200, 8.0)
    default = RunConfig(models=("fvsbn",)).resolved(test_size=1000, device="cpu")
    assert (default.eval_size, default.fidelity_samples, default.throughput_cap_s) == (1000, 1000, 20.0)
    assert RunConfig(models=("fvsbn",), eval_size=5000).resolved(1000, "cpu").eval_size == 1000  # at most the split
    # the same run spelt two ways is one run
    assert smoke == RunConfig(models=("fvsbn",), budget="smoke", eval_size=200).resolved(1000, "cpu")


COMPARED = [f for f in dataclasses.fields(RunConfig) if f.metadata["compared"]]
CHANGED = {"dataset": "digits", "budget": "9steps", "device": "cuda", "data_root": "/elsewhere", "fidelity_samples": 7,
           "eval_size": 9, "throughput_cap_s": 3.0, "early_stopping": True}


@pytest.mark.parametrize("name", [f.name for f in COMPARED])
def test_the_resume_check_names_each_changed_setting(name):
    folder = RunConfig(models=("fvsbn",), budget="smoke").resolved(1000, "cpu")
    label = next(f.metadata["compared"] for f in COMPARED if f.name == name)
    diffs = resume.differences({"run_config": folder.to_json()}, folder.replace(**{name: CHANGED[name]}), {})
    assert len(diffs) == 1 and diffs[0].startswith(label + " is ")


def test_every_compared_setting_has_a_changed_value_here():
    assert sorted(f.name for f in COMPARED) == sorted(CHANGED)


def test_how_a_run_goes_is_not_compared():
    folder = RunConfig(models=("fvsbn",)).resolved(1000, "cpu")
    other = folder.replace(models=("fvsbn", "made"), seeds=(0, 1), workers=4, progress=False, executor="ray",
                           checkpoint_every="50steps", fresh=True, out="elsewhere")
    assert resume.differences({"run_config": folder.to_json()}, other, {}) == []


@pytest.mark.parametrize("settings, words", [
    ({"fidelity_samples": 1}, "--fid-samples must be at least 2"),
    ({"eval_size": 0}, "--eval-size must be a positive"),
    ({"budget": "lots"}, "malformed budget"),
    ({"checkpoint_every": "3epochs"}, "--checkpoint-every takes a time or a step count"),
    ({"models": ()}, "say which models to run: --all, or --models"),
])
def test_impossible_settings_are_refused_with_the_fix(settings, words):
    with pytest.raises(UserError, match=words):
        RunConfig(**{"models": ("fvsbn",), **settings}).check()


def test_a_run_without_models_exits_2_naming_the_fix(capsys):
    from bench.cli import main

    assert main(["run", "--budget", "smoke"]) == 2
    assert "say which models to run" in capsys.readouterr().err


@pytest.mark.parametrize("settings, words", [
    ({"executor": "slurm"}, "unknown executor 'slurm'"),
    ({"workers": 0}, "--workers must be at least 1"),
    ({"ray_address": "auto"}, "--ray-address needs --executor ray"),
])
def test_impossible_executor_options_are_refused_with_the_fix(settings, words):
    run = RunConfig(models=("fvsbn",), **settings)
    with pytest.raises(UserError, match=words):
        executors.check_options(run.executor, run.workers, run.ray_address)


def test_an_unknown_setting_is_named():
    with pytest.raises(UserError, match="unknown run setting fid_samples"):
        gb.config(["fvsbn"], fid_samples=10)


def test_malformed_seeds_exit_2_naming_the_flag(capsys):
    from bench.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["run", "--models", "fvsbn", "--seeds", "a,b"])
    assert stop.value.code == 2
    assert "--seeds: give comma-separated integers" in capsys.readouterr().err

