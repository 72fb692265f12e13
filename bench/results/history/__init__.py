"""Regression tracking over time (``bench history``, ``bench compare --history``): see docs/history.md.

Modules, one job each: ``store`` (the SQLite store and its schema), ``steps`` (change-point detection on
one series), ``regressions`` (steps in every stored series, judged by the metric registry's direction),
``gate`` (a run against the last N runs of its series), ``show`` (the terminal table) and ``dashboard`` (the
static HTML trends). The command bodies live in ``bench.cli``.
"""
