"""Speed of the history store (docs/history.md, "Why SQLite"): adding a real run's figures, and reading one
series back, in the SQLite store the suite ships, beside the same two operations in DuckDB (its fastest path:
a pandas frame inserted whole), when DuckDB is installed.

The run is the stored real smoke run (tests/fixtures/stored-run, about 300 figures); the series read is that
of a store of 50 copies of it: ``store.points`` as the suite reads it (joined with the runs, in run order), and
the bare metrics table, the query DuckDB answers. With ``--benchmark-disable`` (the ordinary test run) each body runs once and
its result is checked. Run: ``python -m pytest tests/benchmarks/test_history_store.py --benchmark-only``.
"""
import itertools
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bench.results.history.store import metric_rows, open_store

FIXTURE = Path(__file__).parents[1] / "fixtures" / "stored-run"
COPIES = 50
counter = itertools.count()


def new_run(folder: Path) -> Path:
    """A copy of the stored run with its own start time (a new identity)."""
    folder.mkdir(parents=True)
    for name in ("metrics.csv", "jobs.csv"):
        shutil.copy(FIXTURE / name, folder / name)
    config = json.loads((FIXTURE / "config.json").read_text())
    config["started"] = f"2026-11-01T10:{next(counter):06d}"
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def full_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("history")
    path = root / "history.sqlite"
    with open_store(path, create=True) as store:
        store.add_run(new_run(root / "run"))
        with store.db:  # the other copies made inside the database: the fixture is not what is measured
            for i in range(1, COPIES):
                store.db.execute("INSERT INTO runs (git_commit, started, series, added) SELECT git_commit, "
                                 "started || ?, series, added FROM runs WHERE id = 1", (f"-{i}",))
                store.db.execute("INSERT INTO metrics SELECT ?, entry, key, metric, batch, value, low, high, n_seeds, "
                                 "unit FROM metrics WHERE run_id = 1", (i + 1,))
    return path


def test_sqlite_add_run(benchmark, tmp_path):
    runs = iter(new_run(tmp_path / f"run{i}") for i in itertools.count())
    with open_store(tmp_path / "history.sqlite", create=True) as store:
        benchmark.group = "history-store add"
        _ident, count = benchmark.pedantic(lambda: store.add_run(next(runs)), rounds=1 if benchmark.disabled else 20)
    assert count >= 1


def test_sqlite_read_series(benchmark, full_store):
    with open_store(full_store) as store:
        series = store.series()[0]
        benchmark.group = "history-store read"
        points = benchmark(store.points, series)
    assert len(points) == COPIES * len(metric_rows(pd.read_csv(FIXTURE / "metrics.csv")))


def test_sqlite_read_metrics_table(benchmark, full_store):
    """The same bare query as DuckDB's below (no join with the runs), for a like-for-like figure."""
    with open_store(full_store) as store:
        benchmark.group = "history-store read"
        points = benchmark(pd.read_sql_query, "SELECT * FROM metrics ORDER BY run_id", store.db)
    assert len(points) == COPIES * len(metric_rows(pd.read_csv(FIXTURE / "metrics.csv")))


@pytest.fixture
def duckdb_store(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    db = duckdb.connect(str(tmp_path / "history.duckdb"))
    db.execute("CREATE TABLE metrics (run_id INTEGER, entry TEXT, key TEXT, metric TEXT, batch INTEGER, value DOUBLE, "
               "low DOUBLE, high DOUBLE, n_seeds INTEGER, unit TEXT)")
    yield db
    db.close()


def test_duckdb_add_run(benchmark, duckdb_store, tmp_path):
    runs = iter(new_run(tmp_path / f"run{i}") for i in itertools.count())

    def add():
        rows = metric_rows(pd.read_csv(next(runs) / "metrics.csv")).assign(run_id=next(counter))
        frame = rows[["run_id", "entry", "key", "metric", "batch", "value", "low", "high", "n_seeds", "unit"]]  # noqa: F841
        duckdb_store.execute("INSERT INTO metrics SELECT * FROM frame")

    benchmark.group = "history-store add"
    benchmark.pedantic(add, rounds=1 if benchmark.disabled else 20)
    assert duckdb_store.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] > 0


def test_duckdb_read_series(benchmark, duckdb_store):
    rows = metric_rows(pd.read_csv(FIXTURE / "metrics.csv"))
    frame = pd.concat([rows.assign(run_id=i) for i in range(COPIES)])[  # noqa: F841
        ["run_id", "entry", "key", "metric", "batch", "value", "low", "high", "n_seeds", "unit"]]
    duckdb_store.execute("INSERT INTO metrics SELECT * FROM frame")
    benchmark.group = "history-store read"
    points = benchmark(lambda: duckdb_store.execute("SELECT * FROM metrics ORDER BY run_id").df())
    assert len(points) == COPIES * len(rows)
