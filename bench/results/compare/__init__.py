"""Regression tracking: compare a run with a stored baseline (``bench compare``, ``bench baseline``).

A baseline (``results/baselines/<name>.json``) holds, per model, the mean over seeds of every metric
of one run (throughput one value per batch size, ``sample_throughput@256``), each job's status, the
tolerances, and what makes two runs comparable (dataset, budget, seeds, device, evaluation sample count).
``compare`` prints one table row per (model, metric[, batch]) with a verdict and exits

    0  nothing regressed beyond its tolerance;
    1  a gated metric got worse by more than its tolerance, or a model that finished in the baseline
       diverged or failed now;
    2  unusable input (missing files, a baseline of another dataset, budget, seed set or device).

Each metric has a direction (lower or higher is better) and a tolerance: the change in the bad
direction that is still noise, ``max(rel * |baseline|, abs)``. Defaults follow each metric's noise.
Quality metrics under a step budget on a CPU with fixed seeds repeat almost exactly, so their band is
tight; speed on a shared machine varies by a factor of two, so throughput only fails below 0.3x of the
baseline. Informational metrics (parameter count, what the budget bought, ``train_seconds``: under a
step budget it is ``train_examples / train_throughput`` and would count the same slowdown twice; under
a time budget it is the budget itself) are shown and never gate.

Tolerances come from, last one winning: the defaults below, the baseline file's ``tolerances``, and
``--tolerance METRIC=TOL`` where TOL is a relative band (``0.1`` or ``10%``), an absolute one in the
metric's unit (``abs:0.02``), or ``off`` (show, never gate).

Modules: ``runs`` (reading a stored run), ``baseline`` (the baseline file), ``rules`` (tolerances
from the metric registry and ``--tolerance``), ``judge`` (verdicts), ``render`` (text, JUnit, Markdown,
JSON). The command bodies live in ``bench.cli``.
"""
from bench.results.compare.baseline import BASELINE_FORMAT, build_baseline, read_baseline, write_baseline  # noqa: F401
from bench.results.compare.judge import Row, check_comparable, compare, context_notes, judge  # noqa: F401
from bench.results.compare.render import FORMATS, render, summary_line, to_json, to_junit, to_markdown  # noqa: F401
from bench.results.compare.rules import DEFAULT_RULES, parse_tolerance, resolve_rules  # noqa: F401
from bench.results.compare.runs import BATCH_SEPARATOR, load_run, split_key  # noqa: F401
from bench.evaluate.metrics import Rule, rule_for  # noqa: F401
