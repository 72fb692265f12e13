"""``bench history show``: the store's figures as a terminal table, one row per (series, model, metric), one
column per run (the last ``--last``, by commit), with the detected steps beside."""
from __future__ import annotations

import pandas as pd

from bench.results import numbers
from bench.results.history.regressions import find_steps
from bench.results.history.store import HistoryStore


def show_table(store: HistoryStore, model: str | None = None, metric: str | None = None, last: int = 8) -> str:
    from tabulate import tabulate

    steps = find_steps(store, model, metric)
    parts = []
    for number, series in enumerate(store.series(), 1):
        every_run = store.runs(series)
        runs = every_run.tail(last)
        points = store.points(series, list(runs["id"]))
        if model:
            points = points[points["entry"] == model]
        if metric:
            points = points[(points["metric"] == metric) | (points["key"] == metric)]
        if points.empty:
            continue
        columns = {int(r.id): f"{r.git_commit[:7]} {str(r.started)[5:16]}" for r in runs.itertuples()}
        wide = points.pivot_table(index=["entry", "key"], columns="run_id", values="value", aggfunc="first",
                                  sort=False).reindex(columns=list(columns))
        rows = []
        for (entry, key), values in wide.iterrows():
            moved = [f"{s.commit[:7]} {s.direction}" for s in steps
                     if s.series == series and s.model == entry and s.metric == key]
            rows.append([entry, key, *[numbers.exact(v) if pd.notna(v) else "-" for v in values],
                         ", ".join(moved) or "-"])
        table = tabulate(rows, headers=["model", "metric", *columns.values(), "steps"], tablefmt="github",
                         disable_numparse=True)
        parts.append(f"series {number}: {series} ({len(every_run)} runs, the last {len(runs)} shown)\n{table}")
    if not parts:
        what = " and ".join(filter(None, [model and f"model {model!r}", metric and f"metric {metric!r}"]))
        return f"no stored figure for {what or 'any model'} in {store.path}"
    return "\n\n".join(parts)
