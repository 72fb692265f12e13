"""A stored run re-rendered gives the report it gave before: tests/fixtures/stored-run holds the files of a
real smoke run (every model, mnist5k, made before the code was regrouped into stages) and the report.md the
code of that time rendered from them (report.expected.md). A change that moves or refactors code must leave
it byte for byte; a change meant to alter the report updates the expected file in the same commit."""
import shutil
from pathlib import Path

from bench.results import report

STORED = Path(__file__).parent / "fixtures" / "stored-run"


def test_a_stored_run_re_renders_byte_for_byte(tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(STORED, folder)
    (folder / "report.expected.md").unlink()
    md, html = report.render(folder)
    assert md.read_bytes() == (STORED / "report.expected.md").read_bytes()
    assert html.is_file() and "<table" in html.read_text()


def test_the_comparison_is_able_to_fail(tmp_path):
    """The same files with one figure changed give another report."""
    folder = tmp_path / "run"
    shutil.copytree(STORED, folder)
    metrics = (folder / "metrics.csv").read_text().splitlines()
    row = next(i for i, line in enumerate(metrics) if ",test_bpd," in line)
    metrics[row] = metrics[row].replace(",test_bpd,", ",test_bpd,9", 1)  # a different value
    (folder / "metrics.csv").write_text("\n".join(metrics) + "\n")
    (folder / "summary.csv").unlink()  # recomputed from metrics.csv
    md, _ = report.render(folder)
    assert md.read_bytes() != (STORED / "report.expected.md").read_bytes()
