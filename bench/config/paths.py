"""Where the suite keeps its caches, looks for downloaded datasets and writes a run by default; JSON files
in and out."""
from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path


def cache_dir() -> Path:
    """``BENCH_CACHE_DIR``, else ``~/.cache/genbench``: prepared datasets, evaluation classifiers."""
    root = Path(os.environ.get("BENCH_CACHE_DIR") or Path.home() / ".cache" / "genbench")
    root.mkdir(parents=True, exist_ok=True)
    return root


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """``--data-root``, else ``BENCH_DATA_ROOT``, else ``<cache>/data``: downloaded datasets."""
    if explicit:
        return Path(explicit)
    if os.environ.get("BENCH_DATA_ROOT"):
        return Path(os.environ["BENCH_DATA_ROOT"])
    return cache_dir() / "data"


def default_out_dir(prefix: str = "") -> Path:
    """``results/<prefix><timestamp>``: where a run (or a scaling study) goes without ``--out``."""
    return Path("results") / datetime.now().strftime(f"{prefix}%Y%m%d-%H%M%S")


def write_json(path: Path, payload: dict):
    Path(path).write_text(json.dumps(payload, indent=2, default=str) + "\n")


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
