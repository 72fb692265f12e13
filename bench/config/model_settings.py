"""Per-model settings and configuration files: ``--model-args`` and ``--config``.

``--model-args realnvp:lr=5e-4,hidden=64`` (repeatable, one model per use) overrides constructor
arguments of a registered model; ``--config FILE.yaml`` holds the ``run`` flags as keys (``models``,
``budget``, ``seeds``, ``model_args: {realnvp: {lr: 5e-4}}``, ...), and a flag given on the command line
wins over the file. Unknown models, unknown settings and unknown keys are the user's to fix (exit 2).
"""
from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

from bench.config.errors import UserError


def parse_value(text: str):
    """``5e-4`` -> 0.0005, ``6`` -> 6, ``true`` -> True, ``(32, 64)`` -> (32, 64), else the string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()


def parse_model_args(items: list[str]) -> dict[str, dict]:
    """``["realnvp:lr=5e-4,hidden=64", "vae-z2:lr=1e-3"]`` -> ``{"realnvp": {"lr": 5e-4, "hidden": 64}, ...}``."""
    out: dict[str, dict] = {}
    for item in items:
        model, sep, pairs = item.partition(":")
        if not sep or not model.strip() or not pairs.strip():
            raise UserError(f"--model-args {item!r}: use MODEL:KEY=VALUE[,KEY=VALUE...], e.g. realnvp:lr=5e-4")
        # split at the commas that start a new KEY=, so a value may itself hold commas: channels=(16, 32)
        for pair in filter(None, (p.strip() for p in re.split(r",(?=\s*[A-Za-z_]\w*\s*=)", pairs))):
            key, eq, value = pair.partition("=")
            if not eq or not key.strip():
                raise UserError(f"--model-args {item!r}: {pair!r} is not KEY=VALUE")
            out.setdefault(model.strip(), {})[key.strip()] = parse_value(value)
    return out


def parse_sampler_args(items: list[str], finished_models: list[str]) -> dict[str, dict]:
    """``--sampler-args ddpm:sampling_steps=20``: like ``--model-args``, limited to the settings a model
    declares as the sampler's only (``sampler_settings``), so the trained weights still apply."""
    import models

    parsed = parse_model_args([i.replace("--sampler-args", "") for i in items])
    for model, settings in parsed.items():
        if model not in finished_models:
            raise UserError(f"--sampler-args {model}: the run has no finished job of {model!r}; its finished models: "
                            f"{', '.join(finished_models) or 'none'}")
        allowed = models.model_class(model).sampler_settings
        wrong = sorted(set(settings) - set(allowed))
        if wrong:
            raise UserError(f"--sampler-args {model}: {', '.join(wrong)} would change training, not only sampling; "
                            f"{model}'s sampler settings are: {', '.join(allowed) or 'none'} (retrain with "
                            f"`bench run --model-args` in a new folder instead)")
    return parsed


def constructor_settings(name: str) -> dict:
    """The constructor arguments a registered model accepts, with the values it gets by default."""
    import models

    factory = models.registry._get(name)
    signature = inspect.signature(factory.func.__init__)
    settings = {p: v.default for p, v in signature.parameters.items()
                if p not in ("self", "image_shape") and v.kind is not v.VAR_KEYWORD
                and v.default is not inspect.Parameter.empty}
    settings.update(factory.keywords)
    return settings


def resolve_model_args(model_args: dict[str, dict], run_models: list[str]) -> dict[str, dict]:
    """Validate the overrides against the registry; returns each run model's full resolved settings."""
    import models

    for name, overrides in model_args.items():
        if name not in models.names():
            raise UserError(f"--model-args names unknown model {name!r}; known models: {', '.join(models.names())}")
        known = constructor_settings(name)
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise UserError(f"--model-args: {name} has no setting {', '.join(map(repr, unknown))}; "
                            f"its settings: {', '.join(sorted(known)) or 'none'}")
        if name not in run_models:
            raise UserError(f"--model-args names {name!r}, which this run does not include; add it to --models")
        for key, value in overrides.items():
            check_type(name, key, value, known[key])
    return {name: {**constructor_settings(name), **model_args.get(name, {})} for name in run_models}


def _kind(default) -> tuple[tuple[type, ...], str] | None:
    """The types a setting accepts, judged by its default (None: any), and how the message names them."""
    if default is None:
        return None
    if isinstance(default, bool):
        return (bool,), "true or false"
    if isinstance(default, int):
        return (int,), "a whole number"
    if isinstance(default, float):
        return (int, float), "a number"
    if isinstance(default, str):
        return (str,), "a word"
    if isinstance(default, (tuple, list)):
        return (tuple, list), "a tuple such as (16, 32)"
    return None


def check_type(model: str, key: str, value, default) -> None:
    """A setting whose value is not of its default's type is the user's to fix, before any work starts
    (``fvsbn:lr=abc`` would otherwise fail inside the job with a TypeError)."""
    kind = _kind(default)
    if kind is None:
        return
    types, words = kind
    wrong = not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
    if isinstance(value, float) and int in types and float not in types and value.is_integer():
        wrong = True  # hidden=64.0 for a layer width: say so rather than truncate
    if wrong:
        raise UserError(f"--model-args {model}:{key}={value!r}: {key} takes {words} (its default is {default!r}); "
                        f"e.g. {model}:{key}={default!r}")


def read_config(path: str | Path, allowed: set[str]) -> dict:
    """A YAML (or JSON) mapping of ``run`` flags; keys use the flags' names (``fid-samples`` or ``fid_samples``)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"--config {path}: no such file")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"--config {path} is not valid YAML ({str(exc).splitlines()[0]}); fix the file") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UserError(f"--config {path} must hold a mapping of run options (such as `budget: smoke`)")
    config = {str(k).replace("-", "_"): v for k, v in loaded.items()}
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise UserError(f"--config {path}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                        f"known keys: {', '.join(sorted(allowed))}")
    return config
