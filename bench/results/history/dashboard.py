"""``bench history report``: a static dashboard of the store, ``DIR/index.html`` and its plots in ``DIR/plots``.

One section per series. Each has the runs it holds (commit, start, machine), the steps detected in it, and
one trend plot per metric with a better direction: the runs in the order they started along x, labelled by
commit, one line per model, each point with its 95% interval where the run has one, and every detected step
marked by a dashed line at the first run on the new level, labelled with its commit. The page is plain HTML
with the plots embedded (no JavaScript, no server): it opens from disk, and the PNGs sit beside it too.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from bench.evaluate import metrics as metric_registry
from bench.evaluate.metrics import rule_for
from bench.results import plots
from bench.results.history.regressions import FoundStep, describe, find_steps
from bench.results.history.store import HistoryStore
from bench.results.report import blocks as b
from bench.results.report.html import to_html

plt, sns = plots.plt, plots.sns
LOG_RANGE = 20  # a plot whose positive values span more than this factor gets a log y axis


def write_dashboard(store: HistoryStore, out: Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    steps = find_steps(store)
    page = [b.Block("h1", "genbench history"),
            b.para(f"Store `{store.path}`: {len(store.runs())} runs in {len(store.series())} series. Steps are found "
                   f"by a penalised piecewise-constant fit of each series (docs/history.md); a step is better or worse "
                   f"by the metric's direction.")]
    for number, series in enumerate(store.series(), 1):
        page += series_section(store, series, number, [s for s in steps if s.series == series], out)
    index = out / "index.html"
    index.write_text(to_html(page, out, "genbench history"))
    return index


def series_section(store: HistoryStore, series: str, number: int, steps: list[FoundStep], out: Path) -> list:
    runs = store.runs(series)
    points = store.points(series)
    labels = run_labels(runs)
    section = [b.h2(f"Series {number}: {series}"), b.table(runs_table(runs, labels)), b.h3("Detected steps")]
    section.append(b.table(steps_table(steps)) if steps else b.para("No step in any metric of this series."))
    figures = []
    for key in plotted_keys(points):
        path = out / "plots" / f"series{number}-{slug(key)}.png"
        trend_plot(points[points["key"] == key], runs, labels, key, [s for s in steps if s.metric == key], path)
        figures.append((str(path.relative_to(out)), caption(key)))
    section += [b.h3("Trends"), b.images(figures)]
    return section


def run_labels(runs: pd.DataFrame) -> dict[int, str]:
    return {int(r.id): f"{r.git_commit[:7]}\n{str(r.started)[5:16].replace('T', ' ')}" for r in runs.itertuples()}


def runs_table(runs: pd.DataFrame, labels: dict[int, str]) -> pd.DataFrame:
    import json

    machine = [json.loads(m or "{}") for m in runs["machine"]]
    return pd.DataFrame({"#": range(1, len(runs) + 1), "commit": [c[:12] for c in runs["git_commit"]],
                         "started": runs["started"],
                         "machine": [f"{m.get('host', '?')}, {m.get('cpu_count', '?')} cores, "
                                     f"{m.get('torch_threads', '?')} torch thread(s)" for m in machine],
                         "source": runs["source"]})


def steps_table(steps: list[FoundStep]) -> pd.DataFrame:
    return pd.DataFrame({"model": [s.model for s in steps], "metric": [s.metric for s in steps],
                         "commit": [s.commit[:12] for s in steps], "started": [s.started for s in steps],
                         "level": [describe(s) for s in steps], "direction": [s.direction for s in steps],
                         "z": [f"{s.z:+.1f}" for s in steps],
                         "newest run past it": ["yes" if s.latest else "no" for s in steps]})


def plotted_keys(points: pd.DataFrame) -> list[str]:
    """Every key whose metric has a better direction, in the registry's order, then by batch."""
    order = {name: i for i, name in enumerate(metric_registry.REGISTRY)}
    keys = [k for k in points["key"].unique() if rule_for(k).direction is not None]
    return sorted(keys, key=lambda k: (order.get(k.split("@")[0], len(order)), k.split("@")[0],
                                       len(k), k))


def caption(key: str) -> str:
    metric = metric_registry.get(key.split("@")[0])
    unit = f" ({metric.unit})" if metric and metric.unit else ""
    better = f", {rule_for(key).direction} is better"
    return f"{key}{unit}{better}" + (f": {metric.meaning}" if metric else "")


def slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", key).strip("-")


MARKERS = "osD^vP*Xh<>p"


def trend_plot(points: pd.DataFrame, runs: pd.DataFrame, labels: dict[int, str], key: str,
               steps: list[FoundStep], path: Path) -> Path:
    """Two panels: each model's figure as measured (with its interval), and the same relative to the model's
    median over the series, where a step of a few percent shows whatever the model's scale."""
    position = {int(run_id): i for i, run_id in enumerate(runs["id"])}
    models = list(dict.fromkeys(points["entry"]))
    colours = dict(zip(models, sns.color_palette("husl", len(models))))
    fig, (absolute, relative) = plt.subplots(1, 2, figsize=(12, 3.9))
    for i, model in enumerate(models):
        d = points[(points["entry"] == model) & points["value"].notna()]
        x = [position[int(r)] for r in d["run_id"]]
        has_interval = d["low"].notna() & d["high"].notna()
        yerr = np.vstack([(d["value"] - d["low"]).where(has_interval, 0).clip(lower=0),
                          (d["high"] - d["value"]).where(has_interval, 0).clip(lower=0)])
        style = dict(marker=MARKERS[i % len(MARKERS)], ms=4, lw=1.2, color=colours[model])
        absolute.errorbar(x, d["value"], yerr=yerr, capsize=2, label=model, **style)
        median = float(np.median(d["value"])) if len(d) else float("nan")
        if median and np.isfinite(median):
            relative.plot(x, 100 * (d["value"] / median - 1), **style)
    for step in steps:
        at = runs.index[runs["git_commit"].eq(step.commit) & runs["started"].eq(step.started)][0]
        colour = "#c0392b" if step.direction == "worse" else "#27ae60"
        for ax in (absolute, relative):
            ax.axvline(at - 0.5, color=colour, ls="--", lw=1)
        relative.annotate(f"{step.model}: {step.commit[:7]} ({step.direction})", (at - 0.5, 0.98),
                          xycoords=("data", "axes fraction"), rotation=90, va="top", ha="right", fontsize=7,
                          color=colour)
    values = points["value"].dropna()
    if len(values) and (values > 0).all() and values.max() / values.min() > LOG_RANGE:
        plots._log_axis(absolute, "y")
    for ax, title in ((absolute, key), (relative, f"{key}: % from each model's median")):
        ax.set_xticks(range(len(runs)), [labels[int(r)] for r in runs["id"]], fontsize=7)
        ax.set_xlim(-0.5, len(runs) - 0.5)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    relative.axhline(0, color="#888", lw=0.8)
    fig.legend(*absolute.get_legend_handles_labels(), fontsize=7, ncol=1, loc="center left",
               bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    return plots._save(fig, path)
