"""The report's sections, in order: each a function of the stored run that returns blocks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench.results import plots
from bench.results import tables as results
from bench.results import sampling_cost_tables as scaling_tables
from bench.results.report.blocks import Block, bullets, h2, h3, images, para, table
from bench.results import numbers
from bench.results.report.cells import DATA_MODEL, FIDELITY_METRICS, PREFERRED_BATCH, is_conditional
from bench.results.report.load import Run
from bench.results.report.references import BINARY_SAMPLING_RULE, LIKELIHOOD_KIND_RULE, REFERENCE_CAVEAT, TRACK_NOTES, reference_table
from bench.results.report.tables import (SUMMARY_COLUMNS, check_rows, cost_frame, feature_space_tables,
                                         interval_table, likelihood_tables, rank_agreement, steps_points, summary_table)


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
    notes += chain_notes(run) + feature_space_disagreements(run)
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
                                                     else ".") + " " + classifier_line(run)]
    labels = [f"{m} ({t})" if m == DATA_MODEL else m for m, t in zip(rows["model"], rows["track"])]
    by_note = rows.assign(label=labels).groupby("note", sort=False)["label"].agg(lambda v: ", ".join(dict.fromkeys(v)))
    return lines + [f"FID of {who}: {note}" for note, who in by_note.items()]


def classifier_line(run: Run) -> str:
    """Which evaluation classifier scored the run: its figures compare only with figures from the same one."""
    c = run.config
    digest = c.get("classifier_weights_digest")
    if not digest:
        return "Sample quality scored by an evaluation classifier whose digest this run did not record."
    accuracy = c.get("classifier_accuracy")
    return (f"Sample quality scored by evaluation classifier `{digest}` ({c.get('classifier_key', '?')}; "
            f"{c.get('classifier_source', 'source not recorded')}"
            + (f"; test accuracy {100 * accuracy:.1f}%" if isinstance(accuracy, (int, float)) else "")
            + "): compare these figures only with figures scored by the same classifier.")


def fidelity_count(config: dict) -> str:
    found = [f"{k} = {v}" for k, v in sorted(config.items()) if "fidelity_samples" in k]
    return ", ".join(found)


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
    return study_blocks(run.folder)


def study_blocks(folder) -> list[Block]:
    """The sampling-cost study of ``folder`` (its stored files), as the run report shows it and as
    ``scaling.md`` holds it: one rendering of the study."""
    folder = Path(folder)
    study = scaling_tables.load_study(folder)
    if study is None:
        return []
    timings, fits, skipped, meta = study
    blocks = [h2("Sampling cost against image size"), para(scaling_tables.describe(meta))]
    if not timings.empty:
        blocks.append(table(scaling_tables.scaling_table(timings, fits)))
        path = plots.scaling(timings, fits, folder / "plots" / "scaling.png")
        blocks += [images([(f"plots/{path.name}", "Seconds per sample against D (log-log) at each batch, "
                                                  "fitted slope per model.")])]
        roof, work = scaling_tables.roofline_table(timings), scaling_tables.depth_work_table(timings)
        if not roof.empty:
            blocks += [h3("Roofline, depth and work"), para(scaling_tables.describe_roofline(meta)), table(roof)]
        if not work.empty:
            blocks.append(table(work))
        path = plots.scaling_roofline(timings, folder / "plots" / "scaling_roofline.png")
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
    blocks = [h2("Jobs"), para(summary)] + invocation_blocks(run)
    if not bad.empty:
        blocks.append(bullets(f"{r.status.upper()}: {r.model} seed {r.seed}: {r.reason or 'no reason recorded'}"
                              for r in bad.itertuples()))
    skipped = run.config.get("skipped") or {}  # --all: models that cannot model the dataset
    if skipped:
        blocks += [para("Not run (the dataset lacks their track):"),
                   bullets(f"skipped {model}: {reason}" for model, reason in skipped.items())]
    return blocks + ([table(jobs.astype(str))] if not jobs.empty else [])


def invocation_blocks(run: Run) -> list[Block]:
    """How the run was made when it took more than one command: what each kept, continued or ran."""
    invocations = run.config.get("invocations") or []
    resumed = run.jobs[run.jobs["resumed"].fillna("").astype(str) != ""] if "resumed" in run.jobs else run.jobs.iloc[:0]
    if len(invocations) < 2 and resumed.empty:
        return []
    lines = []
    for i, inv in enumerate(invocations, 1):
        what = inv.get("command", "run")
        parts = [f"{len(inv.get('ran', []))} job(s) run"]
        if inv.get("kept"):
            parts.append(f"{len(inv['kept'])} finished job(s) kept")
        if inv.get("continued"):
            parts.append("continued from checkpoints: " + ", ".join(f"{k} ({v})" for k, v in inv["continued"].items()))
        if inv.get("redone"):
            parts.append("redone: " + ", ".join(f"{k} ({v})" for k, v in inv["redone"].items()))
        if inv.get("settings"):
            parts.append("settings " + _flat(inv["settings"]))
        if inv.get("interrupted"):
            parts.append("interrupted")
        lines.append(f"invocation {i}, `{what}` at {inv.get('started', '?')} ({inv.get('executor', 'local')}, "
                     f"{inv.get('workers', 1)} worker(s)): " + "; ".join(parts))
    blocks = [para(f"This run was made in {len(invocations)} invocations on the same folder:"), bullets(lines)]
    if not resumed.empty:
        blocks.append(para("Jobs resumed: " + "; ".join(f"{r.model} seed {r.seed}: {r.resumed}"
                                                        for r in resumed.itertuples()) + "."))
    return blocks


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
    return [h2("Configuration"), table(pd.DataFrame(rows, columns=["setting", "value"]))] + model_settings_blocks(run)


def model_settings_blocks(run: Run) -> list[Block]:
    """Each model's training batch and constructor settings as this run used them (defaults plus any
    --model-args), so a reader sees what the budget was calibrated with."""
    settings = run.config.get("model_settings") or {}
    if not settings:
        return []
    rows = [{"model": model, "batch": str(run.info.get(model, {}).get("batch_size", "-")),
             "settings": ", ".join(f"{k}={_flat(v)}" for k, v in values.items()) or "-"}
            for model, values in settings.items()]
    overrides = run.config.get("model_args") or {}
    note = ("Overridden with --model-args: " + "; ".join(f"{m}: {_flat(v)}" for m, v in overrides.items()) + "."
            if overrides else "Every model at its defaults (no --model-args).")
    return [h3("Model settings"), para(note), table(pd.DataFrame(rows))]


def _flat(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_flat(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_flat(v) for v in value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def feature_space_blocks(run: Run) -> list[Block]:
    """FID in two feature spaces, the two rankings and their agreement (Kendall's tau), per track."""
    tables = feature_space_tables(run.metrics)
    if not tables:
        return []
    blocks = [h2("Two feature spaces"),
              para("Model rankings by FID move with the encoder (Stein et al. 2023), so every sample is also scored "
                   "in a second feature space: the evaluation classifier's network twice as wide, trained from "
                   "another seed on the same split (fid_wide). Rank 1 is the lowest FID; Kendall's tau (tau-b) "
                   "is 1 when the two spaces order the models alike and -1 when they reverse them.")]
    for track, frame in tables.items():
        tau, discordant = rank_agreement(frame["fid"], frame["fid_wide"], frame["model"])
        shown = frame.assign(fid=[numbers.metric(v, "fid") for v in frame["fid"]],
                             fid_wide=[numbers.metric(v, "fid_wide") for v in frame["fid_wide"]])
        shown.columns = ["model", "FID", "FID (wide)", "rank", "rank (wide)"]
        verdict = ("the two spaces order every pair alike" if not discordant else
                   "they disagree on " + "; ".join(f"{a} before {b} (wide: the reverse)" for a, b in discordant))
        blocks += [h3(f"{track} track"), table(shown),
                   para(f"Kendall's tau {tau:.3f} over {len(frame)} models: {verdict}.")]
    return blocks


def feature_space_disagreements(run: Run) -> list[str]:
    """One summary note per track whose two feature spaces order two models differently."""
    notes = []
    for track, frame in feature_space_tables(run.metrics).items():
        tau, discordant = rank_agreement(frame["fid"], frame["fid_wide"], frame["model"])
        if discordant:
            notes.append(f"FID rankings differ between the two feature spaces on the {track} track (Kendall's tau "
                         f"{tau:.3f}): " + "; ".join(f"{a} before {b}" for a, b in discordant)
                         + " by FID, the reverse by fid_wide (see Two feature spaces).")
    return notes


def report_blocks(run: Run) -> list[Block]:
    return (header_blocks(run) + summary_blocks(run) + likelihood_blocks(run) + uncertainty_blocks(run)
            + feature_space_blocks(run) + checks_blocks(run) + plot_blocks(run) + sample_blocks(run) + memorisation_blocks(run)
            + steps_curve_blocks(run) + continuous_time_blocks(run) + scaling_blocks(run) + jobs_blocks(run)
            + config_blocks(run))


UNCERTAINTY_NOTES = [
    "[low, high]: 95% bootstrap interval (samples' and reference features resampled with replacement, "
    "100 replicates, percentile spread re-centred on the figure): a confidence interval for the figure's "
    "expected value at this sample count, the mean over reruns with fresh samples and reference images. One "
    "rerun's figure carries its own noise too and falls outside it more often than 5% of the time.",
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
    return [h2("Sample quality with uncertainty, and memorisation"), para(classifier_line(run)), table(frame),
            bullets(UNCERTAINTY_NOTES)]


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
                   "respaced steps of its T-step chain; an EBM's are Langevin steps from noise. "
                   + classifier_line(run))]
    if not points.empty:
        shown = pd.DataFrame({
            "model": points["model"], "steps": points["steps"].astype(str),
            "NFE / sample": points["nfe"].map(lambda v: "-" if pd.isna(v) else f"{v:.0f}"),
            "FID": points["fid"].map(lambda v: numbers.metric(v, "fid")),
            "samples/s": [("-" if pd.isna(v) else f"{numbers.metric(v, 'sample_throughput')} (batch {b})")
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


# --- continuous-time models ----------------------------------------------------------------------
# Which models count as continuous-time is decided here, once, by the rows a run holds rather than by a list
# of names: a model is continuous-time when it has a finite row that only an ODE solve produces, the
# solver's measured cost (nll_nfe, train_nfe), its tolerance (solver_rtol) or a probability-flow ODE
# likelihood (test_bpd_ode, test_nll_ode). FFJORD and flow matching report their solver's cost; DDPM
# qualifies by its probability-flow ODE likelihood. A new ODE model that reports its solver's cost is
# picked up without editing this section. A steps curve alone does not qualify: an EBM's Langevin steps
# and a DDPM's ancestral chain (a run without its ODE likelihood) trade steps for quality without an ODE.
ODE_METRICS = ("nll_nfe", "train_nfe", "solver_rtol", "test_bpd_ode", "test_nll_ode")
OUT_OF_RANGE = "—"  # the NFE lies outside the model's measured points: never extrapolated
PLOT_NAME = "continuous_time.png"


def continuous_time_models(run: Run) -> list[str]:
    """The run's continuous-time models (see ODE_METRICS), in the run's order."""
    m = run.metrics
    values = pd.to_numeric(m["value"], errors="coerce")
    marked = m[m["metric"].isin(ODE_METRICS) & values.notna() & np.isfinite(values.fillna(0))
               & (m["model"] != DATA_MODEL)]
    found = set(marked["model"])
    order = list(dict.fromkeys(list(run.summary["model"]) + list(m["model"])))
    return [model for model in order if model in found]


def _seed_values(metrics: pd.DataFrame, model: str, metric: str) -> pd.Series:
    """A headline metric of one model, one finite value per seed (the mean of duplicates)."""
    rows = results.headline(metrics)
    rows = rows[(rows["model"] == model) & (rows["metric"] == metric)]
    values = pd.to_numeric(rows["value"], errors="coerce")
    values = values[values.notna() & np.isfinite(values.fillna(0))]
    return values.groupby(rows.loc[values.index, "seed"].astype(str)).mean()


def _mean(metrics: pd.DataFrame, model: str, metric: str) -> float:
    values = _seed_values(metrics, model, metric)
    return float(values.mean()) if len(values) else float("nan")


def _spread(values: pd.Series, n_seeds: int, fmt) -> str:
    """'mean ± std' over seeds (sample std, like the summary's cells), '(n=k)' where fewer seeds measured it.
    ``fmt(value, mean)`` writes one number, its digits fixed by the mean."""
    values = values.dropna()
    if values.empty:
        return numbers.MISSING
    mean = float(values.mean())
    text = fmt(mean, mean)
    std = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
    if pd.notna(std) and std != 0:
        text += f" ± {fmt(std, mean)}"
    if len(values) < n_seeds:
        text += f" (n={len(values)})"
    return text


def _integer(value, mean):
    return numbers.fixed(value, 0)


def _flops(value, mean):
    return numbers.scientific(value)


def _seconds(value, mean):
    return numbers.fixed(value, numbers.metric_decimals("seconds_per_step", mean))


def nfe_fid_points(run: Run, model: str) -> pd.DataFrame:
    """The model's measured (NFE, FID) points, means over seeds: its steps curve plus its headline point
    (its own sampler, the summary's FID), one row per distinct NFE; ``headline`` marks the latter."""
    columns = ["model", "nfe", "fid", "headline"]
    curve = steps_points(run.metrics)
    curve = curve[curve["model"] == model]
    rows = [(float(n), float(f), False) for n, f in zip(curve["nfe"], curve["fid"]) if pd.notna(n) and pd.notna(f)]
    nfe, fid = _mean(run.metrics, model, "sampling_nfe"), _mean(run.metrics, model, "fid")
    if pd.notna(nfe) and pd.notna(fid):
        rows.append((nfe, fid, True))
    if not rows:
        return pd.DataFrame(columns=columns)
    d = pd.DataFrame(rows, columns=["nfe", "fid", "headline"])
    d = d[d["nfe"] > 0]
    d = d.groupby(d["nfe"].round(9), sort=True).agg(nfe=("nfe", "first"), fid=("fid", "mean"),
                                                     headline=("headline", "any")).reset_index(drop=True)
    return d.assign(model=model)[columns]


def _within(x: float, points: pd.DataFrame) -> bool:
    lo, hi = points["nfe"].min(), points["nfe"].max()
    return lo * (1 - 1e-9) <= x <= hi * (1 + 1e-9)


def fid_at_nfe(points: pd.DataFrame, nfe: float) -> float:
    """FID at ``nfe``, linear in log NFE between the two measured points around it; NaN outside the
    measured range (no extrapolation)."""
    if points.empty or not _within(nfe, points):
        return float("nan")
    p = points.sort_values("nfe")
    return float(np.interp(np.log(nfe), np.log(p["nfe"].to_numpy(float)), p["fid"].to_numpy(float)))


def nfe_to_reach(points: pd.DataFrame, target: float) -> tuple[float, str]:
    """(NFE, how) at which the model's FID first reaches ``target`` (FID <= target), walking its points by
    increasing NFE and interpolating linearly in log NFE across the crossing. how: "interpolated";
    "cheapest" (already reached at its cheapest measured point, so at most that NFE: nothing is
    extrapolated below it); "not reached" (no measured point reaches it); "missing" (no points)."""
    if points.empty:
        return float("nan"), "missing"
    p = points.sort_values("nfe")
    nfe, fid = p["nfe"].to_numpy(float), p["fid"].to_numpy(float)
    if fid[0] <= target:
        return float(nfe[0]), "cheapest"
    for i in range(1, len(nfe)):
        if fid[i] <= target:
            if fid[i] == target:
                return float(nfe[i]), "interpolated"
            t = (target - fid[i - 1]) / (fid[i] - fid[i - 1])
            return float(np.exp(np.log(nfe[i - 1]) + t * (np.log(nfe[i]) - np.log(nfe[i - 1])))), "interpolated"
    return float("nan"), "not reached"


def choose_fixed_nfe(curves: dict[str, pd.DataFrame]) -> float | None:
    """The NFE the models' FIDs are compared at: of the NFEs any of them measured, the one inside the
    measured range of the most models (all of them when their ranges overlap), the smallest of those."""
    curves = {m: c for m, c in curves.items() if not c.empty}
    candidates = sorted({float(v) for c in curves.values() for v in c["nfe"]})
    if not candidates:
        return None
    return max(candidates, key=lambda x: (sum(_within(x, c) for c in curves.values()), -x))


def choose_target_fid(curves: dict[str, pd.DataFrame]) -> float | None:
    """The FID the NFE column asks for: the worst of the best FIDs of the models measured at two or more
    NFEs (so each of them reaches it), or of every model when none was."""
    curves = {m: c for m, c in curves.items() if not c.empty}
    pool = {m: c for m, c in curves.items() if c["nfe"].nunique() >= 2} or curves
    return max(float(c["fid"].min()) for c in pool.values()) if pool else None


def _bpd_cell(run: Run, model: str, metric: str, n_seeds: int, source: str) -> str:
    values = _seed_values(run.metrics, model, metric)
    if values.empty:
        return numbers.MISSING
    text = _spread(values, n_seeds, lambda v, mean: numbers.fixed(v, numbers.metric_decimals(metric, mean)))
    rows = run.metrics[(run.metrics["model"] == model) & (run.metrics["metric"] == metric)]
    kinds = [str(k) for k in rows["kind"].dropna() if str(k)] if "kind" in rows else []
    label = "; ".join(filter(None, [kinds[0] if kinds else "", source]))
    return f"{text} ({label})" if label else text


def continuous_time_table(run: Run, models: list[str], curves: dict[str, pd.DataFrame], fixed: float | None,
                          target: float | None) -> pd.DataFrame:
    """One row per continuous-time model; every cell a string."""
    rows = []
    for model in models:
        m = run.metrics
        own = results.headline(m)[results.headline(m)["model"] == model]
        n_seeds = int(own["seed"].astype(str).nunique())
        tracks = own["track"].dropna().astype(str).unique() if "track" in own else []
        has_ode_bpd = not _seed_values(m, model, "test_bpd_ode").empty
        solver = not _seed_values(m, model, "nll_nfe").empty
        steps, seconds = _seed_values(m, model, "train_steps"), _seed_values(m, model, "train_seconds")
        per_step = (seconds / steps[steps > 0]).dropna()
        fid = _seed_values(m, model, "fid")
        head = _spread(fid, n_seeds, lambda v, mean: numbers.fixed(v, numbers.metric_decimals("fid", mean)))
        nfe = _mean(m, model, "sampling_nfe")
        if head != numbers.MISSING and pd.notna(nfe):
            head += f" @ NFE {numbers.metric(nfe, 'sampling_nfe')}"
        out = {"model": model, "track": ", ".join(tracks) or "-", "seeds": str(n_seeds),
               "train steps": _spread(steps, n_seeds, _integer),
               "train FLOPs": _spread(_seed_values(m, model, "train_flops"), n_seeds, _flops),
               "s / train step": _spread(per_step, n_seeds, _seconds),
               "bits/dim": _bpd_cell(run, model, "test_bpd", n_seeds,
                                     "VLB" if has_ode_bpd else "its ODE" if solver else ""),
               "bits/dim, probability-flow ODE": _bpd_cell(run, model, "test_bpd_ode", n_seeds,
                                                           "probability-flow ODE"),
               "FID (own sampler) @ NFE": head}
        if fixed is not None:
            points = curves[model]
            value = fid_at_nfe(points, fixed)
            out[f"FID @ NFE {numbers.significant(fixed)}"] = (
                numbers.MISSING if points.empty else OUT_OF_RANGE if pd.isna(value) else numbers.metric(value, "fid"))
        if target is not None:
            value, how = nfe_to_reach(curves[model], target)
            out[f"NFE to FID ≤ {numbers.metric(target, 'fid')}"] = {
                "missing": numbers.MISSING, "cheapest": f"≤ {numbers.significant(value)}",
                "interpolated": numbers.significant(value),
                "not reached": f"not reached (best {numbers.metric(curves[model]['fid'].min(), 'fid')})"
                if not curves[model].empty else "not reached"}[how]
        rows.append(out)
    table = pd.DataFrame(rows)
    if (table["bits/dim, probability-flow ODE"] == numbers.MISSING).all():
        table = table.drop(columns=["bits/dim, probability-flow ODE"])
    return table


def continuous_time_notes(run: Run, models: list[str], curves: dict[str, pd.DataFrame], fixed: float | None,
                          target: float | None) -> list[str]:
    m = run.metrics
    kinds: dict[str, list[str]] = {}  # kind -> the figures of that kind
    for model in models:
        has_ode_bpd = ((m["model"] == model) & (m["metric"] == "test_bpd_ode")).any()
        figures = (("test_bpd", " (VLB)" if has_ode_bpd else ""), ("test_bpd_ode", " (probability-flow ODE)"))
        for metric, what in figures:
            rows = m[(m["model"] == model) & (m["metric"] == metric)]
            if not rows.empty and "kind" in rows:
                kind = str(rows["kind"].dropna().iloc[0]) if rows["kind"].notna().any() else "unknown"
                kinds.setdefault(kind, []).append(model + what)
    kind_text = "; ".join(f"{kind}: {', '.join(who)}" for kind, who in kinds.items()) or "none measured"
    notes = [
        "train steps, train FLOPs: the optimisation steps the budget bought and their matmul/conv FLOPs, forward "
        "and backward (elementwise ops not counted). s / train step: train_seconds / train_steps of each seed, "
        "then mean ± std over the seeds, as every cell here (sample std; (n=k): fewer seeds measured it).",
        "bits/dim: the test split's, with its kind; bound = an upper bound on the NLL of the discrete images "
        "(dequantization bound, or a variational bound), exact = the exact likelihood. Kinds in this run: "
        f"{kind_text}. `its ODE`: the model's own ODE likelihood (instantaneous change of variables, "
        "Hutchinson trace, adaptive solver); `VLB`: DDPM's variational bound of its T-step chain; "
        "`probability-flow ODE`: the likelihood of the probability-flow ODE of the same trained DDPM network "
        "(Song et al. 2021), a dequantization bound too, on the first test images only (how many, and its "
        "standard error, in the row's note: `ode_images`, 32 by default), so not on the VLB's images. A bound "
        "at a finite budget can be far from the true "
        "NLL, and bits/dim compare only within one track.",
        "FID (own sampler) @ NFE: the summary's FID at the model's own sampler, with the network evaluations "
        "one sample cost (the measured mean for an adaptive solver such as dopri5).",
    ]
    if fixed is not None:
        notes.append(
            f"FID @ NFE {numbers.significant(fixed)}: each model's measured (NFE, FID) points, its steps curve "
            "and its headline point (means over seeds), interpolated linearly in log NFE. The fixed NFE is, of the "
            "NFEs any of these models measured, the one inside the measured range of the most models (all of "
            "them when their ranges overlap), the smallest such. "
            f"{OUT_OF_RANGE}: outside the model's measured range: never extrapolated.")
    if target is not None:
        notes.append(
            f"NFE to FID ≤ {numbers.metric(target, 'fid')}: the fewest NFE at which the model's points reach that "
            "FID, interpolated linearly in log NFE between the last point above it and the first at or below it. "
            "The target is the worst of the best FIDs of the models measured at two or more NFEs, so each of them "
            "reaches it. ≤ n: already reached at its cheapest measured point n (nothing extrapolated below it); "
            "not reached: none of its measured points does.")
    if fixed is None and target is None:
        notes.append("No FID with an NFE was measured for these models.")
    notes.append("-: not measured (a failed job, or a metric this run did not compute).")
    samplers = [f"{model}: {run.info[model]['sampler']}" for model in models
                if run.info.get(model, {}).get("sampler")]
    if samplers:
        notes.append("Samplers behind the points (a steps curve varies the steps of this sampler; adaptive "
                     "headline samplers are not on a fixed-step curve): " + "; ".join(samplers) + ".")
    return notes


def continuous_time_blocks(run: Run) -> list[Block]:
    """FFJORD against flow matching and DDPM's ODE: training cost, bits/dim, FID at a fixed NFE and the
    NFE a target FID costs. Only when the run holds two or more continuous-time models (ODE_METRICS)."""
    models = continuous_time_models(run)
    if len(models) < 2:
        return []
    curves = {model: nfe_fid_points(run, model) for model in models}
    fixed, target = choose_fixed_nfe(curves), choose_target_fid(curves)
    blocks = [h2("Continuous-time models"),
              para("The models whose figures come from ODE solves (" + ", ".join(models) + "), side by side: "
                   "what training cost, the likelihood each reports, and sample quality against the network "
                   "evaluations (NFE) a sample costs. " + classifier_line(run)),
              table(continuous_time_table(run, models, curves, fixed, target)),
              bullets(continuous_time_notes(run, models, curves, fixed, target))]
    points = pd.concat([c for c in curves.values() if not c.empty] or [pd.DataFrame(columns=["model", "nfe", "fid",
                                                                                             "headline"])])
    path = plots.fid_against_nfe(points, run.folder / "plots" / PLOT_NAME, fixed, target)
    if path is not None:
        blocks.append(images([(f"plots/{path.name}", "FID against NFE (log scale) per continuous-time model: "
                                                     "steps-curve points, the headline point starred.")]))
    return blocks
