"""report.md and report.html from the stored files of a run (``python -m bench report RUN`` re-renders).

Nothing is retrained or resampled: the report reads metrics.csv, summary.csv, jobs.csv, curves.csv,
config.json, samples/*.png and, when present, the scaling study (scaling.csv). Both files are built
from one list of blocks (headings, paragraphs, tables, images), so they hold the same tables;
report.html embeds every image as a base64 data URI and reads offline. Rendering is deterministic:
the same stored files give report.md byte for byte (no render-time timestamps).

Modules, one job each: ``references``, ``load``, ``cells``, ``tables``, ``blocks``, ``sections``,
``markdown``, ``html``; ``render`` here ties them together.
"""
from __future__ import annotations

from pathlib import Path

from bench.results.report.cells import DECIMALS, checks_cell  # noqa: F401  (the package's public names)
from bench.results.report.html import to_html
from bench.results.report.load import Run, load_run  # noqa: F401
from bench.results.report.markdown import to_markdown
from bench.results.report.references import REFERENCES, reference_for  # noqa: F401
from bench.results.report.sections import report_blocks, study_blocks
from bench.results.report.tables import likelihood_tables, summary_table  # noqa: F401


def render(run_dir: Path) -> tuple[Path, Path]:
    """(Re)write report.md, report.html and plots/*.png of a run from its stored files."""
    run = load_run(run_dir)
    blocks = report_blocks(run)
    md_path, html_path = run.folder / "report.md", run.folder / "report.html"
    md_path.write_text(to_markdown(blocks), encoding="utf-8")
    html_path.write_text(to_html(blocks, run.folder, blocks[0].text), encoding="utf-8")
    return md_path, html_path


def render_study(folder: Path) -> str:
    """(Re)write ``scaling.md`` of a sampling-cost study from its stored files (the report's own section)
    and return its text."""
    text = to_markdown(study_blocks(folder))
    (Path(folder) / "scaling.md").write_text(text, encoding="utf-8")
    return text
