"""A sampler loop replayed as a CUDA graph: every kernel of the D pixel steps launched by one replay, with
no Python between them, so that at batch 1 the GPU's launch latency, not the interpreter, sets the cost.

``replay(cache, key, loop, inputs)`` captures ``loop(*inputs)`` once per ``key`` into a graph (after one
warm-up run on a side stream, as ``torch.cuda.graph`` requires), keeps static copies of ``inputs``, and on
each later call copies the new inputs in, replays, and returns clones of the outputs (the static outputs
are overwritten by the next replay).

What a loop may do inside a capture: tensor operations on the capturing device only. No ``.item()``,
``.tolist()``, ``bool(tensor)`` or host copy (each synchronises and breaks the capture), no new random
draws (draw the uniforms before, and pass them in), and no shape that depends on values. Tensors the loop
reads but is not given (a model's parameters) are read at their capture-time addresses: put their
``data_ptr()`` in ``key`` so that moved or reallocated weights are captured afresh; in-place updates (an
optimiser step) are seen by the next replay.

Written for CUDA and NEVER RUN: the development machine has no GPU. ``tests/test_cuda.py`` checks each
graph sampler against its torch reference where a GPU is present (``.ci/gpu``).
"""
from __future__ import annotations

from typing import Callable

import torch


def replay(cache: dict, key, loop: Callable, inputs: tuple) -> tuple:
    """``loop(*inputs)`` (a tuple of tensors) from the graph captured for ``key``; see the module's docstring."""
    if key not in cache:
        static_inputs = tuple(t.clone() for t in inputs)
        device = static_inputs[0].device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # the warm-up outside the capture allocates the loop's workspaces
            loop(*static_inputs)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_outputs = loop(*static_inputs)
        cache[key] = (graph, static_inputs, static_outputs)
    graph, static_inputs, static_outputs = cache[key]
    for static, value in zip(static_inputs, inputs):
        static.copy_(value)
    graph.replay()
    return tuple(t.clone() for t in static_outputs)


def parameters_key(module: torch.nn.Module) -> tuple:
    """Where a module's parameters and buffers live: part of a graph's key (a move or reload recaptures)."""
    return tuple((t.device, t.data_ptr()) for t in [*module.parameters(), *module.buffers()])
