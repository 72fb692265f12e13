"""Timing a call on the device it runs on: ``synchronize`` before and after, so that a GPU's queued
work is inside the measured interval; and the labels a conditional model is sampled with when none are asked.

Used by training (its clock) and by evaluation (sampling speed, the steps curve, the scaling study) alike.
"""
from __future__ import annotations

import time

import torch


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def timed_sample(model, n: int, labels, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    model.sample(n, labels=labels) if labels is not None else model.sample(n)
    synchronize(device)
    return time.perf_counter() - start


def sample_labels(model, n: int, device: torch.device):
    if not getattr(model, "conditional", False):
        return None
    return torch.arange(n, device=device) % model.num_classes
