"""One run's configuration: the object that the command line, a YAML file and the Python API all build,
that ``run_suite`` takes whole, that ``config.json`` records (``run_config``) and that the resume check
compares.

A setting is one field here. Its metadata carries its flag and help (``bench run`` builds its options from
them, and a ``--config`` file takes the same names), and, for a setting that changes what a run measures,
the words the resume check uses when a folder holds another value. Settings without those words say how
the run goes (workers, executor, progress bars), not what it measures: a folder may be resumed with others.
Adding a setting means adding its field here and reading it where it acts.

``resolved`` fills what the defaults leave open from the budget and the dataset (the test images scored,
the samples for FID, the throughput cap, the device), so that two invocations that mean the same run
compare equal whatever their spelling.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from bench.config.budgets import (DEFAULT_CHECKPOINT_EVERY, default_eval_size, parse_budget, scaling_batches,
                                  throughput_cap)
from bench.config.errors import UserError


def setting(default=None, *, help: str, flag: str | None = None, compared: str | None = None,
            action: str | None = None, factory=None, **argparse_options):
    """A field with its command-line flag (``--name`` unless given), help, and resume-check words."""
    metadata = {"help": help, "flag": flag, "compared": compared, "action": action, "argparse": argparse_options}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def csv_list(text: str) -> list[str]:
    """``a, b,c`` -> [a, b, c]: how every comma-separated option is read."""
    return [part.strip() for part in str(text).split(",") if part.strip()]


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in csv_list(text)]
    except ValueError:
        raise UserError(f"--seeds {text!r}: give comma-separated integers, e.g. 0,1,2") from None


@dataclass(frozen=True)
class RunConfig:
    # what the run measures
    models: tuple[str, ...] = setting((), flag="--models", help="comma-separated model names (see `list`); or --all")
    dataset: str = setting("mnist5k", help="dataset name (default: mnist5k, no download)", compared="dataset")
    budget: str = setting("default", compared="budget",
                          help="smoke | default | full, or an amount: 500steps, 90s, 3epochs (default: default)")
    seeds: tuple[int, ...] = setting((0,), help="comma-separated seeds (default: 0)")
    device: str = setting("auto", compared="device", help="auto, cpu or cuda (default: auto)")
    data_root: str | None = setting(None, compared="data root",
                                    help="where downloaded datasets live (default: $BENCH_DATA_ROOT or the cache)")
    fidelity_samples: int | None = setting(None, flag="--fid-samples", compared="samples for FID",
                                           help="samples per model for FID/IS/KID/PR (default: the test split's size)")
    eval_size: int | None = setting(None, compared="test images scored",
                                    help="test images scored for likelihood (default: the whole test split; smoke: 200)")
    throughput_cap_s: float | None = setting(None, flag="--throughput-cap", compared="throughput cap (s)",
                                             help="skip a sampling batch size whose projected time exceeds this many "
                                                  "seconds (default 20; smoke: 8)")
    early_stopping: bool = setting(False, compared="early stopping", action="store_true",
                                   help="likelihood models: validation NLL after every epoch; halve the learning rate "
                                        "after an epoch without improvement, stop after 4 in a row, keep the best "
                                        "epoch's weights")
    model_args: dict = setting(factory=dict, flag="--model-args", metavar="MODEL:KEY=VALUE[,KEY=VALUE]",
                               help="override a model's constructor settings, e.g. realnvp:lr=5e-4,hidden=64 "
                                    "(repeatable)")
    classifier_file: str | None = setting(None, flag="--classifier", metavar="FILE",
                                          help="score sample quality with this evaluation classifier (written by "
                                               "`bench classifier`) instead of the dataset's shipped or cached one, "
                                               "so a team shares one")
    # how the run goes
    out: str | None = setting(None, help="output folder (default: results/<timestamp>)")
    scaling: bool = setting(True, flag="--no-scaling", action="store_false",
                            help="skip the sampling-cost scaling study (untrained models at 8x8, 14x14, 28x28)")
    executor: str = setting("local", help="local (worker processes on this machine; the default) or ray (tasks on "
                                          "a Ray cluster)")
    workers: int | None = setting(None,
                                  help="jobs at once (local: worker processes, on GPUs one per device; ray: tasks in "
                                       "flight). Default: locally, as many as the cores hold jobs of $GENBENCH_THREADS "
                                       "threads (1), one per GPU on CUDA; ray: 1")
    ray_address: str | None = setting(None, help="an existing Ray cluster (e.g. 10.0.0.5:6379, or auto); default: "
                                                 "a local cluster started for the run (--executor ray)")
    isolate: bool = setting(True, flag="--in-process", action="store_false",
                            help="run jobs in this process (debugging; peak memory is then the whole run's)")
    fresh: bool = setting(False, action="store_true",
                          help="start over: delete the run already in --out (default: resume it)")
    checkpoint_every: str = setting(DEFAULT_CHECKPOINT_EVERY, metavar="INTERVAL",
                                    help="save training checkpoints this often, e.g. 300s, 10min or 500steps "
                                         "(default 300s)")
    progress: bool = setting(True, flag="--no-progress", action="store_false", help="no progress bars")

    def __post_init__(self):
        # one spelling of each value, whichever front end built it: tuples for lists, plain types for numbers
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731  (frozen)
        set_("models", tuple(csv_list(self.models) if isinstance(self.models, str) else self.models))
        seeds = self.seeds
        set_("seeds", tuple(_seeds(seeds) if isinstance(seeds, str) else [seeds] if isinstance(seeds, int) else seeds))
        set_("model_args", {m: dict(s) for m, s in (self.model_args or {}).items()})
        for name in ("dataset", "budget", "device", "data_root", "out", "classifier_file", "ray_address",
                     "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                set_(name, str(value))

    # --- building it --------------------------------------------------------------------------
    @classmethod
    def from_options(cls, **options) -> "RunConfig":
        """From keywords (the Python API) or a mapping (``config.json``): an unknown name is refused."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise UserError(f"unknown run setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                            f"known settings: {', '.join(sorted(known))}")
        return cls(**options)

    def to_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_json(cls, config: dict) -> "RunConfig":
        """The run configuration a ``config.json`` records; a folder written before it was recorded gives
        one from the keys it has (the settings that decide what it measured)."""
        if "run_config" in config:
            return cls.from_options(**config["run_config"])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls.from_options(**{k: v for k, v in config.items() if k in known and k not in ("executor",)})

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    # --- checking and resolving ----------------------------------------------------------------
    def check(self) -> None:
        """Refuse, before any work starts, what cannot run: named, with the fix (the executor's options are
        checked by ``bench.run.executors.check_options``)."""
        parse_budget(self.budget)  # a malformed budget
        if not self.models:
            raise UserError("say which models to run: --all, or --models NAME[,NAME...] (see `python -m bench list`)")
        check_sample_counts(self.fidelity_samples, self.eval_size)
        if not self.seeds:
            raise UserError("--seeds needs at least one seed, e.g. 0 or 0,1,2")
        if self.checkpoint_every:
            spec = parse_budget(self.checkpoint_every)
            if spec.kind not in ("seconds", "steps"):
                raise UserError(f"--checkpoint-every takes a time or a step count, such as 300s, 10min or 500steps; "
                                f"got {self.checkpoint_every!r}")

    def resolved(self, test_size: int, device: str) -> "RunConfig":
        """The defaults filled from the budget and the dataset's test split, and the device resolved."""
        eval_size = self.eval_size or default_eval_size(self.budget)
        return self.replace(device=str(device),
                            throughput_cap_s=self.throughput_cap_s or throughput_cap(self.budget),
                            fidelity_samples=self.fidelity_samples or eval_size or test_size,
                            eval_size=min(eval_size or test_size, test_size))

    @property
    def scaling_batches(self) -> tuple[int, ...] | None:
        return scaling_batches(self.budget)

    def differences(self, other: "RunConfig") -> list[str]:
        """The settings that change what is measured and differ, in the resume check's words."""
        mine, theirs = self.to_json(), other.to_json()
        return [f"{f.metadata['compared']} is {mine[f.name]!r} in the folder, {theirs[f.name]!r} now"
                for f in dataclasses.fields(self) if f.metadata["compared"] and mine[f.name] != theirs[f.name]]


def check_sample_counts(fidelity_samples: int | None, eval_size: int | None) -> None:
    """The evaluation's sample counts, as ``run`` and ``evaluate`` take them."""
    if fidelity_samples is not None and fidelity_samples < 2:
        raise UserError("--fid-samples must be at least 2")
    if eval_size is not None and eval_size < 1:
        raise UserError("--eval-size must be a positive number of test images")


def _seeds_flag(text: str) -> list[int]:
    import argparse

    try:
        return _seeds(text)
    except UserError as exc:  # argparse names the flag and exits 2
        raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[1]) from None


def cli_options() -> list[tuple[str, dict]]:
    """``(flag, argparse keywords)`` for every setting but ``models`` (which ``--all`` shares a group with)."""
    options = []
    for f in dataclasses.fields(RunConfig):
        if f.name == "models":
            continue
        meta = f.metadata
        kwargs = {"dest": f.name, "help": meta["help"], **meta["argparse"]}
        if meta["action"]:
            kwargs["action"] = meta["action"]
        elif f.name == "seeds":
            kwargs["type"] = _seeds_flag
        elif f.name == "model_args":
            kwargs.update(action="append", default=[])
        elif f.type in ("int", "int | None"):
            kwargs["type"] = int
        elif f.type in ("float", "float | None"):
            kwargs["type"] = float
        if f.name == "device":
            kwargs["choices"] = ["auto", "cpu", "cuda"]
        if not meta["action"] and "metavar" not in kwargs and "choices" not in kwargs:
            kwargs["metavar"] = (meta["flag"] or f.name).lstrip("-").upper().replace("-", "_")
        if "default" not in kwargs and not meta["action"]:
            kwargs["default"] = None  # None: not given; the field's own default applies (a YAML value may fill it)
        options.append((meta["flag"] or "--" + f.name.replace("_", "-"), kwargs))
    return options


def from_cli(args) -> "RunConfig":
    """The configuration a parsed ``bench run`` command line (its ``--config`` file merged in) asks for."""
    import models

    from bench.config.model_settings import parse_model_args

    names = models.names() if args.all else list(args.models or [])
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig)
             if f.name not in ("models", "model_args") and getattr(args, f.name, None) is not None}
    return RunConfig(models=tuple(names), model_args=parse_model_args(args.model_args), **given)
