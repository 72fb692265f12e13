"""report.md and report.html from the stored files of a run (``python -m bench report RUN`` re-renders).

Nothing is retrained or resampled: the report reads metrics.csv, summary.csv, jobs.csv, curves.csv,
config.json, samples/*.png and, when present, the scaling study (scaling.csv). Both files are built
from one list of blocks (headings, paragraphs, tables, images), so they hold the same tables;
report.html embeds every image as a base64 data URI and reads offline. Rendering is deterministic:
the same stored files give report.md byte for byte (no render-time timestamps).
"""
from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench import metrics as metric_registry
from bench import plots, results, scaling_tables

DATA_MODEL = plots.DATA_MODEL
PREFERRED_BATCH = 256  # samples/s is quoted at this batch, else at the largest one measured
FIDELITY_METRICS = ["fid", "kid", "is", "precision", "recall", "class_accuracy"]
TRACK_ORDER = plots.TRACK_ORDER


# --- published reference figures (docs/design.md): the one place they live ---------
@dataclass(frozen=True)
class Reference:
    pattern: str  # regular expression for the model names it applies to (plus any "-variant" suffix)
    track: str
    figure: str
    source: str
    nats: float | None = None  # the headline NLL on 28x28 MNIST, shown in bits/dim too

    @property
    def text(self) -> str:
        if self.nats is None:
            return self.figure
        bpd = self.nats / (MNIST_DIM * math.log(2))
        return self.figure.replace(" nats", f" nats (= {bpd:.3f} bits/dim)", 1)  # after the headline number

    def matches(self, model: str, track: str) -> bool:
        return track == self.track and re.fullmatch(rf"(?:{self.pattern})(?:-.*)?", model) is not None


MNIST_DIM = 784
REFERENCES = [
    # Binarized MNIST (Larochelle & Murray's fixed binarization, 50,000 training images) test NLL.
    Reference("fvsbn", "binary", "97.45 nats",
              "Larochelle & Murray 2011 (NADE, AISTATS), Table 2, FVSBN row; also quoted in Germain et al. 2015 "
              "(MADE), binarized-MNIST table", 97.45),
    Reference("nade", "binary", "88.86 nats", "Larochelle & Murray 2011 (NADE, AISTATS), Table 2, NADE row", 88.86),
    Reference("made", "binary", "88.04 nats", "Germain et al. 2015 (MADE), binarized-MNIST table", 88.04),
    Reference("pixelcnn", "binary", "81.30 nats", "van den Oord et al. 2016 (Pixel RNN, ICML), Table 4, PixelCNN "
              "row", 81.30),
    Reference("vae", "binary", "89.9 nats NLL (200 importance samples)",
              "Rezende & Mohamed 2015 (normalizing flows), binarized-MNIST table, DLGM with diagonal covariance",
              89.9),
    Reference("realnvp", "8bit", "1.06 bits/dim", "Dinh et al. 2017, as compiled in the FFJORD paper"),
    Reference("glow", "8bit", "1.05 bits/dim", "Kingma & Dhariwal 2018, as compiled in the FFJORD paper"),
    Reference("ffjord", "8bit", "0.99 bits/dim", "Grathwohl et al. 2019"),
]
REFERENCE_CAVEAT = ("published: full MNIST (binary track: Larochelle & Murray's binarized MNIST, 50,000 training "
                    "images; 8bit: 60,000), trained far longer than this run's budget, in another code base: context "
                    "for scale, not a ranking")
BINARY_SAMPLING_RULE = ("Binary track: every model's samples are binary draws from its own distribution ({0,1} pixels, "
                        "never Bernoulli means; the VAEs draw z, then each pixel), for the metrics and the grids alike.")
LIKELIHOOD_KIND_RULE = ("exact only for a discrete likelihood computed exactly (FVSBN); a continuous density on the "
                        "8bit track (RealNVP and the other flows) is scored on dequantized pixels, which by Jensen "
                        "gives an upper bound on the discrete NLL: bound.")


def reference_for(model: str, track: str) -> str:
    found = [r.text for r in REFERENCES if r.matches(model, track)]
    return f"published: {found[0]}" if found else ""


# --- the stored run --------------------------------------------------------------------------------
@dataclass
class Run:
    folder: Path
    metrics: pd.DataFrame
    summary: pd.DataFrame
    jobs: pd.DataFrame
    curves: pd.DataFrame
    config: dict
    info: dict = field(default_factory=dict)  # model -> attributes recorded by its jobs (likelihood, ...)


def load_run(run_dir: Path) -> Run:
    folder = Path(run_dir)
    metrics = pd.read_csv(folder / "metrics.csv", dtype={"note": str, "kind": str})
    metrics["note"] = metrics["note"].fillna("") if "note" in metrics else ""
    summary = (pd.read_csv(folder / "summary.csv") if (folder / "summary.csv").exists()
               else results.summary_frame(metrics))
    jobs = (pd.read_csv(folder / "jobs.csv", dtype={"reason": str, "notes": str}).fillna("") if (folder / "jobs.csv").exists()
            else pd.DataFrame(columns=results.JOB_COLUMNS))
    curves = (pd.read_csv(folder / "curves.csv") if (folder / "curves.csv").exists()
              else pd.DataFrame(columns=["model", "dataset", "seed", "step", "seconds", "loss"]))
    config = results.read_json(folder / "config.json") if (folder / "config.json").exists() else {}
    info = {}
    for outcome in results.load_outcomes(folder):
        entry = info.setdefault(outcome["job"]["model"], {})
        checks = entry.get("checks", []) + (outcome.get("info") or {}).get("checks", [])  # every seed's
        entry.update(outcome.get("info") or {})
        if checks:
            entry["checks"] = checks
    return Run(folder, metrics, summary, jobs, curves, config, info)


# --- cells -----------------------------------------------------------------------------------------
DECIMALS = {name: m.decimals for name, m in metric_registry.REGISTRY.items() if m.decimals is not None}


def _decimals(metric: str, mean: float) -> int:
    """Fixed per metric where the unit says so, else three significant digits."""
    if abs(mean) >= 1000:  # e.g. the FID of an untrained model: digits past the point are noise
        return 0
    if metric in DECIMALS:
        return DECIMALS[metric] if abs(mean) < 100 else min(DECIMALS[metric], 1)
    if mean == 0 or not math.isfinite(mean) or abs(mean) >= 100:
        return 0 if mean != 0 else 2
    return max(0, 2 - math.floor(math.log10(abs(mean))))


def stat(row: pd.Series, key: str) -> tuple[float, float, int]:
    """(mean, std, count) of a summary key in one summary row; count 0 when absent."""
    mean = row.get(f"{key}_mean", float("nan"))
    count = row.get(f"{key}_count", float("nan"))
    count = 0 if pd.isna(count) or pd.isna(mean) else int(count)
    return mean, row.get(f"{key}_std", float("nan")), count


def cell(row: pd.Series, key: str, n_seeds: int, always_n: bool = False) -> str:
    """'mean ± std' over seeds (sample std), '(n=k)' where fewer seeds than the run's measured it."""
    mean, std, count = stat(row, key)
    if count == 0:
        return "-"
    decimals = _decimals(key.split("@")[0], mean)
    text = f"{mean:,.{decimals}f}"
    if count > 1 and pd.notna(std) and std != 0:  # a constant (params, NFE) needs no "± 0"
        text += f" ± {std:,.{decimals}f}"
    if always_n or count < n_seeds:
        text += f" (n={count})"
    return text


def throughput_batch(row: pd.Series) -> int | None:
    """The batch samples/s is quoted at: PREFERRED_BATCH when measured, else the largest measured."""
    measured = [int(m.group(1)) for key in row.index
                if (m := re.fullmatch(r"sample_throughput@(\d+)_mean", key)) and pd.notna(row[key])]
    if not measured:
        return None
    return PREFERRED_BATCH if PREFERRED_BATCH in measured else max(measured)


def throughput_cell(row: pd.Series, n_seeds: int, metric: str = "sample_throughput") -> str:
    """A per-batch metric (speed, or the sampling memory peak) at the batch the speed is quoted at."""
    batch = throughput_batch(row)
    if batch is None:
        return "-"
    text = cell(row, f"{metric}@{batch}", n_seeds)
    return text if batch == PREFERRED_BATCH else f"{text} @{batch}"


# --- model attributes --------------------------------------------------------------------------------
def likelihood_kind(model: str, metrics: pd.DataFrame, info: dict) -> str | None:
    """exact | bound | estimate from the model's bits/dim rows, else from its jobs; None: no likelihood."""
    kinds = metrics.loc[(metrics["model"] == model) & (metrics["metric"] == "test_bpd"), "kind"].dropna()
    if not kinds.empty:
        return str(kinds.iloc[0])
    if model == DATA_MODEL:
        return None
    if "likelihood" in info.get(model, {}):
        return info[model]["likelihood"]
    return _registered_likelihood(model)


UNKNOWN = "unknown"


def _registered_likelihood(model: str) -> str | None:
    """The model class's own attribute, for a job that failed before recording it."""
    try:
        import models

        return models.model_class(model).likelihood
    except (ImportError, KeyError):
        return UNKNOWN


def is_conditional(model: str, metrics: pd.DataFrame, info: dict) -> bool:
    if info.get(model, {}).get("conditional"):
        return True
    return bool(((metrics["model"] == model) & (metrics["metric"] == "class_accuracy")).any())


def model_order(summary: pd.DataFrame) -> pd.DataFrame:
    """The run's order, the data rows (one per track) last: they are the reference, not contestants."""
    data = summary[summary["model"] == DATA_MODEL]
    data = data.sort_values("track", key=lambda t: t.map(lambda v: TRACK_ORDER.get(v, 9)), kind="stable")
    return pd.concat([summary[summary["model"] != DATA_MODEL], data])


# --- the summary table -------------------------------------------------------------------------------
SUMMARY_COLUMNS = [("fid", "FID"), ("fid_inf", "FID_inf"), ("is", "IS"), ("kid", "KID"), ("precision", "precision"),
                   ("recall", "recall"), ("class_accuracy", "class acc."), ("copy_rate", "copy rate")]
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


def summary_notes(table: pd.DataFrame, run: Run) -> list[str]:
    device = run.config.get("device", "")
    notes = [
        "Cells: mean ± sample standard deviation (ddof=1) over the seeds in the `seeds` column; "
        "(n=k) marks a figure fewer seeds measured (e.g. a batch size skipped by the time cap).",
        "bits/dim: on the test split, with its kind in brackets: exact likelihood; bound = an upper bound "
        "on the NLL (ELBO, diffusion VLB; the 8bit track's dequantized bits/dim is also an upper bound on the "
        "discrete NLL); estimate = an importance-weighted estimate. Compare bits/dim only within one track "
        "(see Likelihood).",
        "n/a in bits/dim: no tractable likelihood (GANs and EBMs, whose normalising constant is unknown), "
        "so there is no bits/dim, and a blank or a zero would read as a score. The `data` row is real "
        "held-out images (the validation split: neither the models nor the evaluation classifier trained on "
        "them) scored as if they were samples: what a perfect model scores on sample quality.",
        "-: not measured (a diverged or failed job, see Jobs; or a metric this run did not compute).",
        "Likelihood kinds: " + LIKELIHOOD_KIND_RULE,
        BINARY_SAMPLING_RULE,
        f"samples/s at batch {PREFERRED_BATCH}; '@B' marks a model measured only up to batch B (the largest "
        "batch measured; larger ones were projected past the time cap). NFE / sample: sequential network "
        "evaluations one sample costs.",
        "train / sample peak MiB: the job's own peak during training, and while sampling at the batch "
        "samples/s is quoted at (evaluation such as FID excluded), each phase measured from its start: "
        + ("GPU memory allocated by torch tensors (torch.cuda.max_memory_allocated)." if device.startswith("cuda")
           else "the worker process's peak resident memory (Linux VmHWM, reset at the phase start), which "
                "includes the interpreter, the libraries, the data and the model resident at the time."),
    ]
    notes += chain_notes(run)
    missing = [t for _, t in SUMMARY_COLUMNS if t not in table]
    if missing:
        notes.append(f"Not in this run (columns left out): {', '.join(missing)}")
    return notes


def fidelity_notes(run: Run) -> list[str]:
    """How FID was computed, once per distinct note (models sharing a note are listed together)."""
    headline = results.headline(run.metrics)
    rows = headline[(headline["metric"] == "fid") & (headline["note"] != "")]
    if not (run.metrics["metric"].isin(FIDELITY_METRICS)).any():
        return []
    lines = ["Sample quality (FID, KID, IS, precision, recall) uses the suite's own evaluation classifier's "
             "features, not Inception; compare a model's figures with the data row of its own track, and "
             "FIDs only at the same sample count" + (f" ({fidelity_count(run.config)})." if fidelity_count(run.config)
                                                     else ".")]
    labels = [f"{m} ({t})" if m == DATA_MODEL else m for m, t in zip(rows["model"], rows["track"])]
    by_note = rows.assign(label=labels).groupby("note", sort=False)["label"].agg(lambda v: ", ".join(dict.fromkeys(v)))
    return lines + [f"FID of {who}: {note}" for note, who in by_note.items()]


def fidelity_count(config: dict) -> str:
    found = [f"{k} = {v}" for k, v in sorted(config.items()) if "fidelity_samples" in k]
    return ", ".join(found)


# --- likelihood tables -----------------------------------------------------------------------------
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


TRACK_NOTES = {
    "binary": "pixels in {0, 1}: dynamic binarization for training, one fixed binarization of the test split "
              "(seeded, or the dataset's own); bits/dim = NLL / (D ln 2).",
    "8bit": "integer pixels 0..255; continuous models train on uniformly dequantized y = (x + u) / 256 and "
            "bits/dim = (NLL_y + D ln 256) / (D ln 2), an upper bound on the discrete NLL.",
}


def reference_table() -> pd.DataFrame:
    return pd.DataFrame([{"model": r.pattern, "track": r.track, "figure": r.text, "source": r.source}
                         for r in REFERENCES])


# --- blocks: the report as data, rendered twice ------------------------------------------------------
@dataclass
class Block:
    kind: str  # "h2" | "h3" | "p" | "list" | "table" | "images"
    text: str = ""
    items: list = field(default_factory=list)  # list: strings; images: (relative path, caption) pairs
    table: pd.DataFrame | None = None


def h2(text):
    return Block("h2", text)


def h3(text):
    return Block("h3", text)


def para(text):
    return Block("p", text)


def bullets(items):
    return Block("list", items=list(items))


def table(frame):
    return Block("table", table=frame)


def images(pairs):
    return Block("images", items=list(pairs))


# --- sections ----------------------------------------------------------------------------------------
def header_blocks(run: Run) -> list[Block]:
    c = run.config
    title = f"genbench report: {c.get('dataset', '?')}, budget {c.get('budget', '?')}"
    line = (f"Models: {', '.join(map(str, c.get('models', sorted(set(run.metrics['model'])))))}. "
            f"Seeds: {', '.join(map(str, c.get('seeds', [])))}. Device: {c.get('device', '?')}. "
            f"Commit: {c.get('git_commit', '?')}. Run started {c.get('started', '?')}. "
            "Re-render from the stored files with `python -m bench report <this folder>`.")
    return [Block("h1", title), para(line)]


def summary_blocks(run: Run) -> list[Block]:
    frame = summary_table(run.summary, run.metrics, run.info)
    blocks = [h2("Summary"), table(frame), bullets(summary_notes(frame, run))]
    notes = fidelity_notes(run)
    return blocks + ([para(notes[0]), bullets(notes[1:])] if notes else [])


def likelihood_blocks(run: Run) -> list[Block]:
    tables = likelihood_tables(run.summary, run.metrics)
    blocks = [h2("Likelihood, one ranking per track")]
    if not tables:
        return blocks + [para("No model in this run reported a test likelihood.")]
    blocks.append(para("Lower bits/dim is better. Binary-track and 8bit-track models model different data, "
                       "so each track is ranked on its own; a bound is an upper bound on its model's true "
                       f"NLL. The reference column: {REFERENCE_CAVEAT}."))
    for track, frame in tables.items():
        blocks += [h3(f"{track} track"), para(TRACK_NOTES.get(track, "")), table(frame)]
    return blocks + [h3("Published reference figures (MNIST)"), table(reference_table())]


PLOT_CAPTIONS = {
    "bits_per_dim": "Test bits/dim per model, one panel per track, seeds as dots.",
    "fid_is": "FID and IS per model; the grey bar is real held-out data.",
    "throughput": "Samples per second against batch size (log-log).",
    "training_curves": "Training loss against wall-clock seconds, one panel per model.",
    "quality_cost": "FID against training time and against sampling time per sample.",
}


def make_plots(run: Run) -> list[tuple[str, str]]:
    """Write plots/*.png; (relative path, caption) for those whose metrics the run has."""
    folder = run.folder / "plots"
    made = {"bits_per_dim": plots.bits_per_dim(run.metrics, folder / "bits_per_dim.png"),
            "fid_is": plots.fid_and_is(run.metrics, folder / "fid_is.png"),
            "throughput": plots.throughput(run.metrics, folder / "throughput.png"),
            "training_curves": plots.training_curves(run.curves, folder / "training_curves.png"),
            "quality_cost": plots.quality_against_cost(cost_frame(run.summary), folder / "quality_cost.png")}
    return [(f"plots/{path.name}", PLOT_CAPTIONS[name]) for name, path in made.items() if path is not None]


def cost_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """Per model: mean FID, training seconds and milliseconds per sample (at the quoted batch)."""
    rows = []
    for _, row in summary[summary["model"] != DATA_MODEL].iterrows():
        batch = throughput_batch(row)
        speed = stat(row, f"sample_throughput@{batch}")[0] if batch else float("nan")
        rows.append({"model": row["model"], "fid": stat(row, "fid")[0], "train_seconds": stat(row, "train_seconds")[0],
                     "ms_per_sample": 1e3 / speed if speed and speed > 0 else float("nan")})
    return pd.DataFrame(rows, columns=["model", "fid", "train_seconds", "ms_per_sample"])


def plot_blocks(run: Run) -> list[Block]:
    made = make_plots(run)
    if not made:
        return [h2("Plots"), para("No metrics to plot in this run.")]
    return [h2("Plots"), images(made)]


def sample_blocks(run: Run) -> list[Block]:
    grids = sorted((run.folder / "samples").glob("*.png"))
    if not grids:
        return [h2("Samples"), para("No sample grids stored.")]
    return [h2("Samples"), para("8 x 8 samples per model and seed, drawn after training."),
            images([(f"samples/{p.name}", grid_caption(p.stem, run)) for p in grids])]


def grid_caption(stem: str, run: Run) -> str:
    parts = stem.split("__")
    model = parts[0]
    seed = parts[-1].replace("seed", "seed ") if len(parts) > 2 else ""
    caption = ", ".join(filter(None, [model, seed]))
    if is_conditional(model, run.metrics, run.info):
        caption += ": a row per label (rows 0 to 7, top to bottom)"
    return caption


def scaling_blocks(run: Run) -> list[Block]:
    study = scaling_tables.load_study(run.folder)
    if study is None:
        return []
    timings, fits, skipped, meta = study
    blocks = [h2("Sampling cost against image size"), para(scaling_tables.describe(meta))]
    if not timings.empty:
        blocks.append(table(scaling_tables.scaling_table(timings, fits)))
        path = plots.scaling(timings, fits, run.folder / "plots" / "scaling.png")
        blocks += [images([(f"plots/{path.name}", "Seconds per sample against D (log-log) at each batch, "
                                                  "fitted slope per model.")])]
        roof, work = scaling_tables.roofline_table(timings), scaling_tables.depth_work_table(timings)
        if not roof.empty:
            blocks += [h3("Roofline, depth and work"), para(scaling_tables.describe_roofline(meta)), table(roof)]
        if not work.empty:
            blocks.append(table(work))
        path = plots.scaling_roofline(timings, run.folder / "plots" / "scaling_roofline.png")
        if path is not None:
            blocks.append(images([(f"plots/{path.name}", "Left: fraction of the measured GEMM rate against D. "
                                                         "Right: FLOPs per sample against NFE per sample.")]))
    if not skipped.empty:
        blocks += [para("Skipped (not measured):"), bullets(scaling_tables.skip_text(r) for r in skipped.itertuples())]
    blocks += [para("Why the measured models' sampling cost is that of trained ones, by family:"),
               bullets(scaling_tables.family_notes(timings["family"]))]
    return blocks


def jobs_blocks(run: Run) -> list[Block]:
    jobs = run.jobs
    bad = jobs[jobs["status"] != "ok"] if not jobs.empty else jobs
    if jobs.empty:
        summary = "No jobs recorded."
    elif bad.empty:
        summary = f"All {len(jobs)} jobs finished ok."
    else:
        summary = f"{len(bad)} of {len(jobs)} jobs did not finish ok; their reasons:"
    blocks = [h2("Jobs"), para(summary)]
    if not bad.empty:
        blocks.append(bullets(f"{r.status.upper()}: {r.model} seed {r.seed}: {r.reason or 'no reason recorded'}"
                              for r in bad.itertuples()))
    return blocks + ([table(jobs.astype(str))] if not jobs.empty else [])


CONFIG_ROWS = [("dataset", "dataset"), ("dataset_description", "dataset description"),
               ("train_size", "train images"), ("test_size", "test images"), ("image_shape", "image shape"),
               ("budget", "budget"), ("budget_resolved", "budget resolved"), ("seeds", "seeds"),
               ("device", "device"), ("hardware", "hardware"), ("versions", "versions"),
               ("git_commit", "git commit"), ("started", "started"), ("wall_seconds", "wall seconds"),
               ("throughput_cap_s", "sampling time cap (s)")]


def config_blocks(run: Run) -> list[Block]:
    """The run's configuration as stored; the evaluation classifier's accuracy and the sample count
    for FID are whatever keys config.json has with "classifier" or "fidelity_samples" in their names."""
    c = run.config
    rows = [(title, _flat(c[key])) for key, title in CONFIG_ROWS if key in c]
    rows += [(k, _flat(v)) for k, v in sorted(c.items()) if "classifier" in k or "fidelity_samples" in k]
    if not rows:
        return [h2("Configuration"), para("No config.json stored with this run.")]
    return [h2("Configuration"), table(pd.DataFrame(rows, columns=["setting", "value"]))]


def _flat(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_flat(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_flat(v) for v in value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def report_blocks(run: Run) -> list[Block]:
    return (header_blocks(run) + summary_blocks(run) + likelihood_blocks(run) + uncertainty_blocks(run)
            + checks_blocks(run) + plot_blocks(run) + sample_blocks(run) + memorisation_blocks(run)
            + steps_curve_blocks(run) + scaling_blocks(run) + jobs_blocks(run) + config_blocks(run))


# --- uncertainty, memorisation and self-checks -------------------------------------------------------
INTERVAL_METRICS = [("fid", "FID"), ("fid_inf", "FID_inf"), ("kid", "KID"), ("precision", "precision"),
                    ("recall", "recall"), ("copy_rate", "copy rate")]


def checks_cell(checks: list[dict] | None) -> str:
    """Summary column: 'pass (n)' when every self-check passed, else 'FAIL: names'."""
    if not checks:
        return "-"
    failed = sorted({c["check"] for c in checks if not c["passed"]})
    return f"FAIL: {', '.join(failed)}" if failed else f"pass ({len(checks)})"


def interval_cell(row, metric: str) -> str:
    """'12.3 [11.1, 13.6]': the figure and its 95% bootstrap interval, when one was stored."""
    decimals = _decimals(metric, row["value"])
    text = f"{row['value']:,.{decimals}f}"
    low, high = row.get("ci_low"), row.get("ci_high")
    if low is not None and high is not None and pd.notna(low) and pd.notna(high):
        text += f" [{low:,.{decimals}f}, {high:,.{decimals}f}]"
    return text


def interval_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, seed): each sample-quality figure with its interval."""
    headline = results.headline(metrics)  # the steps curve's points are not the summary's figures
    wanted = headline[headline["metric"].isin([m for m, _ in INTERVAL_METRICS])]
    rows = []
    for (model, track, seed), group in wanted.groupby(["model", "track", "seed"], sort=False):
        by_metric = {r["metric"]: r for _, r in group.iterrows()}
        rows.append({"model": model, "track": track, "seed": str(seed),
                     **{title: interval_cell(by_metric[m], m) if m in by_metric else "-"
                        for m, title in INTERVAL_METRICS}})
    return pd.DataFrame(rows)


UNCERTAINTY_NOTES = [
    "[low, high]: 95% bootstrap interval (samples' and reference features resampled with replacement, "
    "100 replicates, percentile spread re-centred on the figure): how much the figure would move with fresh "
    "samples and fresh reference images at the same sample count.",
    "FID_inf: FID extrapolated to infinitely many samples and reference images (Chong & Forsyth 2020): "
    "FID on random subsets of both sets at several sizes N, the line FID_N = FID_inf + k/N fitted, the "
    "intercept reported. FID itself is biased upwards by about k/N, so FIDs at different N do not compare; "
    "FID_inf does, up to its fit.",
    "copy rate: fraction of samples (at most 500) judged copies of training images: nearer to a training "
    "image than the 1% quantile of held-out real images' nearest-training distances, in pixels (L2, "
    "minimised over +-1 pixel shifts) or in classifier features (after Meehan et al. 2020). Held-out real "
    "images score about 0.02 by construction; a model returning its training images scores near 1. On the "
    "binary track it catches copies of one binarization, not a digit redrawn with new binarization noise.",
]


def uncertainty_blocks(run: Run) -> list[Block]:
    frame = interval_table(run.metrics)
    if frame.empty:
        return []
    return [h2("Sample quality with uncertainty, and memorisation"), table(frame), bullets(UNCERTAINTY_NOTES)]


def check_rows(run: Run) -> pd.DataFrame:
    rows = []
    for outcome in results.load_outcomes(run.folder):
        for c in (outcome.get("info") or {}).get("checks", []):
            rows.append({"model": outcome["job"]["model"], "seed": str(outcome["job"]["seed"]),
                         "check": c["check"], "result": "pass" if c["passed"] else "FAIL",
                         "value": f"{c['value']:.3g}", "tolerance": f"{c['tolerance']:.3g}",
                         "detail": c["detail"].replace("|", "/")})  # a pipe would split a markdown cell
    return pd.DataFrame(rows)


def checks_blocks(run: Run) -> list[Block]:
    frame = check_rows(run)
    if frame.empty:
        return [h2("Checks"), para("No run-time self-checks stored with this run.")]
    failed = frame[frame["result"] == "FAIL"]
    head = (f"All {len(frame)} run-time checks passed." if failed.empty else
            f"{len(failed)} of {len(frame)} run-time checks FAILED (marked in the summary's checks column); "
            "a failed check means that model's figures may not measure what their labels say.")
    return [h2("Checks"), para(head + " Each runs on the trained model (a batch of test images or fresh "
                                      "samples): the model's own self_checks, and fid_recompute, torch-fidelity's "
                                      "FID against scipy's on the stored features."), table(frame)]


def memorisation_blocks(run: Run) -> list[Block]:
    figures = sorted((run.folder / "memorisation").glob("*.png"))
    if not figures:
        return []
    return [h2("Nearest training images"),
            para("Top row: the 8 samples nearest to the training set (pixel distance, +-1 pixel shifts); "
                 "bottom row: the nearest training image of each. Copies look identical."),
            images([(f"memorisation/{p.name}", p.stem.split("__")[0] + ", " + p.stem.split("__")[-1])
                    for p in figures])]


# --- the samplers: which chain each figure is for, and quality against steps -----------------------------
def chain_notes(run: Run) -> list[str]:
    """One line per model that named its sampler (and its likelihood's chain) when it ran."""
    notes = []
    for model, info in run.info.items():
        sampler, chain = info.get("sampler"), info.get("likelihood_chain")
        if not sampler and not chain:
            continue
        parts = [f"bits/dim is the {chain}" if chain else "",
                 f"FID, IS, KID, precision/recall, samples/s and NFE / sample are for its sampler: {sampler}"
                 if sampler else ""]
        notes.append(f"{model}: " + "; ".join(filter(None, parts)) + ".")
    return notes


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


def steps_curve_blocks(run: Run) -> list[Block]:
    points = steps_points(run.metrics)
    skipped = [f"{r.model} seed {r.seed}: {note}" for r in run.jobs.itertuples() for note in str(r.notes).split("; ")
               if note.startswith("steps curve")] if not run.jobs.empty else []
    if points.empty and not skipped:
        return []
    blocks = [h2("Sample quality against sampling steps"),
              para("Each model that can trade steps for quality, sampled again with another number of steps, "
                   "its other settings unchanged: FID on the run's sample count (scored like the summary's FID), "
                   "samples/s at one batch size (the median over the full batches of that draw) and NFE. The "
                   "row marked `headline` is the model's own setting, the summary's figures. A DDPM's steps are "
                   "respaced steps of its T-step chain; an EBM's are Langevin steps from noise.")]
    if not points.empty:
        shown = pd.DataFrame({
            "model": points["model"], "steps": points["steps"].astype(str),
            "NFE / sample": points["nfe"].map(lambda v: "-" if pd.isna(v) else f"{v:.0f}"),
            "FID": points["fid"].map(lambda v: "-" if pd.isna(v) else f"{v:,.{_decimals('fid', v)}f}"),
            "samples/s": [("-" if pd.isna(v) else f"{v:,.{_decimals('sample_throughput', v)}f} (batch {b})")
                          for v, b in zip(points["samples_per_s"], points["batch"])],
            "setting": points["headline"].map(lambda h: "headline" if h else "")})
        blocks.append(table(shown))
        path = plots.steps_curve(points, run.folder / "plots" / "steps_curve.png")
        if path is not None:
            blocks.append(images([(f"plots/{path.name}", "FID and samples/s against sampling steps.")]))
    if skipped:
        blocks += [para("Step counts not measured (their projected time exceeded the curve's budget):"),
                   bullets(skipped)]
    return blocks


# --- markdown ------------------------------------------------------------------------------------------
def to_markdown(blocks: list[Block]) -> str:
    out = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append("#" * int(b.kind[1]) + " " + b.text)
        elif b.kind == "p":
            out.append(b.text)
        elif b.kind == "list":
            out.append("\n".join(f"- {item}" for item in b.items))
        elif b.kind == "table":
            out.append(b.table.to_markdown(index=False, disable_numparse=True))
        elif b.kind == "images":
            out.append("\n\n".join(f"![{caption}]({path})" for path, caption in b.items))
    return "\n\n".join(out) + "\n"


# --- html ------------------------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1400px;margin:1.5em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em;border-bottom:2px solid #ccc;padding-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd}
.scroll{overflow-x:auto}table{border-collapse:collapse;margin:.6em 0;font-size:.84em}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}td{white-space:nowrap}
td:last-child{white-space:normal;min-width:16em}th{background:#f2f4f7}tr:nth-child(even) td{background:#fafafa}
ul{font-size:.92em;color:#444}figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top}
figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.85em;color:#555;max-width:560px}
.grids figure img{width:224px;image-rendering:pixelated}code{background:#f2f2f2;padding:0 .2em}
"""


def to_html(blocks: list[Block], folder: Path, title: str) -> str:
    body = [_html_block(b, folder) for b in blocks]
    return (f"<!doctype html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _html_block(b: Block, folder: Path) -> str:
    if b.kind in ("h1", "h2", "h3"):
        return f"<{b.kind}>{html.escape(b.text)}</{b.kind}>"
    if b.kind == "p":
        return f"<p>{_inline(b.text)}</p>"
    if b.kind == "list":
        return "<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in b.items) + "</ul>"
    if b.kind == "table":
        return "<div class='scroll'>" + b.table.to_html(index=False, border=0, escape=True) + "</div>"
    css = " class='grids'" if all(p.startswith("samples/") for p, _ in b.items) else ""
    return f"<div{css}>" + "".join(_figure(folder / p, c) for p, c in b.items) + "</div>"


def _inline(text: str) -> str:
    """Escape, then render `code` spans as in the markdown."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _figure(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(caption)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


# --- entry point -------------------------------------------------------------------------------------------
def render(run_dir: Path) -> tuple[Path, Path]:
    """(Re)write report.md, report.html and plots/*.png of a run from its stored files."""
    run = load_run(run_dir)
    blocks = report_blocks(run)
    md_path, html_path = run.folder / "report.md", run.folder / "report.html"
    md_path.write_text(to_markdown(blocks), encoding="utf-8")
    html_path.write_text(to_html(blocks, run.folder, blocks[0].text), encoding="utf-8")
    return md_path, html_path
