"""Running again on the same folder: what is already done, what continues, what is refused.

A run's folder is its state. ``bench run`` on a folder that holds a run
- refuses a changed configuration (budget, dataset, evaluation settings, a model's settings, the
  evaluation classifier), naming each difference: mixing them would put numbers that do not compare in one
  table (``--fresh`` starts over, ``bench evaluate`` re-measures with new evaluation settings);
- accepts new models or seeds: the run grows (a grid gains a seed);
- keeps every finished job whose files check out (its outcome parses, its configuration hash is this
  job's, its checkpoint matches the digest recorded with it), continues an interrupted job from its
  checkpoint (``bench.run.runner``), and runs again a job whose files are missing or corrupt.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from bench.train import checkpoints
from bench.config.errors import UserError
from bench.config.job import Job, config_hash
from bench.config.run_config import RunConfig

FINISHED = ("ok", "diverged")


def differences(previous: dict, run: RunConfig, model_settings: dict) -> list[str]:
    """What differs between the folder's run (its ``config.json``) and this invocation's: the settings that
    change what is measured (``RunConfig.differences``) and each model's resolved settings. Models and seeds
    may grow."""
    diffs = RunConfig.from_json(previous).differences(run)
    before, now = previous.get("model_settings", {}), _as_json(model_settings)
    for model in sorted(set(before) & set(now)):
        if before[model] != now[model]:
            changed = sorted(k for k in set(before[model]) | set(now[model])
                             if before[model].get(k) != now[model].get(k))
            diffs += [f"{model} setting {k} is {before[model].get(k)!r} in the folder, {now[model].get(k)!r} now"
                      for k in changed]
    return diffs


def _as_json(value):
    return json.loads(json.dumps(value, default=str))  # tuples and lists alike, as the file has them


def refuse_changed(out: Path, previous: dict, run: RunConfig, model_settings: dict) -> None:
    diffs = differences(previous, run, model_settings)
    if diffs:
        raise UserError(f"{out} holds a run with another configuration: {'; '.join(diffs)}. Run again with the "
                        f"folder's settings to resume it, add --fresh to start it over, give another --out, or "
                        f"use `python -m bench evaluate {out}` to re-measure its models with new evaluation settings")


def classifier_check(out: Path, previous: dict | None):
    """A check for ``sample_quality.prepare_run``: the folder's models were scored by one classifier; so must the rest."""
    def check(config: dict) -> None:
        before = (previous or {}).get("classifier_weights_digest")
        now = config.get("classifier_weights_digest")
        if before and now and before != now:
            raise UserError(f"{out} was scored with evaluation classifier {before}; this machine's is {now} (its "
                            f"code, data or training changed). Every model of a run must be scored by one "
                            f"classifier: add --fresh to start over, or `python -m bench evaluate {out}` to "
                            f"re-score every finished model with the new one")
    return check


def merged_list(before: list, now: list) -> list:
    """The folder's list, then what this invocation adds (a grid grows by models or seeds)."""
    return list(dict.fromkeys(list(before or []) + list(now)))


@dataclass
class Plan:
    kept: list[str] = field(default_factory=list)  # finished earlier, files intact
    todo: list[Job] = field(default_factory=list)
    continuing: dict[str, str] = field(default_factory=dict)  # key -> from what (a checkpoint)
    redone: dict[str, str] = field(default_factory=dict)  # key -> why the earlier files were not kept

    def describe(self) -> str:
        parts = [f"{len(self.kept)} finished job(s) kept", f"{len(self.todo)} to run"]
        if self.continuing:
            parts.append(f"{len(self.continuing)} continuing from checkpoints ({', '.join(self.continuing)})")
        if self.redone:
            parts.append("redone: " + "; ".join(f"{k} ({why})" for k, why in self.redone.items()))
        return ", ".join(parts)


def plan(jobs: list[Job]) -> Plan:
    result = Plan()
    for job in jobs:
        done, why = finished(job)
        if done:
            result.kept.append(job.key)
            continue
        result.todo.append(job)
        if why:
            result.redone[job.key] = why
        saved = _checkpoint_state(job)
        if saved:
            result.continuing[job.key] = saved
    return result


def finished(job: Job) -> tuple[bool, str]:
    """(True, "") when the job's files show it finished under this configuration; else (False, why not),
    the reason empty for a job that never started."""
    path = job.outcome_path
    if not path.exists():
        return False, ""
    try:
        outcome = json.loads(path.read_text())
        status, info = outcome["status"], outcome["info"]
    except (ValueError, KeyError, TypeError):
        return False, "its outcome file is corrupt"
    if status not in FINISHED:
        return False, f"it ended {status}"
    if info.get("config_hash") != config_hash(job):
        return False, "its outcome was measured under another configuration"
    if status == "ok":
        checkpoint = Path(job.out) / info.get("checkpoint", "missing")
        if not checkpoint.is_file():
            return False, "its checkpoint is missing"
        if checkpoints.file_digest(checkpoint) != info.get("checkpoint_digest"):
            return False, "its checkpoint does not match the digest recorded with it"
        grid = info.get("sample_grid")
        if grid and not (Path(job.out) / grid).is_file():
            return False, "its sample grid is missing"
    return True, ""


def _checkpoint_state(job: Job) -> str:
    """A short description of the checkpoint a job will start from, or "" when there is none."""
    if not job.checkpoint_path.exists():
        return ""
    try:
        payload = checkpoints.peek(job.checkpoint_path)
    except checkpoints.CheckpointError:
        return ""  # the runner notes it and starts again
    if payload["complete"]:
        return "training finished, measured again"
    return f"step {payload['trainer']['steps']}"


def start_fresh(out: Path) -> None:
    """``--fresh``: remove the run in ``out`` (only a folder that holds a run's config.json), all but the
    lock file the caller holds (``bench.run.folder_lock``: deleting it would let a second driver lock a new one)."""
    from bench.run.folder_lock import LOCK_NAME

    out = Path(out)
    if not (out / "config.json").exists():
        return
    for entry in out.iterdir():
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
