"""Run-time self-checks on a trained model: its numbers hold on this run, not just in the unit tests.

Two sources, one list per job (``outcome.info["checks"]``, shown in the report's Checks section):
- the model's own ``self_checks(x_test)`` (models/base.py): e.g. the sampler's conditionals against the
  likelihood's, inverse(forward(x)) against x, importance-weighted bounds against K;
- the harness's FID check: FID recomputed from the stored features by an independent formula (scipy's
  matrix square root, float64) must equal torch-fidelity's to ``FID_RTOL``.

A check that raises is recorded as failed with the exception, never lost.
"""
from __future__ import annotations

import traceback

import torch

FID_RTOL = 1e-4
CHECK_BATCH = 64  # test images handed to self_checks: a batch, seconds on a CPU
KEYS = ("check", "passed", "value", "tolerance", "detail")


def check(name: str, passed: bool, value: float, tolerance: float, detail: str) -> dict:
    return {"check": name, "passed": bool(passed), "value": float(value), "tolerance": float(tolerance),
            "detail": detail}


def fid_recompute_check(reported: float, sample_features, reference_features) -> dict:
    """torch-fidelity's FID against scipy's Frechet distance on the same stored features."""
    from bench.evaluate.uncertainty import frechet_distance

    recomputed = frechet_distance(sample_features, reference_features)
    error = abs(recomputed - reported) / max(abs(recomputed), 1e-12)
    return check("fid_recompute", error <= FID_RTOL, error, FID_RTOL,
                 f"torch-fidelity {reported:.6g} vs scipy sqrtm {recomputed:.6g} on the stored features "
                 f"(relative difference)")


def model_checks(model, x_test: torch.Tensor, device) -> list[dict]:
    """``model.self_checks`` on a batch of test images, each entry validated; an exception is a failed check."""
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            found = model.self_checks(x_test[:CHECK_BATCH].to(device))
    except Exception as exc:  # noqa: BLE001 - a crashing check is a failed check
        return [check(f"{model.name}.self_checks", False, float("nan"), float("nan"),
                      f"raised {type(exc).__name__}: {exc}; " + traceback.format_exc(limit=2).replace("\n", " "))]
    out = []
    for entry in found:
        missing = [k for k in KEYS if k not in entry]
        if missing:
            out.append(check(str(entry.get("check", "unnamed")), False, float("nan"), float("nan"),
                             f"malformed check: lacks {missing}"))
        else:
            out.append(check(*(entry[k] for k in KEYS)))
    return out


def failed(checks: list[dict]) -> list[str]:
    return [c["check"] for c in checks if not c["passed"]]
