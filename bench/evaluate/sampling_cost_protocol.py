"""The scaling study's protocol and fits, with no torch: its columns, its timing rules, and the log-log fit
of seconds per sample against the number of pixels. ``sampling_cost`` measures by these rules; the
tables that ``scaling.md`` and the report show read them back (``bench.results.sampling_cost_tables``).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

TIMING_COLUMNS = ["model", "size", "dim", "batch", "seconds_per_sample", "repeats", "family", "sampling_nfe",
                  "batch_asked", "flops_per_sample", "samples_per_second", "roofline_fraction", "trained_steps"]
FIT_COLUMNS = ["model", "batch", "slope", "intercept", "r2"]
SKIP_COLUMNS = ["model", "size", "batch", "reason"]
# The timing protocol (bench.evaluate.sampling_cost follows it; the report's text states it).
MIN_SECONDS = 0.5    # repeat until this much was timed (and at least MIN_REPEATS) ...
MIN_REPEATS = 3
MAX_SECONDS = 3.0    # ... but stop once one (model, size) has had this much: a slow sampler gets fewer repeats
MAX_REPEATS = 7
PROBE_BATCH = 8      # the warm-up call's batch; its time sizes the measured batch: a slow sampler is
                     # timed at a halving of the asked batch, down to this one,
MAX_CALL_S = 4.0     # that keeps one call under this many seconds (at batch 1,024 this halves a slow
                     # sampler's batch: the study of both batches stays within a minute or two on a CPU)
SKIP_PROJECTED_S = 30.0  # a (model, size) projected past this per call is not run at all
TRAIN_STEPS = 50     # brief training before timing a model whose sampling cost depends on its weights

FAMILY_COST_NOTES = {
    "autoregressive": "D sequential conditionals, one pixel after another; the loop length is D whatever "
                      "the weights, so untrained and trained models cost the same.",
    "vae": "one decoder pass from a prior draw; a fixed architecture, so the weights change values, not work.",
    "gan": "one generator pass from noise; a fixed architecture, so the weights change values, not work.",
    "flow": "a coupling flow (RealNVP) makes one inverse pass through a fixed stack of layers, whose cost does "
            "not depend on the weights. A continuous flow with an adaptive ODE solver (FFJORD) is different: "
            "the solver's step count, hence its NFE, FLOPs and time, depends on the trained weights (a smooth "
            f"untrained field needs few steps), so the study trains such a model {TRAIN_STEPS} steps on mnist5k "
            "resized to each size before timing it (marked 'trained N steps'), and its figures hold for that "
            "briefly trained model only.",
    "ebm": "a fixed number of Langevin steps (sampling_nfe), each a forward and a backward pass of the "
           "energy; no adaptive step size or stopping rule, so the cost does not depend on the weights.",
    "diffusion": "a fixed number of denoising steps (sampling_nfe) of one network; no adaptive ODE solver, "
                 "so the cost does not depend on the weights.",
}


# --- the fit -------------------------------------------------------------------------------------
def fit_power_law(dims, seconds) -> tuple[float, float, float]:
    """Least-squares line log10(seconds) = intercept + slope * log10(D); returns (slope, intercept, r2)
    (r2 is NaN below three sizes)."""
    x, y = np.log10(np.asarray(dims, float)), np.log10(np.asarray(seconds, float))
    if len(x) < 2 or np.ptp(x) == 0:
        return float("nan"), float("nan"), float("nan")
    slope, intercept = np.polyfit(x, y, 1)
    residual = float(np.sum((y - (intercept + slope * x)) ** 2))
    total = float(np.sum((y - y.mean()) ** 2))
    # Two points fit any line exactly: r2 says something only from three sizes on.
    r2 = 1.0 - residual / total if total > 0 and len(x) > 2 else float("nan")
    return float(slope), float(intercept), r2


def asked_batch(timings: pd.DataFrame) -> pd.Series:
    """The batch each row was asked for (a slow sampler is timed at a smaller one; older studies lack it)."""
    if "batch" not in timings.columns:  # timings from elsewhere that never said their batch
        return pd.Series(np.nan, index=timings.index)
    if "batch_asked" in timings.columns:
        return timings["batch_asked"].fillna(timings["batch"]).astype(int)
    return timings["batch"].astype(int)


def fit_table(timings: pd.DataFrame) -> pd.DataFrame:
    """One fit per (model, asked batch)."""
    rows = []
    d = timings.assign(batch_asked=asked_batch(timings)) if not timings.empty else timings
    for (model, batch), g in (d.groupby(["model", "batch_asked"], sort=False, dropna=False) if not d.empty else []):
        slope, intercept, r2 = fit_power_law(g["dim"], g["seconds_per_sample"])
        rows.append({"model": model, "batch": batch if pd.isna(batch) else int(batch), "slope": slope,
                     "intercept": intercept, "r2": r2})
    return pd.DataFrame(rows, columns=FIT_COLUMNS)


def with_roofline(timings: pd.DataFrame, gemm_flops_per_second: float) -> pd.DataFrame:
    """samples/s and the roofline fraction = FLOPs per sample x samples/s / GEMM rate, per row."""
    t = timings.copy()
    t["samples_per_second"] = 1.0 / t["seconds_per_sample"]
    t["roofline_fraction"] = t["flops_per_sample"] * t["samples_per_second"] / gemm_flops_per_second
    return t
