"""report.md and report.html from the files of a run (re-rendered by ``bench report``)."""
from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from bench import results

SUMMARY_METRICS = [("test_bpd", "bits/dim"), ("test_nll", "NLL (nats)"), ("sample_throughput@256", "samples/s @256"),
                   ("sampling_nfe", "NFE"), ("train_seconds", "train s"), ("train_steps", "steps"),
                   ("peak_memory", "peak MiB"), ("params", "params")]


def _fmt(mean, std) -> str:
    if pd.isna(mean):
        return "-"
    text = f"{mean:.4g}" if abs(mean) < 1e5 else f"{mean:,.0f}"
    return text + (f" ± {std:.2g}" if pd.notna(std) and std > 0 else "")


def summary_table(summary: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    kinds = metrics[metrics.metric == "test_bpd"].groupby("model")["kind"].first()
    table = pd.DataFrame({"model": summary["model"], "family": summary["family"], "track": summary["track"]})
    table["likelihood"] = [kinds.get(m, "none") for m in summary["model"]]
    for key, title in SUMMARY_METRICS:
        mean, std = summary.get(f"{key}_mean"), summary.get(f"{key}_std")
        table[title] = [_fmt(a, b) for a, b in zip(mean, std)] if mean is not None else "-"
    return table


def render(run_dir: Path) -> None:
    run_dir = Path(run_dir)
    metrics = pd.read_csv(run_dir / "metrics.csv")
    summary = pd.read_csv(run_dir / "summary.csv")
    jobs = pd.read_csv(run_dir / "jobs.csv").fillna("")
    config = results.read_json(run_dir / "config.json")
    table = summary_table(summary, metrics)
    md = [f"# genbench report: {config['dataset']}, budget {config['budget']}", "",
          f"Device {config['device']}, seeds {config['seeds']}, commit {config['git_commit']}.", "",
          "## Summary", "", table.to_markdown(index=False), "", "## Jobs", "",
          jobs.to_markdown(index=False), ""]
    (run_dir / "report.md").write_text("\n".join(md))
    grids = []
    for png in sorted((run_dir / "samples").glob("*.png")):
        data = base64.b64encode(png.read_bytes()).decode()
        grids.append(f"<figure><img src='data:image/png;base64,{data}'><figcaption>{html.escape(png.stem)}"
                     f"</figcaption></figure>")
    page = (f"<!doctype html><meta charset='utf-8'><title>genbench report</title>"
            f"<h1>genbench report: {html.escape(config['dataset'])}</h1>"
            f"{table.to_html(index=False)}<h2>Jobs</h2>{jobs.to_html(index=False)}<h2>Samples</h2>{''.join(grids)}")
    (run_dir / "report.html").write_text(page)
