"""The scaling study's tables and text, from its stored files: no torch, no measuring.

``bench.scaling`` measures and writes ``scaling.csv`` and its siblings; this module reads them back
(``load_study``), fits the log-log slopes and builds the tables and sentences that ``scaling.md`` and
the run report show, so that re-rendering a report never imports torch.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench import results

TIMING_COLUMNS = ["model", "size", "dim", "batch", "seconds_per_sample", "repeats", "family", "sampling_nfe",
                  "batch_asked", "flops_per_sample", "samples_per_second", "roofline_fraction", "trained_steps"]
FIT_COLUMNS = ["model", "batch", "slope", "intercept", "r2"]
SKIP_COLUMNS = ["model", "size", "batch", "reason"]
# The timing protocol (bench.scaling follows it; the report's text states it).
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


def load_study(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict] | None:
    """The stored study in ``folder``, or None when it holds no scaling.csv (fits recomputed if absent
    or from a study before per-batch fits)."""
    folder = Path(folder)
    if not (folder / "scaling.csv").exists():
        return None
    timings = pd.read_csv(folder / "scaling.csv")
    fits = pd.read_csv(folder / "scaling_fit.csv") if (folder / "scaling_fit.csv").exists() else None
    if fits is None or "batch" not in fits.columns:
        fits = fit_table(timings)
    skipped = (pd.read_csv(folder / "scaling_skipped.csv", dtype=str).fillna("") if (folder / "scaling_skipped.csv").exists()
               else pd.DataFrame(columns=SKIP_COLUMNS))
    meta = results.read_json(folder / "scaling.json") if (folder / "scaling.json").exists() else {}
    return timings, fits, skipped, meta


# --- the tables ----------------------------------------------------------------------------------
def _size_label(size, dim) -> str:
    return f"{int(size)}x{int(size)} (D={int(dim)})"


def _model_label(model: str, d: pd.DataFrame) -> str:
    steps = d["trained_steps"].max() if "trained_steps" in d.columns else 0
    return f"{model} (trained {int(steps)} steps)" if steps and steps > 0 else model


def scaling_table(timings: pd.DataFrame, fits: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, asked batch): ms per sample at each size, the fitted slope and r²."""
    d = timings.assign(batch_asked=asked_batch(timings),
                       column=[f"{_size_label(s, n)} ms" for s, n in zip(timings["size"], timings["dim"])])
    columns = list(dict.fromkeys(d.sort_values("dim")["column"]))
    fit = fits.assign(batch=fits["batch"] if "batch" in fits.columns else np.nan)
    rows = []
    for (model, asked), g in d.groupby(["model", "batch_asked"], sort=False):
        row = {"model": _model_label(model, g), "family": g["family"].iloc[0], "batch": _batch_label(g, asked)}
        values = g.set_index("column")["seconds_per_sample"]
        row.update({c: _ms(values[c] * 1e3) if c in values.index else "-" for c in columns})
        f = fit[(fit["model"] == model) & ((fit["batch"] == asked) | fit["batch"].isna())]
        row["slope"] = _num(f["slope"].iloc[0] if not f.empty else None, 2)
        row["r²"] = _num(f["r2"].iloc[0] if not f.empty else None, 3)
        rows.append(row)
    return pd.DataFrame(rows, columns=["model", "family", "batch", *columns, "slope", "r²"])


def _batch_label(g: pd.DataFrame, asked) -> str:
    """The batch(es) used, and the asked one where a slow sampler got less: '256 (asked 1024)'."""
    used = sorted(set(int(b) for b in g["batch"]))
    text = ", ".join(str(b) for b in used)
    return text if pd.isna(asked) or used == [int(asked)] else f"{text} (asked {int(asked)})"


def roofline_table(timings: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, asked batch): percent of the GEMM rate at each size."""
    if "roofline_fraction" not in timings.columns:
        return pd.DataFrame()
    d = timings.assign(batch_asked=asked_batch(timings),
                       column=[f"{_size_label(s, n)} % of GEMM" for s, n in zip(timings["size"], timings["dim"])])
    columns = list(dict.fromkeys(d.sort_values("dim")["column"]))
    rows = []
    for (model, asked), g in d.groupby(["model", "batch_asked"], sort=False):
        values = g.set_index("column")["roofline_fraction"]
        row = {"model": _model_label(model, g), "batch": _batch_label(g, asked)}
        row.update({c: _percent(values[c]) if c in values.index else "-" for c in columns})
        rows.append(row)
    return pd.DataFrame(rows, columns=["model", "batch", *columns])


def depth_work_table(timings: pd.DataFrame) -> pd.DataFrame:
    """One row per model: sequential depth (NFE per sample) and total work (FLOPs per sample) at each
    size, and how each grows with D (log-log slope): "D steps" and "D^2 work" are separate columns."""
    if "flops_per_sample" not in timings.columns:
        return pd.DataFrame()
    d = timings.drop_duplicates(["model", "size"]).sort_values("dim")
    sizes = d.drop_duplicates("dim")[["size", "dim"]].values.tolist()
    rows = []
    for model, g in d.groupby("model", sort=False):
        g = g.set_index("dim")
        row = {"model": _model_label(model, g), "family": g["family"].iloc[0]}
        for _, dim in sizes:
            row[f"NFE D={int(dim)}"] = f"{int(g['sampling_nfe'][dim]):,}" if dim in g.index else "-"
        for _, dim in sizes:
            row[f"FLOPs/sample D={int(dim)}"] = _flops(g["flops_per_sample"][dim]) if dim in g.index else "-"
        row["NFE slope"] = _num(fit_power_law(g.index, g["sampling_nfe"])[0], 2)
        finite = g[np.isfinite(g["flops_per_sample"]) & (g["flops_per_sample"] > 0)]
        row["FLOPs slope"] = _num(fit_power_law(finite.index, finite["flops_per_sample"])[0], 2)
        rows.append(row)
    return pd.DataFrame(rows)


def _ms(value) -> str:
    if pd.isna(value):
        return "-"
    return f"{value:.3g}" if value < 100 else f"{value:,.0f}"


def _percent(fraction) -> str:
    if pd.isna(fraction):
        return "-"
    return f"{fraction * 100:.2g}%" if fraction < 0.1 else f"{fraction * 100:.0f}%"


def _flops(value) -> str:
    return "-" if pd.isna(value) else f"{value:.3g}"


def _num(value, decimals: int) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.{decimals}f}"


def describe(meta: dict) -> str:
    """How the timings were taken, in a few sentences."""
    hardware = meta.get("hardware", {})
    batches = meta.get("batches", [meta.get("batch", "?")])
    return (f"Sampling time per sample on {meta.get('device', '?')} "
            f"({hardware.get('cpu_count', '?')} CPU cores, torch threads {hardware.get('torch_threads', '?')}) "
            f"at batch {' and '.join(str(b) for b in batches)}, or for a slow sampler the largest halving of "
            f"the asked batch that keeps one call under {MAX_CALL_S:.0f}s (at least {PROBE_BATCH}; the same "
            f"batch for all sizes of a model, see the batch column). Models are untrained unless marked "
            f"trained. Warm-up calls first, then the median of {MIN_REPEATS} to {MAX_REPEATS} repeats, "
            f"fewer (down to 1) once {MAX_SECONDS:.0f}s were spent. slope: least-squares fit of "
            "log10(seconds per sample) on log10(D) at each batch; r² needs three sizes. Only measured "
            "figures: nothing is extrapolated, and what was not measured is listed as skipped.")


def describe_roofline(meta: dict) -> str:
    gemm = meta.get("gemm") or {}
    rate = gemm.get("gemm_flops_per_second")
    rate_text = f"{rate / 1e9:.1f} GFLOP/s" if rate else "?"
    median = gemm.get("median_gemm_flops_per_second")
    median_text = f"; median {median / 1e9:.1f} GFLOP/s" if median else ""
    return (f"Roofline: this machine's float32 GEMM rate, measured in the same run, is {rate_text} (fastest "
            f"of {gemm.get('repeats', '?')} torch.mm of {gemm.get('side', '?')}x{gemm.get('side', '?')} "
            f"matrices, {gemm.get('torch_threads', '?')} torch threads{median_text}). On a shared machine the "
            "rate moves with the load between this measurement and a model's timing, so a fraction can "
            "exceed 100%. Fraction of roofline = matmul/conv "
            "FLOPs per sample x samples/s / GEMM rate. FLOPs are counted by torch's FlopCounterMode "
            "(matrix products and convolutions only: elementwise ops, activations and noise are not "
            "counted) or, where a model says so, by its own sampling_flops (FVSBN: D(D-1) per sample). "
            "NFE is the sequential depth, FLOPs the total work: a sampler can be deep and cheap, or "
            "shallow and heavy.")


def family_notes(families) -> list[str]:
    """Why untrained weights give the trained model's sampling cost, for each family present."""
    return [f"{family}: {FAMILY_COST_NOTES.get(family, 'no note for this family: check its sampler.')}"
            for family in dict.fromkeys(families)]


def markdown_lines(timings, fits, skipped, meta) -> list[str]:
    lines = ["# Sampling cost against image size", "", describe(meta), ""]
    if not timings.empty:
        lines += [scaling_table(timings, fits).to_markdown(index=False, disable_numparse=True), ""]
        roof, work = roofline_table(timings), depth_work_table(timings)
        lines += [describe_roofline(meta), ""]
        if not roof.empty:
            lines += [roof.to_markdown(index=False, disable_numparse=True), ""]
        if not work.empty:
            lines += [work.to_markdown(index=False, disable_numparse=True), ""]
    if not skipped.empty:
        lines += ["Skipped (not measured):", ""] + [f"- {skip_text(r)}" for r in skipped.itertuples()] + [""]
    lines += ["Why the measured models' sampling cost is that of trained ones, by family:", ""]
    lines += [f"- {note}" for note in family_notes(timings["family"])] + [""]
    return lines


def skip_text(r) -> str:
    batch = getattr(r, "batch", "")
    at = f" batch {batch}" if batch not in ("", "all", None) and not pd.isna(batch) else ""
    return f"{r.model} at {r.size}x{r.size}{at}: {r.reason}"


# --- the command ---------------------------------------------------------------------------------
