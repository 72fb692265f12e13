"""Each metric's rule (direction, tolerance, gated) from the registry, and ``--tolerance`` overrides."""
from __future__ import annotations

import math
from dataclasses import replace

from bench.evaluate import metrics as metric_registry
from bench.config.errors import UserError
from bench.evaluate.metrics import Rule, rule_for

# Rules (direction, tolerance, gated) are declared with each metric in ``bench.evaluate.metrics``.
DEFAULT_RULES: dict[str, Rule] = {name: metric.rule for name, metric in metric_registry.REGISTRY.items()}


def parse_tolerance(text: str) -> tuple[str, dict]:
    """``METRIC=0.1`` / ``METRIC=10%`` (relative), ``METRIC=abs:0.02`` (absolute), ``METRIC=off``."""
    metric, sep, spec = text.partition("=")
    metric, spec = metric.strip(), spec.strip().lower()
    hint = "use METRIC=0.1 or METRIC=10% (relative), METRIC=abs:0.02 (in the metric's unit) or METRIC=off"
    if not sep or not metric or not spec:
        raise UserError(f"malformed --tolerance {text!r}: {hint}")
    if spec == "off":
        return metric, {"gated": False}
    absolute = spec.startswith("abs:")
    number = spec[4:] if absolute else spec
    try:
        value = float(number[:-1]) / 100 if number.endswith("%") else float(number)
    except ValueError:
        raise UserError(f"malformed --tolerance {text!r}: {hint}") from None
    if not math.isfinite(value) or value < 0:
        raise UserError(f"--tolerance {text!r}: a tolerance is a non-negative number; {hint}")
    return metric, ({"abs": value, "gated": True} if absolute else {"rel": value, "gated": True})


def resolve_rules(baseline: dict, overrides: list[str]) -> dict[str, Rule]:
    rules: dict[str, Rule] = {}
    for metric, stored in (baseline.get("tolerances") or {}).items():
        default = rule_for(metric)
        try:
            rules[metric] = replace(default, **{k: stored[k] for k in ("direction", "rel", "abs", "gated")
                                                if k in stored})
        except TypeError:
            raise UserError(f"the baseline's tolerance for {metric!r} is malformed: {stored!r}") from None
    for text in overrides:
        metric, change = parse_tolerance(text)
        rule = rules.get(metric, rule_for(metric))
        if change.get("gated") and rule.direction is None:
            raise UserError(f"--tolerance {text!r}: {metric} has no better direction and is never gated")
        rules[metric] = replace(rule, **change)
        for qualified in [k for k in rules if k.split("@")[0] == metric and k != metric]:
            rules[qualified] = replace(rules[qualified], **change)  # sample_throughput=off: the steps curve's too
    return rules


def rule_of(rules: dict[str, Rule], metric: str) -> Rule:
    """The rule that judges ``metric``: its own, else its base metric's (``fid@steps=20`` like ``fid``),
    else the registry's."""
    return rules.get(metric) or rules.get(metric.split("@")[0]) or rule_for(metric)
