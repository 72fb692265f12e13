"""Compiled MADE samplers (numba, CPU): the cached loop of ``MADE.sample_with_conditionals`` and
``MADE8bit.sample_with_conditionals`` (``method="cached"``, the torch reference) without a Python step per
pixel, for the default net of one hidden layer.

State per sample: the first layer's pre-activations a = b1 + W1 x over the pixels drawn so far (H numbers).
At step t, pixel i = order[t]: a += c W1[:, prev] for the pixel drawn at step t - 1 (c = its value x for
binary pixels; for 8-bit ones c = (x / 127.5 - 1) + 1, as the network reads x / 127.5 - 1 and the initial
a = b1 - W1 1 already holds every pixel at value 0), h = relu(a), then pixel i's P output rows
(P = 1 Bernoulli logit, or 3K mixture parameters), out_p = h . Wout[i P + p] + bout[i P + p], and x_i from
the uniforms the caller drew up front: x_i = [u_i < sigmoid(logit)], or ``discretized_logistic.sample``'s
logic with the pixel's two uniforms (component k = #(cumulative softmax weight <= u0) clamped to K - 1,
y = mu_k + exp(max(log s_k, -7)) logit(u1), value rint((y + 1) 127.5) clamped to 0..255; rint rounds half
to even, as torch.round). The same uniforms give the same samples.

The masks' zeros are skipped, not the weights' or the pixels': with the hidden units sorted by degree
(``MADE._compiled_weights``), pixel j feeds only units from ``update_from[j]`` on and pixel i's outputs
read only units before ``read_to[i]``, so each step updates a suffix of a and reads a prefix (about half
of each: a step costs about H (1 + P) / 2 multiply-adds rather than the H (1 + P) that
``MADE.sampling_flops`` counts). Every update in range is applied whatever the draw (adding 0 * w, never
skipping a zero pixel), so the cost does not depend on the weights or the samples.

- Per sample (below ``BLOCKED_FROM`` samples, and a tail of fewer than that after whole chunks): a, 2 KB
  at H = 500, stays in L1. Binary: one loop over the units fuses the update, the relu and the dot
  product, whose additions form one dependent chain. 8-bit: per hidden unit, the P output sums in a loop
  over the outputs (which vectorises), four units per pass; it reads the 12 MB of weights in range once
  per sample, which sets its cost.
- Blocked: ``CHUNK`` samples at a time, a stored H x CHUNK (the sample fastest), so that a step reads
  pixel i's weight rows once per chunk rather than once per sample, and the innermost loops run over the
  chunk's samples: independent lanes, which LLVM vectorises with no sum reassociated. Hidden units four at
  a time, so that each output sum is loaded and stored once per four of its terms. (numba leaves LLVM's
  SLP vectoriser off, so a short constant loop is unrolled into scalar code: hence no chunk of 16.)

What is bit-identical: both forms add each output's terms in the same order (hidden units in sorted
order, from 0.0), so they give the same logits, parameters and samples, whatever the batch; on binary
pixels the state a equals the reference's up to the sign of a zero (x in {0, 1}: each update is exact; the
skipped ones add a masked 0). Against the reference the output sums differ in the last bits (torch's
matrix-vector product adds in another order; exp is another implementation), so conditionals and
parameters agree to float32 rounding, and a draw could differ only where a uniform lies within that
rounding of a decision boundary.

Samples are split across ``torch.get_num_threads()`` threads (the kernels release the GIL). Kernels compile
on first use, or load from numba's on-disk cache; ``warm_up()`` does both outside timed regions. Deeper
nets (two or more hidden layers) have no kernel: ``method="auto"`` falls back to the torch cached loop.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

# Samples per block of the blocked kernels: a compile-time constant, so that the loops over a block's
# samples have a known trip count, long enough for numba's LLVM to vectorise rather than unroll them.
# Blocked, one thread, D = 784, H = 500, 256 samples, best of 10 interleaved: binary 43 GFLOP/s at 32 and
# at 64; 8-bit 35 at 32, 50 at 64 (counted as ``sampling_flops``); 48 and 96, which pad 256 samples to
# 288, did no better.
CHUNK = 64
# Batch from which the blocked kernels beat the per-sample ones (a chunk costs the same however few of its
# samples are used; a tail below this after whole chunks also goes per sample). Same setting, ms per
# sample, per-sample / blocked: binary 0.178 / 0.198 at 10 samples, 0.178 / 0.165 at 12; 8-bit 1.18 /
# 1.26 at 8, 1.18 / 1.03 at 10.
BLOCKED_FROM = {"binary": 12, "mixture": 10}

_kernels: dict | None = None
# The kernels' helpers, compiled with them. Module globals, not closure cells, so that the kernels that call
# them stay cacheable (numba keys a closure's cache on its cells, which differ from process to process).
_mixture_value = None
_unit_step = None
_warm = False
_pool: ThreadPoolExecutor | None = None


def numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def _compiled() -> dict:
    """The four kernels, compiled (or loaded from numba's on-disk cache) on first use."""
    global _kernels, _mixture_value, _unit_step
    if _kernels is None:
        from numba import njit, uint64

        # fastmath off: every float32 sum in the order written, never reassociated or contracted.
        jit = njit(cache=True, nogil=True, fastmath=False)

        @jit
        def mixture_value(q, components, u0, u1):
            """One value 0..255 from the 3K parameters ``q`` (bias added), as discretized_logistic.sample."""
            one, zero = np.float32(1.0), np.float32(0.0)
            top = q[0]
            for k in range(1, components):
                top = max(top, q[k])
            total = zero
            for k in range(components):
                total += np.exp(q[k] - top)
            inverse = one / total
            cumulative = zero
            below = 0
            for k in range(components):
                cumulative += np.exp(q[k] - top) * inverse
                if cumulative <= u0:
                    below += 1
            k = min(below, components - 1)
            log_scale = max(q[2 * components + k], np.float32(-7.0))
            y = q[components + k] + np.exp(log_scale) * np.log(u1 / (one - u1))
            return min(max(np.rint((y + one) * np.float32(127.5)), zero), np.float32(255.0))

        @jit
        def unit_step(value):
            """What the first layer gains when a pixel goes from 0 to ``value``: (value / 127.5 - 1) + 1,
            rounded as the reference's ``to_unit_scale(x) + 1``."""
            return (value / np.float32(127.5) - np.float32(1.0)) + np.float32(1.0)

        _mixture_value, _unit_step = mixture_value, unit_step

        @jit
        def binary_per_sample(a0, w_in, w_out, b_out, order, update_from, read_to, uniforms, samples, probs,
                              start, stop):
            """Samples start..stop-1, one at a time; w_out D x H, b_out D."""
            d, hdim = order.shape[0], a0.shape[0]
            one, zero = np.float32(1.0), np.float32(0.0)
            a = np.empty(hdim, dtype=np.float32)
            for b in range(start, stop):
                a[:] = a0
                prev, x, first = order[0], zero, hdim  # step 0: nothing drawn, nothing to add
                for t in range(d):
                    i = order[t]
                    w, out, read = w_in[prev], w_out[i], read_to[i]
                    acc = zero
                    for h in range(min(first, read)):  # read only
                        acc += max(a[h], zero) * out[h]
                    for h in range(first, read):  # updated and read
                        v = a[h] + x * w[h]
                        a[h] = v
                        acc += max(v, zero) * out[h]
                    for h in range(uint64(max(first, read)), uint64(hdim)):  # updated only
                        a[h] += x * w[h]
                    p = one / (one + np.exp(-(acc + b_out[i])))
                    probs[b, i] = p
                    x = one if uniforms[b, i] < p else zero
                    samples[b, i] = x
                    prev, first = i, update_from[i]

        @jit
        def binary_blocked(a0, w_in, w_out, b_out, order, update_from, read_to, uniforms, samples, probs,
                           start, stop):
            """Samples start..stop-1, CHUNK at a time (state H x CHUNK); the same sums as per sample."""
            d, hdim = order.shape[0], a0.shape[0]
            one, zero = np.float32(1.0), np.float32(0.0)
            lanes, c1, c2, c3 = uint64(CHUNK), uint64(CHUNK), uint64(2 * CHUNK), uint64(3 * CHUNK)
            a = np.empty(hdim * CHUNK, dtype=np.float32)
            step = np.empty(CHUNK, dtype=np.float32)
            acc = np.empty(CHUNK, dtype=np.float32)
            for lo in range(start, stop, CHUNK):
                m = min(CHUNK, stop - lo)
                for h in range(hdim):
                    a[h * CHUNK:(h + 1) * CHUNK] = a0[h]
                step[:] = zero
                prev, first = order[0], hdim
                for t in range(d):
                    i = order[t]
                    w, out, read = w_in[prev], w_out[i], read_to[i]
                    acc[:] = zero
                    # Read only. Unsigned indices: no negative-index wraparound check, so the loops vectorise.
                    h, end = 0, min(first, read)
                    while h + 4 <= end:
                        o0, o1, o2, o3 = out[h], out[h + 1], out[h + 2], out[h + 3]
                        base = uint64(h * CHUNK)
                        for c in range(uint64(0), lanes):
                            acc[c] = (((acc[c] + max(a[base + c], zero) * o0) + max(a[base + c1 + c], zero) * o1)
                                      + max(a[base + c2 + c], zero) * o2) + max(a[base + c3 + c], zero) * o3
                        h += 4
                    while h < end:
                        o, base = out[h], uint64(h * CHUNK)
                        for c in range(uint64(0), lanes):
                            acc[c] += max(a[base + c], zero) * o
                        h += 1
                    # Updated and read.
                    h, end = first, read
                    while h + 4 <= end:
                        w0, w1, w2, w3 = w[h], w[h + 1], w[h + 2], w[h + 3]
                        o0, o1, o2, o3 = out[h], out[h + 1], out[h + 2], out[h + 3]
                        base = uint64(h * CHUNK)
                        for c in range(uint64(0), lanes):
                            x = step[c]
                            v0 = a[base + c] + x * w0
                            v1 = a[base + c1 + c] + x * w1
                            v2 = a[base + c2 + c] + x * w2
                            v3 = a[base + c3 + c] + x * w3
                            a[base + c] = v0
                            a[base + c1 + c] = v1
                            a[base + c2 + c] = v2
                            a[base + c3 + c] = v3
                            acc[c] = (((acc[c] + max(v0, zero) * o0) + max(v1, zero) * o1)
                                      + max(v2, zero) * o2) + max(v3, zero) * o3
                        h += 4
                    while h < end:
                        wh, o, base = w[h], out[h], uint64(h * CHUNK)
                        for c in range(uint64(0), lanes):
                            v = a[base + c] + step[c] * wh
                            a[base + c] = v
                            acc[c] += max(v, zero) * o
                        h += 1
                    # Updated only.
                    h = max(first, read)
                    while h + 4 <= hdim:
                        w0, w1, w2, w3 = w[h], w[h + 1], w[h + 2], w[h + 3]
                        base = uint64(h * CHUNK)
                        for c in range(uint64(0), lanes):
                            x = step[c]
                            a[base + c] += x * w0
                            a[base + c1 + c] += x * w1
                            a[base + c2 + c] += x * w2
                            a[base + c3 + c] += x * w3
                        h += 4
                    while h < hdim:
                        wh, base = w[h], uint64(h * CHUNK)
                        for c in range(uint64(0), lanes):
                            a[base + c] += step[c] * wh
                        h += 1
                    for c in range(m):
                        p = one / (one + np.exp(-(acc[c] + b_out[i])))
                        probs[lo + c, i] = p
                        step[c] = one if uniforms[lo + c, i] < p else zero
                        samples[lo + c, i] = step[c]
                    prev, first = i, update_from[i]

        @jit
        def mixture_per_sample(a0, w_in, w_out, b_out, order, update_from, read_to, uniforms, samples, params,
                               start, stop):
            """8-bit samples start..stop-1, one at a time; w_out D x H x P, b_out D x P, uniforms N x D x 2.
            The loops over the P outputs vectorise; hidden units four at a time."""
            d, hdim, p_out = order.shape[0], a0.shape[0], w_out.shape[2]
            zero = np.float32(0.0)
            n_out = uint64(p_out)
            a = np.empty(hdim, dtype=np.float32)
            acc = np.empty(p_out, dtype=np.float32)
            for b in range(start, stop):
                a[:] = a0
                prev, x, first = order[0], zero, hdim  # step 0: nothing drawn, nothing to add
                for t in range(d):
                    i = order[t]
                    w, out, read = w_in[prev], w_out[i], read_to[i]
                    acc[:] = zero
                    h = 0
                    while h < read:  # read, and updated from ``first`` on
                        if h + 4 <= read:
                            if h >= first:
                                a[h] += x * w[h]
                            if h + 1 >= first:
                                a[h + 1] += x * w[h + 1]
                            if h + 2 >= first:
                                a[h + 2] += x * w[h + 2]
                            if h + 3 >= first:
                                a[h + 3] += x * w[h + 3]
                            r0, r1 = max(a[h], zero), max(a[h + 1], zero)
                            r2, r3 = max(a[h + 2], zero), max(a[h + 3], zero)
                            o0, o1, o2, o3 = out[h], out[h + 1], out[h + 2], out[h + 3]
                            for p in range(uint64(0), n_out):
                                acc[p] = (((acc[p] + r0 * o0[p]) + r1 * o1[p]) + r2 * o2[p]) + r3 * o3[p]
                            h += 4
                        else:
                            if h >= first:
                                a[h] += x * w[h]
                            r, o = max(a[h], zero), out[h]
                            for p in range(uint64(0), n_out):
                                acc[p] += r * o[p]
                            h += 1
                    for h in range(uint64(max(first, read)), uint64(hdim)):  # updated only
                        a[h] += x * w[h]
                    for p in range(p_out):
                        params[b, i, p] = acc[p] + b_out[i, p]
                    value = _mixture_value(params[b, i], p_out // 3, uniforms[b, i, 0], uniforms[b, i, 1])
                    samples[b, i] = value
                    x = _unit_step(value)
                    prev, first = i, update_from[i]

        @jit
        def mixture_blocked(a0, w_in, w_out, b_out, order, update_from, read_to, uniforms, samples, params,
                            start, stop):
            """8-bit samples start..stop-1, CHUNK at a time (state H x CHUNK); the same sums as per sample.
            Per four hidden units: their update (from ``first`` on) and relu, one loop per unit, then each
            output's four terms."""
            d, hdim, p_out = order.shape[0], a0.shape[0], w_out.shape[2]
            zero = np.float32(0.0)
            lanes = uint64(CHUNK)
            a = np.empty((hdim, CHUNK), dtype=np.float32)
            r = np.empty((4, CHUNK), dtype=np.float32)  # relu of four hidden units, over the chunk
            step = np.empty(CHUNK, dtype=np.float32)
            acc = np.empty((p_out, CHUNK), dtype=np.float32)  # output sums, P x CHUNK
            r0, r1, r2, r3 = r[0], r[1], r[2], r[3]
            for lo in range(start, stop, CHUNK):
                m = min(CHUNK, stop - lo)
                for h in range(hdim):
                    a[h, :] = a0[h]
                step[:] = zero
                prev, first = order[0], hdim
                for t in range(d):
                    i = order[t]
                    w, out, read = w_in[prev], w_out[i], read_to[i]
                    acc[:, :] = zero
                    h = 0
                    while h < read:  # read, and updated from ``first`` on
                        rows = 4 if h + 4 <= read else 1
                        for k in range(rows):
                            row, relu = a[h + k], r[k]
                            # Unsigned indices: no negative-index wraparound check, so the loops vectorise.
                            if h + k >= first:
                                wh = w[h + k]
                                for c in range(uint64(0), lanes):
                                    v = row[c] + step[c] * wh
                                    row[c] = v
                                    relu[c] = max(v, zero)
                            else:
                                for c in range(uint64(0), lanes):
                                    relu[c] = max(row[c], zero)
                        if rows == 4:
                            for p in range(p_out):
                                q = acc[p]
                                o0, o1, o2, o3 = out[h, p], out[h + 1, p], out[h + 2, p], out[h + 3, p]
                                for c in range(uint64(0), lanes):
                                    q[c] = (((q[c] + r0[c] * o0) + r1[c] * o1) + r2[c] * o2) + r3[c] * o3
                        else:
                            for p in range(p_out):
                                q, o = acc[p], out[h, p]
                                for c in range(uint64(0), lanes):
                                    q[c] += r0[c] * o
                        h += rows
                    for h in range(max(first, read), hdim):  # updated only
                        row, wh = a[h], w[h]
                        for c in range(uint64(0), lanes):
                            row[c] += step[c] * wh
                    for c in range(m):
                        for p in range(p_out):
                            params[lo + c, i, p] = acc[p, c] + b_out[i, p]
                        value = _mixture_value(params[lo + c, i], p_out // 3, uniforms[lo + c, i, 0],
                                               uniforms[lo + c, i, 1])
                        samples[lo + c, i] = value
                        step[c] = _unit_step(value)
                    prev, first = i, update_from[i]

        _kernels = {"binary": (binary_per_sample, binary_blocked), "mixture": (mixture_per_sample, mixture_blocked)}
    return _kernels


def _shares(kernel, lo: int, hi: int, unit: int, threads: int) -> list:
    """Samples lo..hi-1 as at most ``threads`` contiguous shares of whole units (chunks or samples)."""
    units = math.ceil((hi - lo) / unit)
    if units == 0:
        return []
    share = math.ceil(units / min(threads, units)) * unit
    return [(kernel, start, min(hi, start + share)) for start in range(lo, hi, share)]


def _run(kind: str, weights, uniforms: np.ndarray, outputs, blocked: bool | None = None):
    """Run ``kind``'s kernels over the batch: whole chunks blocked, a tail of fewer than ``BLOCKED_FROM``
    samples (all of a batch that small) per sample; in contiguous shares over torch's thread count."""
    global _pool
    per_sample, blocked_kernel = _compiled()[kind]
    n = len(uniforms)
    if blocked is None:
        tail = n % CHUNK
        blocked_to = n - tail if tail < BLOCKED_FROM[kind] else n
    else:
        blocked_to = n if blocked else 0
    threads = max(1, torch.get_num_threads())
    tasks = _shares(blocked_kernel, 0, blocked_to, CHUNK, threads) + _shares(per_sample, blocked_to, n, 1, threads)
    if threads == 1 or len(tasks) == 1:
        for kernel, lo, hi in tasks:
            kernel(*weights, uniforms, *outputs, lo, hi)
        return
    # The kernels release the GIL: each share on its own thread, writing its own rows.
    if _pool is None or _pool._max_workers < threads:
        _pool = ThreadPoolExecutor(threads)
    jobs = [_pool.submit(kernel, *weights, uniforms, *outputs, lo, hi) for kernel, lo, hi in tasks]
    for job in jobs:
        job.result()


def sample_binary(weights, uniforms: torch.Tensor, blocked: bool | None = None):
    """Samples and conditionals (N x D each, float32) of the binary MADE. ``weights`` (``MADE._compiled_weights``),
    float32 / int64 numpy arrays: a0 (H), w_in (D x H: pixel j's weights into the hidden units), w_out (D x H),
    b_out (D), order (D), update_from (D: pixel j's weights are zero on hidden units before it) and read_to
    (D: pixel i's outputs read no hidden unit from it on); ``blocked``: force one form (None: by size)."""
    if not _warm:  # all kernels at once: a later batch size must not pay for loading another
        warm_up()
    u = np.ascontiguousarray(uniforms.detach().cpu().numpy(), dtype=np.float32)
    samples, probs = np.empty_like(u), np.empty_like(u)
    _run("binary", weights, u, (samples, probs), blocked)
    return torch.from_numpy(samples), torch.from_numpy(probs)


def sample_mixture(weights, uniforms: torch.Tensor, blocked: bool | None = None):
    """Values 0..255 (N x D) and mixture parameters (N x D x P, float32) of the 8-bit MADE. ``weights`` as
    ``sample_binary``'s with w_out D x H x P and b_out D x P; ``uniforms`` N x D x 2."""
    if not _warm:
        warm_up()
    u = np.ascontiguousarray(uniforms.detach().cpu().numpy(), dtype=np.float32)
    n, d = u.shape[:2]
    p_out = weights[2].shape[2]
    samples, params = np.empty((n, d), dtype=np.float32), np.empty((n, d, p_out), dtype=np.float32)
    _run("mixture", weights, u, (samples, params), blocked)
    return torch.from_numpy(samples), torch.from_numpy(params)


def warm_up():
    """Compile (or load from numba's cache) every kernel on a tiny problem, outside any timed region."""
    global _warm
    if numba_available():
        _warm = True  # before the calls below, which would otherwise come back here
        d, h = 2, 5
        order, update_from, read_to = np.arange(d), np.zeros(d, np.int64), np.full(d, h, np.int64)
        a0, w_in = np.zeros(h, np.float32), np.zeros((d, h), np.float32)
        binary = (a0, w_in, np.zeros((d, h), np.float32), np.zeros(d, np.float32), order, update_from, read_to)
        mixture = (a0, w_in, np.zeros((d, h, 3), np.float32), np.zeros((d, 3), np.float32), order, update_from,
                   read_to)
        for blocked in (False, True):
            sample_binary(binary, torch.rand(2, d), blocked)
            sample_mixture(mixture, torch.rand(2, d, 2), blocked)
