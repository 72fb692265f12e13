"""The scaling study's files, tables and text: no torch, no measuring.

``bench.evaluate.sampling_cost`` measures; this module writes its files (``write_study``: ``scaling.csv``
and its siblings, the plots), reads them back (``load_study``) and builds the tables and
sentences that ``scaling.md`` and the run report show, so that re-rendering a report never imports torch.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench.config import paths
from bench.results import numbers
from bench.evaluate.sampling_cost_protocol import (FAMILY_COST_NOTES, MAX_CALL_S, MAX_REPEATS, MAX_SECONDS,
                                                   MIN_REPEATS, PROBE_BATCH, SKIP_COLUMNS, asked_batch,
                                                   fit_power_law, fit_table)

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
    meta = paths.read_json(folder / "scaling.json") if (folder / "scaling.json").exists() else {}
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
        row.update({c: numbers.significant(values[c] * 1e3) if c in values.index else "-" for c in columns})
        f = fit[(fit["model"] == model) & ((fit["batch"] == asked) | fit["batch"].isna())]
        row["slope"] = numbers.fixed(f["slope"].iloc[0] if not f.empty else None, 2, grouped=False)
        row["r²"] = numbers.fixed(f["r2"].iloc[0] if not f.empty else None, 3, grouped=False)
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
        row.update({c: numbers.percent(values[c]) if c in values.index else "-" for c in columns})
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
            row[f"FLOPs/sample D={int(dim)}"] = numbers.scientific(g["flops_per_sample"][dim]) if dim in g.index else "-"
        row["NFE slope"] = numbers.fixed(fit_power_law(g.index, g["sampling_nfe"])[0], 2, grouped=False)
        finite = g[np.isfinite(g["flops_per_sample"]) & (g["flops_per_sample"] > 0)]
        row["FLOPs slope"] = numbers.fixed(fit_power_law(finite.index, finite["flops_per_sample"])[0], 2, grouped=False)
        rows.append(row)
    return pd.DataFrame(rows)


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
            "counted) or, where a model says so, by its own sampling_flops (FVSBN: D(D-1) per sample; MADE and "
            "PixelCNN: their cached samplers' dense, masked layers, zeros included as the counter counts a "
            "masked convolution, while their compiled samplers skip most masked zeros: MADE does about half "
            "the counted work, PixelCNN's per-sample kernel 78%). "
            "NFE is the sequential depth, FLOPs the total work: a sampler can be deep and cheap, or "
            "shallow and heavy.")


def family_notes(families) -> list[str]:
    """Why untrained weights give the trained model's sampling cost, for each family present."""
    return [f"{family}: {FAMILY_COST_NOTES.get(family, 'no note for this family: check its sampler.')}"
            for family in dict.fromkeys(families)]


def skip_text(r) -> str:
    batch = getattr(r, "batch", "")
    at = f" batch {batch}" if batch not in ("", "all", None) and not pd.isna(batch) else ""
    return f"{r.model} at {r.size}x{r.size}{at}: {r.reason}"



# --- the files -----------------------------------------------------------------------------------
def write_study(out: Path, timings: pd.DataFrame, fits: pd.DataFrame, skipped: pd.DataFrame, meta: dict) -> None:
    """scaling.csv, scaling_fit.csv, scaling_skipped.csv, scaling.json, scaling_gemm.json, scaling.png and
    scaling_roofline.png (``scaling.md`` is the report's rendering of these: ``report.render_study``)."""
    from bench.results import plots

    out.mkdir(parents=True, exist_ok=True)
    timings.to_csv(out / "scaling.csv", index=False)
    fits.to_csv(out / "scaling_fit.csv", index=False)
    skipped.to_csv(out / "scaling_skipped.csv", index=False)
    paths.write_json(out / "scaling.json", meta)
    if meta.get("gemm"):
        paths.write_json(out / "scaling_gemm.json", meta["gemm"])
    plots.scaling(timings, fits, out / "scaling.png")
    plots.scaling_roofline(timings, out / "scaling_roofline.png")

