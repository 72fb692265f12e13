"""Training checkpoints: what a job needs to continue training, or to be measured again, without redoing it.

``checkpoints/<job>.pt`` holds the weights, the optimisers' state, the trainer's counters and curve,
the batch stream's position, every random generator's state, the model's own training state (the EBM's
replay buffer), the job's configuration hash and a digest of the weights. ``complete`` says whether
training finished: a complete checkpoint is what ``bench evaluate`` measures; an incomplete one (saved
periodically, or when the worker was asked to stop) is where ``bench run`` continues training.

Resuming is exact: the same seed, budget and steps give the same weights whether or not the run was
interrupted (tests check this model by model), because the batch order, the dequantization noise and
every sampler draw come from generators whose state is saved here.

A file is trusted only if it loads, its weights match their digest and its configuration hash is the
job's; anything else is reported as corrupt or stale and the job starts again.
"""
from __future__ import annotations

import hashlib
import io
import random
import time
from pathlib import Path

import numpy as np
import torch

FORMAT = 1


class CheckpointError(Exception):
    """A checkpoint that cannot be used: unreadable, corrupt (digest mismatch) or from another configuration."""


def weights_digest(state_dict: dict) -> str:
    h = hashlib.sha256()
    for name, tensor in state_dict.items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes() if tensor.dtype != torch.bfloat16
                 else tensor.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()[:16]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, *, model, optimizers, job_hash: str, complete: bool, trainer: dict,
         batches: dict | None = None, stopper: dict | None = None, extra: dict | None = None) -> Path:
    """Write a checkpoint atomically (a temporary file, then a rename): a crash mid-write leaves the last one."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT, "job_hash": job_hash, "complete": complete, "saved": time.time(),
        "model": model.name, "image_shape": list(model.image_shape),
        "state_dict": state, "weights_digest": weights_digest(state),
        "model_training_state": model.training_state(),
        "optimizers": [opt.state_dict() for opt in optimizers],
        "trainer": trainer, "batches": batches, "stopper": stopper, "rng": rng_state(), **(extra or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    tmp = path.with_suffix(".pt.tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)
    return path


def load(path: Path, job_hash: str | None = None) -> dict:
    """The checkpoint's payload; ``CheckpointError`` naming what is wrong when it cannot be trusted."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(exc).__name__}): truncated or corrupt") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a genbench checkpoint of format {FORMAT}")
    if weights_digest(payload["state_dict"]) != payload["weights_digest"]:
        raise CheckpointError(f"checkpoint {path}: its weights do not match their digest (corrupt)")
    if job_hash is not None and payload["job_hash"] != job_hash:
        raise CheckpointError(f"checkpoint {path} was saved under another configuration "
                              f"({payload['job_hash']}, this job is {job_hash})")
    return payload


def peek(path: Path) -> dict:
    """A checkpoint's small fields (``complete``, ``trainer`` counters) without reading or checking its
    weights (memory-mapped): enough to say what a job will start from; ``load`` is what trusts a file."""
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=False, mmap=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(exc).__name__})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a genbench checkpoint of format {FORMAT}")
    return {"complete": payload["complete"], "trainer": {"steps": payload["trainer"]["steps"]}}


def restore_model(model, payload: dict) -> None:
    model.load_state_dict(payload["state_dict"])
    model.load_training_state(payload.get("model_training_state") or {})


def restore_optimizers(optimizers, payload: dict) -> None:
    for opt, state in zip(optimizers, payload["optimizers"]):
        opt.load_state_dict(state)
