"""``bench run``: resolve the configuration, run every job, write the tables and the report."""
from __future__ import annotations

import time
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path

from bench.run import executors
from bench.run import folder_lock
from bench.config import environment
from bench.config.job import load_outcomes
from bench.config import paths
from bench.results import tables as results
from bench.run import resume
from bench.config.budgets import parse_budget
from bench.config.run_config import RunConfig
from bench.data.datasets import dataset_summaries, load_dataset
from bench.config.errors import UserError
from bench.config.job import Job
from bench.run.runner import resolve_device


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


def check_tracks(model_names: list[str], data, skip: bool = False) -> tuple[list[str], dict[str, str]]:
    """The models to run and the skipped ones with their reasons. A model whose track the dataset lacks is
    skipped with ``skip`` (``--all``: every model that can model the data) and refused otherwise (named with
    ``--models``)."""
    import models

    tracks = {name: models.model_class(name).track for name in model_names}
    runnable = [name for name in model_names if tracks[name] in data.tracks]
    skipped = {name: f"a {track}-track model; {data.name} offers only the {' and '.join(data.tracks)} track"
               for name, track in tracks.items() if track not in data.tracks}
    if skipped and not skip:
        many = len(skipped) > 1
        lacking = " and ".join(sorted({tracks[name] for name in skipped}))
        raise UserError(f"model{'s' if many else ''} {', '.join(skipped)} need{'' if many else 's'} the {lacking} "
                        f"track, which dataset {data.name!r} does not have (it offers only {', '.join(data.tracks)}): "
                        f"drop {'them' if many else 'it'} from --models (--all skips such models) or use --dataset "
                        f"mnist5k or mnist")
    if not runnable:
        raise UserError(f"no model of this run can model dataset {data.name!r} (it offers only the "
                        f"{', '.join(data.tracks)} track): {'; '.join(f'{m}: {r}' for m, r in skipped.items())}")
    return runnable, skipped


class RunInterrupted(Exception):
    """The driver was asked to stop (Ctrl-C, SIGTERM); every finished job is on disk and the tables say so."""


def run_suite(run: RunConfig, skip_unsupported: bool = False) -> tuple[Path, list[dict]]:
    """Run every (model, seed) job of ``run`` not already finished in its folder, through the chosen executor,
    holding the folder's lock (``bench.run.folder_lock``): a second driver on the same folder is refused.

    ``skip_unsupported`` (``--all``, ``api.run("all")``): a model whose track the dataset lacks is left out,
    printed, and listed under ``skipped`` in ``config.json`` with the reason, instead of refusing the run."""
    from bench.config.model_settings import resolve_model_args

    run.check()  # a malformed budget, interval or sample count fails before any work starts
    executors.check_options(run.executor, run.workers, run.ray_address)
    resolve_models(list(run.models), run_all=False)
    model_settings = resolve_model_args(run.model_args, list(run.models))
    torch_device = resolve_device(run.device)
    data = load_dataset(run.dataset, run.data_root)  # a missing dataset fails before any work starts
    runnable, skipped = check_tracks(list(run.models), data, skip=skip_unsupported)
    if skipped:
        run = run.replace(models=tuple(runnable))
        model_settings = {m: s for m, s in model_settings.items() if m in runnable}
        for name, reason in skipped.items():
            print(f"skipped {name}: {reason}", flush=True)
    run = run.resolved(len(data.test_images), str(torch_device))
    out = Path(run.out) if run.out else paths.default_out_dir()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder: give a folder for the run's results")
    with folder_lock.locked(out, "run"):  # a second driver on this folder is refused
        if run.fresh:
            resume.start_fresh(out)
        previous = paths.read_json(out / "config.json") if (out / "config.json").exists() else None
        if previous and not run.classifier_file and previous.get("classifier_file"):
            run = run.replace(classifier_file=previous["classifier_file"])  # the folder's pinned classifier stays
        if previous:
            for model, settings in previous.get("sampler_args", {}).items():  # set by `bench evaluate`: kept
                if model in model_settings:
                    model_settings[model].update(settings)
            resume.refuse_changed(out, previous, run, model_settings)
        asked = run  # this invocation's jobs; the folder's run grows by them
        if previous:
            run = run.replace(models=tuple(resume.merged_list(previous.get("models"), run.models)),
                              seeds=tuple(resume.merged_list(previous.get("seeds"), run.seeds)),
                              model_args={**previous.get("model_args", {}), **run.model_args})
        config = _config_json(run, data, torch_device, model_settings, previous)
        skipped = {m: r for m, r in {**(previous or {}).get("skipped", {}), **skipped}.items() if m not in run.models}
        if skipped:
            config["skipped"] = skipped  # the report's Jobs section lists them
        _prepare_shared(config, data, torch_device, out, run.progress, check=resume.classifier_check(out, previous))
        jobs = [Job(model_name, run.dataset, seed, run.budget, run.device, str(out), run.data_root, run.progress,
                    run.throughput_cap_s, run.fidelity_samples, run.eval_size, early_stopping=run.early_stopping,
                    model_args=asked.model_args.get(model_name, {}), checkpoint_every=run.checkpoint_every,
                    sampler_args=config.get("sampler_args", {}).get(model_name, {}),
                    classifier_file=config.get("classifier_path"),
                    classifier_digest=config.get("classifier_weights_digest"))
                for model_name in asked.models for seed in asked.seeds]
        if run.workers is None:  # not given: as many jobs at once as the cores (or GPUs) hold
            run = run.replace(workers=executors.default_workers(run.executor, str(torch_device), len(jobs)))
        _warn_if_oversubscribed(run.budget, run.workers if run.executor == "local" and run.isolate else 1)
        plan = resume.plan(jobs)
        if previous:
            print(f"resuming {out}: {plan.describe()}", flush=True)
        runner = executors.create(run.executor if run.isolate else "in-process", workers=run.workers,
                                  device=run.device, address=run.ray_address)
        config["executor"] = runner.describe()
        config.setdefault("invocations", []).append(
            {"started": datetime.now().isoformat(timespec="seconds"), **config["executor"], "kept": plan.kept,
             "continued": plan.continuing, "redone": plan.redone, "ran": [job.key for job in plan.todo]})
        paths.write_json(out / "config.json", config)
        _write_tables(out)
        started = time.perf_counter()
        _execute(out, config, runner, plan.todo, started, "run the same command again to resume (interrupted "
                                                           "jobs continue from their checkpoints)")
        if run.scaling and not (out / "scaling.csv").exists():  # a resumed run keeps the study it already has
            _scaling_study(out, list(run.models), torch_device, run.scaling_batches)
        _finish(out, config, started)
        return out, load_outcomes(out)


def _config_json(run: RunConfig, data, torch_device, model_settings: dict, previous: dict | None) -> dict:
    """What ``config.json`` holds: the run configuration whole (``run_config``), its settings again at the top
    for the readers (report, compare), and the facts of the run (data sizes, versions, hardware)."""
    config = {
        "models": list(run.models), "dataset": run.dataset, "dataset_description": data.description,
        "train_size": len(data.train_images), "test_size": len(data.test_images), "valid_size": data.sizes["valid"],
        "image_shape": list(data.image_shape), "budget": run.budget, "budget_resolved": asdict(parse_budget(run.budget)),
        "early_stopping": run.early_stopping, "seeds": list(run.seeds), "device": run.device,
        "data_root": run.data_root, "throughput_cap_s": run.throughput_cap_s,
        "fidelity_samples": run.fidelity_samples, "eval_size": run.eval_size,
        "started": (previous or {}).get("started") or datetime.now().isoformat(timespec="seconds"),
        "versions": environment.package_versions(), "git_commit": environment.git_commit(),
        "git_commit_time": environment.git_commit_time(),
        "hardware": environment.hardware(torch_device), "datasets_known": dataset_summaries(),
        "model_args": run.model_args, "model_settings": {**(previous or {}).get("model_settings", {}), **model_settings},
        "classifier_file": run.classifier_file, "run_config": run.to_json(),
    }
    if data.verified is not None:  # the files' digests were checked: the published data or not
        config["dataset_verified"] = data.verified
    if previous:
        config.update(invocations=previous.get("invocations", []), sampler_args=previous.get("sampler_args", {}))
    return config


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
        config = paths.read_json(out / "config.json")
        finished = [o for o in load_outcomes(out) if o["job"]["model"] != "data" and o["status"] == "ok"]
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
        from bench.config.model_settings import parse_sampler_args

        samplers = parse_sampler_args(sampler_args or [], sorted({o["job"]["model"] for o in finished}))
        archive = _archive(out)
        config.update(changes)
        if classifier_file:  # rescored by another classifier: the run's classifier from now on
            config["classifier_file"] = str(classifier_file)
        # the run's configuration from now on: a later `bench run` on the folder resumes with these settings
        config["run_config"] = RunConfig.from_json(config).replace(
            **changes, classifier_file=config.get("classifier_file")).to_json()
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
        paths.write_json(out / "config.json", config)
        started = time.perf_counter()
        _execute(out, config, runner, jobs, started, f"run `bench evaluate {out}` again to finish")
        _finish(out, config, started)
        return out, load_outcomes(out)


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


def _warn_if_oversubscribed(budget: str, workers: int) -> None:
    """A time budget buys each job the steps its share of the cores allows: more workers than cores
    change what a job trains, not only how fast the run ends."""
    import os

    from bench.config.job import job_threads

    cores = os.cpu_count() or 1
    if parse_budget(budget).kind == "seconds" and workers * job_threads() > cores:
        print(f"note: {workers} workers x {job_threads()} thread(s) on {cores} cores: under a time budget each "
              f"job trains less than it would alone; use --workers {max(1, cores // job_threads())} or a step, "
              f"epoch or FLOP budget", flush=True)


def _job_done(out: Path, outcome: dict) -> None:
    _print_outcome(outcome)
    _write_tables(out)  # after every job, from the files: the tables always say what is on disk


def _write_tables(out: Path) -> None:
    outcomes = load_outcomes(out)
    if outcomes:
        results.write_tables(out, outcomes)


def _finish(out: Path, config: dict, started: float) -> None:
    from bench.results import report

    config["invocations"][-1]["wall_seconds"] = round(time.perf_counter() - started, 1)
    config["wall_seconds"] = round(sum(i.get("wall_seconds", 0) for i in config["invocations"]), 1)
    paths.write_json(out / "config.json", config)
    _write_tables(out)
    if (out / "metrics.csv").exists():
        report.render(out)


def _prepare_shared(config: dict, data, device, out: Path, progress: bool, check=None) -> list[dict]:
    """Work shared by all jobs: the evaluation classifier (its accuracy goes into ``config``) and the
    ``data`` rows' outcomes (real held-out images scored as if they were samples)."""
    from threadpoolctl import threadpool_limits

    from bench.config.job import job_threads
    from bench.evaluate import sample_quality

    with threadpool_limits(limits=job_threads()):  # numpy's BLAS as in the jobs (bench.config.job.limit_threads)
        return sample_quality.prepare_run(config, data, device, out, progress, check=check)


def _scaling_study(out: Path, model_names: list[str], device, batches=None) -> None:
    """The sampling-cost scaling study (untrained models, seconds) into the run's folder, for the report.
    A failure here is printed and leaves the run's results as they are."""
    try:
        study_into(out, model_names, device, **({"batches": batches} if batches else {}))
    except Exception as exc:  # the models' own results are already on disk
        print(f"scaling study failed: {type(exc).__name__}: {exc}", flush=True)


def study_into(out: Path, names: list[str], device, sizes=None, batches=None):
    """The sampling-cost study (``bench scaling``, and a run's own): measure every model at every size and
    batch, then write the study's files into ``out``."""
    import numpy as np
    import torch

    from bench.evaluate import sampling_cost
    from bench.results import report
    from bench.results.sampling_cost_tables import write_study

    sizes = list(sizes or sampling_cost.DEFAULT_SIZES)
    batches = batches or sampling_cost.DEFAULT_BATCHES
    started_at, started = datetime.now().isoformat(timespec="seconds"), time.perf_counter()
    batches = [int(batches)] if np.isscalar(batches) else [int(b) for b in batches]
    gemm = sampling_cost.gemm_rate(device)
    timings, fits, skipped = sampling_cost.run_study(names, sizes, batches, device, gemm=gemm)
    meta = {"models": names, "sizes": sizes, "batches": batches, "device": str(device),
            "started": started_at, "gemm": gemm,
            "wall_seconds": round(time.perf_counter() - started, 1), "versions": environment.package_versions(),
            "git_commit": environment.git_commit(),
            # the study times in this process: its own thread count, not the jobs' (GENBENCH_THREADS)
            "hardware": {**environment.hardware(device), "torch_threads": torch.get_num_threads()}}
    write_study(out, timings, fits, skipped, meta)
    report.render_study(out)
    return timings, fits, skipped, meta


def _print_outcome(o: dict):
    job = o["job"]
    line = f"[{o['status']}] {job['model']} seed {job['seed']} ({o['wall_seconds']:.1f}s)"
    if o["reason"]:
        line += f": {o['reason']}"
    print(line, flush=True)
