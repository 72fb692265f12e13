"""Where the suite keeps its caches and looks for downloaded datasets."""
from __future__ import annotations

import os
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
