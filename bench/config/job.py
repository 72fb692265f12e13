"""What a job is and what it leaves: the unit of work the runner hands to a worker, and its outcome.

Kept apart from the runner so that the measurements that build outcomes of their own (the ``data``
rows of real images) and the tables that read them depend on this small module, not on the runner.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import MISSING, asdict, dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path

from bench.config.errors import UserError


@dataclass
class Job:
    model: str
    dataset: str
    seed: int
    budget: str
    device: str
    out: str
    data_root: str | None = None
    progress: bool = True
    throughput_cap_s: float = 20.0
    fidelity_samples: int | None = None  # None: the size of the test split
    eval_size: int | None = None  # test images scored for likelihood; None: the whole test split
    early_stopping: bool = False  # likelihood models: keep the epoch with the best validation NLL
    model_args: dict = field(default_factory=dict)  # constructor overrides (--model-args)
    sampler_args: dict = field(default_factory=dict)  # sampler-only overrides (evaluate --sampler-args)
    # How the job runs, not what it measures (left out of ``config_hash``):
    checkpoint_every: str | None = None  # periodic training checkpoints, e.g. "300s" or "50steps"; None: none
    classifier_file: str | None = None  # the run's evaluation classifier, shipped by the driver
    classifier_digest: str | None = None  # ... and the weights digest every worker checks it against
    evaluate_only: bool = False  # re-measure from the finished checkpoint, no training (``bench evaluate``)

    @property
    def key(self) -> str:
        return f"{self.model}__{self.dataset}__seed{self.seed}"

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.out) / "checkpoints" / f"{self.key}.pt"

    @property
    def outcome_path(self) -> Path:
        return Path(self.out) / "jobs" / f"{self.key}.json"


# Fields that say how a job runs or where it writes, not what it measures: a finished job is reused when
# every other field is the same (``config_hash``).
RUN_ONLY_FIELDS = ("out", "progress", "checkpoint_every", "classifier_file", "evaluate_only")


# Fields that decide the trained weights: a checkpoint serves any job that agrees on them, whatever its
# evaluation settings (``bench evaluate`` re-measures with more samples from the same checkpoint).
TRAINING_FIELDS = ("model", "dataset", "seed", "budget", "device", "data_root", "early_stopping", "model_args")


def _digest(fields: dict) -> str:
    """A field at its default is left out, so that a field added to ``Job`` later (with a default that keeps
    today's behaviour) does not change the hashes of the runs already on disk."""
    defaults = {f.name: f.default if f.default is not MISSING else f.default_factory()
                for f in dataclass_fields(Job) if f.default is not MISSING or f.default_factory is not MISSING}
    kept = {k: v for k, v in fields.items() if k not in defaults or v != defaults[k]}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_hash(job: "Job | dict") -> str:
    """A digest of what the job measures (model, data, seed, budget, evaluation settings, classifier)."""
    fields = asdict(job) if not isinstance(job, dict) else dict(job)
    return _digest({k: v for k, v in fields.items() if k not in RUN_ONLY_FIELDS})


def training_hash(job: "Job | dict") -> str:
    """A digest of what decides the job's trained weights (the checkpoint's key)."""
    fields = asdict(job) if not isinstance(job, dict) else dict(job)
    return _digest({k: fields[k] for k in TRAINING_FIELDS if k in fields})


@dataclass
class JobOutcome:
    job: dict
    status: str = "ok"  # ok | diverged | failed | interrupted
    reason: str = ""
    rows: list[dict] = field(default_factory=list)
    curve: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)  # model attributes, sample files, timings
    wall_seconds: float = 0.0


def save_outcome(outcome: JobOutcome, path: Path) -> None:
    """Write ``outcome`` to ``path`` atomically (a temporary file, then a rename): a reader never sees
    half a file, and a crash mid-write leaves the previous outcome intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(outcome), indent=1, default=float))
    tmp.replace(path)


# Torch threads per job. One: on the 2-core development machine, shared, a job ran its training steps
# 4 to 25x faster with 1 thread than with 2 (FVSBN, cGAN; fresh processes, medians). Override with
# $GENBENCH_THREADS (e.g. 2 on an idle multi-core machine).
THREADS_ENV = "GENBENCH_THREADS"
DEFAULT_THREADS = 1


def job_threads() -> int:
    """The torch thread count every job runs with: $GENBENCH_THREADS, else DEFAULT_THREADS."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return DEFAULT_THREADS
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"{THREADS_ENV}={value!r} is not a thread count; set it to a positive integer or unset it")
    return int(value)


def limit_threads(threads: int | None = None) -> None:
    """Run this process's torch and its numpy/scipy BLAS (OpenBLAS, MKL, OpenMP) on ``threads`` threads
    (default ``job_threads()``). The BLAS pool matters as much as torch's: numpy's OpenBLAS starts one
    thread per core, and on a loaded 2-core machine a 128 x 128 ``eigh`` (FID's bootstrap) took 0.26 s
    with its 2 threads against 0.005 s with 1 (measured; the spinning threads of two jobs fight over the
    cores), which made the bootstrap 40 s of a 43 s sample-quality step."""
    import torch
    from threadpoolctl import threadpool_limits

    threads = threads or job_threads()
    torch.set_num_threads(threads)
    threadpool_limits(limits=threads)  # applies from now on, for the rest of the process


# --- reading outcomes back -----------------------------------------------------------------------
def load_outcomes(run_dir: Path) -> list[dict]:
    """Every job outcome in the run folder, in the run's order: the ``data`` rows, then the models as
    config.json lists them (the order the user asked for, families together), then seeds."""
    run_dir = Path(run_dir)
    outcomes = [read_outcome(p) for p in sorted((run_dir / "jobs").glob("*.json"))]
    config = run_dir / "config.json"
    order = json.loads(config.read_text()).get("models", []) if config.exists() else []

    def position(o: dict):
        model = o["job"]["model"]
        rank = -1 if model == "data" else order.index(model) if model in order else len(order)
        return rank, o["job"]["seed"]

    return sorted(outcomes, key=position)


def read_outcome(path: Path) -> dict:
    """A job's outcome file; a corrupt one (half-written by hand, truncated by a full disk) becomes an outcome
    of status ``corrupt`` that names the file, so the tables and the report show the rest and mark that job.
    The next ``bench run`` on the folder runs the job again (``bench.run.resume``)."""
    try:
        outcome = json.loads(Path(path).read_text())
        if not isinstance(outcome, dict) or not {"job", "status", "rows", "info"} <= set(outcome):
            raise ValueError("not a job outcome")
        return outcome
    except (ValueError, OSError) as exc:
        reason = (f"{Path(path).parent.name}/{Path(path).name} is corrupt ({type(exc).__name__}: {exc}); "
                  f"`bench run` on this folder runs the job again")
        model, dataset, seed = _key_parts(Path(path).stem)
        return {"job": {"model": model, "dataset": dataset, "seed": seed, "budget": ""}, "status": "corrupt",
                "reason": reason, "rows": [], "curve": [], "notes": [], "info": {}, "wall_seconds": 0.0}


def _key_parts(stem: str) -> tuple[str, str, int]:
    """``fvsbn__mnist5k__seed0`` -> (fvsbn, mnist5k, 0); a name of another shape keeps what it can."""
    parts = stem.split("__")
    seed = parts[2][4:] if len(parts) > 2 and parts[2].startswith("seed") else ""
    return parts[0], parts[1] if len(parts) > 1 else "", int(seed) if seed.isdigit() else 0
