"""The one command line: ``python -m bench {run,evaluate,list,report,compare,baseline,history,scaling,classifier}``.

Exit codes: 0 success; 1 a model failed (``run``) or a regression (``compare``, ``history regressions``); 2 the user's input
was unusable (unknown name, malformed budget, missing file, a changed configuration in a run's folder),
with a one-line message saying the fix; 130 interrupted (Ctrl-C or SIGTERM), finished jobs kept.
"""
from __future__ import annotations

import argparse
import sys

from bench.config.errors import UserError
from bench.config.run_config import cli_options, csv_list


RUN_HELP_MODELS = "comma-separated model names (see `list`)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train and evaluate models, write results/<run>/")
    which = run.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="every registered model")
    which.add_argument("--models", type=csv_list, help=RUN_HELP_MODELS)
    for flag, options in cli_options():  # one per RunConfig setting (bench.config.run_config)
        run.add_argument(flag, **options)
    run.add_argument("--config", metavar="FILE.yaml",
                     help="a YAML file whose keys mirror these flags (budget: smoke, model_args: {realnvp: "
                          "{lr: 5e-4}}, ...); flags given on the command line win")

    sub.add_parser("list", help="models, datasets, budgets and metrics")

    evaluate = sub.add_parser("evaluate", help="re-measure a run's finished jobs from their checkpoints, "
                                               "without training")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--fid-samples", type=int, default=None, help="samples per model for FID/IS/KID/PR")
    evaluate.add_argument("--eval-size", type=int, default=None, help="test images scored for likelihood")
    evaluate.add_argument("--throughput-cap", type=float, default=None,
                          help="skip a sampling batch size projected past this many seconds")
    evaluate.add_argument("--models", type=csv_list, default=None, help="only these models (default: all)")
    evaluate.add_argument("--sampler-args", action="append", default=[], metavar="MODEL:KEY=VALUE[,KEY=VALUE]",
                          help="another sampler setting for a trained model, e.g. ddpm:sampling_steps=100,sampler=ddim "
                               "(only the settings a model declares as its sampler's; repeatable)")
    evaluate.add_argument("--classifier", metavar="FILE",
                          help="rescore every model with this evaluation classifier (e.g. a baseline's, to compare "
                               "sample quality with it)")
    evaluate.add_argument("--executor", default="local", help="local or ray")
    evaluate.add_argument("--workers", type=int, default=1, help="jobs at once")
    evaluate.add_argument("--ray-address", help="an existing Ray cluster (--executor ray)")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bars")

    report = sub.add_parser("report", help="re-render the report of a stored run")
    report.add_argument("run_dir")

    compare = sub.add_parser("compare", help="compare a run with a baseline or with a history; exit 1 on regression")
    compare.add_argument("run_dir")
    against = compare.add_mutually_exclusive_group(required=True)
    against.add_argument("--baseline", help="results/baselines/<name>.json")
    against.add_argument("--history", metavar="STORE",
                         help="a history store (`bench history add`): judge against the median of the last --window "
                              "runs of this run's series, with each metric's own spread as its noise")
    compare.add_argument("--window", type=int, default=None,
                         help="--history: how many earlier runs make the reference (default 20, at least 3)")
    compare.add_argument("--tolerance", action="append", default=[], metavar="METRIC=TOL",
                         help="override a metric's tolerance, e.g. fid=0.5 or sample_throughput=0.6")
    compare.add_argument("--no-sample-quality", action="store_true",
                         help="leave out the metrics scored by the evaluation classifier (FID, KID, IS, precision, "
                              "recall, ...): compare likelihood and speed when the two runs' classifiers differ")
    compare.add_argument("--format", choices=["text", "junit", "markdown", "json"], default="text",
                         help="text (default), junit (JUnit XML: one test case per model and metric), "
                              "markdown (a GitHub job summary) or json")
    compare.add_argument("--output", metavar="FILE",
                         help="write the formatted result to FILE (the text table still goes to stdout)")

    classifier = sub.add_parser("classifier", help="train a dataset's evaluation classifier into a file "
                                                   "(deterministic; share it with --classifier)")
    classifier.add_argument("--dataset", default="mnist5k", help="a labelled dataset (default: mnist5k)")
    classifier.add_argument("--out", required=True, help="the file to write, e.g. classifiers/mnist.pt")
    classifier.add_argument("--data-root", help="where downloaded datasets live")
    classifier.add_argument("--no-progress", action="store_true", help="no progress bar")
    classifier.add_argument("--second", action="store_true",
                            help="the second feature space's encoder (twice as wide, another seed: fid_wide)")

    history = sub.add_parser("history", help="a store of runs across commits: add, show, report (a dashboard), "
                                             "regressions (step detection)")
    steps = history.add_subparsers(dest="history_command", required=True)
    store_help = "the store's SQLite file (default results/history.sqlite)"
    add = steps.add_parser("add", help="append a finished run's figures to the store (made if missing)")
    add.add_argument("run_dir")
    add.add_argument("--store", default=None, help=store_help)
    show = steps.add_parser("show", help="the stored figures as a table, one column per run")
    show.add_argument("--store", default=None, help=store_help)
    show.add_argument("--model", help="only this model (entry), e.g. fvsbn or 'data (8bit)'")
    show.add_argument("--metric", help="only this metric, e.g. test_bpd or sample_throughput@256")
    show.add_argument("--last", type=int, default=8, help="the last N runs of each series (default 8)")
    trends = steps.add_parser("report", help="write a static dashboard: DIR/index.html with one trend plot per metric")
    trends.add_argument("--store", default=None, help=store_help)
    trends.add_argument("--out", required=True, help="the dashboard's folder")
    found = steps.add_parser("regressions", help="every detected step; exit 1 if the newest run is past a worse one")
    found.add_argument("--store", default=None, help=store_help)
    found.add_argument("--model", help="only this model")
    found.add_argument("--metric", help="only this metric")
    found.add_argument("--format", choices=["text", "json"], default="text", help="text (default) or json")

    baseline = sub.add_parser("baseline", help="write a baseline file from a run")
    baseline.add_argument("run_dir")
    baseline.add_argument("--out", required=True, help="results/baselines/<name>.json")

    scaling = sub.add_parser("scaling", help="sampling cost against image size (8x8, 14x14, 28x28)")
    scaling.add_argument("--models", type=csv_list, default=None, help="default: every model")
    scaling.add_argument("--sizes", type=lambda t: [int(s) for s in csv_list(t)], default=[8, 14, 28])
    scaling.add_argument("--batch", type=lambda t: [int(s) for s in csv_list(t)], default=[1, 1024],
                         help="samples per call, comma-separated (default 1,1024: the latency of one sample, "
                              "where a sampler's sequential depth shows, and throughput, where its total work shows)")
    scaling.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    scaling.add_argument("--out", help="output folder (default: results/scaling-<timestamp>)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _sigterm_as_ctrl_c()
    try:
        if getattr(args, "config", None):
            args = _apply_config_file(parser, argv, args)
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, _interrupted()) as exc:  # Ctrl-C or SIGTERM: stopped cleanly, no traceback
        print(f"\n{exc}" if str(exc) else "\ninterrupted", file=sys.stderr)
        return 130


def _sigterm_as_ctrl_c() -> None:
    """SIGTERM (a scheduler, `kill`) stops every command the way Ctrl-C does: cleanly, exit 130."""
    import signal
    import threading

    def interrupt(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def _interrupted():
    from bench.suite import RunInterrupted

    return RunInterrupted


def _apply_config_file(parser: argparse.ArgumentParser, argv, args) -> argparse.Namespace:
    """Re-parse with the file's values as defaults, so that every flag given on the command line wins;
    ``model_args`` merge per model and setting, the command line's winning. The file's keys are the flags'
    names (``fid-samples`` or ``fid_samples``, ``no_scaling: true``)."""
    from bench.config.model_settings import parse_model_args, read_config

    run_parser = parser._subparsers._group_actions[0].choices[args.command]
    by_key = {option[2:].replace("-", "_"): action for action in run_parser._actions
              for option in action.option_strings if option.startswith("--") and action.dest not in ("help", "config")}
    config = read_config(args.config, set(by_key))
    file_model_args = config.pop("model_args", None) or {}
    if not isinstance(file_model_args, dict) or not all(isinstance(v, dict) for v in file_model_args.values()):
        raise UserError(f"--config {args.config}: model_args must map model names to settings, "
                        f"e.g. model_args: {{realnvp: {{lr: 0.0005}}}}")
    defaults = {}
    for key, value in config.items():
        action = by_key[key]
        inverted = isinstance(action, argparse._StoreFalseAction)  # no_scaling: true sets scaling False
        defaults[action.dest] = (not value) if inverted else value
    run_parser.set_defaults(**defaults)
    merged = parser.parse_args(argv)
    overrides = {m: dict(v) for m, v in file_model_args.items()}
    for model, settings in parse_model_args(merged.model_args).items():
        overrides.setdefault(model, {}).update(settings)
    merged.model_args = [f"{m}:" + ",".join(f"{k}={v!r}" for k, v in s.items()) for m, s in overrides.items() if s]
    return merged


def cmd_run(args) -> int:
    from bench.config.run_config import from_cli
    from bench.suite import run_suite

    # --all: every model that can model the dataset (the others are listed as skipped); --models: exactly those
    out, outcomes = run_suite(from_cli(args), skip_unsupported=bool(args.all))  # RunConfig.check names what cannot run
    return _finished(out, outcomes)


def _finished(out, outcomes) -> int:
    unfinished = [o for o in outcomes if o["status"] in ("failed", "interrupted")]
    print(f"results: {out}/ (report.md, report.html, metrics.csv, summary.csv)")
    if unfinished:
        print(f"{len(unfinished)} job(s) failed: see {out}/jobs.csv (`bench run` on the same folder runs them "
              f"again)", file=sys.stderr)
        return 1
    return 0


def cmd_evaluate(args) -> int:
    from bench.config.run_config import check_sample_counts
    from bench.run import executors
    from bench.suite import evaluate_run

    check_sample_counts(args.fid_samples, args.eval_size)
    executors.check_options(args.executor, args.workers, args.ray_address)
    out, outcomes = evaluate_run(args.run_dir, fidelity_samples=args.fid_samples, eval_size=args.eval_size,
                                 throughput_cap_s=args.throughput_cap, models_=args.models,
                                 sampler_args=args.sampler_args,
                                 executor=args.executor, workers=args.workers, ray_address=args.ray_address,
                                 progress=not args.no_progress, classifier_file=args.classifier)
    return _finished(out, outcomes)


def cmd_list(_args) -> int:
    import models
    from bench.config.budgets import PRESETS, FORMS
    from bench.data.datasets import dataset_summaries

    print("models:")
    width = max(12, *(len(name) for name in models.names()))
    print(f"  {'name':<{width}} {'family':<15} {'likelihood':<11} {'track':<7} conditional")
    for name in models.names():
        cls = models.model_class(name)
        print(f"  {name:<{width}} {cls.family:<15} {cls.likelihood or '-':<11} {cls.track:<7} "
              f"{'yes' if cls.conditional else 'no'}")
    print("datasets:")
    for name, summary in dataset_summaries().items():
        print(f"  {name:<16} {summary}")
    print("budgets:")
    for name, spec in PRESETS.items():
        print(f"  {name:<8} = {spec}")
    print(f"  or {FORMS}")
    from bench.run import executors

    print(f"executors (--executor): {', '.join(n for n in executors.names() if n != 'in-process')} "
          f"(--in-process runs jobs in this process, for debugging)")
    print("metrics:")
    from bench.evaluate.metrics import REGISTRY

    print(f"  {'name':<18} {'unit':<11} {'better':<7} {'CI gate':<14} meaning")
    for m in REGISTRY.values():
        better = m.direction or "-"
        gate = m.rule.describe() if m.rule.gated and m.direction else "shown only"
        print(f"  {m.name:<18} {m.unit or '-':<11} {better:<7} {gate:<14} {m.meaning}")
    return 0




def cmd_report(args) -> int:
    from pathlib import Path

    from bench.run import folder_lock
    from bench.results import report
    from bench.config.job import load_outcomes

    run_dir = Path(args.run_dir)
    if not (run_dir / "metrics.csv").exists():
        raise UserError(f"{run_dir} holds no metrics.csv: give the folder of a `bench run`")
    with folder_lock.locked(run_dir, "report"):
        for outcome in load_outcomes(run_dir):
            if outcome["status"] == "corrupt":
                print(f"warning: {outcome['reason']}; the report marks it", file=sys.stderr)
        report.render(run_dir)
    print(f"report: {run_dir}/report.md, {run_dir}/report.html")
    return 0


def cmd_classifier(args) -> int:
    """Train a dataset's evaluation classifier (deterministically) into ``--out``; for a dataset that ships
    one, say whether the retrained weights are the shipped ones."""
    from pathlib import Path

    from bench.evaluate import classifier
    from bench.data.datasets import load_dataset

    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder: give a file path, e.g. {out / (args.dataset + '.pt')}")
    data = load_dataset(args.dataset, args.data_root)
    if not classifier.has_labels(data):
        raise UserError(f"dataset {data.name!r} has no class labels, so it can have no evaluation classifier")
    spec = classifier.second_spec(data) if args.second else classifier.default_spec(data)
    payload, seconds = classifier.train_payload(data, spec, not args.no_progress,
                                                classifier.SECOND_ARCH if args.second else None)
    classifier.save_payload(payload, out)
    print(f"classifier: {out} (dataset {data.name}{', the second feature space' if args.second else ''}, "
          f"{spec.steps_for(len(data.train_images))} steps on the CPU, one thread, {seconds}s)")
    print(f"  weights digest {payload['weights_digest']}; file SHA-256 {classifier.file_sha256(out)}")
    binarized = payload["test_accuracy_binarized"]  # None: the dataset has no binary track
    print(f"  test accuracy {payload['test_accuracy']:.4f}" + (f" (binarized {binarized:.4f})" if binarized is not None else ""))
    table = classifier.PINNED_SECOND if args.second else classifier.PINNED
    if data.name in table:
        pinned = table[data.name]
        try:
            shipped = classifier.load_pinned(data.name, table=table)
            same = "identical to" if shipped.weights_digest == payload["weights_digest"] else "different from"
            print(f"  weights {same} the shipped {pinned.file} (digest {shipped.weights_digest})")
        except UserError as exc:
            print(f"  the shipped classifier could not be read: {exc}")
    return 0


def cmd_compare(args) -> int:
    from pathlib import Path

    from bench.results import compare

    if args.output and Path(args.output).is_dir():
        raise UserError(f"--output {args.output} is a folder: give a file path, e.g. {Path(args.output) / 'compare.xml'}")
    if args.history:
        rows, header, note = _compare_with_history(args)
    else:
        if args.window is not None:
            raise UserError("--window applies to --history only: give --history STORE, or drop --window")
        baseline = compare.read_baseline(args.baseline)
        rows = compare.compare(args.run_dir, baseline, list(args.tolerance or []),
                               sample_quality=not args.no_sample_quality)
        header = (f"compare {args.run_dir} with {args.baseline} (dataset {baseline.get('dataset')}, budget "
                  f"{baseline.get('budget')}, seeds {baseline.get('seeds')}, baseline commit {baseline.get('git_commit')})")
        notes = compare.context_notes(baseline, compare.load_run(args.run_dir)[0])
        note = ("note: " + "; ".join(notes) + " (last digits may differ)") if notes else ""
    summary = compare.summary_line(rows)
    text = "\n".join(filter(None, [header, note, compare.render(rows), summary])) + "\n"
    formatted = {"text": lambda: text, "junit": lambda: compare.to_junit(rows),
                 "markdown": lambda: compare.to_markdown(rows, summary),
                 "json": lambda: compare.to_json(rows, summary)}[args.format]()
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(formatted)
        print(text, end="")  # the human-readable table still goes to the log
        print(f"{args.format} written to {args.output}")
    else:
        print(formatted, end="")
    return 1 if any(r.verdict == "regressed" for r in rows) else 0


def _compare_with_history(args):
    from bench.results.history import gate
    from bench.results.history.store import open_store

    with open_store(args.history) as store:
        rows, window = gate.compare_with_history(store, args.run_dir, args.window or gate.DEFAULT_WINDOW,
                                                 list(args.tolerance or []), sample_quality=not args.no_sample_quality)
    header = f"compare {args.run_dir} with {window.describe()} in {args.history}"
    note = (f"tolerance (in the metric's unit): the widest of the registry's band, the window's one-sided "
            f"{100 * (1 - gate.ALPHA):g}% prediction band (of the logarithm for speed and memory) and the window's "
            f"own worst deviation")
    return rows, header, note


def cmd_history(args) -> int:
    from pathlib import Path

    from bench.results.history.store import DEFAULT_STORE, open_store

    store_path = Path(args.store) if args.store else DEFAULT_STORE
    if args.history_command == "add":
        with open_store(store_path, create=True) as store:
            ident, count = store.add_run(args.run_dir)
        print(f"history: added {args.run_dir} ({ident.describe()}) to {store_path}; series '{ident.series}' "
              f"now holds {count} run(s)")
        return 0
    with open_store(store_path) as store:
        if args.history_command == "show":
            from bench.results.history.show import show_table

            if args.last < 1:
                raise UserError(f"--last {args.last}: give a positive number of runs")
            print(show_table(store, args.model, args.metric, args.last))
            return 0
        if args.history_command == "report":
            from bench.results.history.dashboard import write_dashboard

            out = Path(args.out)
            if out.exists() and not out.is_dir():
                raise UserError(f"--out {out} is a file: give a folder for the dashboard")
            print(f"history: dashboard {write_dashboard(store, out)}")
            return 0
        return _print_regressions(store, args)


def _print_regressions(store, args) -> int:
    import json

    from tabulate import tabulate

    from bench.results.history.regressions import describe, find_steps

    steps = find_steps(store, args.model, args.metric)
    regressed = [s for s in steps if s.regressed]
    if args.format == "json":
        print(json.dumps([s.to_dict() for s in steps], indent=1))
    elif not steps:
        print(f"no step detected in {store.path} ({len(store.runs())} runs, {len(store.series())} series)")
    else:
        print(tabulate([[s.model, s.metric, s.commit[:12], s.started, describe(s), s.direction, f"{s.z:+.1f}",
                         "REGRESSED" if s.regressed else ("newest" if s.latest else "-"), s.series] for s in steps],
                       headers=["model", "metric", "commit", "started", "level", "direction", "z", "now", "series"],
                       tablefmt="github", disable_numparse=True))
        print(f"{len(steps)} step(s); {len(regressed)} metric(s) whose newest run is past a worse step")
    return 1 if regressed else 0


def cmd_baseline(args) -> int:
    from bench.results import compare

    out = compare.write_baseline(args.run_dir, args.out)
    baseline = compare.read_baseline(out)
    n = sum(len(v) for v in baseline["values"].values())
    print(f"baseline: {out} ({len(baseline['values'])} models, {n} values; dataset {baseline['dataset']}, "
          f"budget {baseline['budget']}, seeds {baseline['seeds']}, device {baseline['device']})")
    return 0


def cmd_scaling(args) -> int:
    """Measure, write the files into --out; a run's folder as --out gains the section in its report."""
    from pathlib import Path

    from bench.config import paths
    from bench.results import report
    from bench.run.runner import resolve_device
    from bench.suite import resolve_models, study_into

    names = resolve_models(args.models, run_all=not args.models)
    if not args.sizes or any(s < 2 for s in args.sizes):
        raise UserError(f"--sizes must be image sides of at least 2 pixels, e.g. 8,14,28; got {args.sizes}")
    batches = [args.batch] if isinstance(args.batch, int) else list(args.batch)
    if not batches or any(b < 1 for b in batches):
        raise UserError(f"--batch must be positive batch sizes, e.g. 1,1024; got {args.batch}")
    out = Path(args.out) if args.out else paths.default_out_dir("scaling-")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: give a folder")
    from bench.run import folder_lock

    with folder_lock.locked(out, "scaling"):  # --out may be a run's folder
        timings, fits, skipped, meta = study_into(out, names, resolve_device(args.device), list(args.sizes), batches)
        print((out / "scaling.md").read_text())
        if (out / "metrics.csv").exists():
            report.render(out)
    print(f"scaling: {out}/ (scaling.csv, scaling_fit.csv, scaling.md, scaling.png, scaling_roofline.png)")
    print(f"wall time: {meta['wall_seconds']}s")
    return 0


COMMANDS = {"run": cmd_run, "evaluate": cmd_evaluate, "list": cmd_list, "report": cmd_report, "compare": cmd_compare,
            "baseline": cmd_baseline, "history": cmd_history, "scaling": cmd_scaling, "classifier": cmd_classifier}
