"""Fast FVSBN samplers: the running-logits algorithm of ``FVSBN.sample_with_conditionals`` (the
torch reference) without a Python step per pixel.

All backends take the same inputs, ``outgoing = (W * mask).T`` (row i: pixel i's weights onto the
later pixels), ``bias`` and the uniforms ``u`` (B x D, drawn once by the caller), and draw
``x_i = [u_i < sigmoid(logit_i)]``, so the same uniforms give the same samples. Every update is
applied whatever the draw (adding ``0 * w``, never skipping a zero pixel), so the cost, B D (D - 1) / 2
multiply-adds, does not depend on the weights.

- ``sample_numba`` (CPU), below ``BLOCKED_FROM`` samples: the reference loop compiled, one sample at
  a time, the update of the later logits vectorised; samples split across threads. Since ``x_i`` is
  0 or 1, ``x_i * w`` is exact and the terms are added in the reference's pixel order, so the logits
  are bit-identical to the reference's; only ``sigmoid`` may differ in the last bit (a draw flips only
  if ``u`` is that close to ``p``). From ``BLOCKED_FROM`` samples on, the blocked algorithm below with
  its in-block part compiled (vectorised over the batch) and the products by torch's BLAS: each W
  block is then read once per batch, not once per sample.
- ``sample_blocked`` (any device): pixels in blocks of ``block``; the exact sequential update runs only
  among a block's own pixels (B k^2 / 2 multiply-adds per block), and the block's effect on every
  later pixel is one matrix product, ``logits[:, later] += x[:, block] @ outgoing[block, later]``.
  Python still runs per pixel. Its sums are in another order: conditionals agree to float32 rounding.
- ``sample_cuda_graph``: ``sample_blocked`` captured once per (batch, D) in a CUDA graph and replayed,
  so no Python runs per pixel. Written for CUDA but NEVER RUN (the development machine has no GPU).
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

BLOCK = 64  # pixels per block of the blocked samplers
# Batch from which the blocked compiled sampler beats the per-sample one (one thread, 2-core CPU,
# side by side: per-sample ~44k samples/s at every batch; blocked 22k at 8, 56k at 16, 70k at 64).
BLOCKED_FROM = 16

_kernel = None
_block_kernel = None
_warm = False
_pool: ThreadPoolExecutor | None = None


def numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def _running_logits_kernel():
    """The numba kernel, compiled (or loaded from numba's on-disk cache) on first use."""
    global _kernel
    if _kernel is None:
        from numba import njit, uint64

        # fastmath off: the float32 additions happen in the reference's order, never reassociated.
        @njit(fastmath=False, cache=True, nogil=True)
        def running_logits(outgoing, bias, uniforms, samples, probs, start, stop):
            """Samples start..stop-1 of the batch, pixel by pixel, as the torch reference does."""
            d = uniforms.shape[1]
            one, zero = np.float32(1.0), np.float32(0.0)
            logits = np.empty(d, dtype=np.float32)
            for b in range(start, stop):
                logits[:] = bias
                for i in range(d):
                    p = one / (one + np.exp(-logits[i]))
                    probs[b, i] = p
                    xi = one if uniforms[b, i] < p else zero
                    samples[b, i] = xi
                    # Unsigned indices: no negative-index wraparound check, so the loop vectorises.
                    for j in range(uint64(i + 1), uint64(d)):
                        logits[j] += xi * outgoing[i, j]

        _kernel = running_logits
    return _kernel


def _in_block_kernel():
    """The blocked sampler's in-block kernel, compiled (or loaded from cache) on first use."""
    global _block_kernel
    if _block_kernel is None:
        from numba import njit

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

        _block_kernel = sample_block
    return _block_kernel


def sample_numba(outgoing: torch.Tensor, bias: torch.Tensor, uniforms: torch.Tensor):
    """Samples and conditionals (B x D each, float32) on the CPU; see the module's docstring."""
    if not _warm:  # both kernels at once: a later batch size must not pay for loading the other
        warm_up()
    if len(uniforms) >= BLOCKED_FROM:
        return sample_numba_blocked(outgoing, bias, uniforms)
    return sample_numba_per_sample(outgoing, bias, uniforms)


def sample_numba_blocked(outgoing: torch.Tensor, bias: torch.Tensor, uniforms: torch.Tensor, block: int = BLOCK):
    """The blocked algorithm: the compiled kernel inside a block, one BLAS product across."""
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


def sample_numba_per_sample(outgoing: torch.Tensor, bias: torch.Tensor, uniforms: torch.Tensor):
    """The reference loop compiled, one sample at a time; torch's thread count of threads."""
    global _pool
    kernel = _running_logits_kernel()
    arrays = [np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32) for t in (outgoing, bias, uniforms)]
    samples, probs = np.empty_like(arrays[2]), np.empty_like(arrays[2])
    n = len(samples)
    threads = max(1, min(torch.get_num_threads(), n))
    if threads == 1:
        kernel(*arrays, samples, probs, 0, n)
    else:  # the kernel releases the GIL: one contiguous share of the batch per thread
        if _pool is None or _pool._max_workers < threads:
            _pool = ThreadPoolExecutor(threads)
        share = math.ceil(n / threads)
        jobs = [_pool.submit(kernel, *arrays, samples, probs, lo, min(n, lo + share)) for lo in range(0, n, share)]
        for job in jobs:
            job.result()
    return torch.from_numpy(samples), torch.from_numpy(probs)


def warm_up():
    """Compile (or load from numba's cache) both kernels on a tiny problem, outside any timed region."""
    global _warm
    if numba_available():
        sample_numba_per_sample(torch.zeros(3, 3), torch.zeros(3), torch.rand(2, 3))
        sample_numba_blocked(torch.zeros(3, 3), torch.zeros(3), torch.rand(2, 3), block=2)
        _warm = True


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
    """``sample_blocked`` as one CUDA graph per (device, batch, D) (``models/cuda_graphs.py``): a replay
    launches every pixel's kernels with no Python in between. NEVER RUN: written for CUDA on a machine
    without a GPU."""
    from models import cuda_graphs

    n, d = uniforms.shape
    loop = lambda w, b, u: sample_blocked(w, b, u, block)  # noqa: E731
    return cuda_graphs.replay(_cuda_graphs, (uniforms.device, n, d, block), loop, (outgoing, bias, uniforms))
