"""Sampling cost against image size: ``python -m bench scaling``.

Every model is built untrained at 8x8, 14x14 and 28x28 (D = 64, 196, 784), the time per sample is
measured at one fixed batch size (warm-up first, then the median of a few repeats; on a GPU after
``torch.cuda.synchronize``; a slow sampler such as DDPM at a smaller batch, the same for all its sizes,
and with fewer repeats, so that the whole study stays within minutes on a CPU), and a straight line is
fitted to log10(seconds per sample) against log10(D): its slope says how the cost grows with the number
of pixels.

The default batch is 1, the latency of one sample: there a sampler's *sequential depth* shows (FVSBN's
D dependent steps give a slope near 1, a flow's single parallel pass much less). At a large batch the
study measures throughput instead, which on a small CPU is bound by total work and memory traffic
(FVSBN's O(D^2) multiply-adds against a flow's O(D) convolutions) and can rank the two the other way.

Untrained weights suffice because no sampler here does weight-dependent work (no adaptive ODE solver,
no early stopping): ``FAMILY_COST_NOTES`` says why, family by family. Only measured figures are
written, never extrapolated: a model whose sampler is projected past the cap, or that cannot be built
or sampled at a size, is listed as skipped with the reason.
"""
from __future__ import annotations

import statistics
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench import measure, results

DEFAULT_SIZES = (8, 14, 28)
TIMING_COLUMNS = ["model", "size", "dim", "batch", "seconds_per_sample", "repeats", "family", "sampling_nfe"]
FIT_COLUMNS = ["model", "slope", "intercept", "r2"]
SKIP_COLUMNS = ["model", "size", "reason"]
MIN_SECONDS = 0.5    # repeat until this much was timed (and at least MIN_REPEATS) ...
MIN_REPEATS = 3
MAX_SECONDS = 3.0    # ... but stop once one (model, size) has had this much: a slow sampler gets fewer repeats
MAX_REPEATS = 7
PROBE_BATCH = 8      # the warm-up call's batch; its time sizes the measured batch: a slow sampler is
                     # timed at a halving of the asked batch, down to this one,
MAX_CALL_S = 8.0     # that keeps one call under this many seconds
SKIP_PROJECTED_S = 30.0  # a (model, size) projected past this per call is not run at all

FAMILY_COST_NOTES = {
    "autoregressive": "D sequential conditionals, one pixel after another; the loop length is D whatever "
                      "the weights, so untrained and trained models cost the same.",
    "vae": "one decoder pass from a prior draw; a fixed architecture, so the weights change values, not work.",
    "gan": "one generator pass from noise; a fixed architecture, so the weights change values, not work.",
    "flow": "one inverse pass through a fixed stack of coupling layers; the cost does not depend on the weights.",
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


def fit_table(timings: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for model, d in timings.groupby("model", sort=False):
        slope, intercept, r2 = fit_power_law(d["dim"], d["seconds_per_sample"])
        rows.append({"model": model, "slope": slope, "intercept": intercept, "r2": r2})
    return pd.DataFrame(rows, columns=FIT_COLUMNS)


# --- the measurement -----------------------------------------------------------------------------
class Skipped(Exception):
    """This (model, size) is not measured; the message says why."""


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


def measure_one(name: str, size: int, batch: int, device: torch.device, fixed: bool = False) -> dict:
    """Build ``name`` untrained for 1 x size x size images and time its sampler; raises Skipped."""
    import models

    torch.manual_seed(0)
    try:
        model = models.build(name, image_shape=(1, size, size)).to(device).eval()
    except Exception as exc:  # a model that cannot take this size is a finding, not a crash
        raise Skipped(f"cannot build at {size}x{size}: {type(exc).__name__}: {exc}") from exc
    try:
        seconds, repeats, used = time_per_sample(model, batch, device, fixed)
    except Skipped:
        raise
    except Exception as exc:
        raise Skipped(f"sampling failed at {size}x{size}: {type(exc).__name__}: {exc}") from exc
    return {"model": name, "size": size, "dim": model.dim, "batch": used, "seconds_per_sample": seconds,
            "repeats": repeats, "family": model.family, "sampling_nfe": int(model.sampling_nfe)}


def run_study(names: list[str], sizes: list[int], batch: int, device: torch.device,
              log=print) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Timings, fits and skips for every (model, size). Sizes go largest first: the batch the largest
    affords is then used for the smaller ones too, so one model's sizes share one batch."""
    timings, skipped = [], []
    for name in names:
        model_batch = None
        for size in sorted(sizes, reverse=True):
            start = time.perf_counter()
            try:
                t = measure_one(name, size, model_batch or batch, device, fixed=model_batch is not None)
            except Skipped as exc:
                skipped.append({"model": name, "size": size, "reason": str(exc)})
                log(f"{name:<10} {size:>2}x{size:<2} skipped: {exc}")
                continue
            timings.append(t)
            model_batch = t["batch"]
            log(f"{name:<10} {size:>2}x{size:<2} {t['seconds_per_sample'] * 1e3:10.3f} ms/sample at batch "
                f"{t['batch']} ({t['repeats']} repeats, {time.perf_counter() - start:.1f}s)")
    timing_frame = pd.DataFrame(timings, columns=TIMING_COLUMNS).sort_values(["model", "size"], kind="stable")
    order = {n: i for i, n in enumerate(names)}
    timing_frame = timing_frame.sort_values("model", key=lambda m: m.map(order), kind="stable").reset_index(drop=True)
    skips = pd.DataFrame(skipped, columns=SKIP_COLUMNS)
    return timing_frame, fit_table(timing_frame), skips


# --- the files -----------------------------------------------------------------------------------
def write_study(out: Path, timings: pd.DataFrame, fits: pd.DataFrame, skipped: pd.DataFrame, meta: dict) -> None:
    """scaling.csv, scaling_fit.csv, scaling_skipped.csv, scaling.json, scaling.md and scaling.png."""
    from bench import plots

    out.mkdir(parents=True, exist_ok=True)
    timings.to_csv(out / "scaling.csv", index=False)
    fits.to_csv(out / "scaling_fit.csv", index=False)
    skipped.to_csv(out / "scaling_skipped.csv", index=False)
    results.write_json(out / "scaling.json", meta)
    (out / "scaling.md").write_text("\n".join(markdown_lines(timings, fits, skipped, meta)) + "\n")
    plots.scaling(timings, fits, out / "scaling.png")


def load_study(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict] | None:
    """The stored study in ``folder``, or None when it holds no scaling.csv (fits recomputed if absent)."""
    folder = Path(folder)
    if not (folder / "scaling.csv").exists():
        return None
    timings = pd.read_csv(folder / "scaling.csv")
    fits = pd.read_csv(folder / "scaling_fit.csv") if (folder / "scaling_fit.csv").exists() else fit_table(timings)
    skipped = (pd.read_csv(folder / "scaling_skipped.csv", dtype=str).fillna("") if (folder / "scaling_skipped.csv").exists()
               else pd.DataFrame(columns=SKIP_COLUMNS))
    meta = results.read_json(folder / "scaling.json") if (folder / "scaling.json").exists() else {}
    return timings, fits, skipped, meta


def scaling_table(timings: pd.DataFrame, fits: pd.DataFrame) -> pd.DataFrame:
    """One row per model: ms per sample at each size, the fitted slope and r²."""
    d = timings.assign(column=[f"{int(s)}x{int(s)} (D={int(n)}) ms" for s, n in zip(timings["size"], timings["dim"])])
    wide = d.pivot_table(index="model", columns="column", values="seconds_per_sample", aggfunc="first", sort=False)
    columns = list(dict.fromkeys(d.sort_values("dim")["column"]))
    table = (wide[columns] * 1e3).map(_ms).rename_axis(columns=None).reset_index()
    family = d.drop_duplicates("model").set_index("model")["family"]
    table.insert(1, "family", [family.get(m, "") for m in table["model"]])
    batches = d.groupby("model", sort=False)["batch"].agg(lambda b: ", ".join(str(int(x)) for x in sorted(set(b))))
    table.insert(2, "batch", [batches.get(m, "") for m in table["model"]])
    fit = fits.set_index("model") if not fits.empty else pd.DataFrame(columns=["slope", "r2"])
    table["slope"] = [_num(fit["slope"].get(m), 2) for m in table["model"]]
    table["r²"] = [_num(fit["r2"].get(m), 3) for m in table["model"]]
    return table


def _ms(value) -> str:
    if pd.isna(value):
        return "-"
    return f"{value:.3g}" if value < 100 else f"{value:,.0f}"


def _num(value, decimals: int) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.{decimals}f}"


def describe(meta: dict) -> str:
    """How the timings were taken, in a few sentences."""
    hardware = meta.get("hardware", {})
    return (f"Untrained models, sampling time per sample on {meta.get('device', '?')} "
            f"({hardware.get('cpu_count', '?')} CPU cores, torch threads {hardware.get('torch_threads', '?')}) "
            f"at batch {meta.get('batch', '?')}, or for a slow sampler the largest halving of it that keeps one "
            f"call under {MAX_CALL_S:.0f}s (at least {PROBE_BATCH}; the same batch for all sizes of a model, see "
            f"the batch column). Warm-up calls first, then the median of {MIN_REPEATS} to {MAX_REPEATS} "
            f"repeats, fewer (down to 1) once {MAX_SECONDS:.0f}s were spent. slope: least-squares fit of "
            "log10(seconds per sample) on log10(D); r² needs three sizes. Only measured figures: nothing is "
            "extrapolated, and what was not measured is listed as skipped.")


def family_notes(families) -> list[str]:
    """Why untrained weights give the trained model's sampling cost, for each family present."""
    return [f"{family}: {FAMILY_COST_NOTES.get(family, 'no note for this family: check its sampler.')}"
            for family in dict.fromkeys(families)]


def markdown_lines(timings, fits, skipped, meta) -> list[str]:
    lines = ["# Sampling cost against image size", "", describe(meta), ""]
    if not timings.empty:
        lines += [scaling_table(timings, fits).to_markdown(index=False, disable_numparse=True), ""]
    if not skipped.empty:
        lines += ["Skipped (not measured):", ""] + [f"- {r.model} at {r.size}x{r.size}: {r.reason}"
                                                     for r in skipped.itertuples()] + [""]
    lines += ["Why untrained weights give the sampling cost of trained ones, by family:", ""]
    lines += [f"- {note}" for note in family_notes(timings["family"])] + [""]
    return lines


# --- the command ---------------------------------------------------------------------------------
def study_into(out: Path, names: list[str], device: torch.device, sizes=DEFAULT_SIZES, batch: int = 1):
    """Measure every model at every size and write the study's files into ``out``."""
    started_at, started = datetime.now().isoformat(timespec="seconds"), time.perf_counter()
    timings, fits, skipped = run_study(names, list(sizes), batch, device)
    meta = {"models": names, "sizes": list(sizes), "batch": batch, "device": str(device),
            "started": started_at,
            "wall_seconds": round(time.perf_counter() - started, 1), "versions": results.package_versions(),
            "git_commit": results.git_commit(), "hardware": results.hardware(device)}
    write_study(out, timings, fits, skipped, meta)
    return timings, fits, skipped, meta


def main(args) -> int:
    """``python -m bench scaling``: measure, write the files into --out, re-render a run's report there."""
    from bench.runner import resolve_device
    from bench.suite import resolve_models

    names = resolve_models(args.models, run_all=not args.models)
    if not args.sizes or any(s < 2 for s in args.sizes):
        from bench.errors import UserError
        raise UserError(f"--sizes must be image sides of at least 2 pixels, e.g. 8,14,28; got {args.sizes}")
    device = resolve_device(args.device)
    out = Path(args.out) if args.out else Path("results") / datetime.now().strftime("scaling-%Y%m%d-%H%M%S")
    timings, fits, skipped, meta = study_into(out, names, device, list(args.sizes), args.batch)
    print("\n".join(markdown_lines(timings, fits, skipped, meta)))
    if (out / "metrics.csv").exists():  # --out is a run's folder: its report gains the scaling section
        from bench import report
        report.render(out)
    print(f"scaling: {out}/ (scaling.csv, scaling_fit.csv, scaling.md, scaling.png)")
    return 0
