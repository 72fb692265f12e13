"""Regression tracking over time (`bench history`, `bench compare --history`): the store, the gate against a
history, step detection across stored runs, the terminal table and the dashboard.

The runs are copies of the stored real smoke run (tests/fixtures/stored-run) with a new commit and start
time, and with chosen figures perturbed, so that each test states the noise and the change it judges.
"""
import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.cli import main
from bench.results.history import gate
from bench.results.history.store import metric_rows, open_store, series_key

FIXTURE = Path(__file__).parent / "fixtures" / "stored-run"
PERTURBED = ("fid", "test_bpd")


def copy_run(folder, number: int, change=None, config_changes=None):
    """The stored smoke run as run ``number`` of a history: its own commit and start time; ``change(frame)``
    edits its metrics.csv (in place, or by returning the new frame)."""
    folder.mkdir(parents=True)
    for name in ("metrics.csv", "jobs.csv"):
        shutil.copy(FIXTURE / name, folder / name)
    config = json.loads((FIXTURE / "config.json").read_text())
    config.update({"git_commit": f"{number:07x}" + "c0ffee" * 5 + "ab", "started": f"2026-11-{number + 1:02d}T10:00:00",
                   **(config_changes or {})})
    (folder / "config.json").write_text(json.dumps(config))
    if change:
        frame = pd.read_csv(folder / "metrics.csv")
        edited = change(frame)  # edits in place, or returns a new frame
        (frame if edited is None else edited).to_csv(folder / "metrics.csv", index=False)
    return folder


def scale(metrics: tuple[str, ...], factor_of):
    """An edit that multiplies each row of ``metrics`` by ``factor_of(row index)``."""
    def change(frame):
        rows = frame["metric"].isin(metrics)
        frame.loc[rows, "value"] = [v * factor_of(i) for i, v in zip(frame.index[rows], frame.loc[rows, "value"])]
    return change


def one_slower(factor):
    """An edit that makes FVSBN's first sample_throughput (one batch size) ``factor`` times its value."""
    def change(frame):
        first = frame.index[(frame["model"] == "fvsbn") & (frame["metric"] == "sample_throughput")][0]
        frame.loc[first, "value"] *= factor
    return change


def history_of(tmp_path, changes, store_name="history.sqlite"):
    store = tmp_path / store_name
    for number, change in enumerate(changes):
        run = copy_run(tmp_path / f"run{number}", number, change)
        assert main(["history", "add", str(run), "--store", str(store)]) == 0
    return store


def noisy(rng, sd):
    """A within-noise edit of fid and test_bpd: every figure times 1 + N(0, sd)."""
    return scale(PERTURBED, lambda _i: 1 + rng.normal(0, sd))


# --- the store ---------------------------------------------------------------------------------------
def test_add_records_every_figure_with_its_run_and_series(tmp_path):
    run = copy_run(tmp_path / "run", 1)
    store = tmp_path / "h.sqlite"
    assert main(["history", "add", str(run), "--store", str(store)]) == 0
    with open_store(store) as s:
        (stored,) = s.runs().itertuples()
        points = s.points(stored.series)
    config = json.loads((run / "config.json").read_text())
    assert (stored.git_commit, stored.started) == (config["git_commit"], config["started"])
    assert stored.series == series_key(config) and stored.dataset == "mnist5k" and stored.device == "cpu"
    assert json.loads(stored.machine)["cpu_count"] == 2
    expected = metric_rows(pd.read_csv(run / "metrics.csv"))
    assert len(points) == len(expected)
    got = points.set_index(["entry", "key"])["value"]
    for row in expected.itertuples():  # every figure, as the run's own mean
        assert got[(row.entry, row.key)] == pytest.approx(row.value, nan_ok=True)
    fid = points.set_index(["entry", "key"]).loc[("fvsbn", "fid")]
    assert (fid["low"], fid["high"]) == pytest.approx((2173.354827, 2288.736833), rel=1e-6)  # its bootstrap


def test_the_interval_over_seeds_is_the_t_interval_of_the_mean_and_one_seed_keeps_its_bootstrap():
    def row(seed, metric, value, low=None, high=None):
        return {"model": "m", "track": "binary", "seed": seed, "metric": metric, "value": value, "unit": "u",
                "batch": None, "steps": None, "ci_low": low, "ci_high": high}
    frame = pd.DataFrame([row(0, "a", 1.0, 0.0, 9.0), row(1, "a", 2.0), row(2, "a", 4.0),  # 3 seeds
                          row(0, "b", 5.0, 4.0, 6.5), row(0, "c", 5.0)])                  # one seed each
    got = metric_rows(frame).set_index("key")
    half = 4.302652729911275 * np.std([1.0, 2.0, 4.0], ddof=1) / np.sqrt(3)  # t(0.975, 2) from a table
    assert (got.loc["a", "low"], got.loc["a", "high"]) == pytest.approx((7 / 3 - half, 7 / 3 + half))
    assert got.loc["a", "value"] == pytest.approx(7 / 3) and got.loc["a", "n_seeds"] == 3
    assert (got.loc["b", "low"], got.loc["b", "high"]) == (4.0, 6.5)  # one seed: its bootstrap interval
    assert got.loc["c", "low"] is None and got.loc["c", "high"] is None


def test_adding_the_same_run_twice_is_refused_and_changes_nothing(tmp_path, capsys):
    run = copy_run(tmp_path / "run", 1)
    store = tmp_path / "h.sqlite"
    assert main(["history", "add", str(run), "--store", str(store)]) == 0
    before = store.read_bytes()
    assert main(["history", "add", str(run), "--store", str(store)]) == 2
    assert "already in" in capsys.readouterr().err
    assert store.read_bytes() == before


def test_an_unfinished_run_is_refused(tmp_path, capsys):
    run = copy_run(tmp_path / "run", 1)
    config = json.loads((run / "config.json").read_text())
    del config["invocations"][-1]["wall_seconds"]  # what a driver still running, or stopped, leaves
    (run / "config.json").write_text(json.dumps(config))
    store = tmp_path / "h.sqlite"
    assert main(["history", "add", str(run), "--store", str(store)]) == 2
    assert "not finished" in capsys.readouterr().err
    with open_store(store) as s:
        assert s.runs().empty


def test_a_truncated_store_is_refused_with_exit_2_and_left_as_it_was(tmp_path, capsys):
    store = history_of(tmp_path, [None, None])
    data = store.read_bytes()
    store.write_bytes(data[: len(data) // 2])
    truncated = store.read_bytes()
    for command in (["history", "add", str(copy_run(tmp_path / "new", 9)), "--store", str(store)],
                    ["history", "show", "--store", str(store)],
                    ["history", "regressions", "--store", str(store)],
                    ["compare", str(tmp_path / "new"), "--history", str(store)]):
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert "damaged" in err and str(store) in err
        assert store.read_bytes() == truncated


@pytest.mark.parametrize("content", [b"", b"this is not a database" * 100])
def test_a_file_that_is_not_a_store_is_refused(tmp_path, content, capsys):
    store = tmp_path / "h.sqlite"
    store.write_bytes(content)
    assert main(["history", "show", "--store", str(store)]) == 2
    assert "damaged or not a genbench store" in capsys.readouterr().err
    assert store.read_bytes() == content


def test_a_missing_store_is_refused_except_by_add(tmp_path, capsys):
    store = tmp_path / "nowhere.sqlite"
    assert main(["history", "regressions", "--store", str(store)]) == 2
    assert "no history store" in capsys.readouterr().err and not store.exists()


def test_a_run_of_another_budget_goes_to_a_series_of_its_own(tmp_path):
    store = history_of(tmp_path, [None] * 3)
    other = copy_run(tmp_path / "other", 7, config_changes={"budget": "default",
                                                          "budget_resolved": {"kind": "steps", "amount": 900.0}})
    assert main(["history", "add", str(other), "--store", str(store)]) == 0
    with open_store(store) as s:
        assert len(s.series()) == 2
        assert [len(s.runs(series)) for series in s.series()] == [3, 1]
    # ... and it is never judged against the other series' runs
    assert main(["compare", str(other), "--history", str(store)]) == 2


def test_runs_scored_by_another_classifier_are_another_series(tmp_path):
    base = json.loads((FIXTURE / "config.json").read_text())
    other = {**base, "classifier_weights_digest": "0" * 64}
    assert series_key(base) != series_key(other)


# --- the gate against a history ----------------------------------------------------------------------
def test_compare_with_history_fails_a_run_five_noise_sds_worse_and_passes_it_unchanged(tmp_path, capsys):
    rng = np.random.default_rng(0)
    sd = 0.04  # 4% of each figure, the runs' noise (FID's own band is 10%; 5 sd is past both it and the
    # window's 99.9% prediction band, about 3.7 sd for 20 runs)
    store = history_of(tmp_path, [noisy(rng, sd) for _ in range(20)])
    same = copy_run(tmp_path / "same", 20, noisy(rng, sd))
    assert main(["compare", str(same), "--history", str(store)]) == 0
    worse = copy_run(tmp_path / "worse", 21, scale(PERTURBED, lambda _i: 1 + 5 * sd))
    capsys.readouterr()
    assert main(["compare", str(worse), "--history", str(store)]) == 1
    regressed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|") and "REGRESSED" in line]
    metrics = {line.split("|")[2].strip().split("@")[0] for line in regressed}  # fid@steps=60: the steps curve's
    assert metrics == set(PERTURBED)
    assert any("| fvsbn " in line and "| fid " in line for line in regressed)


@pytest.fixture(scope="module")
def jittery_throughput_store(tmp_path_factory):
    """20 runs whose every throughput is its value times U(0.7, 1.3). Tests judge runs against it, never add."""
    rng = np.random.default_rng(1)
    speed = ("sample_throughput", "train_throughput")
    changes = [scale(speed, lambda _i: rng.uniform(0.7, 1.3)) for _ in range(20)]
    return history_of(tmp_path_factory.mktemp("jittery"), changes)


@pytest.mark.parametrize("factor", [0.7, 1.3])
def test_throughput_jittering_by_30_percent_does_not_fail_the_gate(tmp_path, jittery_throughput_store, factor):
    run = copy_run(tmp_path / "now", 30, scale(("sample_throughput", "train_throughput"), lambda _i: factor))
    assert main(["compare", str(run), "--history", str(jittery_throughput_store)]) == 0


def test_a_throughput_drop_to_0_4x_fails_the_gate(tmp_path, jittery_throughput_store, capsys):
    run = copy_run(tmp_path / "now", 30, one_slower(0.4))
    assert main(["compare", str(run), "--history", str(jittery_throughput_store), "--format", "json"]) == 1
    rows = [r for r in json.loads(capsys.readouterr().out)["rows"] if r["verdict"] == "regressed"]
    assert [(r["model"], r["metric"]) for r in rows] == [("fvsbn", "sample_throughput")]


def test_the_tolerance_is_the_widest_of_the_rule_the_prediction_band_and_the_worst_seen():
    speed = gate.rule_of({}, "sample_throughput")
    assert gate.tolerance(speed, 100.0, np.array([100.0] * 4)) == pytest.approx(10.0)  # no spread: the registry's 10%
    history = np.array([80.0, 120.0, 100.0, 100.0])  # speed: the band of the logarithm, t(0.999, 3) = 10.21
    band = 10.214531852407 * np.std(np.log(history), ddof=1) * np.sqrt(1 + 1 / 4)
    assert gate.tolerance(speed, 100.0, history) == pytest.approx(100 * (1 - np.exp(-band)))
    assert gate.tolerance(speed, 100.0, np.array([100.0] * 20 + [10.0])) == pytest.approx(90.0)  # as bad as seen
    # held by fewer than three earlier runs: no known noise, so one baseline's band (fail below 0.3x)
    assert gate.tolerance(speed, 100.0, np.array([100.0, 100.0])) == pytest.approx(70.0)
    assert gate.tolerance(speed, 100.0, np.array([100.0] * 3)) == pytest.approx(10.0)
    bpd = gate.rule_of({}, "test_bpd")  # linear: t(0.999, 4) = 7.173
    history = np.array([1.0, 1.1, 0.9, 1.0, 1.0])
    assert gate.tolerance(bpd, 1.0, history) == pytest.approx(7.173182 * np.std(history, ddof=1) * np.sqrt(1.2), rel=1e-6)


@pytest.mark.parametrize("window", [5, 20])
def test_an_unchanged_run_fails_a_noisy_metric_at_the_documented_rate(window):
    assert gate.simulate_false_alarm_rate(window, trials=100_000, seed=3) <= 1.5 * gate.ALPHA


def test_the_gate_needs_three_earlier_runs_and_never_counts_the_run_itself(tmp_path, capsys):
    store = history_of(tmp_path, [None] * 3)
    assert main(["compare", str(tmp_path / "run2"), "--history", str(store)]) == 2  # 2 others
    assert "needs 3" in capsys.readouterr().err
    assert main(["compare", str(copy_run(tmp_path / "new", 5)), "--history", str(store), "--window", "2"]) == 2


def test_a_tolerance_override_applies_against_a_history(tmp_path, jittery_throughput_store):
    run = copy_run(tmp_path / "now", 30, one_slower(0.4))
    assert main(["compare", str(run), "--history", str(jittery_throughput_store),
                 "--tolerance", "sample_throughput=off"]) == 0


def test_the_history_gate_writes_junit_like_the_baseline_gate(tmp_path, jittery_throughput_store):
    run = copy_run(tmp_path / "now", 30, one_slower(0.4))
    out = tmp_path / "gate.xml"
    assert main(["compare", str(run), "--history", str(jittery_throughput_store), "--format", "junit",
                 "--output", str(out)]) == 1
    text = out.read_text()
    assert text.count("<failure") == 1 and "fvsbn sample_throughput@" in text


# --- steps across the store --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stepped_store(tmp_path_factory):
    """12 runs, fid and test_bpd within 1% noise; from run 8 on, made's test_bpd is 8% worse. Read only."""
    rng = np.random.default_rng(2)
    made_bpd = lambda frame: frame.index[(frame["model"] == "made") & (frame["metric"] == "test_bpd")]  # noqa: E731

    def change(number):
        def edit(frame):
            noisy(rng, 0.01)(frame)
            if number >= 8:
                frame.loc[made_bpd(frame), "value"] *= 1.08
        return edit
    return history_of(tmp_path_factory.mktemp("stepped"), [change(n) for n in range(12)])


def test_regressions_names_the_injected_step_and_nothing_else(stepped_store, capsys):
    assert main(["history", "regressions", "--store", str(stepped_store), "--format", "json"]) == 1
    steps = json.loads(capsys.readouterr().out)
    assert [(s["model"], s["metric"]) for s in steps] == [("made", "test_bpd")]
    (step,) = steps
    assert step["commit"].startswith(f"{8:07x}") and step["direction"] == "worse" and step["regressed"]
    assert step["after"] / step["before"] == pytest.approx(1.08, rel=0.02)
    assert set(step) >= {"model", "metric", "commit", "before", "after", "direction"}


def test_a_history_without_a_step_has_no_regression(tmp_path, capsys):
    rng = np.random.default_rng(3)
    store = history_of(tmp_path, [noisy(rng, 0.01) for _ in range(10)])
    capsys.readouterr()
    assert main(["history", "regressions", "--store", str(store)]) == 0
    assert "no step detected" in capsys.readouterr().out


def test_a_better_step_is_listed_and_does_not_fail(tmp_path, capsys):
    def change(number):
        return scale(("test_bpd",), lambda _i: 0.9 if number >= 5 else 1.0)
    store = history_of(tmp_path, [change(n) for n in range(10)])
    capsys.readouterr()
    assert main(["history", "regressions", "--store", str(store), "--model", "made", "--format", "json"]) == 0
    (step,) = json.loads(capsys.readouterr().out)
    assert step["metric"] == "test_bpd" and step["direction"] == "better" and step["commit"].startswith(f"{5:07x}")


def test_show_prints_one_column_per_run_and_the_steps(stepped_store, capsys):
    assert main(["history", "show", "--store", str(stepped_store), "--model", "made", "--metric", "test_bpd",
                 "--last", "5"]) == 0
    out = capsys.readouterr().out
    (row,) = [line for line in out.splitlines() if line.startswith("| made")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 2 + 5 + 1 and cells[-1].startswith(f"{8:07x}") and "worse" in cells[-1]
    with open_store(stepped_store) as s:
        points = s.points(s.series()[0])
    newest = points[(points["entry"] == "made") & (points["key"] == "test_bpd")]["value"].iloc[-1]
    assert cells[-2] == f"{newest:.6g}"


def test_the_dashboard_has_one_trend_plot_per_metric_and_marks_the_step(tmp_path):
    def change(number):  # two models (a plot costs about half a second); made's test_bpd 8% worse from run 5
        def edit(frame):
            frame = frame[frame["model"].isin(["made", "fvsbn"])].copy()
            if number >= 5:
                frame.loc[(frame["model"] == "made") & (frame["metric"] == "test_bpd"), "value"] *= 1.08
            return frame
        return edit
    store = history_of(tmp_path, [change(n) for n in range(8)])
    out = tmp_path / "dashboard"
    assert main(["history", "report", "--store", str(store), "--out", str(out)]) == 0
    page = (out / "index.html").read_text()
    with open_store(store) as s:
        keys = set(s.points(s.series()[0])["key"])
    directed = {k for k in keys if gate.rule_of({}, k).direction is not None}
    plotted = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert len(plotted) == len(directed) > 10 and page.count("<img src='data:image/png;base64,") == len(directed)
    assert "<script" not in page  # opens from disk, nothing to run
    steps_table = page.split("Detected steps")[1].split("Trends")[0]
    assert f"{5:07x}" in steps_table and "test_bpd" in steps_table and "made" in steps_table
    assert "fvsbn" not in steps_table


def test_the_store_schema_is_the_documented_one(tmp_path):
    store = history_of(tmp_path, [None])
    with sqlite3.connect(store) as db:
        columns = {t: [c[1] for c in db.execute(f"PRAGMA table_info({t})")] for t in ("runs", "metrics", "jobs")}
    assert columns["metrics"] == ["run_id", "entry", "key", "metric", "batch", "value", "low", "high", "n_seeds", "unit"]
    assert {"git_commit", "started", "series", "machine", "classifier_digest"} <= set(columns["runs"])
    doc = (FIXTURE.parents[2] / "docs" / "history.md").read_text()
    for table, names in columns.items():
        assert all(f"`{name}`" in doc for name in names), table


# --- the committed history that CI gates against -------------------------------------------------------
COMMITTED = Path(__file__).resolve().parents[1] / "results" / "baselines" / "smoke-cpu-history.sqlite"


def test_the_committed_history_is_intact_has_no_regression_and_agrees_with_the_baseline(capsys):
    from bench.evaluate import classifier as clf
    from bench.evaluate.metrics import scored_by_classifier

    with open_store(COMMITTED) as s:
        (series,) = s.series()
        runs = s.runs(series)
        points = s.points(series)
    assert len(runs) >= gate.MIN_HISTORY
    assert set(runs["classifier_digest"]) == {clf.load_pinned("mnist5k").weights_digest}
    assert main(["history", "regressions", "--store", str(COMMITTED)]) == 0
    baseline = json.loads((COMMITTED.parent / "smoke-cpu.json").read_text())
    newest = points[points["run_id"] == runs["id"].iloc[-1]].set_index(["entry", "key"])["value"]
    checked = 0
    for entry, values in baseline["values"].items():  # figures that repeat exactly: likelihood, sample quality
        for key, value in values.items():
            metric = key.split("@")[0]
            if value is None or not (metric.startswith("test_") or scored_by_classifier(metric)):
                continue
            assert newest[(entry, key)] == pytest.approx(value, rel=1e-6), (entry, key)
            checked += 1
    assert checked > 100
