"""Regression tracking (`bench compare`, `bench baseline`): verdicts, exit codes, refusals, round trip.

Most runs here are synthetic: a folder with the three files compare reads (config.json, metrics.csv,
jobs.csv), written from a dict of values, so each test states the numbers it judges. One test makes a
real smoke run of FVSBN and round-trips it through a baseline.
"""
import json
import math

import pandas as pd
import pytest

from bench.results import compare
from bench.cli import main

CONFIG = {"dataset": "mnist5k", "budget": "smoke", "budget_resolved": {"kind": "steps", "amount": 20.0,
          "label": "smoke"}, "seeds": [0], "device": "cpu", "fidelity_samples": 1000,
          "versions": {"torch": "x"}, "git_commit": "abc", "hardware": {"cpu_count": 2}}

BASE_VALUES = {
    "fvsbn": {"test_bpd": 0.70, "test_nll": 380.0, "sample_throughput@16": 400.0, "train_throughput": 2000.0,
              "train_seconds": 0.6, "params": 615440, "peak_memory": 700.0},
    "realnvp": {"test_bpd": 6.40, "test_nll": 3480.0, "sample_throughput@16": 350.0,
                "train_throughput": 40.0, "train_seconds": 30.0, "params": 106929, "peak_memory": 1100.0},
}


def write_run(folder, values, config_changes=None, statuses=None, seeds=(0,)):
    """A run folder: ``values`` is model -> {metric[@batch]: value or [value per seed]}."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, jobs = [], []
    for model, metrics in values.items():
        for key, value in metrics.items():
            metric, _, batch = key.partition("@")
            per_seed = value if isinstance(value, list) else [value] * len(seeds)
            for seed, v in zip(seeds, per_seed):
                rows.append({"model": model, "family": "f", "dataset": "mnist5k", "track": "binary", "seed": seed,
                             "budget": "smoke", "metric": metric, "value": v, "unit": "", "kind": "measured",
                             "batch": int(batch) if batch else None, "note": ""})
        for seed in seeds:
            status = (statuses or {}).get(model, "ok")
            jobs.append({"model": model, "dataset": "mnist5k", "seed": seed, "status": status,
                         "reason": "" if status == "ok" else "diverged at step 7: loss became nan",
                         "wall_seconds": 1.0, "notes": ""})
    frame = pd.DataFrame(rows)
    frame["batch"] = frame["batch"].astype("Int64")
    frame.to_csv(folder / "metrics.csv", index=False)
    pd.DataFrame(jobs).to_csv(folder / "jobs.csv", index=False)
    config = {**CONFIG, "seeds": list(seeds), **(config_changes or {})}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def changed(values, model, key, value):
    out = {m: dict(v) for m, v in values.items()}
    out[model][key] = value
    return out


@pytest.fixture
def baseline_file(tmp_path):
    run = write_run(tmp_path / "base_run", BASE_VALUES)
    return compare.write_baseline(run, tmp_path / "baselines" / "base.json")


def run_compare(tmp_path, values, baseline_file, *extra, capsys=None, **run_options):
    run = write_run(tmp_path / "current", values, **run_options)
    code = main(["compare", str(run), "--baseline", str(baseline_file), *extra])
    return code, (capsys.readouterr() if capsys else None)


def table_lines(out: str, verdict: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("|") and f" {verdict} " in line]


# --- verdicts and exit codes -----------------------------------------------------------------
def test_identical_run_passes_with_every_gated_metric_ok(tmp_path, baseline_file, capsys):
    code, out = run_compare(tmp_path, BASE_VALUES, baseline_file, capsys=capsys)
    assert code == 0
    assert not table_lines(out.out, "REGRESSED") and "ok: no changes beyond tolerance" in out.out
    assert len(table_lines(out.out, "ok")) == 2 * 5  # test_bpd, test_nll, 2 throughputs, peak_memory
    assert len(table_lines(out.out, "info")) == 2 * 2  # train_seconds, params: never gated


def test_bits_per_dim_raised_beyond_tolerance_fails_naming_model_and_metric(tmp_path, baseline_file, capsys):
    worse = changed(BASE_VALUES, "realnvp", "test_bpd", 6.40 * 1.05)  # +5%, the band is 1%
    code, out = run_compare(tmp_path, worse, baseline_file, capsys=capsys)
    assert code == 1
    (line,) = table_lines(out.out, "REGRESSED")
    assert "realnvp" in line and "test_bpd" in line and "+5.0%" in line
    assert "Regressed: realnvp test_bpd" in out.out


def test_bits_per_dim_change_inside_tolerance_passes(tmp_path, baseline_file):
    code, _ = run_compare(tmp_path, changed(BASE_VALUES, "realnvp", "test_bpd", 6.40 * 1.009), baseline_file)
    assert code == 0


def test_better_bits_per_dim_is_improved_not_a_failure(tmp_path, baseline_file, capsys):
    code, out = run_compare(tmp_path, changed(BASE_VALUES, "fvsbn", "test_bpd", 0.60), baseline_file,
                            capsys=capsys)
    assert code == 0
    (line,) = table_lines(out.out, "improved")
    assert "fvsbn" in line and "test_bpd" in line


@pytest.mark.parametrize("factor, code", [(0.5, 0), (0.31, 0), (0.25, 1)])
def test_throughput_fails_only_below_three_tenths_of_the_baseline(tmp_path, baseline_file, factor, code, capsys):
    slower = changed(BASE_VALUES, "fvsbn", "sample_throughput@16", 400.0 * factor)
    got, out = run_compare(tmp_path, slower, baseline_file, capsys=capsys)
    assert got == code
    if code:
        (line,) = table_lines(out.out, "REGRESSED")
        assert "sample_throughput" in line and "| 16 " in line


def test_training_time_is_informational(tmp_path, baseline_file):
    # Under a step budget train_seconds is train_examples / train_throughput: gating it would count twice.
    code, _ = run_compare(tmp_path, changed(BASE_VALUES, "fvsbn", "train_seconds", 60.0), baseline_file)
    assert code == 0


def test_metric_that_became_nan_is_a_regression(tmp_path, baseline_file):
    code, _ = run_compare(tmp_path, changed(BASE_VALUES, "fvsbn", "test_nll", float("nan")), baseline_file)
    assert code == 1


def test_direction_of_sample_quality_metrics(tmp_path):
    base = {"gan": {"fid": 40.0, "precision": 0.60, "is": 5.0}}
    baseline = compare.write_baseline(write_run(tmp_path / "b", base), tmp_path / "b.json")
    verdicts = {}
    for name, values in {"fid_up": {"fid": 50.0, "precision": 0.60, "is": 5.0},
                         "fid_down": {"fid": 30.0, "precision": 0.60, "is": 5.0},
                         "precision_down": {"fid": 40.0, "precision": 0.50, "is": 5.0},
                         "is_up": {"fid": 40.0, "precision": 0.60, "is": 6.0}}.items():
        rows = compare.compare(write_run(tmp_path / name, {"gan": values}), compare.read_baseline(baseline))
        verdicts[name] = {r.metric: r.verdict for r in rows}
    assert verdicts["fid_up"]["fid"] == "regressed" and verdicts["fid_down"]["fid"] == "improved"
    assert verdicts["precision_down"]["precision"] == "regressed"
    assert verdicts["is_up"]["is"] == "improved"


def test_data_row_is_compared_like_a_model(tmp_path):
    base = {"data": {"fid": 1.0, "kid": 0.0}, "fvsbn": {"test_bpd": 0.7}}
    baseline = compare.write_baseline(write_run(tmp_path / "b", base), tmp_path / "b.json")
    rows = compare.compare(write_run(tmp_path / "c", changed(base, "data", "kid", 0.05)),
                           compare.read_baseline(baseline))
    assert [(r.model, r.metric) for r in rows if r.verdict == "regressed"] == [("data", "kid")]


# --- models on one side only, failed jobs ----------------------------------------------------
def test_added_model_is_reported_as_added(tmp_path, baseline_file, capsys):
    more = {**BASE_VALUES, "vae-z2": {"test_bpd": 0.3, "test_nll": 160.0}}
    code, out = run_compare(tmp_path, more, baseline_file, capsys=capsys)
    assert code == 0
    (line,) = table_lines(out.out, "added")
    assert "vae-z2" in line and "1 added" in out.out


def test_removed_model_is_reported_as_removed(tmp_path, baseline_file, capsys):
    code, out = run_compare(tmp_path, {"fvsbn": BASE_VALUES["fvsbn"]}, baseline_file, capsys=capsys)
    assert code == 0
    (line,) = table_lines(out.out, "removed")
    assert "realnvp" in line


def test_model_that_diverged_now_but_not_in_the_baseline_is_a_regression(tmp_path, baseline_file, capsys):
    # A diverged job still reports its training rows, but no likelihood.
    diverged = {**BASE_VALUES, "realnvp": {k: v for k, v in BASE_VALUES["realnvp"].items()
                                           if k not in ("test_bpd", "test_nll", "sample_throughput@16")}}
    code, out = run_compare(tmp_path, diverged, baseline_file, capsys=capsys, statuses={"realnvp": "diverged"})
    assert code == 1
    (line,) = table_lines(out.out, "REGRESSED")
    assert "realnvp" in line and "job status" in line and "diverged at step 7" in line


def test_values_are_averaged_over_seeds(tmp_path):
    run = write_run(tmp_path / "r", {"fvsbn": {"test_bpd": [0.70, 0.74, 0.72], "params": 10}}, seeds=(0, 1, 2))
    stored = compare.build_baseline(run)["values"]["fvsbn"]
    assert stored["test_bpd"] == pytest.approx((0.70 + 0.74 + 0.72) / 3)
    assert stored["params"] == 10


# --- refusing what cannot be compared --------------------------------------------------------
def test_data_rows_of_two_tracks_are_two_entries_not_one_average(tmp_path):
    """The data rows score real images on the binary and the 8-bit track: compared per (model, track)."""
    run = write_run(tmp_path / "base", {"data": {"fid": 1.0}, "fvsbn": {"test_bpd": 0.7}})
    metrics = pd.read_csv(run / "metrics.csv")
    data = metrics[metrics["model"] == "data"]
    metrics = pd.concat([metrics, data.assign(track="8bit", value=3.0)], ignore_index=True)
    metrics.to_csv(run / "metrics.csv", index=False)
    _, frame, _ = compare.load_run(run)
    values = compare.runs.mean_values(frame)
    assert values["data (binary)"] == {"fid": 1.0} and values["data (8bit)"] == {"fid": 3.0}
    assert values["fvsbn"] == {"test_bpd": 0.7}  # one track: the model's own name
    baseline = compare.build_baseline(run)
    worse = metrics.copy()
    worse.loc[(worse["model"] == "data") & (worse["track"] == "8bit"), "value"] = 6.0
    now = write_run(tmp_path / "now", {"data": {"fid": 1.0}, "fvsbn": {"test_bpd": 0.7}})
    worse.to_csv(now / "metrics.csv", index=False)
    rows = compare.compare(now, baseline)
    assert [(r.model, r.metric) for r in rows if r.verdict == "regressed"] == [("data (8bit)", "fid")]
    assert sum(r.metric == "job status" for r in rows) == 0  # the data jobs are judged once, and were ok


@pytest.mark.parametrize("changes, word", [
    ({"dataset": "digits"}, "dataset"),
    ({"budget": "default", "budget_resolved": {"kind": "seconds", "amount": 60.0, "label": "default"}}, "budget"),
    ({"device": "cuda"}, "device"),
])
def test_baseline_of_another_dataset_or_budget_is_refused(tmp_path, baseline_file, capsys, changes, word):
    code, out = run_compare(tmp_path, BASE_VALUES, baseline_file, capsys=capsys, config_changes=changes)
    assert code == 2
    assert f"baseline was made with {word}" in out.err and "not comparable" in out.err


def test_other_seeds_are_refused(tmp_path, baseline_file, capsys):
    code, out = run_compare(tmp_path, BASE_VALUES, baseline_file, capsys=capsys, seeds=(0, 1))
    assert code == 2 and "seeds [0]" in out.err and "[0, 1]" in out.err


def test_same_budget_spelled_differently_is_accepted(tmp_path, baseline_file):
    code, _ = run_compare(tmp_path, BASE_VALUES, baseline_file, config_changes={"budget": "20steps"})
    assert code == 0


def test_missing_files_are_refused_with_exit_2(tmp_path, baseline_file, capsys):
    assert main(["compare", str(tmp_path / "nowhere"), "--baseline", str(baseline_file)]) == 2
    assert "does not exist" in capsys.readouterr().err
    run = write_run(tmp_path / "r", BASE_VALUES)
    assert main(["compare", str(run), "--baseline", str(tmp_path / "none.json")]) == 2
    assert "bench baseline" in capsys.readouterr().err
    (run / "jobs.csv").unlink()
    assert main(["compare", str(run), "--baseline", str(baseline_file)]) == 2
    assert "jobs.csv" in capsys.readouterr().err


def test_a_file_that_is_not_a_baseline_is_refused(tmp_path, capsys):
    run = write_run(tmp_path / "r", BASE_VALUES)
    not_baseline = tmp_path / "x.json"
    not_baseline.write_text(json.dumps({"hello": 1}))
    assert main(["compare", str(run), "--baseline", str(not_baseline)]) == 2
    assert "not a genbench baseline" in capsys.readouterr().err


# --- tolerances ------------------------------------------------------------------------------
@pytest.mark.parametrize("option, code", [
    ("test_bpd=10%", 0), ("test_bpd=0.1", 0), ("test_bpd=0.02", 1), ("test_bpd=abs:0.5", 0),
    ("test_bpd=abs:0.1", 1), ("test_bpd=off", 0),
])
def test_tolerance_from_the_command_line(tmp_path, baseline_file, option, code):
    worse = changed(BASE_VALUES, "realnvp", "test_bpd", 6.40 * 1.05)  # +0.32 bits/dim, +5%
    assert run_compare(tmp_path, worse, baseline_file, "--tolerance", option)[0] == code


@pytest.mark.parametrize("option", ["test_bpd", "test_bpd=", "test_bpd=lots", "test_bpd=-1%", "params=0.1"])
def test_malformed_tolerance_is_refused(tmp_path, baseline_file, capsys, option):
    code, out = run_compare(tmp_path, BASE_VALUES, baseline_file, "--tolerance", option, capsys=capsys)
    assert code == 2 and "--tolerance" in out.err


def test_tolerance_stored_in_the_baseline_file_is_used(tmp_path, baseline_file):
    worse = changed(BASE_VALUES, "realnvp", "test_bpd", 6.40 * 1.05)
    assert run_compare(tmp_path, worse, baseline_file)[0] == 1
    stored = json.loads(baseline_file.read_text())
    stored["tolerances"]["test_bpd"]["rel"] = 0.10
    baseline_file.write_text(json.dumps(stored))
    assert run_compare(tmp_path, worse, baseline_file)[0] == 0


def test_band_is_the_larger_of_relative_and_absolute():
    rule = compare.Rule("lower", rel=0.10, abs=0.5)
    assert rule.band(40.0) == pytest.approx(4.0) and rule.band(1.0) == 0.5
    assert compare.judge(rule, 1.0, 1.49) == "ok" and compare.judge(rule, 1.0, 1.51) == "regressed"
    assert compare.judge(compare.Rule("higher", rel=0.7), 100.0, 29.0) == "regressed"


def test_likelihood_like_model_metrics_are_gated_and_unknown_ones_are_not():
    assert compare.rule_for("test_iwae") == compare.rule_for("test_nll")
    assert compare.rule_for("iwae_k50").direction == "lower"
    assert not compare.rule_for("something_new").gated


# --- the baseline file -----------------------------------------------------------------------
def test_baseline_file_is_readable_json_with_the_run_context(tmp_path, capsys):
    run = write_run(tmp_path / "r", BASE_VALUES)
    out = tmp_path / "baselines" / "smoke.json"
    assert main(["baseline", str(run), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    stored = json.loads(out.read_text())
    for key in ["dataset", "budget", "seeds", "versions", "device", "git_commit", "created", "tolerances", "values"]:
        assert key in stored, key
    assert stored["values"]["fvsbn"]["sample_throughput@16"] == 400.0
    assert stored["tolerances"]["test_bpd"] == {"direction": "lower", "rel": 0.01, "abs": 0.0, "gated": True}
    assert len(out.read_text().splitlines()) > 30  # one value per line, not one long line


def test_nan_is_stored_as_null(tmp_path):
    run = write_run(tmp_path / "r", {"ebm": {"fid": float("nan"), "params": 3}})
    out = compare.write_baseline(run, tmp_path / "b.json")
    stored = json.loads(out.read_text())  # strict JSON: NaN would not parse in other tools
    assert stored["values"]["ebm"]["fid"] is None
    rows = compare.compare(write_run(tmp_path / "c", {"ebm": {"fid": float("nan"), "params": 3}}),
                           compare.read_baseline(out))
    assert {r.metric: r.verdict for r in rows}["fid"] == "ok"


def test_real_smoke_run_round_trips_through_a_baseline(tmp_path, isolated_cache, capsys, monkeypatch):
    # In process, without the sample-quality stage: a fresh cache would otherwise train the evaluation
    # classifier first (minutes); training, likelihood and throughput rows are enough for the round trip.
    from bench import suite
    from bench.evaluate import measurements as evaluation

    monkeypatch.setattr(suite, "_prepare_shared", lambda *args, **kwargs: [])
    monkeypatch.setattr(evaluation.SampleQuality, "measure", lambda self, ctx: [])
    run = tmp_path / "run"
    assert main(["run", "--models", "fvsbn", "--budget", "smoke", "--out", str(run), "--no-progress",
                 "--in-process"]) == 0
    baseline = tmp_path / "smoke.json"
    assert main(["baseline", str(run), "--out", str(baseline)]) == 0
    capsys.readouterr()
    assert main(["compare", str(run), "--baseline", str(baseline)]) == 0
    out = capsys.readouterr().out
    assert "fvsbn" in out and "test_bpd" in out and not table_lines(out, "REGRESSED")

    # A worsened model: its bits/dim raised by 3% in the run's metrics.csv.
    metrics = pd.read_csv(run / "metrics.csv")
    bpd = (metrics.model == "fvsbn") & (metrics.metric == "test_bpd")
    assert bpd.sum() == 1 and math.isfinite(metrics.loc[bpd, "value"].item())
    metrics.loc[bpd, "value"] *= 1.03
    metrics.to_csv(run / "metrics.csv", index=False)
    assert main(["compare", str(run), "--baseline", str(baseline)]) == 1
    (line,) = table_lines(capsys.readouterr().out, "REGRESSED")
    assert "fvsbn" in line and "test_bpd" in line


def test_model_that_failed_before_any_metric_is_a_regression_not_a_removal(tmp_path, baseline_file, capsys):
    run = write_run(tmp_path / "current", {"fvsbn": BASE_VALUES["fvsbn"]})
    jobs = pd.read_csv(run / "jobs.csv")
    failed = {"model": "realnvp", "dataset": "mnist5k", "seed": 0, "status": "failed",
              "reason": "RuntimeError: boom", "wall_seconds": 0.1, "notes": ""}
    pd.concat([jobs, pd.DataFrame([failed])]).to_csv(run / "jobs.csv", index=False)
    assert main(["compare", str(run), "--baseline", str(baseline_file)]) == 1
    (line,) = table_lines(capsys.readouterr().out, "REGRESSED")
    assert "realnvp" in line and "job status" in line and "RuntimeError: boom" in line


def test_differing_versions_and_threads_are_noted_not_refused(tmp_path, baseline_file, capsys):
    code, out = run_compare(tmp_path, BASE_VALUES, baseline_file, capsys=capsys,
                            config_changes={"versions": {"torch": "y"}, "hardware": {"cpu_count": 2,
                                                                                     "torch_threads": 1}})
    assert code == 0
    assert "note: torch x in the baseline, y now" in out.out


# --- CI-native output formats --------------------------------------------------------------------
def test_junit_output_parses_and_has_one_failure_per_regressed_metric(tmp_path, baseline_file):
    import xml.etree.ElementTree as ET

    worse = changed(changed(BASE_VALUES, "realnvp", "test_bpd", 6.40 * 1.05), "fvsbn", "test_nll", 380.0 * 1.2)
    out = tmp_path / "ci" / "compare.xml"
    code, _ = run_compare(tmp_path, worse, baseline_file, "--format", "junit", "--output", str(out))
    assert code == 1
    root = ET.parse(out).getroot()
    failures = root.findall(".//testcase/failure")
    failed = sorted(case.get("name") for case in root.iter("testcase") if case.find("failure") is not None)
    assert len(failures) == 2 and failed == ["test_bpd", "test_nll"]
    assert int(root.get("failures")) == 2
    # one test case per (model, metric[, batch]) row of the text table
    assert len(root.findall(".//testcase")) == 2 * 7
    assert {s.get("name") for s in root.findall("testsuite")} == {"fvsbn", "realnvp"}


def test_junit_output_of_an_identical_run_has_no_failures(tmp_path, baseline_file, capsys):
    import xml.etree.ElementTree as ET

    code, out = run_compare(tmp_path, BASE_VALUES, baseline_file, "--format", "junit", capsys=capsys)
    assert code == 0
    root = ET.fromstring(out.out.split("\n", 1)[1])  # after the XML declaration
    assert root.get("failures") == "0" and not root.findall(".//failure")


def test_markdown_and_json_outputs_name_the_regression(tmp_path, baseline_file, capsys):
    worse = changed(BASE_VALUES, "realnvp", "test_bpd", 6.40 * 1.05)
    code, out = run_compare(tmp_path, worse, baseline_file, "--format", "markdown", capsys=capsys)
    assert code == 1
    lines = [line for line in out.out.splitlines() if line.startswith("|")]
    assert "REGRESSED" in lines[2] and "realnvp" in lines[2]  # regressions first, after header and rule
    code, out = run_compare(tmp_path, worse, baseline_file, "--format", "json", capsys=capsys)
    payload = json.loads(out.out)
    assert code == 1 and payload["verdict"] == "regressed"
    (bad,) = [r for r in payload["rows"] if r["verdict"] == "regressed"]
    assert (bad["model"], bad["metric"]) == ("realnvp", "test_bpd")
    assert bad["current"] == pytest.approx(6.40 * 1.05)


def test_output_path_that_is_a_folder_is_refused(tmp_path, baseline_file, capsys):
    code, out = run_compare(tmp_path, BASE_VALUES, baseline_file, "--format", "json", "--output", str(tmp_path),
                            capsys=capsys)
    assert code == 2 and "is a folder" in out.err


def test_a_tolerance_override_reaches_the_steps_curve_rows_of_its_metric(tmp_path, capsys):
    """``--tolerance sample_throughput=off`` (CI's speed switch) also covers ``sample_throughput@steps=N``:
    a slower point of the steps curve is shown, not a regression."""
    def curve_run(folder, throughput):
        write_run(folder, {"ddpm": {"fid": 50.0, "sample_throughput@16": throughput}})
        metrics = pd.read_csv(folder / "metrics.csv")
        metrics["steps"] = [10 if m == "sample_throughput" else None for m in metrics["metric"]]
        metrics["steps"] = metrics["steps"].astype("Int64")
        metrics.to_csv(folder / "metrics.csv", index=False)
        return folder

    base = compare.write_baseline(curve_run(tmp_path / "base", 100.0), tmp_path / "base.json")
    assert "sample_throughput@16@steps=10" in json.loads(base.read_text())["values"]["ddpm"]
    slower = curve_run(tmp_path / "now", 10.0)
    assert main(["compare", str(slower), "--baseline", str(base)]) == 1
    assert "sample_throughput@steps=10" in capsys.readouterr().out
    assert main(["compare", str(slower), "--baseline", str(base), "--tolerance", "sample_throughput=off"]) == 0
