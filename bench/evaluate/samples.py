"""Drawing a model's samples as uint8 images, the form every sample-quality metric takes."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from bench.instruments.timing import sample_labels


@torch.no_grad()
def draw_samples(model, n: int, device: torch.device, batch_size: int = 500, labels: torch.Tensor | None = None,
                 progress: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``n`` samples as uint8 images (N x C x H x W) on the CPU, with the labels asked for (conditional)."""
    if model.conditional and labels is None:
        labels = sample_labels(model, n, torch.device("cpu"))
    out = []
    for start in tqdm(range(0, n, batch_size), desc=f"sample {model.name}", leave=False, disable=not progress):
        m = min(batch_size, n - start)
        if model.conditional:
            x = model.sample(m, labels=labels[start:start + m].to(device))
        else:
            x = model.sample(m)
        out.append(to_uint8(x.cpu()))
    return torch.cat(out), labels


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255.0).round().to(torch.uint8)
