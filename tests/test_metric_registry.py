"""The metric registry is the one home of a metric's facts: every emitted metric is declared there, and
`list`, `compare` and the report read it."""
import json
from pathlib import Path

import pytest

from bench.results import compare
from bench.evaluate import metrics
from bench.results import report
from bench.cli import main

BASELINE = Path(__file__).resolve().parents[1] / "results" / "baselines" / "smoke-cpu.json"


def test_every_metric_of_the_committed_smoke_run_is_declared_with_its_unit():
    """The committed baseline is a smoke run of every model: each metric it holds must be declared."""
    baseline = json.loads(BASELINE.read_text())
    emitted = {key.split("@")[0] for values in baseline["values"].values() for key in values}
    undeclared = sorted(emitted - set(metrics.REGISTRY))
    assert not undeclared, f"declare these in bench/evaluate/metrics.py: {undeclared}"
    for name, unit in (baseline.get("units") or {}).items():
        if name in metrics.REGISTRY:
            assert unit in ("", metrics.REGISTRY[name].unit, None), name


def test_every_declaration_has_a_direction_a_unit_and_a_meaning():
    for m in metrics.REGISTRY.values():
        assert m.direction in ("lower", "higher", None), m.name
        assert isinstance(m.unit, str) and m.meaning.strip(), m.name
        assert m.rule.gated is False or m.direction is not None, f"{m.name}: a gated metric needs a direction"


def test_compare_list_and_report_read_the_registry(monkeypatch, capsys):
    declared = metrics.Metric("made_up_score", "widgets", metrics.Rule("higher", rel=0.2), "a test metric", 1)
    monkeypatch.setitem(metrics.REGISTRY, declared.name, declared)
    assert compare.rule_for("made_up_score") == declared.rule
    assert main(["list"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if "made_up_score" in l)
    assert "widgets" in line and "higher" in line and "-20%" in line
    monkeypatch.setitem(report.DECIMALS, "made_up_score", 1)  # the report's table is built from the registry
    assert {k for k, m in metrics.REGISTRY.items() if m.decimals is not None} - {"made_up_score"} <= set(report.DECIMALS)


def test_a_metric_cannot_be_declared_twice():
    with pytest.raises(ValueError, match="twice"):
        metrics.declare("fid", "", metrics.INFO, "again")
