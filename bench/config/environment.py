"""What a result was measured with: package versions, the git commit, the machine.

Written into every run's ``config.json`` and every job's outcome, so a figure carries its provenance.
"""
from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ["torch", "torchvision", "torch-fidelity", "numpy", "scipy", "scikit-learn", "pandas", "seaborn",
            "matplotlib", "mlxtend"]


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + ("-dirty" if dirty else "")) if commit else "unknown"


def git_commit_time(commit: str | None = None) -> str | None:
    """The committer date (ISO 8601) of ``commit`` (default HEAD) in this source tree's repository, or None
    where there is no repository or no such commit: the order in which a history places runs."""
    here = Path(__file__).resolve().parent
    ref = (commit or "HEAD").removesuffix("-dirty")
    try:
        out = subprocess.run(["git", "show", "-s", "--format=%cI", ref, "--"], cwd=here, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def hardware(device) -> dict:
    import torch

    from bench.config.job import job_threads  # the jobs' thread count, not this (parent) process's

    info = {"host": platform.node(), "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": job_threads()}
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
