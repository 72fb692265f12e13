"""The sampling-cost scaling study: the power-law fit, the CLI's files, skips, the report section.

No timing assertions: timings on a shared CPU are noise; the tests check the fit on synthetic timings
with known exponents and the structure of what a tiny real study writes.
"""
from __future__ import annotations

import functools
import json

import numpy as np
import pandas as pd
import pytest
import torch

from bench.results import report
from bench.evaluate import sampling_cost as scaling
from bench.evaluate import sampling_cost_protocol as protocol
from bench.results import sampling_cost_tables as tables
from bench.cli import main as cli_main
from models import registry
from models.autoregressive.fvsbn import FVSBN

DIMS = np.array([64, 196, 784])


@pytest.mark.parametrize("exponent", [1.0, 2.0])
def test_fitted_slope_recovers_known_exponent(exponent):
    rng = np.random.default_rng(int(exponent))
    seconds = 3e-6 * DIMS ** exponent * np.exp(rng.normal(0, 0.02, size=len(DIMS)))  # 2% timing noise
    slope, intercept, r2 = protocol.fit_power_law(DIMS, seconds)
    assert slope == pytest.approx(exponent, abs=0.05)
    assert 10 ** intercept == pytest.approx(3e-6, rel=0.3)
    assert r2 > 0.99


def test_fit_is_exact_on_noiseless_power_law_and_r2_needs_three_sizes():
    slope, intercept, r2 = protocol.fit_power_law(DIMS, 5e-7 * DIMS ** 1.5)
    assert slope == pytest.approx(1.5, abs=1e-9) and intercept == pytest.approx(np.log10(5e-7), abs=1e-9)
    assert r2 == pytest.approx(1.0)
    assert np.isnan(protocol.fit_power_law(DIMS[:2], [1e-3, 4e-3])[2])
    assert np.isnan(protocol.fit_power_law([64], [1e-3])[0])  # one size: no slope, not a crash


def test_fit_table_one_row_per_model():
    timings = pd.DataFrame({"model": ["a"] * 3 + ["b"] * 3, "dim": list(DIMS) * 2,
                            "seconds_per_sample": list(1e-6 * DIMS) + list(1e-8 * DIMS ** 2.0)})
    fits = protocol.fit_table(timings).set_index("model")
    assert fits.loc["a", "slope"] == pytest.approx(1.0) and fits.loc["b", "slope"] == pytest.approx(2.0)


def test_scaling_cli_writes_its_files(tmp_path):
    out = tmp_path / "scaling"
    assert cli_main(["scaling", "--models", "fvsbn,realnvp", "--sizes", "8,14", "--batch", "8",
                     "--out", str(out)]) == 0
    timings = pd.read_csv(out / "scaling.csv")
    assert list(timings.columns[:6]) == ["model", "size", "dim", "batch", "seconds_per_sample", "repeats"]
    assert sorted(zip(timings["model"], timings["size"])) == [("fvsbn", 8), ("fvsbn", 14), ("realnvp", 8),
                                                              ("realnvp", 14)]
    assert list(timings["dim"]) == [s * s for s in timings["size"]]
    assert (timings["seconds_per_sample"] > 0).all() and (timings["repeats"] >= 1).all()
    assert (timings["batch"] == 8).all()
    fvsbn = timings[timings.model == "fvsbn"]
    assert list(fvsbn["sampling_nfe"]) == list(fvsbn["dim"])  # one network evaluation per pixel
    fits = pd.read_csv(out / "scaling_fit.csv")
    assert list(fits.columns) == ["model", "batch", "slope", "intercept", "r2"]
    assert sorted(fits["model"]) == ["fvsbn", "realnvp"] and (fits["batch"] == 8).all()
    assert np.isfinite(fits["slope"]).all()
    for name in ("scaling.md", "scaling.png", "scaling.json", "scaling_skipped.csv", "scaling_gemm.json",
                 "scaling_roofline.png"):
        assert (out / name).exists(), name
    # The roofline fraction is the counted work rate over the GEMM rate measured in the same run.
    gemm = json.loads((out / "scaling_gemm.json").read_text())
    assert gemm["gemm_flops_per_second"] > 0 and gemm["side"] == scaling.GEMM_SIDE
    expected = timings["flops_per_sample"] / timings["seconds_per_sample"] / gemm["gemm_flops_per_second"]
    assert np.allclose(timings["roofline_fraction"], expected, rtol=1e-9)
    assert np.allclose(timings["samples_per_second"] * timings["seconds_per_sample"], 1.0)
    # FVSBN's own count (the sampler's D(D-1)/2 multiply-adds), not the counter's, which misses addr_.
    assert list(fvsbn["flops_per_sample"]) == [d * (d - 1) for d in fvsbn["dim"]]
    realnvp = timings[timings.model == "realnvp"]
    assert (realnvp["flops_per_sample"] > 0).all() and (timings["trained_steps"] == 0).all()


def test_default_study_times_latency_and_throughput():
    from bench.cli import build_parser

    assert build_parser().parse_args(["scaling"]).batch == [1, 1024]
    assert scaling.DEFAULT_BATCHES == (1, 1024)


def test_two_batches_give_one_fit_each_and_a_slow_sampler_says_its_batch(monkeypatch):
    monkeypatch.setattr(scaling, "MAX_CALL_S", 0.0)  # every sampler is "slow": the asked batch is halved
    timings, fits, _ = scaling.run_study(["fvsbn"], [6, 8], [1, 32], torch.device("cpu"), log=lambda _: None,
                                         gemm={"gemm_flops_per_second": 1e9})
    assert sorted(zip(timings["batch_asked"], timings["batch"])) == [(1, 1), (1, 1), (32, 8), (32, 8)]
    assert sorted(fits["batch"]) == [1, 32]
    table = tables.scaling_table(timings, fits)
    assert list(table["batch"]) == ["1", "8 (asked 32)"]
    work = tables.depth_work_table(timings).iloc[0]
    assert work["NFE slope"] == "1.00" and work["FLOPs slope"] == f"{protocol.fit_power_law([36, 64], [36 * 35, 64 * 63])[0]:.2f}"


class WeightDependentSampler(FVSBN):
    """Stands in for an adaptive-solver flow: declares that its sampling cost depends on its weights."""

    sampling_cost_depends_on_weights = True


def test_a_model_whose_cost_depends_on_weights_is_trained_before_timing(monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, "weight-dependent", functools.partial(WeightDependentSampler))
    monkeypatch.setattr(scaling, "TRAIN_STEPS", 3)
    model, trained = scaling.build_for_study("weight-dependent", 6, torch.device("cpu"))
    assert trained == 3 and model.weight.abs().sum() > 0  # FVSBN starts at zero weights: 3 steps moved them
    untrained, none = scaling.build_for_study("fvsbn", 6, torch.device("cpu"))
    assert none == 0 and untrained.weight.abs().sum() == 0
    timings, fits, _ = scaling.run_study(["weight-dependent"], [6], 1, torch.device("cpu"), log=lambda _: None,
                                         gemm={"gemm_flops_per_second": 1e9})
    assert list(timings["trained_steps"]) == [3]
    assert tables.scaling_table(timings, fits)["model"].iloc[0] == "weight-dependent (trained 3 steps)"
    assert "adaptive ODE solver" in protocol.FAMILY_COST_NOTES["flow"] and "trained weights" in protocol.FAMILY_COST_NOTES["flow"]


class BrokenAtSmallSizes(FVSBN):
    """A model that refuses images smaller than 10x10, as an architecture with fixed strides might."""

    def __init__(self, image_shape=(1, 28, 28)):
        if image_shape[-1] < 10:
            raise ValueError("needs at least 10x10 images")
        super().__init__(image_shape)


def test_model_failing_at_a_size_is_skipped_with_its_reason(monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, "broken-small", functools.partial(BrokenAtSmallSizes))
    timings, fits, skipped = scaling.run_study(["broken-small"], [8, 14], batch=4,
                                               device=__import__("torch").device("cpu"), log=lambda _: None)
    assert list(timings["size"]) == [14]
    assert list(skipped["size"]) == [8] and "needs at least 10x10" in skipped["reason"].iloc[0]
    assert np.isnan(fits["slope"].iloc[0])  # one measured size: no slope is claimed


def test_report_gains_a_scaling_section_when_the_run_has_one(tmp_path):
    pd.DataFrame([dict(model="fvsbn", family="autoregressive", dataset="mnist5k", track="binary", seed=0,
                       budget="smoke", metric="test_bpd", value=0.5, unit="bits/dim", kind="exact", batch=None,
                       note="")]).to_csv(tmp_path / "metrics.csv", index=False)
    timings = pd.DataFrame({"model": ["fvsbn"] * 3, "size": [8, 14, 28], "dim": DIMS, "batch": 64,
                            "seconds_per_sample": 1e-8 * DIMS ** 2.0, "repeats": 3, "family": "autoregressive",
                            "sampling_nfe": DIMS})
    skipped = pd.DataFrame([{"model": "ddpm", "size": 28, "reason": "projected 99s per batch of 64 > 30s cap"}])
    tables.write_study(tmp_path, timings, protocol.fit_table(timings), skipped, {"batch": 64, "device": "cpu"})
    report.render(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "## Sampling cost against image size" in md
    assert "| fvsbn " in md and " 2.00 " in md  # the fitted slope of a D^2 law
    assert "ddpm at 28x28: projected 99s" in md
    assert "autoregressive: D sequential conditionals" in md
    assert (tmp_path / "plots" / "scaling.png").exists()
    # scaling.md is the report's own section, rendered once
    study = report.render_study(tmp_path)
    assert (tmp_path / "scaling.md").read_text() == study
    section = md[md.index("## Sampling cost against image size"):]
    assert section.startswith(study.rstrip("\n"))
