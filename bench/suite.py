"""``bench run``: resolve the configuration, run every job, write the tables and the report."""
from __future__ import annotations

import time
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path

from bench import executors, folder_lock, results, resume
from bench.budgets import DEFAULT_CHECKPOINT_EVERY, default_eval_size, parse_budget, scaling_batches, throughput_cap
from bench.data import dataset_summaries, load_dataset
from bench.errors import UserError
from bench.jobs import Job
from bench.runner import resolve_device


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


class RunInterrupted(Exception):
    """The driver was asked to stop (Ctrl-C, SIGTERM); every finished job is on disk and the tables say so."""


def run_suite(models_: list[str], dataset: str, budget: str, seeds: list[int], device: str,
              out: Path | None, data_root: str | None, progress: bool = True, isolate: bool = True,
              throughput_cap_s: float | None = None, fidelity_samples: int | None = None,
              eval_size: int | None = None, scaling: bool = True,
              early_stopping: bool = False, model_args: dict[str, dict] | None = None,
              executor: str = "local", workers: int = 1, ray_address: str | None = None,
              fresh: bool = False, checkpoint_every: str | None = DEFAULT_CHECKPOINT_EVERY,
              classifier_file: str | None = None,
              ) -> tuple[Path, list[dict]]:
    """Run every (model, seed) job not already finished in ``out``, through the chosen executor, holding
    the folder's lock (``bench.folder_lock``): a second driver on the same folder is refused."""
    from bench.settings import resolve_model_args

    parse_budget(budget)  # a malformed budget fails before any work starts
    if checkpoint_every:
        _check_interval(checkpoint_every)
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
    with folder_lock.locked(out, "run"):  # a second driver on this folder is refused
        if fresh:
            resume.start_fresh(out)
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
            "classifier_file": str(classifier_file) if classifier_file else None,
        }
        previous = results.read_json(out / "config.json") if (out / "config.json").exists() else None
        if previous and not classifier_file and previous.get("classifier_file"):
            config["classifier_file"] = previous["classifier_file"]  # the folder's pinned classifier stays
        if previous:
            for model, settings in previous.get("sampler_args", {}).items():  # set by `bench evaluate`: kept
                if model in config["model_settings"]:
                    config["model_settings"][model].update(settings)
            resume.refuse_changed(out, previous, config)
            config.update(models=resume.merged_list(previous.get("models"), models_),
                          seeds=resume.merged_list(previous.get("seeds"), seeds), started=previous.get("started"),
                          model_settings={**previous.get("model_settings", {}), **model_settings},
                          model_args={**previous.get("model_args", {}), **model_args},
                          invocations=previous.get("invocations", []), sampler_args=previous.get("sampler_args", {}))
        _prepare_shared(config, data, torch_device, out, progress, check=resume.classifier_check(out, previous))
        jobs = [Job(model_name, dataset, seed, budget, str(torch_device), str(out), data_root, progress,
                    throughput_cap_s, fidelity_samples, eval_size, early_stopping=early_stopping,
                    model_args=model_args.get(model_name, {}), checkpoint_every=checkpoint_every,
                    sampler_args=config.get("sampler_args", {}).get(model_name, {}),
                    classifier_file=config.get("classifier_path"),
                    classifier_digest=config.get("classifier_weights_digest"))
                for model_name in models_ for seed in seeds]
        _warn_if_oversubscribed(budget, workers if executor == "local" and isolate else 1)
        plan = resume.plan(jobs)
        if previous:
            print(f"resuming {out}: {plan.describe()}", flush=True)
        runner = executors.create(executor if isolate else "in-process", workers=workers, device=str(torch_device),
                                  address=ray_address)
        config["executor"] = runner.describe()
        config.setdefault("invocations", []).append(
            {"started": datetime.now().isoformat(timespec="seconds"), **config["executor"], "kept": plan.kept,
             "continued": plan.continuing, "redone": plan.redone, "ran": [job.key for job in plan.todo]})
        results.write_json(out / "config.json", config)
        _write_tables(out)
        started = time.perf_counter()
        _execute(out, config, runner, plan.todo, started, "run the same command again to resume (interrupted "
                                                           "jobs continue from their checkpoints)")
        if scaling and not (out / "scaling.csv").exists():  # a resumed run keeps the study it already has
            _scaling_study(out, models_, torch_device, scaling_batches(budget))
        _finish(out, config, started)
        return out, results.load_outcomes(out)


def _execute(out: Path, config: dict, runner, jobs: list, started: float, how_to_resume: str) -> None:
    """Run ``jobs`` through the executor, the tables rewritten after each; on Ctrl-C (and SIGTERM, which the
    command line turns into it) the workers are asked to stop (training checkpoints), the tables and report
    are written, and ``RunInterrupted``."""
    try:
        runner.run(jobs, lambda outcome: _job_done(out, outcome))
    except KeyboardInterrupt:
        for outcome in runner.stop():
            _job_done(out, outcome)
        config["invocations"][-1]["interrupted"] = True
        _finish(out, config, started)
        raise RunInterrupted(f"interrupted: the finished jobs are in {out}; {how_to_resume}") from None


EVALUATION_SETTINGS = ("fidelity_samples", "eval_size", "throughput_cap_s")
ARCHIVED = ("config.json", "metrics.csv", "summary.csv", "jobs.csv", "curves.csv", "report.md", "jobs")


def evaluate_run(run_dir, fidelity_samples: int | None = None, eval_size: int | None = None,
                 throughput_cap_s: float | None = None, models_: list[str] | None = None, executor: str = "local",
                 workers: int = 1, ray_address: str | None = None, progress: bool = True,
                 sampler_args: list[str] | None = None, classifier_file: str | None = None) -> tuple[Path, list[dict]]:
    """``bench evaluate``: measure every finished job again from its checkpoint, with no training.

    The rule: the run's tables are replaced, so that they always describe one evaluation of every model;
    the tables, outcomes and report they replace are first copied to ``history/<timestamp>/``, and
    ``config.json`` lists each evaluation with its settings (``invocations``)."""
    out = Path(run_dir)
    if not (out / "config.json").is_file():
        raise UserError(f"{out} holds no config.json: give the folder of a `bench run`")
    with folder_lock.locked(out, "evaluate"):
        config = results.read_json(out / "config.json")
        finished = [o for o in results.load_outcomes(out) if o["job"]["model"] != "data" and o["status"] == "ok"]
        unknown = sorted(set(models_ or []) - {o["job"]["model"] for o in finished})
        if unknown:
            raise UserError(f"no finished job of {', '.join(unknown)} in {out}; its finished models: "
                            f"{', '.join(sorted({o['job']['model'] for o in finished})) or 'none'}")
        chosen = [o for o in finished if not models_ or o["job"]["model"] in models_]
        if classifier_file and len(chosen) < len(finished):
            raise UserError("--classifier rescores every model of the run (one table, one classifier): drop --models")
        if not chosen:
            raise UserError(f"{out} has no finished job to evaluate: `bench run` it first")
        changes = {k: v for k, v in zip(EVALUATION_SETTINGS, (fidelity_samples, eval_size, throughput_cap_s))
                   if v is not None}
        from bench.settings import parse_sampler_args

        samplers = parse_sampler_args(sampler_args or [], sorted({o["job"]["model"] for o in finished}))
        archive = _archive(out)
        config.update(changes)
        if classifier_file:  # rescored by another classifier: the run's classifier from now on
            config["classifier_file"] = str(classifier_file)
        for model, settings in samplers.items():  # the run's sampler settings from now on, and the report's
            config.setdefault("sampler_args", {}).setdefault(model, {}).update(settings)
            config.setdefault("model_settings", {}).setdefault(model, {}).update(settings)
        device = resolve_device(config["device"])
        data = load_dataset(config["dataset"], config.get("data_root"))
        _prepare_shared(config, data, device, out, progress)
        jobs = [replace(Job(**o["job"]), **changes, out=str(out), progress=progress, evaluate_only=True,
                        sampler_args=config.get("sampler_args", {}).get(o["job"]["model"], {}),
                        classifier_file=config.get("classifier_path"),
                        classifier_digest=config.get("classifier_weights_digest")) for o in chosen]
        runner = executors.create(executor, workers=workers, device=str(device), address=ray_address)
        config.setdefault("invocations", []).append(
            {"started": datetime.now().isoformat(timespec="seconds"), "command": "evaluate", **runner.describe(),
             "settings": {**changes, **({"sampler_args": samplers} if samplers else {}),
                          **({"classifier_file": str(classifier_file)} if classifier_file else {})},
             "previous_tables": str(archive.relative_to(out)), "ran": [j.key for j in jobs]})
        results.write_json(out / "config.json", config)
        started = time.perf_counter()
        _execute(out, config, runner, jobs, started, f"run `bench evaluate {out}` again to finish")
        _finish(out, config, started)
        return out, results.load_outcomes(out)


def _archive(out: Path) -> Path:
    """Copy the tables, outcomes and report about to be replaced into ``history/<timestamp>/``."""
    import shutil

    target = out / "history" / datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    target.mkdir(parents=True)
    for name in ARCHIVED:
        source = out / name
        if source.is_dir():
            shutil.copytree(source, target / name)
        elif source.is_file():
            shutil.copy2(source, target / name)
    return target


def _check_interval(text: str) -> None:
    spec = parse_budget(text)
    if spec.kind not in ("seconds", "steps"):
        raise UserError(f"--checkpoint-every takes a time or a step count, such as 300s, 10min or 500steps; "
                        f"got {text!r}")


def _warn_if_oversubscribed(budget: str, workers: int) -> None:
    """A time budget buys each job the steps its share of the cores allows: more workers than cores
    change what a job trains, not only how fast the run ends."""
    import os

    from bench.jobs import job_threads

    cores = os.cpu_count() or 1
    if parse_budget(budget).kind == "seconds" and workers * job_threads() > cores:
        print(f"note: {workers} workers x {job_threads()} thread(s) on {cores} cores: under a time budget each "
              f"job trains less than it would alone; use --workers {max(1, cores // job_threads())} or a step, "
              f"epoch or FLOP budget", flush=True)


def _job_done(out: Path, outcome: dict) -> None:
    _print_outcome(outcome)
    _write_tables(out)  # after every job, from the files: the tables always say what is on disk


def _write_tables(out: Path) -> None:
    outcomes = results.load_outcomes(out)
    if outcomes:
        results.write_tables(out, outcomes)


def _finish(out: Path, config: dict, started: float) -> None:
    from bench import report

    config["invocations"][-1]["wall_seconds"] = round(time.perf_counter() - started, 1)
    config["wall_seconds"] = round(sum(i.get("wall_seconds", 0) for i in config["invocations"]), 1)
    results.write_json(out / "config.json", config)
    _write_tables(out)
    if (out / "metrics.csv").exists():
        report.render(out)


def _prepare_shared(config: dict, data, device, out: Path, progress: bool, check=None) -> list[dict]:
    """Work shared by all jobs: the evaluation classifier (its accuracy goes into ``config``) and the
    ``data`` rows' outcomes (real held-out images scored as if they were samples)."""
    from bench import fidelity

    return fidelity.prepare_run(config, data, device, out, progress, check=check)


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
