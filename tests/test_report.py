"""The report: summary statistics over seeds, likelihood tables per track, deterministic re-rendering.

Every test writes its own synthetic run folder (metrics.csv and the rest, as bench/results/tables.py writes
them) and checks the rendered figures against means and spreads computed here with numpy.
"""
from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.results import report
from bench.config import paths
from bench.results import tables as results
from bench.cli import main as cli_main

SEEDS = [0, 1, 2]
# model -> (family, track, likelihood kind or None, conditional)
MODELS = {
    "fvsbn": ("autoregressive", "binary", "exact", False),
    "vae-z2": ("vae", "binary", "bound", False),
    "realnvp": ("flow", "8bit", "bound", False),
    "cgan": ("gan", "binary", None, True),
    "ebm": ("ebm", "8bit", None, False),
}
BPD_LEVEL = {"fvsbn": 0.30, "vae-z2": 0.20, "realnvp": 1.50}
DIVERGED = ("ebm", 2)  # this job diverged: it has training rows only


def _metric_rows(rng) -> list[dict]:
    rows = []
    for model, (family, track, kind, conditional) in MODELS.items():
        for seed in SEEDS:
            ident = dict(model=model, family=family, dataset="mnist5k", track=track, seed=seed, budget="smoke")

            def add(metric, value, unit="", kind_="measured", batch=None, note=""):
                rows.append({**ident, "metric": metric, "value": value, "unit": unit, "kind": kind_,
                             "batch": batch, "note": note})

            add("train_seconds", rng.uniform(1, 50), "s")
            add("params", 1000.0 * (1 + len(model)), "count")
            if (model, seed) == DIVERGED:
                continue
            if kind:
                bpd = BPD_LEVEL[model] + rng.normal(0, 0.01)
                add("test_bpd", bpd, "bits/dim", kind)
                add("test_nll", bpd * 784 * np.log(2), "nats", kind)
            if model == "vae-z2":
                add("test_bpd_iwae", 0.19 + rng.normal(0, 0.01), "bits/dim", "estimate", note="IWAE K=100")
            for batch in ([16] if model == "realnvp" else [16, 256]):  # realnvp: throughput fallback
                add("sample_throughput", rng.uniform(10, 1000), "samples/s", batch=batch)
            add("sampling_nfe", 784.0 if model == "fvsbn" else 1.0, "evaluations", "exact")
            add("peak_memory", rng.uniform(100, 900), "MiB")
            for metric in ("fid", "is", "kid", "precision", "recall"):
                add(metric, rng.uniform(0.1, 40), kind_="estimate", note="1000 samples vs 1000 test images")
            if conditional:
                add("class_accuracy", rng.uniform(0.5, 1.0), "fraction", "estimate")
    for metric in ("fid", "is", "kid", "precision", "recall"):
        rows.append(dict(model="data", family="data", dataset="mnist5k", track="-", seed=0, budget="smoke",
                         metric=metric, value=rng.uniform(0, 1), unit="", kind="estimate", batch=None,
                         note="1000 samples vs 1000 test images"))
    return rows


def write_run(folder, seed: int = 0):
    """A complete synthetic run folder; returns its metrics frame."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    metrics = pd.DataFrame(_metric_rows(rng), columns=results.METRIC_COLUMNS)
    metrics["batch"] = metrics["batch"].astype("Int64")
    metrics.to_csv(folder / "metrics.csv", index=False)
    results.summary_frame(metrics).to_csv(folder / "summary.csv", index=False)
    jobs = [{"model": m, "dataset": "mnist5k", "seed": s, "status": "ok", "reason": "", "wall_seconds": 1.0,
             "notes": ""} for m in MODELS for s in SEEDS]
    jobs[-1].update(status="diverged", reason="diverged at step 17: loss is nan")
    pd.DataFrame(jobs, columns=results.JOB_COLUMNS).to_csv(folder / "jobs.csv", index=False)
    curves = [{"model": m, "dataset": "mnist5k", "seed": s, "step": k, "seconds": 0.1 * k, "loss": 100.0 / k}
              for m in MODELS for s in SEEDS for k in range(1, 6)]
    pd.DataFrame(curves).to_csv(folder / "curves.csv", index=False)
    paths.write_json(folder / "config.json", {
        "models": list(MODELS), "dataset": "mnist5k", "budget": "smoke", "seeds": SEEDS, "device": "cpu",
        "git_commit": "abc123", "started": "2026-01-01T00:00:00", "versions": {"torch": "2.x"},
        "classifier_accuracy": 0.987, "fidelity_samples": 1000})
    (folder / "samples").mkdir(exist_ok=True)
    for m in MODELS:
        Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(folder / "samples" / f"{m}__mnist5k__seed0.png")
    return metrics


def _parse(cell: str) -> tuple[float, float | None]:
    match = re.match(r"([-\d,.]+)(?: ± ([\d,.]+))?", cell)
    assert match, f"not a 'mean ± std' cell: {cell!r}"
    return float(match.group(1).replace(",", "")), (float(match.group(2).replace(",", "")) if match.group(2) else None)


def _expected(metrics: pd.DataFrame, model: str, metric: str, batch=None) -> np.ndarray:
    rows = metrics[(metrics.model == model) & (metrics.metric == metric)]
    if batch is not None:
        rows = rows[rows.batch == batch]
    return rows["value"].to_numpy(float)


@pytest.fixture
def run_dir(tmp_path):
    folder = tmp_path / "run"
    return folder, write_run(folder)


def test_summary_means_and_spreads_match_numpy(run_dir):
    folder, metrics = run_dir
    run = report.load_run(folder)
    table = report.summary_table(run.summary, run.metrics, run.info).set_index("model")
    checks = [("fvsbn", "test_bpd", "bits/dim", 3), ("vae-z2", "test_bpd", "bits/dim", 3), ("cgan", "fid", "FID", 2),
              ("realnvp", "is", "IS", 2), ("fvsbn", "precision", "precision", 3), ("cgan", "class_accuracy", "class acc.", 3)]
    for model, metric, column, decimals in checks:
        values = _expected(metrics, model, metric)
        mean, std = _parse(table.loc[model, column])
        assert mean == pytest.approx(values.mean(), abs=0.51 * 10 ** -decimals), (model, metric)
        assert std == pytest.approx(values.std(ddof=1), abs=0.51 * 10 ** -decimals), (model, metric)
    speeds = _expected(metrics, "fvsbn", "sample_throughput", batch=256)
    assert _parse(table.loc["fvsbn", "samples/s (batch 256)"])[0] == pytest.approx(speeds.mean(), rel=0.01)


def test_no_bits_per_dim_without_likelihood_and_kinds_marked(run_dir):
    folder, _ = run_dir
    run = report.load_run(folder)
    table = report.summary_table(run.summary, run.metrics, run.info).set_index("model")
    for model in ("cgan", "ebm", "data"):
        assert table.loc[model, "bits/dim"] == "n/a"
    assert table.loc["fvsbn", "bits/dim"].endswith("(exact)")
    assert table.loc["vae-z2", "bits/dim"].endswith("(bound)")
    assert table.loc["cgan", "likelihood"] == "none"
    assert table.index[-1] == "data"  # the reference row comes last


def test_fewer_seeds_and_throughput_fallback_are_marked(run_dir):
    folder, metrics = run_dir
    run = report.load_run(folder)
    table = report.summary_table(run.summary, run.metrics, run.info).set_index("model")
    assert table.loc["ebm", "FID"].endswith("(n=2)")  # one of its three seeds diverged
    assert "(n=" not in table.loc["fvsbn", "FID"]
    assert table.loc["realnvp", "samples/s (batch 256)"].endswith("@16")  # 256 never measured
    assert table.loc["fvsbn", "params"] == f"{1000 * 6:,}"  # constant over seeds: no "± 0"


def test_likelihood_tables_split_by_track_sorted_with_references(run_dir):
    folder, metrics = run_dir
    run = report.load_run(folder)
    tables = report.likelihood_tables(run.summary, run.metrics)
    assert list(tables) == ["binary", "8bit"]
    binary = tables["binary"]
    expected = sorted(["fvsbn", "vae-z2"], key=lambda m: _expected(metrics, m, "test_bpd").mean())
    assert list(binary["model"]) == expected
    assert list(tables["8bit"]["model"]) == ["realnvp"]
    refs = dict(zip(binary["model"], binary["reference"]))
    assert "97.45 nats" in refs["fvsbn"] and "89.9" in refs["vae-z2"]
    fvsbn_source = next(r.source for r in report.REFERENCES if r.matches("fvsbn", "binary"))
    assert "Larochelle & Murray 2011" in fvsbn_source and "Table 2" in fvsbn_source
    assert "1.06 bits/dim" in tables["8bit"]["reference"].iloc[0]
    iwae = binary.set_index("model").loc["vae-z2", "IWAE bits/dim (estimate)"]
    assert "K=100" in iwae
    assert _parse(iwae)[0] == pytest.approx(_expected(metrics, "vae-z2", "test_bpd_iwae").mean(), abs=6e-4)
    assert binary.set_index("model").loc["fvsbn", "bits/dim"].endswith("(n=3)")


def test_reference_matching_needs_the_same_track():
    assert report.reference_for("vae-z4", "binary").startswith("published: 89.9")
    assert report.reference_for("realnvp", "binary") == ""  # published figure is 8bit bits/dim
    assert report.reference_for("cgan", "binary") == ""


def test_the_8bit_references_cover_the_autoregressive_family_and_say_what_glows_figure_divides_by():
    """The 8-bit MADE meets its published 8-bit figure, not the binary one; Glow's source names the padding."""
    assert report.reference_for("made-8bit", "8bit") == "published: 2.04 bits/dim"
    assert report.reference_for("made-8bit", "binary").startswith("published: 88.04 nats")  # binary: the binary row
    glow = next(r.source for r in report.REFERENCES if r.matches("glow", "8bit"))
    assert "openai/glow issue 81" in glow and "32x32" in glow
    assert all("Grathwohl et al. 2019" in r.source for r in report.REFERENCES if r.track == "8bit")


def test_rerender_is_byte_identical_and_every_image_decodes(run_dir):
    folder, _ = run_dir
    report.render(folder)
    first = (folder / "report.md").read_bytes()
    assert cli_main(["report", str(folder)]) == 0
    assert (folder / "report.md").read_bytes() == first
    page = (folder / "report.html").read_text()
    uris = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(uris) >= len(MODELS) + 4  # sample grids plus bits/dim, FID/IS, throughput, curves, cost plots
    for data in uris:
        Image.open(io.BytesIO(base64.b64decode(data, validate=True))).verify()
    assert "src='http" not in page and 'src="http' not in page  # self-contained
    md = first.decode()
    assert "diverged at step 17: loss is nan" in md  # a diverged job is listed with its reason
    assert "a row per label" in md  # the conditional model's grid
    assert "classifier_accuracy" in md and "fidelity_samples" in md


def test_report_of_a_minimal_run_skips_absent_plots(tmp_path):
    metrics = pd.DataFrame([dict(model="fvsbn", family="autoregressive", dataset="digits", track="binary", seed=0,
                                 budget="smoke", metric="test_bpd", value=0.5, unit="bits/dim", kind="exact",
                                 batch=None, note="")], columns=results.METRIC_COLUMNS)
    metrics.to_csv(tmp_path / "metrics.csv", index=False)
    report.render(tmp_path)  # no summary, jobs, curves, config or samples: still a report
    md = (tmp_path / "report.md").read_text()
    assert "0.500 (exact)" in md
    assert sorted(p.name for p in (tmp_path / "plots").glob("*.png")) == ["bits_per_dim.png"]
    assert "Not in this run" in md



def test_likelihood_model_without_a_bits_per_dim_shows_a_dash_not_na():
    """A diverged FVSBN has no test_bpd row: its cell says 'not measured', never 'no likelihood'."""
    metrics = pd.DataFrame([dict(model="fvsbn", family="autoregressive", dataset="mnist5k", track="binary", seed=0,
                                 budget="smoke", metric="train_seconds", value=3.0, unit="s", kind="measured",
                                 batch=None, note="")], columns=results.METRIC_COLUMNS)
    table = report.summary_table(results.summary_frame(metrics), metrics, {}).set_index("model")
    assert table.loc["fvsbn", "bits/dim"] == "-"
    assert table.loc["fvsbn", "likelihood"] == "exact"  # from the registered class


def test_rerendering_a_report_imports_no_torch(run_dir):
    """`bench report` reads stored files only: the whole render, in a fresh interpreter, never imports torch."""
    import subprocess
    import sys

    folder, metrics = run_dir
    (folder / "jobs").mkdir(exist_ok=True)
    for model in MODELS:  # what every real job records, so the report needs no model class
        kinds = metrics[(metrics.model == model) & (metrics.metric == "test_bpd")]["kind"]
        outcome = {"job": {"model": model, "dataset": "mnist5k", "seed": 0}, "status": "ok", "reason": "",
                   "rows": [], "curve": [], "notes": [],
                   "info": {"likelihood": kinds.iloc[0] if len(kinds) else None}, "wall_seconds": 1.0}
        paths.write_json(folder / "jobs" / f"{model}__mnist5k__seed0.json", outcome)
    code = ("import sys; from bench.results import report; report.render(sys.argv[1]); "
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"
    assert (folder / "report.md").is_file()


def _two_space_metrics(fid, fid_wide):
    models = [f"m{i}" for i in range(len(fid))]
    rows = [dict(model=m, family="flow", dataset="mnist5k", track="8bit", seed=0, metric=metric, value=v)
            for m, a, b in zip(models, fid, fid_wide) for metric, v in (("fid", a), ("fid_wide", b))]
    rows.append(dict(model="data", family="data", dataset="mnist5k", track="8bit", seed=0, metric="fid", value=1.0))
    return pd.DataFrame(rows)


def test_rank_agreement_of_two_feature_spaces_through_the_report():
    """Kendall's tau is 1 for two identical rankings and -1 for reversed ones, computed from the metric rows
    as the report computes it; the summary names every pair the spaces order differently."""
    from types import SimpleNamespace

    from bench.results.report import sections, tables as report_tables

    fid = [10.0, 20.0, 30.0, 40.0]
    cases = {"same": ([1.0, 2.0, 3.5, 9.0], 1.0, 0), "reversed": ([9.0, 3.5, 2.0, 1.0], -1.0, 6)}
    for name, (wide, tau_expected, pairs) in cases.items():
        metrics = _two_space_metrics(fid, wide)
        (frame,) = report_tables.feature_space_tables(metrics).values()
        tau, discordant = report_tables.rank_agreement(frame["fid"], frame["fid_wide"], frame["model"])
        assert tau == pytest.approx(tau_expected) and len(discordant) == pairs, name
        notes = sections.feature_space_disagreements(SimpleNamespace(metrics=metrics))
        assert (notes == []) == (pairs == 0), name
    # One swapped pair: tau = (5 - 1) / 6, and the note names that pair, best-first by FID.
    metrics = _two_space_metrics(fid, [1.0, 3.0, 2.0, 4.0])
    (frame,) = report_tables.feature_space_tables(metrics).values()
    tau, discordant = report_tables.rank_agreement(frame["fid"], frame["fid_wide"], frame["model"])
    assert tau == pytest.approx(4 / 6) and discordant == [("m1", "m2")]
    blocks = sections.feature_space_blocks(SimpleNamespace(metrics=metrics))
    assert any("m1 before m2 (wide: the reverse)" in b.text for b in blocks if b.kind == "p")
