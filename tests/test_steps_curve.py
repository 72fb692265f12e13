"""The quality-against-steps curve: its time budget and skips, the model's own point, the sampler notes,
and its rows in summary.csv, bench compare and the report (kept apart from the headline figures)."""
from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pandas as pd
import pytest

from bench.evaluate import metrics
from bench.results import compare
from bench.results import report
from bench.config import paths
from bench.results import tables as results
from bench.evaluate import steps_curve


class StepModel:
    """A stand-in for a trained model: one setting, ``sampling_steps``, and its cost."""

    sampling_step_options = (2, 4, 8, 64)

    def __init__(self):
        self.sampling_steps = 8

    @property
    def sampling_nfe(self):
        return self.sampling_steps

    def sampler_description(self):
        return f"toy, {self.sampling_steps} steps"

    def likelihood_description(self):
        return "bound of the toy chain"


SECONDS_PER_SAMPLE_STEP = 0.001


@pytest.fixture
def fake_draw(monkeypatch):
    """Each point 'costs' n x steps x 1 ms (no sampling, no classifier); FID = 100 / steps."""
    seen = []

    def measure_point(model, data, device, job, classifier, n, batch):
        seen.append(model.sampling_steps)
        return 100.0 / model.sampling_steps, 1.0 / (SECONDS_PER_SAMPLE_STEP * model.sampling_steps), 3

    monkeypatch.setattr(steps_curve, "_measure_point", measure_point)
    monkeypatch.setattr("bench.evaluate.classifier.has_labels", lambda data: True)
    monkeypatch.setattr("bench.evaluate.sample_quality.job_classifier", lambda data, device, job: None)
    return seen


def headline_rows(model):
    speed = 1.0 / (SECONDS_PER_SAMPLE_STEP * model.sampling_nfe)
    return [metrics.row("fid", 12.5, "", "estimate", note="1000 samples"),
            metrics.row("sample_throughput", speed, "samples/s", batch=16),
            metrics.row("sample_throughput", speed, "samples/s", batch=256),
            metrics.row("sampling_nfe", model.sampling_nfe, "evaluations", "exact"),
            metrics.row("test_bpd", 1.0, "bits/dim", "bound")]


def run_curve(budget="60s", cap=20.0, n=1000):
    model = StepModel()
    job = SimpleNamespace(fidelity_samples=n, budget=budget, throughput_cap_s=cap, seed=0, out="/nonexistent")
    outcome = SimpleNamespace(notes=[], info={})
    data = SimpleNamespace(test_images=[0] * n)
    rows = steps_curve.evaluate(model, data, "cpu", job, outcome, headline_rows(model))
    return model, rows, outcome


def test_points_within_the_budget_are_measured_the_rest_skipped_and_said(fake_draw):
    # A point is projected at n x steps x 1 ms: 2 s, 4 s, 64 s. The budget is 6 x the throughput cap:
    # a 10 s cap gives 60 s, and 64 steps are skipped; a 20 s cap gives 120 s, and they run.
    model, rows, outcome = run_curve(cap=10.0)
    assert fake_draw == [2, 4]
    assert model.sampling_steps == 8  # the setting is restored
    assert any(n.startswith("steps curve: 64 steps skipped: projected 64s >") and n.endswith("of its 60s budget")
               for n in outcome.notes)
    curve = pd.DataFrame([r for r in rows if r.get("steps") is not None])
    fid = curve[curve.metric == "fid"].set_index("steps")["value"]
    assert fid.to_dict() == {2: 50.0, 4: 25.0, 8: 12.5}  # 8: the headline FID, copied, not drawn again
    speed = curve[curve.metric == "sample_throughput"].set_index("steps")
    assert set(speed["batch"]) == {256}  # the largest throughput batch 1000 samples fill
    assert speed.loc[2, "value"] == pytest.approx(500.0)
    nfe = curve[curve.metric == "sampling_nfe"].set_index("steps")["value"]
    assert nfe.to_dict() == {2: 2, 4: 4, 8: 8}
    _, rows, _ = run_curve(cap=20.0)
    assert 64 in {r.get("steps") for r in rows}


def test_smoke_measures_only_the_smallest_step_counts(fake_draw):
    _, rows, _ = run_curve(budget="smoke", n=200)
    assert fake_draw == [2, 4]
    speeds = [r for r in rows if r["metric"] == "sample_throughput" and r.get("steps")]
    assert {r["batch"] for r in speeds} == {16}  # 200 samples fill batches of 16, not 256


def test_headline_rows_name_the_sampler_and_the_likelihood_chain(fake_draw):
    _, rows, outcome = run_curve()
    headline = {r["metric"]: r for r in rows if r.get("steps") is None}
    assert headline["fid"]["note"] == "1000 samples; sampler: toy, 8 steps"
    assert headline["sampling_nfe"]["note"] == "sampler: toy, 8 steps"
    assert headline["test_bpd"]["note"] == "bound of the toy chain"
    assert outcome.info == {"sampler": "toy, 8 steps", "likelihood_chain": "bound of the toy chain"}
    curve_fid = [r for r in rows if r["metric"] == "fid" and r.get("steps") == 2][0]
    assert curve_fid["note"].startswith("toy, 2 steps")


def test_a_model_without_step_options_gets_no_curve():
    model = SimpleNamespace(sampling_nfe=1)
    rows = [metrics.row("fid", 3.0, "", "estimate")]
    assert steps_curve.evaluate(model, None, "cpu", None, SimpleNamespace(notes=[], info={}), rows) == rows


# --- the tables downstream ---------------------------------------------------------------------
def outcome(fid_by_steps, headline_fid=12.5, seed=0):
    rows = [metrics.row("fid", headline_fid, "", "estimate"),
            metrics.row("sample_throughput", 40.0, "samples/s", batch=256)]
    for steps, fid in fid_by_steps.items():
        rows += [metrics.row("fid", fid, "", "estimate", steps=steps),
                 metrics.row("sample_throughput", 2000.0 / steps, "samples/s", batch=256, steps=steps)]
    return {"job": {"model": "ddpm", "dataset": "mnist5k", "seed": seed, "budget": "smoke"},
            "info": {"family": "diffusion", "track": "8bit", "sampler": "ancestral, 50 respaced steps",
                     "likelihood_chain": "bound of the T=1000 chain"},
            "rows": rows, "status": "ok", "reason": "", "wall_seconds": 1.0, "curve": [],
            "notes": ["steps curve: 1000 steps skipped: projected 2000s > 100s left of its 120s budget"]}


def write_run(folder, outcomes):
    (folder / "jobs").mkdir(parents=True)
    for o in outcomes:
        (folder / "jobs" / f"ddpm__mnist5k__seed{o['job']['seed']}.json").write_text(json.dumps(o))
    results.write_tables(folder, outcomes)
    paths.write_json(folder / "config.json", {"dataset": "mnist5k", "budget": "smoke", "seeds": [0, 1],
                                                "device": "cpu", "models": ["ddpm"]})
    return folder


def test_summary_keeps_the_headline_apart_from_the_curve(tmp_path):
    folder = write_run(tmp_path / "run", [outcome({10: 40.0, 20: 30.0}), outcome({10: 44.0, 20: 30.0}, seed=1)])
    summary = pd.read_csv(folder / "summary.csv").iloc[0]
    assert summary["fid_mean"] == 12.5
    assert summary["fid@steps=10_mean"] == pytest.approx(42.0)
    assert summary["sample_throughput@256@steps=20_mean"] == pytest.approx(100.0)
    assert summary["sample_throughput@256_mean"] == 40.0
    assert compare.split_key("sample_throughput@256@steps=20") == ("sample_throughput@steps=20", 256)
    assert compare.rule_for("fid@steps=20") == compare.rule_for("fid")


def test_compare_gates_a_curve_point_like_its_metric(tmp_path):
    base = write_run(tmp_path / "base", [outcome({10: 40.0})])
    baseline = compare.write_baseline(base, tmp_path / "base.json")
    worse = write_run(tmp_path / "now", [outcome({10: 60.0})])
    rows = compare.compare(worse, json.loads(baseline.read_text()))
    verdicts = {(r.metric, r.batch): r.verdict for r in rows}
    assert verdicts[("fid@steps=10", None)] == "regressed"
    assert verdicts[("fid", None)] == "ok"
    assert verdicts[("sample_throughput@steps=10", 256)] == "ok"


def test_report_has_the_curve_section_and_names_each_chain(tmp_path):
    folder = write_run(tmp_path / "run", [outcome({10: 40.0, 20: 30.0}), outcome({10: 44.0, 20: 30.0}, seed=1)])
    report.render(folder)
    text = (folder / "report.md").read_text()
    section = text.split("## Sample quality against sampling steps")[1].split("\n## ")[0]
    assert "| ddpm    | 10      |" in section and "42.00" in section and "30.00" in section
    assert "200 (batch 256)" in section  # 2000 / 10 samples/s
    assert "1000 steps skipped" in section
    assert (folder / "plots" / "steps_curve.png").exists()
    assert ("ddpm: bits/dim is the bound of the T=1000 chain; FID, IS, KID, precision/recall, samples/s and "
            "NFE / sample are for its sampler: ancestral, 50 respaced steps.") in text
    summary = report.summary_table(*[getattr(report.load_run(folder), a) for a in ("summary", "metrics", "info")])
    assert summary.set_index("model").loc["ddpm", "FID"].startswith("12.50")  # the headline, not a curve point


def test_the_runner_walks_the_registered_measurements_and_a_new_one_is_one_registration(tmp_path, monkeypatch):
    """A measurement registered in bench.evaluate.measurements runs on every job it applies to; its rows reach metrics.csv."""
    from bench import suite
    from bench.evaluate import measurements as evaluation
    from bench.cli import main

    class ParameterNorm(evaluation.Measurement):
        name = "parameter norm"

        def applies(self, model):
            return model.likelihood == "exact"

        def measure(self, ctx):
            norm = sum(float(p.detach().pow(2).sum()) for p in ctx.model.parameters()) ** 0.5
            return [{"metric": "param_norm", "value": norm, "unit": "", "kind": "measured"}]

    monkeypatch.setattr(evaluation, "MEASUREMENTS", list(evaluation.MEASUREMENTS))
    monkeypatch.setattr(suite, "_prepare_shared", lambda *args, **kwargs: [])
    monkeypatch.setattr(evaluation.SampleQuality, "measure", lambda self, ctx: [])
    evaluation.register_measurement(ParameterNorm(), before="sample grid")
    names = [m.name for m in evaluation.MEASUREMENTS]
    assert names.index("parameter norm") == names.index("sample grid") - 1
    out = tmp_path / "run"
    assert main(["run", "--models", "fvsbn,cgan", "--budget", "2steps", "--out", str(out), "--no-progress",
                 "--in-process", "--no-scaling", "--eval-size", "20"]) == 0
    metrics = pd.read_csv(out / "metrics.csv")
    norms = metrics[metrics.metric == "param_norm"]
    assert list(norms.model) == ["fvsbn"] and norms.value.item() > 0  # cgan has no exact likelihood
    with pytest.raises(ValueError, match="twice"):
        evaluation.register_measurement(ParameterNorm())


class AdaptiveModel(StepModel):
    """Its own setting is an adaptive solver (flow matching's ``sampling_steps`` None); the curve's points
    are fixed step counts."""

    def __init__(self):
        self.sampling_steps = None

    @property
    def sampling_nfe(self):
        return 30 if self.sampling_steps is None else self.sampling_steps


def test_an_adaptive_headline_has_no_own_point_and_every_option_is_measured(fake_draw, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "StepModel", AdaptiveModel)
    model, rows, _ = run_curve()
    assert fake_draw == [2, 4, 8, 64]  # 8 is measured too: no headline point stands in for it
    assert model.sampling_steps is None  # the setting is restored
    curve = [r for r in rows if r.get("steps") is not None]
    assert sorted({r["steps"] for r in curve}) == [2, 4, 8, 64]
    assert not any("headline measurement" in (r.get("note") or "") for r in curve)
