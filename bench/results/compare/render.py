"""``bench compare`` output: the text table for people, and JUnit XML, a Markdown job summary and JSON
for CI systems. Every format carries the same judged rows, one per (model, metric[, batch]).

- ``junit``: one test suite per model, one test case per (model, metric[, batch]); a regression is a
  ``<failure>``; a metric shown but never gated, or present on one side only, passes with its verdict
  in ``system-out``. Jenkins, GitLab and GitHub (through a JUnit action) render it.
- ``markdown``: the verdict line and the table with regressions first, fit for ``$GITHUB_STEP_SUMMARY``.
- ``json``: ``{"verdict", "summary", "rows": [...]}`` for scripts.
"""
from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import asdict

from bench.results import numbers
from bench.results.compare.judge import Row

def render(rows: list[Row]) -> str:
    from tabulate import tabulate

    table = [[r.model, r.metric, "" if r.batch is None else r.batch, numbers.exact(r.baseline), numbers.exact(r.current),
              r.change, r.tolerance, r.verdict.upper() if r.verdict == "regressed" else r.verdict]
             for r in rows]
    return tabulate(table, headers=["model", "metric", "batch", "baseline", "current", "change", "tolerance",
                                    "verdict"], tablefmt="github", disable_numparse=True)


def summary_line(rows: list[Row]) -> str:
    counts = {v: sum(r.verdict == v for r in rows) for v in ("regressed", "improved", "added", "removed")}
    text = ", ".join(f"{n} {v}" for v, n in counts.items() if n) or "no changes beyond tolerance"
    regressed = [r for r in rows if r.verdict == "regressed"]
    if regressed:
        names = "; ".join(f"{r.model} {r.metric}" + (f"@{r.batch}" if r.batch is not None else "")
                          for r in regressed)
        return f"REGRESSION: {text}. Regressed: {names}"
    return f"ok: {text}"


FORMATS = ("text", "junit", "markdown", "json")
_VERDICT_ORDER = {"regressed": 0, "removed": 1, "added": 2, "improved": 3, "ok": 4, "info": 5}


def case_name(row) -> str:
    return row.metric + (f"@{row.batch}" if row.batch is not None else "")


def _value(value):
    if value is None or isinstance(value, str):
        return value
    return None if math.isnan(value) else float(value)


def to_junit(rows, title: str = "genbench compare") -> str:
    failures = sum(r.verdict == "regressed" for r in rows)
    root = ET.Element("testsuites", name=title, tests=str(len(rows)), failures=str(failures))
    for model in dict.fromkeys(r.model for r in rows):
        mine = [r for r in rows if r.model == model]
        suite = ET.SubElement(root, "testsuite", name=model, tests=str(len(mine)),
                              failures=str(sum(r.verdict == "regressed" for r in mine)))
        for r in mine:
            case = ET.SubElement(suite, "testcase", classname=f"genbench.{model}", name=case_name(r))
            detail = (f"baseline {_value(r.baseline)}, current {_value(r.current)}, change {r.change}, "
                      f"tolerance {r.tolerance}")
            if r.verdict == "regressed":
                failure = ET.SubElement(case, "failure", message=f"{model} {case_name(r)} regressed: {r.change}",
                                        type="regression")
                failure.text = detail
            else:
                ET.SubElement(case, "system-out").text = f"{r.verdict}: {detail}"
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def to_markdown(rows, summary: str) -> str:
    """The verdict and the GitHub table, regressions first."""
    ordered = sorted(rows, key=lambda r: _VERDICT_ORDER.get(r.verdict, 9))
    icon = ":x:" if summary.startswith("REGRESSION") else ":white_check_mark:"
    return f"### genbench regression gate\n\n{icon} {summary}\n\n{render(ordered)}\n"


def to_json(rows, summary: str) -> str:
    payload = {"verdict": "regressed" if any(r.verdict == "regressed" for r in rows) else "ok",
               "summary": summary,
               "rows": [{**asdict(r), "baseline": _value(r.baseline), "current": _value(r.current)} for r in rows]}
    return json.dumps(payload, indent=1) + "\n"
