"""Sampling cost against image size: ``python -m bench scaling``.

Every model is built at 8x8, 14x14 and 28x28 (D = 64, 196, 784) and its time per sample is measured at
batch 1 and at batch 1,024 (warm-up first, then the median of a few repeats; on a GPU after
``torch.cuda.synchronize``; a slow sampler at the largest halving of the asked batch that keeps one
call under MAX_CALL_S, the same for all its sizes, and with fewer repeats, so that the whole study stays
within a minute or two on a CPU). A straight line is fitted to log10(seconds per sample) against
log10(D) at each batch: its slope says how the cost grows with the number of pixels.

Two different things grow with D, and the study reports them side by side:

- *sequential depth*, the network evaluations one sample waits for (``sampling_nfe``): FVSBN's D
  dependent steps against a flow's single pass. At batch 1 (latency) depth shows;
- *total work*, the matmul/conv FLOPs of one sample (bench.flops): FVSBN's D(D-1)/2 multiply-adds
  against a convolutional flow's O(D). At batch 1,024 (throughput) work and memory traffic show.

Against this machine's own fp32 GEMM rate, measured in the same run (a dense 1024x1024 torch.mm on the
run's device and thread count), the *roofline fraction* = FLOPs per sample x samples per second / GEMM
rate says how much of the machine's matrix-product speed a sampler turns into counted work.

Untrained weights suffice for a sampler that does no weight-dependent work (no adaptive ODE solver, no
early stopping): ``FAMILY_COST_NOTES`` says why, family by family. A model that declares
``sampling_cost_depends_on_weights`` (an adaptive-solver flow) is first trained briefly on mnist5k
resized to the size (TRAIN_STEPS steps), and its rows say so. Only measured figures are written, never
extrapolated: a model whose sampler is projected past the cap, or that cannot be built or sampled at a
size, is listed as skipped with the reason.
"""
from __future__ import annotations

import functools
import statistics
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench import flops as flop_count
from bench import measure, results

DEFAULT_SIZES = (8, 14, 28)
DEFAULT_BATCHES = (1, 1024)  # latency (depth shows) and throughput (work shows)
TIMING_COLUMNS = ["model", "size", "dim", "batch", "seconds_per_sample", "repeats", "family", "sampling_nfe",
                  "batch_asked", "flops_per_sample", "samples_per_second", "roofline_fraction", "trained_steps"]
FIT_COLUMNS = ["model", "batch", "slope", "intercept", "r2"]
SKIP_COLUMNS = ["model", "size", "batch", "reason"]
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
FLOP_COUNT_SAMPLES = 2  # samples drawn under the FLOP counter (per-sample FLOPs do not depend on the batch)
GEMM_SIDE = 1024     # the roofline's reference: float32 torch.mm of two GEMM_SIDE x GEMM_SIDE matrices
GEMM_REPEATS = 7     # the fastest is the ceiling: on a shared machine the median moves with the load

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


# --- the measurement -----------------------------------------------------------------------------
class Skipped(Exception):
    """This (model, size) is not measured; the message says why."""


def gemm_rate(device: torch.device, side: int = GEMM_SIDE, repeats: int = GEMM_REPEATS) -> dict:
    """This machine's float32 matrix-product rate on ``device`` at the current thread count: the fastest
    of ``repeats`` timed ``side x side`` torch.mm calls after a warm-up, 2 side^3 FLOPs each (the median
    rate is kept alongside)."""
    a = torch.randn(side, side, device=device)
    b = torch.randn(side, side, device=device)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        measure.synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        measure.synchronize(device)
        times.append(time.perf_counter() - start)
    work = 2.0 * side ** 3
    return {"gemm_flops_per_second": work / min(times), "median_gemm_flops_per_second": work / statistics.median(times),
            "side": side, "dtype": "float32", "repeats": repeats, "device": str(device),
            "torch_threads": torch.get_num_threads()}


def time_per_sample(model, batch: int, device: torch.device, fixed: bool = False) -> tuple[float, int, int]:
    """(median seconds per sample, repeats, batch used). The batch is ``batch``, or for a slow sampler the
    largest halving of it that keeps one call under MAX_CALL_S (never below PROBE_BATCH); ``fixed``
    forces ``batch``, so that every size of one model is timed at the same batch."""
    first = batch if fixed else min(batch, PROBE_BATCH)
    warm = _call(model, first, device)  # warm-up: allocations, kernel selection
    if warm / first * batch > SKIP_PROJECTED_S and warm > SKIP_PROJECTED_S / 4:
        raise Skipped(f"projected {warm / first * batch:.0f}s per batch of {batch}; the warm-up alone took "
                      f"{warm:.0f}s (cap {SKIP_PROJECTED_S:.0f}s)")
    probe = _call(model, first, device)  # steady state: sizes the batch (first-call costs would overstate it)
    per_sample = probe / first
    use = batch if fixed else _affordable_batch(batch, per_sample)
    if per_sample * use > SKIP_PROJECTED_S:
        raise Skipped(f"projected {per_sample * use:.0f}s per batch of {use} > {SKIP_PROJECTED_S:.0f}s cap")
    times = [probe] if use == first else []  # the probe is a timed call after a warm-up: a repeat
    if not times and per_sample * use < MAX_SECONDS / 2:
        _call(model, use, device)  # warm-up at the measured shape too, when cheap
    while len(times) < MAX_REPEATS and not _enough(times):
        times.append(_call(model, use, device))
    return statistics.median(times) / use, len(times), use


def _call(model, n: int, device: torch.device) -> float:
    return measure.timed_sample(model, n, measure.sample_labels(model, n, device), device)


def _affordable_batch(batch: int, seconds_per_sample: float) -> int:
    use = batch
    while use > PROBE_BATCH and seconds_per_sample * use > MAX_CALL_S:
        use = max(PROBE_BATCH, use // 2)
    return use


def _enough(times: list[float]) -> bool:
    spent = sum(times)
    return spent >= MAX_SECONDS or (len(times) >= MIN_REPEATS and spent >= MIN_SECONDS)


def build_for_study(name: str, size: int, device: torch.device, train_steps: int | None = None):
    """(model for 1 x size x size images in eval mode, training steps it had). Untrained, unless its
    sampling cost depends on its weights: then ``train_steps`` steps on mnist5k resized to the size."""
    import models

    torch.manual_seed(0)
    try:
        model = models.build(name, image_shape=(1, size, size)).to(device)
    except Exception as exc:  # a model that cannot take this size is a finding, not a crash
        raise Skipped(f"cannot build at {size}x{size}: {type(exc).__name__}: {exc}") from exc
    trained, train_steps = 0, TRAIN_STEPS if train_steps is None else train_steps
    if getattr(model, "sampling_cost_depends_on_weights", False) and train_steps > 0:
        try:
            trained = _train_briefly(model, size, device, train_steps)
        except Exception as exc:
            raise Skipped(f"brief training before timing failed at {size}x{size}: {type(exc).__name__}: {exc}") from exc
    return model.eval(), trained


def _train_briefly(model, size: int, device: torch.device, steps: int) -> int:
    from bench.budgets import parse_budget
    from bench.trainer import train

    images, labels = _resized_mnist5k(size)
    result = train(model, images, labels, parse_budget(f"{steps}steps"), device, seed=0,
                   batch_size=getattr(model, "batch_size", 64), progress=False)
    return result.steps


@functools.lru_cache(maxsize=4)
def _resized_mnist5k(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """mnist5k's training images resized to size x size (area average down, bilinear up), 0..255 integers."""
    import torch.nn.functional as F

    from bench.data import load_dataset

    data = load_dataset("mnist5k")
    x = data.train_images.float()
    mode = "area" if size <= x.shape[-1] else "bilinear"
    resized = F.interpolate(x, size=(size, size), mode=mode)
    return resized.round().clamp(0, 255).to(data.train_images.dtype), data.train_labels


def sampling_flops(model) -> float:
    """matmul/conv FLOPs per sample (bench.flops); NaN when they cannot be counted."""
    try:
        return flop_count.sample_flops_per_sample(model, FLOP_COUNT_SAMPLES)
    except Exception:
        return float("nan")


def run_study(names: list[str], sizes: list[int], batch, device: torch.device, log=print,
              gemm: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Timings, fits and skips for every (model, size, batch); ``batch`` is one batch or several.
    Sizes go largest first: the batch the largest affords is then used for the smaller ones too, so one
    model's sizes share one batch at each asked batch. ``gemm`` (from ``gemm_rate``) is measured if absent."""
    batches = [int(batch)] if np.isscalar(batch) else [int(b) for b in batch]
    gemm = gemm or gemm_rate(device)
    timings, skipped = [], []
    for name in names:
        used_at_largest: dict[int, int] = {}  # asked batch -> batch the largest size afforded
        for size in sorted(sizes, reverse=True):
            try:
                model, trained = build_for_study(name, size, device)
            except Skipped as exc:
                skipped.append({"model": name, "size": size, "batch": "all", "reason": str(exc)})
                log(f"{name:<10} {size:>2}x{size:<2} skipped: {exc}")
                continue
            per_sample_flops = sampling_flops(model)
            for asked in batches:
                start = time.perf_counter()
                fixed = asked in used_at_largest
                try:
                    seconds, repeats, used = _timed(model, used_at_largest.get(asked, asked), device, fixed, size)
                except Skipped as exc:
                    skipped.append({"model": name, "size": size, "batch": str(asked), "reason": str(exc)})
                    log(f"{name:<10} {size:>2}x{size:<2} batch {asked}: skipped: {exc}")
                    continue
                used_at_largest.setdefault(asked, used)
                timings.append({"model": name, "size": size, "dim": model.dim, "batch": used,
                                "seconds_per_sample": seconds, "repeats": repeats, "family": model.family,
                                "sampling_nfe": int(model.sampling_nfe), "batch_asked": asked,
                                "flops_per_sample": per_sample_flops, "trained_steps": trained})
                log(f"{name:<10} {size:>2}x{size:<2} {seconds * 1e3:10.4g} ms/sample at batch {used}"
                    f"{'' if used == asked else f' (asked {asked})'} ({repeats} repeats, "
                    f"{time.perf_counter() - start:.1f}s)")
    frame = pd.DataFrame(timings, columns=TIMING_COLUMNS)
    frame = with_roofline(frame, gemm["gemm_flops_per_second"])[TIMING_COLUMNS]
    order = {n: i for i, n in enumerate(names)}
    frame = frame.assign(_o=frame["model"].map(order)).sort_values(["_o", "batch_asked", "size"], kind="stable")
    frame = frame.drop(columns="_o").reset_index(drop=True)
    return frame, fit_table(frame), pd.DataFrame(skipped, columns=SKIP_COLUMNS)


def _timed(model, batch: int, device, fixed: bool, size: int):
    try:
        return time_per_sample(model, batch, device, fixed)
    except Skipped:
        raise
    except Exception as exc:
        raise Skipped(f"sampling failed at {size}x{size}: {type(exc).__name__}: {exc}") from exc


# --- the files -----------------------------------------------------------------------------------
def write_study(out: Path, timings: pd.DataFrame, fits: pd.DataFrame, skipped: pd.DataFrame, meta: dict) -> None:
    """scaling.csv, scaling_fit.csv, scaling_skipped.csv, scaling.json, scaling_gemm.json, scaling.md,
    scaling.png and scaling_roofline.png."""
    from bench import plots

    out.mkdir(parents=True, exist_ok=True)
    timings.to_csv(out / "scaling.csv", index=False)
    fits.to_csv(out / "scaling_fit.csv", index=False)
    skipped.to_csv(out / "scaling_skipped.csv", index=False)
    results.write_json(out / "scaling.json", meta)
    if meta.get("gemm"):
        results.write_json(out / "scaling_gemm.json", meta["gemm"])
    (out / "scaling.md").write_text("\n".join(markdown_lines(timings, fits, skipped, meta)) + "\n")
    plots.scaling(timings, fits, out / "scaling.png")
    plots.scaling_roofline(timings, out / "scaling_roofline.png")


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
def study_into(out: Path, names: list[str], device: torch.device, sizes=DEFAULT_SIZES, batches=DEFAULT_BATCHES):
    """Measure every model at every size and batch and write the study's files into ``out``."""
    started_at, started = datetime.now().isoformat(timespec="seconds"), time.perf_counter()
    batches = [int(batches)] if np.isscalar(batches) else [int(b) for b in batches]
    gemm = gemm_rate(device)
    timings, fits, skipped = run_study(names, list(sizes), batches, device, gemm=gemm)
    meta = {"models": names, "sizes": list(sizes), "batches": batches, "device": str(device),
            "started": started_at, "gemm": gemm,
            "wall_seconds": round(time.perf_counter() - started, 1), "versions": results.package_versions(),
            "git_commit": results.git_commit(), "hardware": results.hardware(device)}
    write_study(out, timings, fits, skipped, meta)
    return timings, fits, skipped, meta


def main(args) -> int:
    """``python -m bench scaling``: measure, write the files into --out, re-render a run's report there."""
    from bench.errors import UserError
    from bench.runner import resolve_device
    from bench.suite import resolve_models

    names = resolve_models(args.models, run_all=not args.models)
    if not args.sizes or any(s < 2 for s in args.sizes):
        raise UserError(f"--sizes must be image sides of at least 2 pixels, e.g. 8,14,28; got {args.sizes}")
    batches = [args.batch] if isinstance(args.batch, int) else list(args.batch)
    if not batches or any(b < 1 for b in batches):
        raise UserError(f"--batch must be positive batch sizes, e.g. 1,1024; got {args.batch}")
    device = resolve_device(args.device)
    out = Path(args.out) if args.out else Path("results") / datetime.now().strftime("scaling-%Y%m%d-%H%M%S")
    timings, fits, skipped, meta = study_into(out, names, device, list(args.sizes), batches)
    print("\n".join(markdown_lines(timings, fits, skipped, meta)))
    if (out / "metrics.csv").exists():  # --out is a run's folder: its report gains the scaling section
        from bench import report
        report.render(out)
    print(f"scaling: {out}/ (scaling.csv, scaling_fit.csv, scaling.md, scaling.png, scaling_roofline.png)")
    print(f"wall time: {meta['wall_seconds']}s")
    return 0
