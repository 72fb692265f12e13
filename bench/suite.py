"""``bench run``: resolve the configuration, run every job, write the tables and the report."""
from __future__ import annotations

import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from bench import results
from bench.budgets import default_eval_size, parse_budget, scaling_batches, throughput_cap
from bench.data import dataset_summaries, load_dataset
from bench.errors import UserError
from bench.runner import Job, resolve_device, run_isolated, run_job


def resolve_models(names: list[str] | None, run_all: bool) -> list[str]:
    import models

    known = models.names()
    if run_all or not names:
        return known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"unknown model{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                        f"known models: {', '.join(known)}")
    return names


def check_tracks(model_names: list[str], data) -> None:
    import models

    for name in model_names:
        track = models.model_class(name).track
        if track == "8bit" and data.test_binary is not None:
            raise UserError(f"model {name!r} needs the 8bit track, which dataset {data.name!r} does not have; "
                            f"drop it from --models or use --dataset mnist5k or mnist")


def run_suite(models_: list[str], dataset: str, budget: str, seeds: list[int], device: str,
              out: Path | None, data_root: str | None, progress: bool = True, isolate: bool = True,
              throughput_cap_s: float | None = None, fidelity_samples: int | None = None,
              eval_size: int | None = None, scaling: bool = True,
              early_stopping: bool = False, model_args: dict[str, dict] | None = None) -> tuple[Path, list[dict]]:
    from bench.settings import resolve_model_args

    parse_budget(budget)  # a malformed budget fails before any work starts
    model_args = model_args or {}
    model_settings = resolve_model_args(model_args, models_)
    eval_size = eval_size or default_eval_size(budget)
    throughput_cap_s = throughput_cap_s or throughput_cap(budget)
    fidelity_samples = fidelity_samples or eval_size
    torch_device = resolve_device(device)
    data = load_dataset(dataset, data_root)  # a missing dataset fails before any work starts
    check_tracks(models_, data)
    out = Path(out) if out else results.default_out_dir()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder: give a folder for the run's results")
    out.mkdir(parents=True, exist_ok=True)

    config = {
        "models": models_, "dataset": dataset, "dataset_description": data.description,
        "train_size": len(data.train_images), "test_size": len(data.test_images),
        "valid_size": data.sizes["valid"],
        "image_shape": list(data.image_shape), "budget": budget, "budget_resolved": asdict(parse_budget(budget)),
        "early_stopping": early_stopping, "seeds": seeds, "device": str(torch_device),
        "data_root": str(data_root) if data_root else None,
        "throughput_cap_s": throughput_cap_s, "fidelity_samples": fidelity_samples or len(data.test_images),
        "eval_size": min(eval_size or len(data.test_images), len(data.test_images)),
        "started": datetime.now().isoformat(timespec="seconds"), "versions": results.package_versions(),
        "git_commit": results.git_commit(), "hardware": results.hardware(torch_device),
        "datasets_known": dataset_summaries(),
        "model_args": model_args, "model_settings": model_settings,
    }
    outcomes = _prepare_shared(config, data, torch_device, out, progress)
    results.write_json(out / "config.json", config)
    if outcomes:
        results.write_tables(out, outcomes)
    started = time.perf_counter()
    for model_name in models_:
        for seed in seeds:
            job = Job(model_name, dataset, seed, budget, str(torch_device), str(out), data_root, progress,
                      throughput_cap_s, fidelity_samples, eval_size, early_stopping=early_stopping,
                      model_args=model_args.get(model_name, {}))
            outcome = run_isolated(job) if isolate else run_job(job)
            outcomes.append(asdict(outcome) if not isinstance(outcome, dict) else outcome)
            _print_outcome(outcomes[-1])
            results.write_tables(out, outcomes)  # after every job: nothing computed is lost
    if scaling:
        _scaling_study(out, models_, torch_device, scaling_batches(budget))
    config["wall_seconds"] = round(time.perf_counter() - started, 1)
    results.write_json(out / "config.json", config)
    from bench import report
    report.render(out)
    return out, outcomes


def _prepare_shared(config: dict, data, device, out: Path, progress: bool) -> list[dict]:
    """Work shared by all jobs: the evaluation classifier (its accuracy goes into ``config``) and the
    ``data`` rows' outcomes (real held-out images scored as if they were samples)."""
    from bench import fidelity

    return fidelity.prepare_run(config, data, device, out, progress)


def _scaling_study(out: Path, model_names: list[str], device, batches=None) -> None:
    """The sampling-cost scaling study (untrained models, seconds) into the run's folder, for the report.
    A failure here is printed and leaves the run's results as they are."""
    from bench import scaling

    try:
        scaling.study_into(out, model_names, device, **({"batches": batches} if batches else {}))
    except Exception as exc:  # the models' own results are already on disk
        print(f"scaling study failed: {type(exc).__name__}: {exc}", flush=True)


def _print_outcome(o: dict):
    job = o["job"]
    line = f"[{o['status']}] {job['model']} seed {job['seed']} ({o['wall_seconds']:.1f}s)"
    if o["reason"]:
        line += f": {o['reason']}"
    print(line, flush=True)
