"""The test likelihood of a trained model: mean NLL (nats per example) and bits/dim, labelled exact or
bound by the model."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from bench.evaluate.metrics import row
from models.base import bits_per_dim


@torch.no_grad()
def test_likelihood(model, x_test: torch.Tensor, device: torch.device, seed: int,
                    batch_size: int = 500, progress: bool = True) -> list[dict]:
    """Mean test NLL (nats per example) and bits/dim, labelled exact or bound by the model."""
    torch.manual_seed(seed)  # fixes the dequantization noise (8bit) so a rerun scores the same
    total, count = 0.0, 0
    for start in tqdm(range(0, len(x_test), batch_size), desc=f"nll {model.name}", leave=False,
                      disable=not progress):
        x = x_test[start:start + batch_size].to(device)
        total += model.nll(x).double().sum().item()
        count += len(x)
    nll = total / count
    kind = model.likelihood
    return [row("test_nll", nll, "nats", kind), row("test_bpd", bits_per_dim(nll, model.dim), "bits/dim", kind)]
