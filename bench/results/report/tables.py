"""The report's tables as DataFrames: summary, likelihood per track, intervals, costs, steps curve, checks."""
from __future__ import annotations

import pandas as pd

from bench.config.job import load_outcomes
from bench.results import tables as results
from bench.results.report.cells import DATA_MODEL, PREFERRED_BATCH, TRACK_ORDER, UNKNOWN, cell, checks_cell, interval_cell, likelihood_kind, model_order, stat, throughput_batch, throughput_cell
from bench.results.report.load import Run
from bench.results.report.references import reference_for


SUMMARY_COLUMNS = [("fid", "FID"), ("fid_inf", "FID_inf"), ("intra_fid", "intra-FID"), ("is", "IS"), ("kid", "KID"), ("precision", "precision"),
                   ("recall", "recall"), ("density", "density"), ("coverage", "coverage"),
                   ("class_accuracy", "class acc."), ("copy_rate", "copy rate")]


COST_COLUMNS = [("sampling_nfe", "NFE / sample"), ("train_seconds", "train s"),
                ("peak_memory_train", "train peak MiB"), ("params", "params")]


OPTIONAL_TITLES = {title for _, title in SUMMARY_COLUMNS} | {"train peak MiB", "sample peak MiB"}  # old runs lack them


def bpd_cell(row: pd.Series, kind: str | None, n_seeds: int) -> str:
    if row["model"] == DATA_MODEL or kind is None:
        return "n/a"
    text = cell(row, "test_bpd", n_seeds)
    if kind == UNKNOWN:
        return text
    return text if text == "-" else f"{text} ({kind})"


def summary_table(summary: pd.DataFrame, metrics: pd.DataFrame, info: dict | None = None) -> pd.DataFrame:
    """One row per model and the data row; every cell a string, mean ± std over seeds."""
    info = info or {}
    rows = []
    for _, row in model_order(summary).iterrows():
        n = int(row.get("n_seeds", 1))
        kind = likelihood_kind(row["model"], metrics, info)
        out = {"model": row["model"], "family": row["family"], "track": row["track"],
               "likelihood": "-" if row["model"] == DATA_MODEL else (kind or "none"), "seeds": str(n),
               "bits/dim": bpd_cell(row, kind, n)}
        out.update({title: cell(row, key, n) for key, title in SUMMARY_COLUMNS})
        out["checks"] = checks_cell(info.get(row["model"], {}).get("checks"))
        out[f"samples/s (batch {PREFERRED_BATCH})"] = throughput_cell(row, n)
        out["sample peak MiB"] = throughput_cell(row, n, "peak_memory_sample")
        out.update({title: cell(row, key, n) for key, title in COST_COLUMNS})
        rows.append(out)
    table = pd.DataFrame(rows)
    empty = [c for c in OPTIONAL_TITLES | {"checks"} if c in table and (table[c] == "-").all()]
    return table.drop(columns=empty)


def likelihood_tables(summary: pd.DataFrame, metrics: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per track, the models with a bits/dim, best first: never one ranking across tracks."""
    if "test_bpd_mean" not in summary:
        return {}
    scored = summary[(summary["model"] != DATA_MODEL) & summary["test_bpd_mean"].notna()]
    tracks = sorted(scored["track"].unique(), key=lambda t: (TRACK_ORDER.get(t, 9), t))
    return {t: _likelihood_table(scored[scored["track"] == t].sort_values("test_bpd_mean", kind="stable"), metrics)
            for t in tracks}


def _likelihood_table(scored: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for rank, (_, row) in enumerate(scored.iterrows(), start=1):
        n = int(row.get("n_seeds", 1))
        out = {"rank": str(rank), "model": row["model"], "family": row["family"],
               "kind": likelihood_kind(row["model"], metrics, {}) or "-",
               "bits/dim": cell(row, "test_bpd", n, always_n=True), "NLL (nats)": cell(row, "test_nll", n)}
        if stat(row, "test_bpd_iwae")[2]:
            note = _note(metrics, row["model"], "test_bpd_iwae")
            out["IWAE bits/dim (estimate)"] = cell(row, "test_bpd_iwae", n) + (f" ({note})" if note else "")
        out["reference"] = reference_for(row["model"], row["track"]) or "-"
        rows.append(out)
    table = pd.DataFrame(rows)
    if "IWAE bits/dim (estimate)" in table:
        table["IWAE bits/dim (estimate)"] = table["IWAE bits/dim (estimate)"].fillna("-")
    return table


def _note(metrics: pd.DataFrame, model: str, metric: str) -> str:
    notes = metrics.loc[(metrics["model"] == model) & (metrics["metric"] == metric), "note"]
    notes = [n for n in notes if n]
    return notes[0] if notes else ""


def cost_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """Per model: mean FID, training seconds and milliseconds per sample (at the quoted batch)."""
    rows = []
    for _, row in summary[summary["model"] != DATA_MODEL].iterrows():
        batch = throughput_batch(row)
        speed = stat(row, f"sample_throughput@{batch}")[0] if batch else float("nan")
        rows.append({"model": row["model"], "fid": stat(row, "fid")[0], "train_seconds": stat(row, "train_seconds")[0],
                     "ms_per_sample": 1e3 / speed if speed and speed > 0 else float("nan")})
    return pd.DataFrame(rows, columns=["model", "fid", "train_seconds", "ms_per_sample"])


INTERVAL_METRICS = [("fid", "FID"), ("fid_inf", "FID_inf"), ("kid", "KID"), ("precision", "precision"),
                    ("recall", "recall"), ("density", "density"), ("coverage", "coverage"), ("copy_rate", "copy rate")]


def interval_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, seed): each sample-quality figure with its interval."""
    headline = results.headline(metrics)  # the steps curve's points are not the summary's figures
    wanted = headline[headline["metric"].isin([m for m, _ in INTERVAL_METRICS])]
    present = [(m, title) for m, title in INTERVAL_METRICS if m in set(wanted["metric"])]  # older runs lack some
    rows = []
    for (model, track, seed), group in wanted.groupby(["model", "track", "seed"], sort=False):
        by_metric = {r["metric"]: r for _, r in group.iterrows()}
        rows.append({"model": model, "track": track, "seed": str(seed),
                     **{title: interval_cell(by_metric[m], m) if m in by_metric else "-" for m, title in present}})
    return pd.DataFrame(rows)


def check_rows(run: Run) -> pd.DataFrame:
    rows = []
    for outcome in load_outcomes(run.folder):
        for c in (outcome.get("info") or {}).get("checks", []):
            rows.append({"model": outcome["job"]["model"], "seed": str(outcome["job"]["seed"]),
                         "check": c["check"], "result": "pass" if c["passed"] else "FAIL",
                         "value": f"{c['value']:.3g}", "tolerance": f"{c['tolerance']:.3g}",
                         "detail": c["detail"].replace("|", "/")})  # a pipe would split a markdown cell
    return pd.DataFrame(rows)


def steps_points(metrics: pd.DataFrame) -> pd.DataFrame:
    """The steps curve, one row per (model, steps): means over seeds of FID, samples/s and NFE."""
    columns = ["model", "steps", "nfe", "fid", "samples_per_s", "batch", "headline"]
    if "steps" not in metrics or metrics["steps"].isna().all():
        return pd.DataFrame(columns=columns)
    d = metrics[metrics["steps"].notna()].assign(steps=lambda f: f["steps"].astype(int))
    rows = []
    for (model, steps), g in d.groupby(["model", "steps"], sort=False):
        def mean(metric):
            values = g.loc[g["metric"] == metric, "value"]
            return float(values.mean()) if len(values) else float("nan")
        batches = g.loc[g["metric"] == "sample_throughput", "batch"].dropna()
        rows.append({"model": model, "steps": steps, "nfe": mean("sampling_nfe"), "fid": mean("fid"),
                     "samples_per_s": mean("sample_throughput"),
                     "batch": int(batches.iloc[0]) if len(batches) else None,
                     "headline": g["note"].str.startswith("the headline measurement").any()})
    return pd.DataFrame(rows, columns=columns).sort_values(["model", "steps"], kind="stable")


def feature_space_tables(metrics: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per track, each model's FID in the evaluation classifier's features and in the second space's
    (``fid_wide``), means over seeds, with the rank of each (1 = lowest FID); models with both only."""
    headline = results.headline(metrics)
    both = headline[headline["metric"].isin(["fid", "fid_wide"]) & (headline["model"] != DATA_MODEL)]
    out = {}
    for track, group in both.groupby("track", sort=False):
        wide = group.pivot_table(index="model", columns="metric", values="value", aggfunc="mean", sort=False)
        if not {"fid", "fid_wide"} <= set(wide.columns):
            continue
        wide = wide.dropna(subset=["fid", "fid_wide"])
        frame = pd.DataFrame({"model": wide.index, "fid": wide["fid"].values, "fid_wide": wide["fid_wide"].values})
        frame["rank"] = frame["fid"].rank(method="min").astype(int)
        frame["rank_wide"] = frame["fid_wide"].rank(method="min").astype(int)
        out[track] = frame.sort_values(["rank", "model"]).reset_index(drop=True)
    return out


def rank_agreement(first, second, names) -> tuple[float, list[tuple[str, str]]]:
    """Kendall's tau (tau-b, scipy) between two rankings of the same models, and the pairs they order
    differently (each pair named best-first by ``first``). NaN with fewer than two models."""
    from scipy.stats import kendalltau

    first, second, names = list(first), list(second), list(names)
    if len(names) < 2:
        return float("nan"), []
    discordant = [(names[i], names[j]) if first[i] < first[j] else (names[j], names[i])
                  for i in range(len(names)) for j in range(i + 1, len(names))
                  if (first[i] - first[j]) * (second[i] - second[j]) < 0]
    return float(kendalltau(first, second).statistic), discordant
