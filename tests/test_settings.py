"""Per-model settings (--model-args) and configuration files (--config): parsing, precedence, refusals."""
import json

import pytest

from bench.cli import main
from bench.config.errors import UserError
from bench.config.model_settings import constructor_settings, parse_model_args, resolve_model_args


def test_model_args_parse_numbers_booleans_tuples_and_strings():
    parsed = parse_model_args(["realnvp:lr=5e-4,hidden=64", "vae-z2:channels=(16, 32)", "ddpm:schedule=cosine"])
    assert parsed == {"realnvp": {"lr": 5e-4, "hidden": 64}, "vae-z2": {"channels": (16, 32)},
                      "ddpm": {"schedule": "cosine"}}


@pytest.mark.parametrize("bad", ["realnvp", "realnvp:", "realnvp:lr", ":lr=1"])
def test_malformed_model_args_are_refused(bad):
    with pytest.raises(UserError, match="--model-args"):
        parse_model_args([bad])


def test_resolved_settings_are_the_constructor_defaults_with_overrides():
    defaults = constructor_settings("fvsbn")
    assert defaults["lr"] == pytest.approx(1e-3)
    resolved = resolve_model_args({"fvsbn": {"lr": 2e-3}}, ["fvsbn", "realnvp"])
    assert resolved["fvsbn"]["lr"] == 2e-3 and resolved["realnvp"] == constructor_settings("realnvp")
    assert constructor_settings("vae-z4")["latent_dim"] == 4  # the registry's own defaults count


@pytest.mark.parametrize("args, word", [
    (["--models", "fvsbn", "--model-args", "fvsbn:nosuch=1"], "no setting 'nosuch'"),
    (["--models", "fvsbn", "--model-args", "nosuch:lr=1"], "unknown model"),
    (["--models", "fvsbn", "--model-args", "realnvp:lr=1"], "does not include"),
])
def test_unknown_model_settings_exit_2_naming_the_problem(tmp_path, capsys, args, word):
    assert main(["run", *args, "--budget", "smoke", "--out", str(tmp_path / "x")]) == 2
    assert word in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # refused before any work


def test_config_file_with_an_unknown_key_exits_2(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("models: fvsbn\nbudgett: smoke\n")
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "unknown key budgett" in err and "budget" in err


def test_flags_win_over_the_file_and_settings_reach_the_model(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("models: [fvsbn]\nbudget: 50steps\neval-size: 40\nfid_samples: 40\nno_scaling: true\n"
                      "no_progress: true\nin_process: true\nmodel_args:\n  fvsbn: {lr: 0.002, init_bias_logit: -1.0}\n")
    out = tmp_path / "run"
    code = main(["run", "--config", str(config), "--budget", "2steps", "--model-args", "fvsbn:lr=0.004",
                 "--out", str(out)])
    assert code == 0
    written = json.loads((out / "config.json").read_text())
    assert written["budget"] == "2steps"  # the flag, not the file's 50steps
    assert written["eval_size"] == 40  # from the file
    assert written["model_args"] == {"fvsbn": {"lr": 0.004, "init_bias_logit": -1.0}}  # merged, flag wins
    assert written["model_settings"]["fvsbn"]["lr"] == 0.004
    job = json.loads((out / "jobs" / "fvsbn__mnist5k__seed0.json").read_text())
    assert job["job"]["model_args"] == {"lr": 0.004, "init_bias_logit": -1.0}
    report = (out / "report.md").read_text()  # the report records every model's settings and training batch
    assert "### Model settings" in report and "lr=0.004" in report and "| fvsbn   | 128     |" in report
