"""The report's seaborn figures, one function per figure, written as PNG files.

Every function takes the run's tidy tables and a path, writes the figure and returns the path, or
returns ``None`` (writing nothing) when the metrics it needs are absent from the run: a report of a
run without sample-quality metrics simply has no FID plot. Figures use the Agg backend (no display)
and carry no timestamp, so re-rendering the same run writes the same files.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

DATA_MODEL = "data"  # the row of real images scored like a model (sample-quality reference)
KIND_COLOURS = {"exact": "#1b9e77", "bound": "#d95f02", "estimate": "#7570b3"}
TRACK_ORDER = {"binary": 0, "8bit": 1}
PNG_METADATA = {"Software": None}  # no version string: identical inputs give identical files


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata=PNG_METADATA)
    plt.close(fig)
    return path


def _log_axis(ax, axis: str = "x"):
    """Log scale with plain numbers (20, 300, 0.5) instead of 2x10^1; minor labels only within a decade."""
    getattr(ax, f"set_{axis}scale")("log")
    target = ax.xaxis if axis == "x" else ax.yaxis
    lo, hi = sorted(abs(v) for v in (ax.get_xlim() if axis == "x" else ax.get_ylim()))
    plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")
    target.set_major_formatter(plain)
    narrow = lo > 0 and hi / lo < 10
    target.set_minor_formatter(plain if narrow else ticker.NullFormatter())


def _rows(metrics: pd.DataFrame, names) -> pd.DataFrame:
    """Finite rows of these metrics; the data rows (one per track) labelled "data (<track>)"."""
    if "steps" in metrics:  # the steps curve's points have their own figure (steps_curve)
        metrics = metrics[metrics["steps"].isna()]
    chosen = metrics[metrics["metric"].isin(list(names)) & metrics["value"].notna()]
    chosen = chosen[np.isfinite(chosen["value"].astype(float))]
    labels = [f"{DATA_MODEL} ({t})" if m == DATA_MODEL else m for m, t in zip(chosen["model"], chosen["track"])]
    return chosen.assign(model=labels)


def is_data(label: str) -> bool:
    return label == DATA_MODEL or label.startswith(f"{DATA_MODEL} (")


# --- likelihood --------------------------------------------------------------------------------
def bits_per_dim(metrics: pd.DataFrame, path: Path) -> Path | None:
    """bits/dim per model, one panel per track (tracks are never ranked together), seeds as dots."""
    d = _rows(metrics, ["test_bpd", "test_bpd_iwae"])
    d = d[~d["model"].map(is_data)]
    if d.empty:
        return None
    d = d.assign(label=[m + (" (IWAE)" if k == "test_bpd_iwae" else "") for m, k in zip(d["model"], d["metric"])])
    tracks = sorted(d["track"].unique(), key=lambda t: (TRACK_ORDER.get(t, 9), t))
    heights = [d[d["track"] == t]["label"].nunique() for t in tracks]
    fig, axes = plt.subplots(1, len(tracks), figsize=(6.0 * len(tracks), 1.9 + 0.55 * max(heights)), squeeze=False)
    for ax, track in zip(axes[0], tracks):
        _bpd_panel(ax, d[d["track"] == track], track)
    _shared_legend(fig, axes[0], "likelihood")
    fig.suptitle("Test bits/dim by model (lower is better); dots are seeds, black the mean ± std")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return _save(fig, path)


def _bpd_panel(ax, d: pd.DataFrame, track: str):
    order = list(d.groupby("label")["value"].mean().sort_values().index)
    sns.pointplot(data=d, y="label", x="value", order=order, errorbar="sd", color="black", linestyle="none",
                  markers="|", capsize=0.25, err_kws={"linewidth": 1.2}, ax=ax)
    kinds = [k for k in KIND_COLOURS if k in set(d["kind"])]
    sns.stripplot(data=d, y="label", x="value", order=order, hue="kind", hue_order=kinds, palette=KIND_COLOURS,
                  size=7, jitter=0.15, alpha=0.85, ax=ax)
    _readable_range(ax, d["value"], min_width=0.05)
    ax.set_title(f"{track} track")
    ax.set_xlabel("bits/dim")
    ax.set_ylabel("")


def _readable_range(ax, values: pd.Series, min_width: float):
    """No offset notation, and a visible width even when the seeds agree to many digits."""
    ax.ticklabel_format(axis="x", useOffset=False, style="plain")
    lo, hi = ax.get_xlim()
    if hi - lo < min_width:
        centre = float(values.mean())
        ax.set_xlim(centre - min_width / 2, centre + min_width / 2)


def _shared_legend(fig, axes, title: str):
    """One legend under the panels (merged, without duplicates) instead of one inside each."""
    merged = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            merged.setdefault(label, handle)
        if ax.get_legend():
            ax.get_legend().remove()
    fig.legend(merged.values(), merged.keys(), title=title, loc="lower center", ncol=max(1, len(merged)),
               frameon=False)


# --- sample quality ----------------------------------------------------------------------------
QUALITY_PANELS = [("fid", "FID (lower is better)"), ("is", "IS (higher is better)")]


def fid_and_is(metrics: pd.DataFrame, path: Path) -> Path | None:
    """FID and IS per model (and the real-data reference row), mean ± std with seeds as dots."""
    panels = [(m, title) for m, title in QUALITY_PANELS if not _rows(metrics, [m]).empty]
    if not panels:
        return None
    labels = list(dict.fromkeys(_rows(metrics, [m for m, _ in panels])["model"]))
    models = [m for m in labels if not is_data(m)] + sorted(m for m in labels if is_data(m))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 1.6 + 0.5 * len(models)), squeeze=False)
    for ax, (metric, title) in zip(axes[0], panels):
        _quality_panel(ax, _rows(metrics, [metric]), models, title)
    fig.suptitle("Sample quality by model; dots are seeds, black the mean ± std; grey: real held-out images")
    fig.tight_layout()
    return _save(fig, path)


def _quality_panel(ax, d: pd.DataFrame, models: list[str], title: str):
    order = [m for m in models if m in set(d["model"])]
    d = d.assign(source=["real data" if is_data(m) else "model" for m in d["model"]])
    sns.pointplot(data=d, y="model", x="value", order=order, errorbar="sd", color="black", linestyle="none",
                  markers="|", capsize=0.25, err_kws={"linewidth": 1.2}, ax=ax)
    sns.stripplot(data=d, y="model", x="value", order=order, hue="source", hue_order=["model", "real data"],
                  palette={"model": "#4c72b0", "real data": "#999999"}, size=7, jitter=0.12, ax=ax)
    values = d["value"][d["value"] > 0]
    if len(values) and values.max() / values.min() > 30:  # an untrained model next to real data
        _log_axis(ax, "x")
    ax.set_title(title)
    ax.set_xlabel(title.split(" (")[0] + (" (log scale)" if ax.get_xscale() == "log" else ""))
    ax.set_ylabel("")
    ax.legend(fontsize=8, loc="best")


# --- sampling speed ----------------------------------------------------------------------------
def throughput(metrics: pd.DataFrame, path: Path) -> Path | None:
    """Samples per second against batch size, log-log, one line per model (mean ± std over seeds)."""
    d = _rows(metrics, ["sample_throughput"]).dropna(subset=["batch"])
    d = d[d["value"] > 0]
    if d.empty:
        return None
    d = d.assign(batch=d["batch"].astype(float))
    fig, ax = plt.subplots(figsize=(7.5, 5))
    # Seed spread as the min-max range: a std band on a log axis can reach zero and mislead.
    sns.lineplot(data=d, x="batch", y="value", hue="model", style="model", markers=True, dashes=False,
                 errorbar=lambda v: (v.min(), v.max()), err_style="bars", err_kws={"capsize": 4}, ax=ax)
    ax.set_xscale("log", base=2)
    _log_axis(ax, "y")
    batches = sorted(d["batch"].unique())
    ax.set_xticks(batches, [f"{int(b)}" for b in batches])
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.set(xlabel="batch size (samples drawn per call)", ylabel="samples per second (log scale)",
           title="Sampling throughput against batch size (log-log; bars: range over seeds)")
    ax.legend(title="model", bbox_to_anchor=(1.02, 1), loc="upper left")
    return _save(fig, path)


# --- training curves ---------------------------------------------------------------------------
def training_curves(curves: pd.DataFrame, path: Path) -> Path | None:
    """Training loss against wall seconds, one panel per model (their losses have different scales)."""
    d = curves.dropna(subset=["seconds", "loss"]) if not curves.empty else curves
    if d.empty:
        return None
    d = d[np.isfinite(d["loss"].astype(float))].assign(seed=lambda f: f["seed"].astype(str))
    models = list(dict.fromkeys(d["model"]))
    ncols = min(3, len(models))
    nrows = -(-len(models) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.4 * nrows), squeeze=False)
    for ax, model in zip(axes.flat, models):
        sns.lineplot(data=d[d["model"] == model], x="seconds", y="loss", hue="seed", ax=ax, linewidth=1)
        ax.set(title=model, xlabel="training time (s)", ylabel="training loss")
        ax.legend(title="seed", fontsize=8)
    for ax in list(axes.flat)[len(models):]:
        ax.set_visible(False)
    fig.suptitle("Training curves (each model's own loss; scales differ between panels)")
    fig.tight_layout()
    return _save(fig, path)


# --- quality against cost ----------------------------------------------------------------------
def quality_against_cost(costs: pd.DataFrame, path: Path) -> Path | None:
    """FID against training seconds and against milliseconds per sample, one point per model.

    ``costs``: one row per model with columns model, fid, train_seconds, ms_per_sample (means)."""
    panels = [(c, label) for c, label in [("train_seconds", "training time (s, log scale)"),
                                          ("ms_per_sample", "sampling time per sample (ms, log scale)")]
              if c in costs and costs[["fid", c]].dropna().pipe(lambda f: (f[c] > 0).any())]
    if "fid" not in costs or not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 4.6), squeeze=False)
    for ax, (column, label) in zip(axes[0], panels):
        d = costs.dropna(subset=["fid", column])
        d = d[d[column] > 0]
        sns.scatterplot(data=d, x=column, y="fid", hue="model", s=70, legend=False, ax=ax)
        for _, r in d.iterrows():
            ax.annotate(r["model"], (r[column], r["fid"]), textcoords="offset points", xytext=(5, 4), fontsize=9)
        ax.margins(x=0.2, y=0.15)
        _log_axis(ax, "x")
        ax.set(xlabel=label, ylabel="FID (lower is better)")
    fig.suptitle("Sample quality against cost (means over seeds; lower-left is better)")
    fig.tight_layout()
    return _save(fig, path)


# --- sampling cost against image size ----------------------------------------------------------
def scaling(timings: pd.DataFrame, fits: pd.DataFrame, path: Path) -> Path | None:
    """Milliseconds per sample against D (log-log), one panel per asked batch: measured points, the
    fitted line, slope in the legend."""
    from bench.evaluate.sampling_cost_protocol import asked_batch

    if timings.empty:
        return None
    asked = asked_batch(timings)
    batches = sorted(asked.unique())
    fig, axes = plt.subplots(1, len(batches), figsize=(6.5 * len(batches), 5), squeeze=False)
    models = list(dict.fromkeys(timings["model"]))
    colours = dict(zip(models, sns.color_palette("tab10", n_colors=max(1, len(models)))))
    dims = sorted(timings["dim"].unique())
    sizes = timings.drop_duplicates("dim").set_index("dim")["size"]
    for ax, batch in zip(axes[0], batches):
        d_batch = timings[asked == batch]
        for model, d in d_batch.groupby("model", sort=False):
            fit = fits[(fits["model"] == model) & (fits["batch"] == batch)] if "batch" in fits.columns else \
                fits[fits["model"] == model]
            _scaling_line(ax, d, fit.iloc[0] if not fit.empty else None, colours[model])
        ax.set_xscale("log")
        ax.set_xticks(dims, [f"{int(sizes[d])}x{int(sizes[d])}\nD={int(d)}" for d in dims])
        ax.xaxis.set_minor_locator(ticker.NullLocator())
        ax.margins(x=0.08)
        _log_axis(ax, "y")
        ax.set(xlabel="image size (D = number of pixels, log scale)", ylabel="milliseconds per sample (log scale)",
               title=f"batch {batch}" + (" (latency)" if batch == 1 else " (throughput)"))
        ax.legend(title="model (fitted slope; dashed: fit)", fontsize=8)
    fig.suptitle("Sampling cost against image size")
    fig.tight_layout()
    return _save(fig, path)


def scaling_roofline(timings: pd.DataFrame, path: Path) -> Path | None:
    """Left: fraction of this machine's GEMM rate against D, per model and batch. Right: total work
    (FLOPs per sample) against sequential depth (NFE per sample), one point per (model, size)."""
    if timings.empty or "roofline_fraction" not in timings.columns or not timings["roofline_fraction"].gt(0).any():
        return None
    from bench.evaluate.sampling_cost_protocol import asked_batch

    asked = asked_batch(timings)
    models = list(dict.fromkeys(timings["model"]))
    colours = dict(zip(models, sns.color_palette("tab10", n_colors=max(1, len(models)))))
    styles = dict(zip(sorted(asked.unique()), ["o-", "s--", "^:", "d-."]))
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for (model, batch), d in timings.assign(_b=asked).groupby(["model", "_b"], sort=False):
        d = d[d["roofline_fraction"] > 0].sort_values("dim")
        if not d.empty:
            left.plot(d["dim"], d["roofline_fraction"] * 100, styles.get(batch, "o-"), color=colours[model],
                      label=f"{model}, batch {batch}")
    dims = sorted(timings["dim"].unique())
    left.set_xscale("log")
    left.set_xticks(dims, [f"D={int(d)}" for d in dims])
    left.xaxis.set_minor_locator(ticker.NullLocator())
    _log_axis(left, "y")
    left.set(xlabel="D (number of pixels, log scale)", ylabel="% of measured fp32 GEMM rate (log scale)",
             title="Roofline fraction: counted FLOPs/s over GEMM FLOP/s")
    left.legend(fontsize=8)
    work = timings.drop_duplicates(["model", "size"])
    work = work[work["flops_per_sample"] > 0]
    for model, d in work.groupby("model", sort=False):
        d = d.sort_values("dim")
        right.plot(d["sampling_nfe"], d["flops_per_sample"], "o-", color=colours[model], label=model)
        for _, r in d.iterrows():
            right.annotate(f"D={int(r['dim'])}", (r["sampling_nfe"], r["flops_per_sample"]),
                           textcoords="offset points", xytext=(4, 3), fontsize=7)
    right.set_xscale("log")
    right.set_yscale("log")
    right.set(xlabel="sequential depth: network evaluations per sample (NFE, log)",
              ylabel="total work: matmul/conv FLOPs per sample (log)", title="Depth against work")
    right.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _scaling_line(ax, d: pd.DataFrame, fit, colour):
    fitted = fit is not None and np.isfinite(fit["slope"])
    label = d["model"].iloc[0] + (f" ({fit['slope']:.2f})" if fitted else " (no fit)")
    ax.plot(d["dim"], d["seconds_per_sample"] * 1e3, "o", color=colour, label=label)
    if fitted:  # the fit is in log10 seconds; drawn in ms
        xs = np.array([d["dim"].min(), d["dim"].max()], dtype=float)
        ax.plot(xs, 1e3 * 10 ** (fit["intercept"] + fit["slope"] * np.log10(xs)), "--", color=colour, linewidth=1)


# --- quality against sampling steps ------------------------------------------------------------
def steps_curve(points: pd.DataFrame, path: Path) -> Path | None:
    """FID and samples/s against sampling steps (log x), one line per model.

    ``points``: one row per (model, steps) with columns model, steps, fid, samples_per_s (means over seeds)."""
    panels = [(c, label) for c, label in [("fid", "FID (lower is better)"),
                                          ("samples_per_s", "samples per second (log scale)")]
              if c in points and points[c].notna().any()]
    if points.empty or not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 4.4), squeeze=False)
    for ax, (column, label) in zip(axes[0], panels):
        d = points.dropna(subset=[column])
        sns.lineplot(data=d, x="steps", y=column, hue="model", style="model", markers=True, dashes=False, ax=ax)
        _log_axis(ax, "x")
        if column == "samples_per_s":
            _log_axis(ax, "y")
        ax.set_xticks(sorted(d["steps"].unique()))
        ax.xaxis.set_minor_locator(ticker.NullLocator())
        batches = sorted({int(b) for b in d["batch"].dropna()}) if column == "samples_per_s" and "batch" in d else []
        if len(batches) == 1:
            label = label.replace("(", f"(batch {batches[0]}, ")
        ax.set(xlabel="sampling steps (log scale)", ylabel=label)
    fig.suptitle("Sample quality and sampling speed against the number of sampling steps")
    fig.tight_layout()
    return _save(fig, path)


# --- continuous-time models: FID against NFE ---------------------------------------------------
def fid_against_nfe(points: pd.DataFrame, path: Path, fixed_nfe: float | None = None,
                    target_fid: float | None = None) -> Path | None:
    """FID against network evaluations per sample (log x), one line per model through its measured points,
    each model's headline point (its own sampler, the summary's FID) marked with a star.

    ``points``: one row per (model, NFE) with columns model, nfe, fid, headline (means over seeds).
    ``fixed_nfe`` and ``target_fid``, when given, are drawn as the thin grey guides the table reads at."""
    d = points.dropna(subset=["nfe", "fid"]) if not points.empty else points
    if d.empty:
        return None
    d = d[d["nfe"] > 0]
    models = list(dict.fromkeys(d["model"]))
    colours = dict(zip(models, sns.color_palette("tab10", n_colors=max(1, len(models)))))
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for model in models:
        m = d[d["model"] == model].sort_values("nfe", kind="stable")
        ax.plot(m["nfe"], m["fid"], "o-", color=colours[model], label=model, markersize=5)
        own = m[m["headline"].astype(bool)]
        ax.plot(own["nfe"], own["fid"], "*", color=colours[model], markersize=15, markeredgecolor="black",
                linestyle="none")
    ax.plot([], [], "*", color="white", markeredgecolor="black", markersize=12, linestyle="none",
            label="headline (own sampler)")
    if fixed_nfe is not None:
        ax.axvline(fixed_nfe, color="#999999", linestyle="--", linewidth=0.8, label=f"fixed NFE {fixed_nfe:g}")
    if target_fid is not None:
        ax.axhline(target_fid, color="#999999", linestyle=":", linewidth=0.8, label=f"target FID {target_fid:.4g}")
    ax.margins(x=0.08, y=0.08)
    _log_axis(ax, "x")
    values = d["fid"][d["fid"] > 0]
    if len(values) and values.max() / values.min() > 30:
        _log_axis(ax, "y")
    ax.set(xlabel="network evaluations per sample (NFE, log scale)",
           ylabel="FID (lower is better" + (", log scale)" if ax.get_yscale() == "log" else ")"),
           title="Continuous-time models: FID against NFE (means over seeds)")
    ax.legend(fontsize=8, bbox_to_anchor=(1.02, 1), loc="upper left")
    return _save(fig, path)
