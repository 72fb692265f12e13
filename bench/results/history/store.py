"""The history store: every finished run's per-model figures, in one SQLite file, kept across commits.

Why SQLite: it ships with Python (no new dependency, no server), a store is one file that a CI cache or
artifact carries, every write is a transaction (a failed ``add`` leaves the store as it was), and
``PRAGMA quick_check`` tells a damaged file from a good one. DuckDB was measured beside it on the same
store (docs/history.md, "Why SQLite"): both are far faster than the suite needs, and DuckDB adds a
dependency for no gain. asv's results format was not used: asv records benchmarks it runs itself, per
commit, in environments it builds; genbench's runs are made by ``bench run`` and only need recording.

Schema (``PRAGMA user_version`` = ``SCHEMA_VERSION``):

- ``runs``: one row per added run. ``git_commit`` and ``started`` (both from the run's ``config.json``)
  identify it and are unique together; ``commit_time`` is the commit's committer date in UTC (from
  ``config.json``, else from this repository's git, else NULL), and a series is in the order of
  ``commit_time`` then ``started``, so that a run made later of an older commit takes its commit's place;
  ``series`` is the key of the runs whose figures compare (below);
  ``dataset``, ``budget``, ``device``, ``seeds`` (JSON), ``fidelity_samples``, ``eval_size`` and
  ``classifier_digest`` are its parts; ``machine`` and ``versions`` are the run's hardware and package
  versions (JSON); ``source`` the folder it was read from; ``added`` when.
- ``metrics``: one row per (run, entry, key). ``entry`` is the model (``model (track)`` where a model has
  rows on two tracks, as ``bench compare`` names it); ``key`` is the metric with its qualifiers
  (``sample_throughput@256``, ``fid@steps=20``), split into ``metric`` and ``batch``; ``value`` is the mean
  over seeds (NULL: not finite); ``low`` and ``high`` its 95% interval where the run has one (over seeds:
  mean +- t * s / sqrt(n); one seed: the metric's own bootstrap interval), else NULL; ``n_seeds``; ``unit``.
- ``jobs``: one row per (run, model): ``status`` (ok, diverged or failed, the worst over seeds) and ``detail``.

A series is keyed by what makes two runs' numbers comparable (``bench.results.compare.runs.comparability``:
dataset, budget, seeds, device type, evaluation sample counts) and by the evaluation classifier's weights
digest, since sample-quality figures from two classifiers measure two things. Runs of different series are
stored side by side and never mixed in a trend, a step or a gate.
"""
from __future__ import annotations

import json
import sqlite3
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from bench.config import environment
from bench.config.errors import UserError
from bench.results import tables as results
from bench.results.compare.runs import comparability, entry_names, job_statuses, load_run, split_key

SCHEMA_VERSION = 1
DEFAULT_STORE = Path("results") / "history.sqlite"

SCHEMA = """
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    git_commit TEXT NOT NULL,
    started TEXT NOT NULL,
    commit_time TEXT,
    series TEXT NOT NULL,
    dataset TEXT, budget TEXT, device TEXT, seeds TEXT, fidelity_samples INTEGER, eval_size INTEGER,
    classifier_digest TEXT,
    machine TEXT, versions TEXT, source TEXT,
    added TEXT NOT NULL,
    UNIQUE (git_commit, started)
);
CREATE INDEX runs_by_series ON runs (series, commit_time, started);
CREATE TABLE metrics (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    entry TEXT NOT NULL, key TEXT NOT NULL, metric TEXT NOT NULL, batch INTEGER,
    value REAL, low REAL, high REAL, n_seeds INTEGER, unit TEXT,
    PRIMARY KEY (run_id, entry, key)
);
CREATE TABLE jobs (
    run_id INTEGER NOT NULL REFERENCES runs (id),
    model TEXT NOT NULL, status TEXT NOT NULL, detail TEXT,
    PRIMARY KEY (run_id, model)
);
"""
TABLES = {"runs", "metrics", "jobs"}
RUN_ORDER = "commit_time, started, id"  # NULLs first: a run whose commit time is unknown sorts by its start


@dataclass(frozen=True)
class RunIdentity:
    git_commit: str
    started: str
    series: str

    def describe(self) -> str:
        return f"commit {self.git_commit[:12]}, started {self.started}"


# --- what a run contributes -------------------------------------------------------------------
def series_key(config: dict) -> str:
    """The readable key of the runs comparable with this one."""
    comparable = comparability(config)
    seeds = ",".join(str(s) for s in comparable["seeds"]) or "-"
    digest = (config.get("classifier_weights_digest") or "none")[:12]
    return (f"{comparable['dataset']} | {comparable['budget']} | {comparable['device']} | seeds {seeds} | "
            f"fid_samples {comparable['fidelity_samples']} | eval_size {comparable['eval_size']} | classifier {digest}")


def run_identity(config: dict, run_dir) -> RunIdentity:
    commit, started = config.get("git_commit"), config.get("started")
    if not commit or not started:
        raise UserError(f"{run_dir}/config.json names no git_commit or no start time: it is not a run `bench run` "
                        f"wrote, and the history cannot place it; add runs made by `python -m bench run`")
    return RunIdentity(str(commit), str(started), series_key(config))


def check_finished(config: dict, run_dir) -> None:
    """A run whose last invocation recorded no end is still running, or was stopped: its figures are partial."""
    invocations = config.get("invocations") or []
    if invocations and "wall_seconds" not in invocations[-1]:
        raise UserError(f"{run_dir} is not finished (its last invocation, started {invocations[-1].get('started')}, "
                        f"recorded no end): finish it first (rerun the same `bench run` command to resume), then add it")


def commit_time(config: dict) -> str | None:
    """The run's commit date in UTC: recorded in config.json, else looked up in this repository."""
    recorded = config.get("git_commit_time") or environment.git_commit_time(str(config.get("git_commit") or ""))
    if not recorded:
        return None
    try:
        return datetime.fromisoformat(recorded).astimezone(timezone.utc).isoformat(timespec="seconds")
    except ValueError:
        return None


def metric_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """entry, key, metric, batch, value (mean over seeds), low, high, n_seeds, unit: one row per (entry, key).

    The 95% interval of the mean: over seeds (Student t) when there are two or more, else the one seed's own
    bootstrap interval, else none."""
    numeric = pd.to_numeric(metrics["value"], errors="coerce")
    frame = metrics.assign(value=numeric.where(np.isfinite(numeric)), entry=entry_names(metrics),
                           batch=pd.to_numeric(metrics["batch"], errors="coerce"))
    frame["key"] = results.metric_keys(frame)
    for column in ("ci_low", "ci_high"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce") if column in frame else np.nan
    frame["unit"] = frame["unit"].where(frame["unit"].map(lambda u: isinstance(u, str) and bool(u))) \
        if "unit" in frame else None
    rows = frame.groupby(["entry", "key"], sort=False).agg(
        value=("value", "mean"), sd=("value", "std"), n_seeds=("value", "count"), low=("ci_low", "first"),
        high=("ci_high", "first"), n_low=("ci_low", "count"), n_high=("ci_high", "count"),
        unit=("unit", "first")).reset_index()
    n = rows["n_seeds"].to_numpy()
    over_seeds = n >= 2
    half = stats.t.ppf(0.975, np.maximum(n - 1, 1)) * rows["sd"] / np.sqrt(np.maximum(n, 1))
    bootstrap = (n == 1) & (rows["n_low"] == 1) & (rows["n_high"] == 1)
    rows["low"] = (rows["value"] - half).where(over_seeds, rows["low"].where(bootstrap))
    rows["high"] = (rows["value"] + half).where(over_seeds, rows["high"].where(bootstrap))
    split = [split_key(k) for k in rows["key"]]
    rows["metric"] = [m for m, _ in split]
    rows["batch"] = pd.Series([b for _, b in split], index=rows.index, dtype=object)
    rows = rows.astype({"value": object, "low": object, "high": object, "unit": object})
    rows = rows.where(rows.notna(), None)  # NaN and missing: NULL in the store
    return rows[["entry", "key", "metric", "batch", "value", "low", "high", "n_seeds", "unit"]]


# --- the store --------------------------------------------------------------------------------
class HistoryStore:
    """An open store. Use ``open_store``; every write goes through ``add_run`` in one transaction."""

    def __init__(self, path: Path, connection: sqlite3.Connection):
        self.path, self.db = path, connection

    def add_run(self, run_dir) -> tuple[RunIdentity, int]:
        """Append a finished run; refuse one already stored. Returns its identity and the series' run count."""
        config, metrics, jobs = load_run(run_dir)
        ident = run_identity(config, run_dir)
        check_finished(config, run_dir)
        stored = self.db.execute("SELECT id, source FROM runs WHERE git_commit = ? AND started = ?",
                                 (ident.git_commit, ident.started)).fetchone()
        if stored:
            raise UserError(f"{run_dir} ({ident.describe()}) is already in {self.path} as run #{stored[0]} "
                            f"(added from {stored[1]}): a run is added once; nothing was changed")
        rows = metric_rows(metrics)
        if rows.empty:
            raise UserError(f"{run_dir}/metrics.csv has no metric rows: nothing to add; finish the run first")
        comparable = comparability(config)
        with self.db:  # one transaction: all of the run or none of it
            cursor = self.db.execute(
                "INSERT INTO runs (git_commit, started, commit_time, series, dataset, budget, device, seeds, fidelity_samples, "
                "eval_size, classifier_digest, machine, versions, source, added) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (ident.git_commit, ident.started, commit_time(config), ident.series, comparable["dataset"], comparable["budget"],
                 comparable["device"], json.dumps(comparable["seeds"]), comparable["fidelity_samples"],
                 comparable["eval_size"], config.get("classifier_weights_digest"),
                 json.dumps(config.get("hardware") or {}), json.dumps(config.get("versions") or {}),
                 str(Path(run_dir).resolve()), datetime.now().isoformat(timespec="seconds")))
            run_id = cursor.lastrowid
            self.db.executemany(
                "INSERT INTO metrics (run_id, entry, key, metric, batch, value, low, high, n_seeds, unit) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(run_id, r.entry, r.key, r.metric, r.batch, r.value, r.low, r.high, r.n_seeds, r.unit)
                 for r in rows.itertuples()])
            self.db.executemany("INSERT INTO jobs (run_id, model, status, detail) VALUES (?, ?, ?, ?)",
                                [(run_id, model, s["status"], "; ".join(s["detail"]))
                                 for model, s in job_statuses(jobs).items()])
        count = self.db.execute("SELECT COUNT(*) FROM runs WHERE series = ?", (ident.series,)).fetchone()[0]
        return ident, count

    def runs(self, series: str | None = None) -> pd.DataFrame:
        """The stored runs in time order (their start), optionally of one series."""
        query = "SELECT * FROM runs" + (" WHERE series = ?" if series else "") + f" ORDER BY {RUN_ORDER}"
        return pd.read_sql_query(query, self.db, params=(series,) if series else ())

    def series(self) -> list[str]:
        return [s for (s,) in self.db.execute("SELECT series FROM runs GROUP BY series ORDER BY MIN(started), series")]

    def points(self, series: str, run_ids: list[int] | None = None) -> pd.DataFrame:
        """Every stored figure of a series, one row per (run, entry, key), with its run's commit and start,
        in time order."""
        query = ("SELECT r.id AS run_id, r.git_commit, r.started, r.commit_time, m.entry, m.key, m.metric, m.batch, m.value, m.low, "
                 "m.high, m.n_seeds, m.unit FROM metrics m JOIN runs r ON r.id = m.run_id WHERE r.series = ?")
        order = ", ".join(f"r.{column}" for column in RUN_ORDER.split(", "))
        frame = pd.read_sql_query(query + f" ORDER BY {order}", self.db, params=(series,))
        if run_ids is not None:
            frame = frame[frame["run_id"].isin(run_ids)]
        return frame

    def jobs(self, run_id: int) -> dict[str, dict]:
        return {model: {"status": status, "detail": [d for d in (detail or "").split("; ") if d]}
                for model, status, detail in self.db.execute(
                    "SELECT model, status, detail FROM jobs WHERE run_id = ?", (run_id,))}


@contextmanager
def open_store(path, create: bool = False):
    """The store at ``path``; ``create``: make it when missing, and open it for writing (``history add``);
    otherwise it is opened read-only. A missing store otherwise, or a file that is not an intact genbench
    store, is a UserError (exit 2) and the file is left untouched."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"--store {path} is a folder: give the store's file, e.g. {path / 'history.sqlite'}")
    if not path.exists():
        if not create:
            raise UserError(f"no history store at {path}: make one with `python -m bench history add RUN --store {path}`")
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(path)) as db, db:
            db.executescript(SCHEMA)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    with closing(_connect_checked(path, "rw" if create else "ro")) as db:
        yield HistoryStore(path, db)


def _connect_checked(path: Path, mode: str) -> sqlite3.Connection:
    damaged = (f"the history store {path} is damaged or not a genbench store ({{why}}); it was left as it is: "
               f"restore it from where CI keeps it (cache or artifact), or give another --store to start a new one")
    if path.stat().st_size == 0:
        raise UserError(damaged.format(why="the file is empty"))
    try:
        db = sqlite3.connect(f"file:{path}?mode={mode}", uri=True)
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = {t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        raise UserError(damaged.format(why=str(exc))) from None
    if check != "ok":
        db.close()
        raise UserError(damaged.format(why=f"SQLite's integrity check: {check}"))
    if not TABLES <= tables or version != SCHEMA_VERSION:
        db.close()
        raise UserError(damaged.format(why=f"schema version {version}, tables {sorted(tables)}; "
                                           f"this genbench writes version {SCHEMA_VERSION}"))
    return db
