"""The report's comparison of continuous-time models (FFJORD, flow matching, DDPM's probability-flow ODE).

Every test writes a synthetic run folder (metrics.csv and config.json, as bench/results/tables.py writes
them; summary.csv is recomputed on load) with made-up rows, renders the report, and checks the section's
figures against values computed here from the rows: seconds per step per seed, FID at the fixed NFE by
linear interpolation in log NFE, and the NFE at which each model reaches the target FID.
"""
from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from bench.config import paths
from bench.results import report
from bench.results import tables as results
from bench.results.report import sections

SEEDS = [0, 1]
HEADING = "## Continuous-time models"
SEED_SCALE = {0: 0.9, 1: 1.2}  # each seed's FIDs are the base curve times this: the means are 1.05 x base

# flow matching: fixed-step curve at 2..32 Euler steps (NFE = steps), headline adaptive dopri5 (not on the curve)
FM_CURVE = {2: 400.0, 4: 200.0, 8: 100.0, 16: 60.0, 32: 50.0}
FM_HEADLINE = {"nfe": {0: 78.0, 1: 82.0}, "fid": 45.0}
# ddpm: respaced ancestral steps, its own 50 steps copied from the headline
DDPM_CURVE = {10: 500.0, 20: 250.0, 50: 120.0, 100: 90.0, 1000: 80.0}
DDPM_OWN = 50


def _rows(ffjord_nfe=(40.0, 44.0), ffjord_fid=300.0, models=("ffjord", "flow-matching", "ddpm"),
          ddpm_ode=True, fm_flops=True) -> list[dict]:
    rows = []

    def add(model, family, seed, metric, value, unit="", kind="measured", batch=None, steps=None, note=""):
        rows.append(dict(model=model, family=family, dataset="mnist5k", track="8bit", seed=seed, budget="smoke",
                         metric=metric, value=value, unit=unit, kind=kind, batch=batch, steps=steps, note=note))

    for seed in SEEDS:
        scale = SEED_SCALE[seed]
        if "ffjord" in models:
            f = lambda *a, **k: add("ffjord", "flow", seed, *a, **k)  # noqa: E731
            f("train_steps", 20.0, "steps")
            f("train_seconds", [10.0, 12.0][seed], "s")  # 0.5 and 0.6 s per step
            f("train_flops", 3.0e11, "FLOP", "counted")
            f("test_bpd", [2.0, 2.2][seed], "bits/dim", "bound")
            f("nll_nfe", 38.0, "evaluations")
            f("train_nfe", 25.0, "evaluations")
            f("solver_rtol", 1e-4, "", "exact")
            f("sampling_nfe", ffjord_nfe[seed], "evaluations", "exact")
            f("fid", ffjord_fid * scale, "", "estimate")
        if "flow-matching" in models:
            f = lambda *a, **k: add("flow-matching", "flow", seed, *a, **k)  # noqa: E731
            f("train_steps", 100.0, "steps")
            f("train_seconds", [20.0, 30.0][seed], "s")  # 0.2 and 0.3
            if fm_flops:
                f("train_flops", 5.0e12, "FLOP", "counted")
            f("test_bpd", 1.5, "bits/dim", "bound")
            f("nll_nfe", 60.0, "evaluations")
            f("solver_rtol", 1e-5, "", "exact")
            f("sampling_nfe", FM_HEADLINE["nfe"][seed], "evaluations", "exact")
            f("fid", FM_HEADLINE["fid"] * scale, "", "estimate")
            for steps, fid in FM_CURVE.items():
                f("fid", fid * scale, "", "estimate", steps=steps)
                f("sampling_nfe", float(steps), "evaluations", "exact", steps=steps)
                f("sample_throughput", 1000.0 / steps, "samples/s", batch=16, steps=steps)
        if "ddpm" in models:
            f = lambda *a, **k: add("ddpm", "diffusion", seed, *a, **k)  # noqa: E731
            f("train_steps", 50.0, "steps")
            f("train_seconds", 5.0, "s")  # 0.1 on both seeds
            f("train_flops", 1.0e12, "FLOP", "counted")
            f("test_bpd", 1.8, "bits/dim", "bound")
            if ddpm_ode:
                f("test_bpd_ode", 1.6, "bits/dim", "bound")
            f("sampling_nfe", float(DDPM_OWN), "evaluations", "exact")
            f("fid", DDPM_CURVE[DDPM_OWN] * scale, "", "estimate")
            for steps, fid in DDPM_CURVE.items():
                note = "the headline measurement (the model's own setting)" if steps == DDPM_OWN else ""
                f("fid", fid * scale, "", "estimate", steps=steps, note=note)
                f("sampling_nfe", float(steps), "evaluations", "exact", steps=steps, note=note)
        if "ebm" in models:  # a steps curve without an ODE: never selected
            f = lambda *a, **k: add("ebm", "ebm", seed, *a, **k)  # noqa: E731
            f("train_steps", 20.0, "steps")
            f("sampling_nfe", 60.0, "evaluations", "exact")
            f("fid", 900.0, "", "estimate")
            for steps in (10, 30, 60):
                f("fid", 1000.0 - steps, "", "estimate", steps=steps)
                f("sampling_nfe", float(steps), "evaluations", "exact", steps=steps)
    return rows


def write_run(folder, **kwargs) -> pd.DataFrame:
    folder.mkdir(parents=True, exist_ok=True)
    metrics = pd.DataFrame(_rows(**kwargs), columns=results.METRIC_COLUMNS)
    metrics[["batch", "steps"]] = metrics[["batch", "steps"]].astype("Int64")
    metrics.to_csv(folder / "metrics.csv", index=False)
    paths.write_json(folder / "config.json", {"models": list(dict.fromkeys(metrics["model"])), "dataset": "mnist5k",
                                              "budget": "smoke", "seeds": SEEDS, "device": "cpu"})
    return metrics


def section(md: str) -> str:
    """The section's text, from its heading to the next h2."""
    assert HEADING in md
    rest = md.split(HEADING, 1)[1]
    return HEADING + rest.split("\n## ", 1)[0]


def table_rows(text: str) -> dict[str, dict[str, str]]:
    """The section's markdown table as {model: {column: cell}}."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    out = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[cells[0]] = dict(zip(header, cells))
    return out


def column(rows: dict, prefix: str) -> str:
    names = [c for c in next(iter(rows.values())) if c.startswith(prefix)]
    assert len(names) == 1, (prefix, names)
    return names[0]


def mean_points(metrics: pd.DataFrame, model: str) -> tuple[np.ndarray, np.ndarray]:
    """(NFE, FID) means over seeds, computed here: the curve's points plus the headline point."""
    m = metrics[metrics.model == model]
    curve = m[m.steps.notna()]
    fid = curve[curve.metric == "fid"].groupby("steps")["value"].mean()
    nfe = curve[curve.metric == "sampling_nfe"].groupby("steps")["value"].mean()
    pairs = {float(nfe[s]): float(fid[s]) for s in fid.index}
    head = m[m.steps.isna()]
    pairs.setdefault(float(head[head.metric == "sampling_nfe"]["value"].mean()),
                     float(head[head.metric == "fid"]["value"].mean()))
    xs = np.array(sorted(pairs))
    return xs, np.array([pairs[x] for x in xs])


def log_interp(xs, ys, x) -> float:
    """Linear in log x between the two neighbours of x (x inside [xs[0], xs[-1]])."""
    i = int(np.searchsorted(xs, x))
    if xs[min(i, len(xs) - 1)] == x:
        return float(ys[min(i, len(xs) - 1)])
    lo, hi = i - 1, i
    t = (math.log(x) - math.log(xs[lo])) / (math.log(xs[hi]) - math.log(xs[lo]))
    return float(ys[lo] + t * (ys[hi] - ys[lo]))


def first_reach(xs, ys, target) -> float:
    for i in range(1, len(xs)):
        if ys[i] <= target < ys[i - 1]:
            t = (target - ys[i - 1]) / (ys[i] - ys[i - 1])
            return math.exp(math.log(xs[i - 1]) + t * (math.log(xs[i]) - math.log(xs[i - 1])))
    raise AssertionError("not reached")


def render(folder) -> str:
    md, _ = report.render(folder)
    return md.read_text()


@pytest.fixture
def run_dir(tmp_path):
    folder = tmp_path / "run"
    return folder, write_run(folder)


def test_the_table_shows_training_cost_and_both_ddpm_likelihoods(run_dir):
    folder, metrics = run_dir
    rows = table_rows(section(render(folder)))
    assert list(rows) == ["ffjord", "flow-matching", "ddpm"]
    for model in rows:  # seconds per step: per seed, then mean ± sample std over seeds
        m = metrics[(metrics.model == model) & metrics.steps.isna()]
        seconds = m[m.metric == "train_seconds"].set_index("seed")["value"]
        steps = m[m.metric == "train_steps"].set_index("seed")["value"]
        per_step = seconds / steps
        cell = rows[model]["s / train step"]
        mean = float(cell.split(" ± ")[0])
        assert mean == pytest.approx(per_step.mean(), abs=5e-4), model
        if per_step.std(ddof=1) > 0:
            assert float(cell.split(" ± ")[1]) == pytest.approx(per_step.std(ddof=1), abs=5e-4), model
        else:
            assert "±" not in cell
    assert rows["ffjord"]["s / train step"] == "0.550 ± 0.071"  # the std at the mean's decimals, as the summary does
    assert rows["flow-matching"]["train steps"] == "100"
    assert rows["ffjord"]["train FLOPs"] == "3e+11"
    assert rows["ddpm"]["bits/dim"] == "1.800 (bound; VLB)"
    assert rows["ddpm"]["bits/dim, probability-flow ODE"] == "1.600 (bound; probability-flow ODE)"
    assert rows["ffjord"]["bits/dim"].endswith("(bound; its ODE)")
    assert rows["ffjord"]["bits/dim, probability-flow ODE"] == "-"
    assert rows["flow-matching"]["FID (own sampler) @ NFE"].endswith("@ NFE 80")


def test_fid_at_the_fixed_nfe_is_interpolated_in_log_nfe(run_dir):
    """FFJORD's one point (NFE 42, the mean of 40 and 44) lies inside both curves' ranges: it is the only
    NFE every model can be read at, so it is the fixed NFE."""
    folder, metrics = run_dir
    text = section(render(folder))
    rows = table_rows(text)
    name = column(rows, "FID @ NFE")
    assert name == "FID @ NFE 42"
    for model in rows:
        xs, ys = mean_points(metrics, model)
        expected = log_interp(xs, ys, 42.0)
        assert float(rows[model][name].replace(",", "")) == pytest.approx(expected, abs=0.051), model
    # flow matching at 42 sits between its 32-step Euler point and its dopri5 headline (NFE 80)
    assert float(rows["flow-matching"][name]) == pytest.approx(
        1.05 * (50 + (math.log(42) - math.log(32)) / (math.log(80) - math.log(32)) * (45 - 50)), abs=0.006)
    assert "interpolated linearly in log NFE" in text


def test_nfe_to_reach_the_target_fid_and_not_reached(run_dir):
    """Target: the worst best FID of the models with a curve (ddpm's 1.05 x 80 = 84). Flow matching crosses it
    between 8 and 16 steps; ddpm reaches it at 1000; FFJORD's single point (315) never does."""
    folder, metrics = run_dir
    rows = table_rows(section(render(folder)))
    name = column(rows, "NFE to FID ≤")
    assert name == "NFE to FID ≤ 84.00"
    xs, ys = mean_points(metrics, "flow-matching")
    expected = first_reach(xs, ys, 84.0)
    assert 8 < expected < 16
    assert float(rows["flow-matching"][name]) == pytest.approx(expected, rel=2e-3)
    assert rows["ddpm"][name] == "1,000"
    assert rows["ffjord"][name] == "not reached (best 315.0)"


def test_out_of_range_shows_a_dash_and_an_early_reach_is_bounded(tmp_path):
    """FFJORD measured at NFE 1500 only, past both curves: the fixed NFE is then the smallest NFE both curves
    cover (10), FFJORD reads '—' there. With FFJORD's FID good (15) it reaches the target at its only point."""
    folder = tmp_path / "run"
    metrics = write_run(folder, ffjord_nfe=(1500.0, 1500.0), ffjord_fid=15.0)
    text = section(render(folder))
    rows = table_rows(text)
    name = column(rows, "FID @ NFE")
    assert name == "FID @ NFE 10"
    assert rows["ffjord"][name] == "—"
    xs, ys = mean_points(metrics, "flow-matching")
    assert float(rows["flow-matching"][name]) == pytest.approx(log_interp(xs, ys, 10.0), abs=0.006)
    assert float(rows["ddpm"][name]) == pytest.approx(1.05 * DDPM_CURVE[10], abs=0.06)
    reach = column(rows, "NFE to FID ≤")
    assert rows["ffjord"][reach] == "≤ 1,500"
    assert "never extrapolated" in text


def test_a_missing_row_shows_not_measured(tmp_path):
    folder = tmp_path / "run"
    write_run(folder, fm_flops=False)
    rows = table_rows(section(render(folder)))
    assert rows["flow-matching"]["train FLOPs"] == "-"


@pytest.mark.parametrize("models, ddpm_ode", [(("ffjord", "ebm"), True), (("ffjord", "ddpm", "ebm"), False),
                                              (("flow-matching",), True)])
def test_absent_with_fewer_than_two_continuous_time_models(tmp_path, models, ddpm_ode):
    """An EBM's steps curve, or a DDPM without its ODE likelihood, does not make a continuous-time model."""
    folder = tmp_path / "run"
    write_run(folder, models=models, ddpm_ode=ddpm_ode)
    md = render(folder)
    assert "Continuous-time models" not in md
    assert not (folder / "plots" / sections.PLOT_NAME).exists()


def test_selection_is_by_ode_rows_not_names(tmp_path):
    """A model of any name that reports its solver's cost is picked up; the EBM is left out."""
    folder = tmp_path / "run"
    metrics = write_run(folder, models=("ffjord", "flow-matching", "ebm"))
    metrics["model"] = metrics["model"].replace({"flow-matching": "some-new-ode"})
    metrics.to_csv(folder / "metrics.csv", index=False)
    rows = table_rows(section(render(folder)))
    assert list(rows) == ["ffjord", "some-new-ode"]


def test_the_plot_is_written_and_linked_in_markdown_and_html(run_dir):
    folder, _ = run_dir
    text = section(render(folder))
    png = folder / "plots" / sections.PLOT_NAME
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert re.search(r"!\[[^\]]*FID against NFE[^\]]*\]\(plots/continuous_time\.png\)", text)
    page = (folder / "report.html").read_text()
    assert "<h2>Continuous-time models</h2>" in page
    after = page.split("<h2>Continuous-time models</h2>", 1)[1].split("<h2>", 1)[0]
    assert "data:image/png;base64," in after and "FID against NFE" in after
    first = png.read_bytes()
    render(folder)
    assert png.read_bytes() == first  # re-rendering writes the same figure


def test_the_helpers_never_extrapolate():
    points = pd.DataFrame({"nfe": [2.0, 8.0], "fid": [100.0, 40.0]})
    assert math.isnan(sections.fid_at_nfe(points, 1.0)) and math.isnan(sections.fid_at_nfe(points, 9.0))
    assert sections.fid_at_nfe(points, 4.0) == pytest.approx(70.0)  # halfway in log NFE
    assert sections.nfe_to_reach(points, 70.0) == (pytest.approx(4.0), "interpolated")
    assert sections.nfe_to_reach(points, 30.0)[1] == "not reached"
    assert sections.nfe_to_reach(points, 120.0) == (2.0, "cheapest")
