"""The one command line: ``python -m bench {run,list,report,compare,baseline,scaling}``.

Exit codes: 0 success; 1 a model failed (``run``) or a regression (``compare``); 2 the user's input
was unusable (unknown name, malformed budget, missing file), with a one-line message saying the fix.
"""
from __future__ import annotations

import argparse
import sys

from bench.errors import UserError


def _csv_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _model_args(text: str) -> dict[str, float]:
    """``lr=0.01,weight_decay=1e-4`` -> {"lr": 0.01, "weight_decay": 0.0001} (numbers only)."""
    args = {}
    for part in _csv_list(text):
        key, _, value = part.partition("=")
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--model-args wants NAME=NUMBER pairs, got {part!r}") from None
        args[key.strip()] = int(number) if number.is_integer() and "." not in value and "e" not in value else number
    return args


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in _csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be integers separated by commas, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train and evaluate models, write results/<run>/")
    which = run.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="every registered model")
    which.add_argument("--models", type=_csv_list, help="comma-separated model names (see `list`)")
    run.add_argument("--dataset", default="mnist5k", help="dataset name (default: mnist5k, no download)")
    run.add_argument("--budget", default="default",
                     help="smoke | default | full, or an amount: 500steps, 90s, 3epochs (default: default)")
    run.add_argument("--seeds", type=_seeds, default=[0], help="comma-separated seeds (default: 0)")
    run.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    run.add_argument("--out", help="output folder (default: results/<timestamp>)")
    run.add_argument("--data-root", help="where downloaded datasets live (default: $BENCH_DATA_ROOT or the cache)")
    run.add_argument("--fid-samples", type=int, default=None,
                     help="samples per model for FID/IS/KID/PR (default: the test split's size)")
    run.add_argument("--eval-size", type=int, default=None,
                     help="test images scored for likelihood (default: the whole test split; smoke: 200)")
    run.add_argument("--throughput-cap", type=float, default=20.0,
                     help="skip a sampling batch size whose projected time exceeds this many seconds")
    run.add_argument("--early-stopping", action="store_true",
                     help="likelihood models: validation NLL after every epoch; halve the learning rate after an "
                          "epoch without improvement, stop after 4 in a row, keep the best epoch's weights")
    run.add_argument("--model-args", type=_model_args, default={}, metavar="NAME=NUMBER,...",
                     help="constructor arguments for every model of the run, e.g. lr=0.01,weight_decay=1e-4")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--no-scaling", action="store_true",
                     help="skip the sampling-cost scaling study (untrained models at 8x8, 14x14, 28x28)")
    run.add_argument("--in-process", action="store_true",
                     help="run jobs in this process (debugging; peak memory is then the whole run's)")

    sub.add_parser("list", help="models, datasets, budgets and metrics")

    report = sub.add_parser("report", help="re-render the report of a stored run")
    report.add_argument("run_dir")

    compare = sub.add_parser("compare", help="compare a run with a baseline; exit 1 on regression")
    compare.add_argument("run_dir")
    compare.add_argument("--baseline", required=True, help="results/baselines/<name>.json")
    compare.add_argument("--tolerance", action="append", default=[], metavar="METRIC=TOL",
                         help="override a metric's tolerance, e.g. fid=0.5 or sample_throughput=0.6")

    baseline = sub.add_parser("baseline", help="write a baseline file from a run")
    baseline.add_argument("run_dir")
    baseline.add_argument("--out", required=True, help="results/baselines/<name>.json")

    scaling = sub.add_parser("scaling", help="sampling cost against image size (8x8, 14x14, 28x28)")
    scaling.add_argument("--models", type=_csv_list, default=None, help="default: every model")
    scaling.add_argument("--sizes", type=lambda t: [int(s) for s in _csv_list(t)], default=[8, 14, 28])
    scaling.add_argument("--batch", type=int, default=1,
                         help="samples per call (default 1: the latency of one sample, where a sampler's "
                              "sequential depth shows; a large batch measures throughput on this device instead)")
    scaling.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    scaling.add_argument("--out", help="output folder (default: results/scaling-<timestamp>)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def cmd_run(args) -> int:
    from bench.suite import resolve_models, run_suite

    if not args.all and not args.models:
        raise UserError("say which models to run: --all, or --models NAME[,NAME...] (see `python -m bench list`)")
    if args.fid_samples is not None and args.fid_samples < 2:
        raise UserError("--fid-samples must be at least 2")
    if args.eval_size is not None and args.eval_size < 1:
        raise UserError("--eval-size must be a positive number of test images")
    names = resolve_models(args.models, args.all)
    out, outcomes = run_suite(names, args.dataset, args.budget, args.seeds, args.device, args.out, args.data_root,
                              progress=not args.no_progress, isolate=not args.in_process,
                              throughput_cap_s=args.throughput_cap, fidelity_samples=args.fid_samples,
                              eval_size=args.eval_size, scaling=not args.no_scaling,
                              early_stopping=args.early_stopping, model_args=args.model_args)
    failed = [o for o in outcomes if o["status"] == "failed"]
    print(f"results: {out}/ (report.md, report.html, metrics.csv, summary.csv)")
    if failed:
        print(f"{len(failed)} job(s) failed: see {out}/jobs.csv", file=sys.stderr)
        return 1
    return 0


def cmd_list(_args) -> int:
    import models
    from bench.budgets import PRESETS, FORMS
    from bench.data import dataset_summaries

    print("models:")
    print(f"  {'name':<12} {'family':<15} {'likelihood':<11} {'track':<7} conditional")
    for name in models.names():
        cls = models.model_class(name)
        print(f"  {name:<12} {cls.family:<15} {cls.likelihood or '-':<11} {cls.track:<7} "
              f"{'yes' if cls.conditional else 'no'}")
    print("datasets:")
    for name, summary in dataset_summaries().items():
        print(f"  {name:<16} {summary}")
    print("budgets:")
    for name, spec in PRESETS.items():
        print(f"  {name:<8} = {spec}")
    print(f"  or {FORMS}")
    print("metrics:")
    for name, (unit, meaning) in METRICS.items():
        print(f"  {name:<18} {unit:<11} {meaning}")
    return 0


METRICS = {
    "test_nll": ("nats", "negative log-likelihood per test example (exact, bound or estimate)"),
    "test_bpd": ("bits/dim", "test_nll / (D ln 2); 8bit track includes the D ln 256 dequantization term"),
    "fid": ("", "Frechet distance of evaluation-classifier features, samples vs test split"),
    "kid": ("", "kernel inception distance on the same features"),
    "is": ("", "inception score from the evaluation classifier's logits"),
    "precision": ("fraction", "improved precision (k-NN manifold) of samples"),
    "recall": ("fraction", "improved recall (k-NN manifold) of samples"),
    "class_accuracy": ("fraction", "conditional models: classifier agrees with the requested label"),
    "sample_throughput": ("samples/s", "sampling speed at the batch size in the `batch` column"),
    "sampling_nfe": ("evaluations", "sequential network evaluations one sample costs"),
    "train_throughput": ("examples/s", "training examples per second over the budget"),
    "train_seconds": ("s", "training wall time"),
    "train_steps": ("steps", "optimisation steps the budget bought"),
    "train_examples": ("examples", "training examples seen"),
    "peak_memory": ("MiB", "the larger of peak_memory_train and peak_memory_sample (evaluation excluded)"),
    "peak_memory_train": ("MiB", "peak during training; CPU: the job's own resident set (VmHWM reset at the "
                                 "phase start: interpreter and libraries included); GPU: torch-allocated tensors"),
    "peak_memory_sample": ("MiB", "peak while sampling at the batch size in the `batch` column (same measure)"),
    "params": ("count", "trainable parameters"),
    "best_epoch": ("epochs", "--early-stopping: the epoch whose weights were kept (best validation NLL)"),
    "valid_nll": ("nats", "--early-stopping: validation NLL of the kept weights"),
}


def cmd_report(args) -> int:
    from pathlib import Path

    from bench import report

    run_dir = Path(args.run_dir)
    if not (run_dir / "metrics.csv").exists():
        raise UserError(f"{run_dir} holds no metrics.csv: give the folder of a `bench run`")
    report.render(run_dir)
    print(f"report: {run_dir}/report.md, {run_dir}/report.html")
    return 0


def cmd_compare(args) -> int:
    from bench import compare

    return compare.main(args)


def cmd_baseline(args) -> int:
    from bench import compare

    return compare.write_baseline_cli(args)


def cmd_scaling(args) -> int:
    from bench import scaling

    return scaling.main(args)


COMMANDS = {"run": cmd_run, "list": cmd_list, "report": cmd_report, "compare": cmd_compare,
            "baseline": cmd_baseline, "scaling": cmd_scaling}
