"""Fast FVSBN samplers: the running-logits algorithm of ``FVSBN.sample_with_conditionals`` (the
torch reference) without a Python step per pixel, and with most of its work in matrix products.

All backends take the same inputs, ``outgoing = (W * mask).T`` (row i: pixel i's weights onto the
later pixels), ``bias`` and the uniforms ``u`` (B x D, drawn once by the caller), and draw
``x_i = [u_i < sigmoid(logit_i)]``, so the same uniforms give the same samples. The blocked backends
sum a logit's terms in a different order than the reference (a block's terms inside one matrix
product), so their conditionals agree with it to float32 rounding (~1e-7), and a draw can differ only
when ``u`` falls within that of ``p``.

Blocking: pixels go in blocks of ``block``. Inside a block the exact sequential update runs only
among the block's own pixels (B k^2 / 2 multiply-adds per block); the block's effect on every later
pixel is then one matrix product, ``logits[later] += outgoing[block, later]^T x[block]``. Summed over
blocks that is the B D (D - 1) / 2 multiply-adds of the plain loop, nearly all of it at GEMM speed.
Every update is applied whatever the draw (adding ``0 * w``, never skipping a zero pixel), so the
cost does not depend on the weights.

- ``sample_numba`` (CPU): the in-block part compiled with numba, vectorised over the batch (logits
  held pixel-major, D x B), the products by torch's BLAS (torch's thread count).
- ``sample_blocked`` (any device): the same blocking in plain torch; Python still runs per pixel.
- ``sample_cuda_graph``: ``sample_blocked`` captured once per (batch, D) in a CUDA graph and replayed,
  so no Python runs per pixel. Written for CUDA but NEVER RUN (the development machine has no GPU).
"""
from __future__ import annotations

import numpy as np
import torch

BLOCK = 64  # pixels per block: fastest of 16..128 at batch 16 and 1,024 on the development CPU

_kernel = None


def numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def _in_block_kernel():
    """The numba kernel, compiled (or loaded from numba's on-disk cache) on first use."""
    global _kernel
    if _kernel is None:
        from numba import njit

        # fastmath off: no reassociation, the in-block terms are added in pixel order.
        @njit(fastmath=False, cache=True, nogil=True)
        def sample_block(outgoing, logits, uniforms, samples, probs, start, stop):
            """Pixels start..stop-1 in order, for the whole batch; arrays are pixel-major (D x B)."""
            n = logits.shape[1]
            one, zero = np.float32(1.0), np.float32(0.0)
            for i in range(start, stop):
                for b in range(n):
                    p = one / (one + np.exp(-logits[i, b]))
                    probs[i, b] = p
                    samples[i, b] = one if uniforms[i, b] < p else zero
                for j in range(i + 1, stop):
                    w = outgoing[i, j]
                    for b in range(n):  # contiguous over the batch: vectorises
                        logits[j, b] += samples[i, b] * w

        _kernel = sample_block
    return _kernel


def sample_numba(outgoing: torch.Tensor, bias: torch.Tensor, uniforms: torch.Tensor, block: int = BLOCK):
    """Samples and conditionals (B x D each, float32) on the CPU: numba in a block, BLAS across."""
    kernel = _in_block_kernel()
    n, d = uniforms.shape
    outgoing = outgoing.detach().float().contiguous()
    logits = bias.detach().float()[:, None].repeat(1, n)
    u = uniforms.float().T.contiguous()
    x, probs = torch.empty(d, n), torch.empty(d, n)
    arrays = [t.numpy() for t in (outgoing, logits, u, x, probs)]  # views: numba writes the tensors
    for start in range(0, d, block):
        stop = min(d, start + block)
        kernel(*arrays, start, stop)
        if stop < d:
            logits[stop:].addmm_(outgoing[start:stop, stop:].T, x[start:stop])
    return x.T, probs.T


def warm_up():
    """Compile (or load from cache) the numba kernel on a tiny problem, outside any timed region."""
    if numba_available():
        sample_numba(torch.zeros(3, 3), torch.zeros(3), torch.rand(2, 3), block=2)


def sample_blocked(outgoing: torch.Tensor, bias: torch.Tensor, uniforms: torch.Tensor, block: int = BLOCK):
    """Blocked running logits: sequential only inside a block, one matrix product per block."""
    n, d = uniforms.shape
    x = torch.zeros(n, d, device=uniforms.device, dtype=uniforms.dtype)
    probs = torch.empty_like(x)
    logits = bias.expand(n, d).clone()
    for start in range(0, d, block):
        stop = min(d, start + block)
        local = logits[:, start:stop]  # a view: the in-block updates land in ``logits``
        for i in range(start, stop):
            k = i - start
            p = torch.sigmoid(local[:, k])
            probs[:, i] = p
            xi = (uniforms[:, i] < p).to(x.dtype)
            x[:, i] = xi
            local[:, k + 1:].addr_(xi, outgoing[i, i + 1:stop])
        if stop < d:
            logits[:, stop:].addmm_(x[:, start:stop], outgoing[start:stop, stop:])
    return x, probs


_cuda_graphs: dict = {}


def sample_cuda_graph(outgoing: torch.Tensor, bias: torch.Tensor, uniforms: torch.Tensor, block: int = BLOCK):
    """``sample_blocked`` as one CUDA graph per (device, batch, D): a replay launches every pixel's
    kernels with no Python in between. NEVER RUN: written for CUDA on a machine without a GPU."""
    n, d = uniforms.shape
    key = (uniforms.device, n, d, block)
    if key not in _cuda_graphs:
        inputs = (outgoing.clone(), bias.clone(), uniforms.clone())
        side = torch.cuda.Stream(uniforms.device)
        side.wait_stream(torch.cuda.current_stream(uniforms.device))
        with torch.cuda.stream(side):  # warm-up outside the capture, as torch.cuda.graph requires
            sample_blocked(*inputs, block)
        torch.cuda.current_stream(uniforms.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = sample_blocked(*inputs, block)
        _cuda_graphs[key] = (graph, inputs, outputs)
    graph, inputs, outputs = _cuda_graphs[key]
    for static, value in zip(inputs, (outgoing, bias, uniforms)):
        static.copy_(value)
    graph.replay()
    return outputs[0].clone(), outputs[1].clone()
