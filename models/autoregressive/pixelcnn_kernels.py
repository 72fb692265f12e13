"""Compiled PixelCNN samplers: the cached algorithm of ``PixelCNN._sample_cached`` (the torch reference)
without ~20 Python-dispatched torch ops per pixel step, for the binary model (one Bernoulli logit per
pixel) and the 8-bit one (a discretized logistic mixture per subpixel, PixelCNN++ colour coupling).

The algorithm is the reference's: each layer keeps two rows of activations (the row above, final, and the
current one, filled left to right); row by row, column by column, every layer whose valid span holds the
column computes that one position, a (c_in x kh x kw) input patch times the masked kernel (plus the skip
path for the residual layers), and at an image column the 1x1 head and the draw follow. The border
positions left of the image see no pixel of the row and those right of it see all of it, so computing
them in the same left-to-right sweep reads exactly what the reference's per-row passes read. The rows
above the image (the layers on the all-zero top padding) do not depend on the sample: they are computed
once per call, in torch, as the reference computes them. Both forms take the uniforms the caller drew
(``draw_uniforms``) and draw as the reference does:

- binary: ``x = [u < sigmoid(logit)]``;
- 8-bit, channel by channel (R, G, B): the means shifted by ``tanh(coefficient) * x_earlier`` on the [-1, 1]
  scale, earlier channels in order (``PixelCNN8bit.pixel_params``); then ``models.discretized_logistic.sample``:
  softmax of the K weight logits, cumulative sum, ``k = #(cumulative <= u0)`` clamped to K - 1,
  ``y = mean_k + exp(max(log_scale_k, -7)) * logit(u1)``, ``value = clamp(rint((y + 1) 127.5), 0, 255)``
  (round half to even, as ``torch.round``), and the pixel enters the image as ``value / 127.5 - 1``.

What is exact: the algorithm, the order of the draws, every comparison with a uniform, and the draw's
arithmetic (float32, no fast-math, IEEE division). The products sum in another order than torch's (the
per-sample kernel lets LLVM reassociate them), so activations, logits and mixture parameters agree with
the reference to float32 rounding (~1e-7 relative): a draw can differ only where a uniform lies that close
to a threshold (never seen in the tests, which compare samples for equality).

Two forms, both ``method="compiled"``:

- ``sample_per_sample`` (below ``BATCHED_FROM`` samples, and at any batch with more than one torch
  thread): one numba kernel runs the whole loop, ``CHUNK`` samples in lockstep (a layer's weights come from
  L2 once per position for all of them), activations channel-last so that a position's patch is two
  contiguous runs, only the taps the masks keep (5 of a 2 x 3 type-B kernel's 6, 24 of a 4 x 7 type-A
  kernel's 28), relu'd copies kept so that relu is computed once per activation. Samples are split
  across ``torch.get_num_threads()`` threads (the kernel releases the GIL). It performs 78% of
  ``PixelCNN.sampling_flops`` (the masked taps and the rows above are the rest).
- ``sample_batched`` (from ``BATCHED_FROM`` samples on, one thread): the per-position products become
  (B x K) @ (K x F) matrix products by torch's BLAS, on strided views with no copies. Activations are
  stored batch-major, (B, columns, 2 rows, F + 1), the two rows interleaved per column, so that a
  position's whole 2 x 3 patch (both rows, three columns) is one contiguous run of 6 (F + 1) numbers per
  sample and the patch matrix has a leading dimension; a constant-one channel carries the bias into the
  same product, and the weight matrix has zeros at the masked tap and at the other channels' ones (two
  versions, one per row parity). The first layer reads the image kept the same way, its last kh rows as
  a ring (kh versions). Per position and layer one ``addmm_`` into the running residual sum and one
  ``clamp`` into the relu'd store; the head is two ``addmm`` and the draw one numba call for the block,
  on pixel-major arrays (a pixel's rows for the block are contiguous). It performs 99% of
  ``sampling_flops`` (dense taps; the rows above once per call, the ones channels a little more). Python
  still runs per position (~16 torch calls), so it pays only from tens of samples on; with more threads,
  BLAS threads on these thin products scale worse than the per-sample kernel's (2 threads, 64 to 1,024
  samples: per-sample 963-1,348 samples/s, batched 767-1,096; with the other core busy, batched 35-83).

The switch-over and the block size were measured (28x28, default model, one thread, 2-core CPU, best of
3 interleaved runs, samples/s per-sample / batched in blocks of 128): binary, 32 samples 750 / 480, 48:
562 / 551, 64: 567 / 864, 128: 568 / 923, 1,024: 591 / 889 (blocks of 256: 997); 8-bit, 32: 539 / 420,
64: 547 / 599, 128: 537 / 763. ``warm_up()`` compiles (or loads numba's on-disk cache of) the kernels
outside any timed region.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import nn

try:
    from numba import njit
except ImportError:  # the torch samplers still work; the compiled ones refuse
    njit = None

CHUNK = 8  # samples the per-sample kernel runs in lockstep
BATCHED_FROM = 64  # batch from which the batched form runs (one torch thread; see the docstring)
BATCH_BLOCK = 256  # samples per pass of the batched form
MIN_LOG_SCALE = -7.0  # as models.discretized_logistic

_warm = False
_pool: ThreadPoolExecutor | None = None


def numba_available() -> bool:
    return njit is not None


def _jit(**flags):
    def wrap(fn):
        # error_model="numpy": IEEE results (logit(1) = inf, as torch), no zero-division checks.
        return njit(cache=True, nogil=True, error_model="numpy", **flags)(fn) if njit is not None else fn
    return wrap


# --- numba kernels ---------------------------------------------------------------------------------
@_jit(fastmath={"reassoc", "contract"})
def _dense(x, m, k, wt, bias, out, residual):
    """out[s, o] = bias[o] + x[s, :k] . wt[o, :k] (+ out[s, o] when ``residual``), samples s < m; four
    outputs at a time share each read of x."""
    f = wt.shape[0]
    o = 0
    while o + 4 <= f:
        for s in range(m):
            a0 = np.float32(0.0)
            a1 = np.float32(0.0)
            a2 = np.float32(0.0)
            a3 = np.float32(0.0)
            for kk in range(k):
                v = x[s, kk]
                a0 += v * wt[o, kk]
                a1 += v * wt[o + 1, kk]
                a2 += v * wt[o + 2, kk]
                a3 += v * wt[o + 3, kk]
            if residual:
                out[s, o] += bias[o] + a0
                out[s, o + 1] += bias[o + 1] + a1
                out[s, o + 2] += bias[o + 2] + a2
                out[s, o + 3] += bias[o + 3] + a3
            else:
                out[s, o] = bias[o] + a0
                out[s, o + 1] = bias[o + 1] + a1
                out[s, o + 2] = bias[o + 2] + a2
                out[s, o + 3] = bias[o + 3] + a3
        o += 4
    while o < f:
        for s in range(m):
            a0 = np.float32(0.0)
            for kk in range(k):
                a0 += x[s, kk] * wt[o, kk]
            if residual:
                out[s, o] += bias[o] + a0
            else:
                out[s, o] = bias[o] + a0
        o += 1


@_jit(inline="always")  # a call between kernels costs two atomic reference counts per array passed
def _draw(head, s, u, values, stats, row, components, unit, mix):
    """One pixel of one sample from the head's outputs there (``head[s]``) and its uniforms ``u[row]``:
    ``values[row]`` (C) and ``stats[row]`` (binary: the probability; 8-bit: C x 3K mixture parameters as
    ``pixel_params`` gives them) and ``unit``, the values as the image holds them (binary 0/1, 8-bit on the
    [-1, 1] scale). ``mix``: room for K mixture weights. Rows, not array views: a view costs two atomic
    reference counts."""
    one, zero = np.float32(1.0), np.float32(0.0)
    if components == 0:
        p = one / (one + np.exp(-head[s, 0]))
        stats[row, 0] = p
        x = one if u[row, 0] < p else zero
        values[row, 0] = x
        unit[0] = x
        return
    c = values.shape[1]
    nk = components
    coupling = 3 * nk * c  # the tanh coefficients: pairs (1, 0), (2, 0), (2, 1), ..., K each
    pair = 0
    for ch in range(c):
        base = 3 * nk * ch
        for kk in range(nk):
            mean = head[s, base + nk + kk]
            for e in range(ch):
                mean = mean + np.tanh(head[s, coupling + (pair + e) * nk + kk]) * unit[e]
            stats[row, base + kk] = head[s, base + kk]
            stats[row, base + nk + kk] = mean
            stats[row, base + 2 * nk + kk] = head[s, base + 2 * nk + kk]
        pair += ch
        top = head[s, base]
        for kk in range(1, nk):
            top = max(top, head[s, base + kk])
        total = zero
        for kk in range(nk):
            mix[kk] = np.exp(head[s, base + kk] - top)
            total += mix[kk]
        u0, u1 = u[row, 2 * ch], u[row, 2 * ch + 1]
        cumulative = zero
        pick = 0
        for kk in range(nk):
            cumulative += mix[kk] / total
            if cumulative <= u0:
                pick += 1
        pick = min(pick, nk - 1)
        log_scale = max(head[s, base + 2 * nk + pick], np.float32(MIN_LOG_SCALE))
        y = stats[row, base + nk + pick] + np.exp(log_scale) * np.log(u1 / (one - u1))
        value = min(max(np.rint((y + one) * np.float32(127.5)), zero), np.float32(255.0))
        values[row, ch] = value
        unit[ch] = value / np.float32(127.5) - one


@_jit()
def _sample_rows(w0, b0, wb, bb, h1, hb1, h2, hb2, top, u, values, stats, h, w, half0, components, start, stop,
                 chunk):
    """Samples start..stop-1 of the batch, ``chunk`` at a time in lockstep, pixel by pixel.

    Weights (outputs x taps, only the taps the masks keep): ``w0`` the first layer's (taps: its rows above,
    then the current row left of the centre; within a row column-major, channels inner), ``wb`` the residual
    layers' (above: columns q-1, q, q+1; current: q-1, q), ``h1``/``h2`` the head's; ``top`` every layer's
    relu'd row above the image. ``u`` (N H W x uniforms per pixel), ``values`` (N H W x C) and ``stats``
    (N H W x per-pixel statistics), sample-major, as ``_draw`` reads and writes them."""
    n_conv = wb.shape[0] + 1
    f = b0.shape[0]
    n_out = hb2.shape[0]
    c = values.shape[1]
    t0 = w0.shape[1]
    r = half0 + n_conv - 1
    ncols = w + 2 * r
    k0 = 2 * half0 + 1
    zero = np.float32(0.0)
    img = np.zeros((chunk, h + r, ncols, c), dtype=np.float32)  # the padded image, channel-last
    rel = np.zeros((chunk, n_conv, 2, ncols, f), dtype=np.float32)  # relu'd activations, row parity
    raw = np.zeros((chunk, f), dtype=np.float32)  # the residual sum at the current position
    xb = np.zeros((chunk, max(t0, 5 * f)), dtype=np.float32)  # one position's patch per sample
    hid = np.zeros((chunk, f), dtype=np.float32)
    head = np.zeros((chunk, n_out), dtype=np.float32)
    unit = np.zeros(c, dtype=np.float32)
    mix = np.zeros(max(components, 1), dtype=np.float32)
    for lo in range(start, stop, chunk):
        m = min(chunk, stop - lo)
        img[:] = zero
        rel[:] = zero
        for s in range(m):
            for l in range(n_conv):
                rel[s, l, (r - 1) & 1] = top[l]
        for i in range(h):
            p = i + r
            pc = p & 1
            pa = 1 - pc
            for q in range(half0, ncols - half0):
                last = min(q - half0, ncols - half0 - 1 - q, n_conv - 1)  # layers whose span holds q
                for s in range(m):
                    t = 0
                    for dr in range(half0):
                        for dc in range(k0):
                            for ch in range(c):
                                xb[s, t] = img[s, p - half0 + dr, q - half0 + dc, ch]
                                t += 1
                    for dc in range(half0):
                        for ch in range(c):
                            xb[s, t] = img[s, p, q - half0 + dc, ch]
                            t += 1
                _dense(xb, m, t0, w0, b0, raw, False)
                for s in range(m):
                    for o in range(f):
                        rel[s, 0, pc, q, o] = max(raw[s, o], zero)
                for l in range(1, last + 1):
                    for s in range(m):
                        for dc in range(3):
                            for k in range(f):
                                xb[s, dc * f + k] = rel[s, l - 1, pa, q - 1 + dc, k]
                        for dc in range(2):
                            for k in range(f):
                                xb[s, (3 + dc) * f + k] = rel[s, l - 1, pc, q - 1 + dc, k]
                    _dense(xb, m, 5 * f, wb[l - 1], bb[l - 1], raw, True)
                    for s in range(m):
                        for o in range(f):
                            rel[s, l, pc, q, o] = max(raw[s, o], zero)
                j = q - r
                if j < 0 or j >= w:
                    continue
                for s in range(m):
                    for k in range(f):
                        xb[s, k] = rel[s, n_conv - 1, pc, q, k]
                _dense(xb, m, f, h1, hb1, hid, False)
                for s in range(m):
                    for o in range(f):
                        hid[s, o] = max(hid[s, o], zero)
                _dense(hid, m, f, h2, hb2, head, False)
                for s in range(m):
                    _draw(head, s, u, values, stats, ((lo + s) * h + i) * w + j, components, unit, mix)
                    for ch in range(c):
                        img[s, p, q, ch] = unit[ch]


@_jit()
def _draw_block(head, u, values, stats, row0, components, img, q, slot):
    """The batched form's draw of one pixel for the block's samples (``head``: block x outputs; rows
    row0, row0 + 1, ... of the pixel-major ``u``, ``values``, ``stats``), each written into the block's
    image ring (block x columns x rows x C + 1) at column q, row slot ``slot``."""
    c = values.shape[1]
    unit = np.zeros(c, dtype=np.float32)
    mix = np.zeros(max(components, 1), dtype=np.float32)
    for s in range(head.shape[0]):
        _draw(head, s, u, values, stats, row0 + s, components, unit, mix)
        for ch in range(c):
            img[s, q, slot, ch] = unit[ch]


# --- the model's weights, laid out for the kernels -------------------------------------------------
def _convs(model):
    return [model.first] + [block.conv for block in model.blocks]


def _top_rows(model) -> torch.Tensor:
    """Every layer's relu'd activations on the row above the image (layers x columns x F): the
    reference's computation on the all-zero top padding, for one sample (it is the same for all)."""
    convs, half0, r = _convs(model), model.first.half, model.reach
    ncols = model.image_shape[2] + 2 * r
    top = torch.zeros(len(convs), ncols, model.first.out_channels)
    above = model.first(torch.zeros(1, model.image_shape[0], r, ncols))
    for l, conv in enumerate(convs):
        if l > 0:
            if l == len(convs) - 1:
                break  # the last layer's row above is never read
            above = above[:, :, 1:, 1:-1] + conv(torch.relu(above))
        top[l, half0 + l:half0 + l + above.shape[-1]] = torch.relu(above[0, :, -1].T)
    return top


def _head(model):
    hidden, out = (m for m in model.head if isinstance(m, nn.Conv2d))
    return hidden.weight.flatten(1), hidden.bias, out.weight.flatten(1), out.bias


def _per_sample_weights(model) -> tuple:
    """The per-sample kernel's arrays: masked kernels flattened to (outputs x kept taps), channel-last."""
    half0 = model.first.half
    first = model.first.weight * model.first.mask  # F x C x (half0 + 1) x k0
    f = first.shape[0]
    w0 = torch.cat([first[:, :, :half0].permute(0, 2, 3, 1).reshape(f, -1),
                    first[:, :, half0, :half0].permute(0, 2, 1).reshape(f, -1)], 1)
    wb, bb = [], []
    for conv in _convs(model)[1:]:
        kernel = conv.weight * conv.mask  # F x F x 2 x 3
        wb.append(torch.cat([kernel[:, :, 0].permute(0, 2, 1).reshape(f, -1),
                             kernel[:, :, 1, :2].permute(0, 2, 1).reshape(f, -1)], 1))
        bb.append(conv.bias)
    wb = torch.stack(wb) if wb else torch.zeros(0, f, 5 * f)
    bb = torch.stack(bb) if bb else torch.zeros(0, f)
    tensors = (w0, model.first.bias, wb, bb, *_head(model), _top_rows(model))
    return tuple(np.ascontiguousarray(t.detach().float().cpu().numpy()) for t in tensors)


def _batched_weights(model) -> dict:
    """The batched form's matrices (taps x outputs, dense over each kernel's rows and columns, zeros at the
    masked taps, the bias on one constant-one channel), one version per row slot of the stored rows."""
    f, c, half0 = model.first.out_channels, model.image_shape[0], model.first.half
    slots = half0 + 1

    def matrix(kernel, bias, n_slots, current):
        """Rows (column, slot, channel + ones); ``current``: the slot holding the row being computed."""
        kw, c_in = kernel.shape[3], kernel.shape[1]
        m = torch.zeros(kw, n_slots, c_in + 1, kernel.shape[0])
        for slot in range(n_slots):
            rows_up = (current - slot) % n_slots  # the slot holds the row this many rows above
            m[:, slot, :c_in] = kernel[:, :, kernel.shape[2] - 1 - rows_up].permute(2, 1, 0)
        m[0, current, c_in] = bias
        return m.reshape(-1, kernel.shape[0]).contiguous()

    first = (model.first.weight * model.first.mask).detach().float()
    w0 = [matrix(first, model.first.bias.detach().float(), slots, v) for v in range(slots)]
    wb = [[matrix((conv.weight * conv.mask).detach().float(), conv.bias.detach().float(), 2, parity)
           for parity in range(2)] for conv in _convs(model)[1:]]
    h1, hb1, h2, hb2 = (t.detach().float() for t in _head(model))
    return {"w0": w0, "wb": wb, "h1": h1.T.contiguous(), "hb1": hb1.clone(), "h2": h2.T.contiguous(),
            "hb2": hb2.clone(), "top": _top_rows(model), "channels": c, "features": f, "half0": half0}


def _cached(model, what: str, build):
    """Prepared weights, kept on the model while its parameters are unchanged (any in-place change, an
    optimiser step included, bumps a version)."""
    key = (what, tuple((t._version, t.data_ptr(), t.device) for t in [*model.parameters(), *model.buffers()]))
    store = model.__dict__.setdefault("_compiled_weights", {})
    if store.get(what, (None,))[0] != key:
        with torch.no_grad():
            store[what] = (key, build(model))
    return store[what][1]


# --- the samplers ----------------------------------------------------------------------------------
def _buffers(model, uniforms: torch.Tensor, pixel_major: bool):
    """The kernels' 2-D arrays: uniforms (rows x per pixel), values (rows x C), statistics (rows x S), one
    row per (sample, pixel), sample-major or pixel-major; and K (0: binary)."""
    (c, h, w), n = model.image_shape, len(uniforms)
    components = int(getattr(model, "components", 0))
    per_pixel = 1 if components == 0 else c * 3 * components
    per_uniform = 1 if components == 0 else 2 * c
    u = uniforms.detach().cpu().float().reshape(n, h, w, per_uniform)
    u = u.permute(1, 2, 0, 3) if pixel_major else u
    u = np.ascontiguousarray(u.numpy()).reshape(n * h * w, per_uniform)
    return components, u, np.zeros((n * h * w, c), np.float32), np.zeros((n * h * w, per_pixel), np.float32)


def _results(model, n: int, values: np.ndarray, stats: np.ndarray, pixel_major: bool):
    """(values N x H x W x C, statistics N x H x W x S) from the kernels' rows."""
    _, h, w = model.image_shape
    if not pixel_major:
        return tuple(torch.from_numpy(a).view(n, h, w, a.shape[1]) for a in (values, stats))
    return tuple(torch.from_numpy(a).view(h, w, n, a.shape[1]).permute(2, 0, 1, 3).contiguous()
                 for a in (values, stats))


def sample(model, uniforms: torch.Tensor):
    """(values N x C x H x W, per-pixel statistics N x H x W x S) from the uniforms ``model.draw_uniforms``
    gave: binary S = 1 (p(x = 1 | x_<i)), 8-bit S = C x 3K (the mixture parameters drawn with)."""
    if not numba_available():
        raise RuntimeError("the compiled PixelCNN sampler needs numba")
    if model.first.kernel_size[1] != 2 * model.first.half + 1:
        raise ValueError("the compiled PixelCNN sampler needs an odd first kernel (its centre column)")
    if not _warm:  # both kernels at once: a later batch size must not pay for loading the other
        warm_up()
    if len(uniforms) >= BATCHED_FROM and torch.get_num_threads() == 1:
        values, stats = sample_batched(model, uniforms)
    else:
        values, stats = sample_per_sample(model, uniforms)
    return values.permute(0, 3, 1, 2).contiguous(), stats


def sample_per_sample(model, uniforms: torch.Tensor, chunk: int = CHUNK):
    """The whole loop in one numba kernel, ``chunk`` samples in lockstep; torch's thread count of threads.
    (values N x H x W x C, statistics N x H x W x S)."""
    weights = _cached(model, "per-sample", _per_sample_weights)
    components, u, values, stats = _buffers(model, uniforms, pixel_major=False)
    _, h, w = model.image_shape
    _run_per_sample(weights, u, values, stats, len(uniforms), h, w, model.first.half, components, chunk)
    return _results(model, len(uniforms), values, stats, pixel_major=False)


def _run_per_sample(weights, u, values, stats, n, h, w, half0, components, chunk):
    global _pool
    threads = max(1, min(torch.get_num_threads(), n))
    share = math.ceil(n / threads)
    run = lambda lo: _sample_rows(*weights, u, values, stats, h, w, half0, components, lo,  # noqa: E731
                                  min(n, lo + share), max(1, min(chunk, share)))
    if threads == 1:
        run(0)
    else:  # the kernel releases the GIL: one contiguous share of the batch per thread
        if _pool is None or _pool._max_workers < threads:
            _pool = ThreadPoolExecutor(threads)
        for job in [_pool.submit(run, lo) for lo in range(0, n, share)]:
            job.result()


def sample_batched(model, uniforms: torch.Tensor, block: int = BATCH_BLOCK):
    """The per-position products as BLAS matrix products over blocks of ``block`` samples; the draws'
    arrays pixel-major, so that a pixel's draw for a block reads and writes contiguous rows.
    (values N x H x W x C, statistics N x H x W x S)."""
    weights = _cached(model, "batched", _batched_weights)
    components, u, values, stats = _buffers(model, uniforms, pixel_major=True)
    n = len(uniforms)
    with torch.no_grad():
        for lo in range(0, n, block):
            _batched_block(model, weights, u, values, stats, components, n, lo, min(n, lo + block))
    return _results(model, n, values, stats, pixel_major=True)


def _batched_block(model, weights, u, values, stats, components, n, lo, hi):
    m, (_, h, w) = hi - lo, model.image_shape
    c, f, half0 = weights["channels"], weights["features"], weights["half0"]
    n_conv, r = len(weights["wb"]) + 1, model.reach
    ncols, slots = w + 2 * r, half0 + 1
    img = torch.zeros(m, ncols, slots, c + 1)  # the image's last rows (a ring), channel-last, ones channel
    img[..., c] = 1.0
    acts = []
    for l in range(n_conv):  # relu'd activations: columns x 2 rows (parity) x (F channels, ones)
        a = torch.zeros(m, ncols, 2, f + 1)
        a[..., f] = 1.0
        a[:, :, (r - 1) % 2, :f] = weights["top"][l]
        acts.append(a)
    img_flat, flat = img.view(m, -1), [a.view(m, -1) for a in acts]
    step0, step = slots * (c + 1), 2 * (f + 1)
    # Views made once: a position's patch is one contiguous run per sample (a strided matrix).
    patch0 = {q: img_flat[:, (q - half0) * step0:(q + half0 + 1) * step0] for q in range(half0, ncols - half0)}
    patch = [{q: flat[l][:, (q - 1) * step:(q + 2) * step] for q in range(1, ncols - 1)} for l in range(n_conv)]
    store = [[[acts[l][:, q, parity, :f] for parity in range(2)] for q in range(ncols)] for l in range(n_conv)]
    acc, hid = torch.empty(m, f), torch.empty(m, f)
    head = torch.empty(m, weights["hb2"].shape[0])
    img_np, head_np = img.numpy(), head.numpy()
    h1, hb1, h2, hb2 = weights["h1"], weights["hb1"], weights["h2"], weights["hb2"]
    for i in range(h):
        p = i + r
        pc, slot = p % 2, p % slots
        w0, wb = weights["w0"][slot], [versions[pc] for versions in weights["wb"]]
        for q in range(half0, ncols - half0):
            last = min(q - half0, ncols - half0 - 1 - q, n_conv - 1)
            torch.mm(patch0[q], w0, out=acc)
            torch.clamp(acc, min=0.0, out=store[0][q][pc])
            for l in range(1, last + 1):
                acc.addmm_(patch[l - 1][q], wb[l - 1])  # acc: the residual sum, now layer l's output
                torch.clamp(acc, min=0.0, out=store[l][q][pc])
            j = q - r
            if 0 <= j < w:
                torch.addmm(hb1, store[n_conv - 1][q][pc], h1, out=hid).clamp_(min=0.0)
                torch.addmm(hb2, hid, h2, out=head)
                _draw_block(head_np, u, values, stats, (i * w + j) * n + lo, components, img_np, q, slot)


def warm_up():
    """Compile (or load from numba's cache) both kernels on a tiny problem (a 1 x 1 image, 3 x 3 first
    layer, one residual layer of 4 channels), outside any timed region."""
    global _warm
    if numba_available():
        f, ncols = 4, 5
        z = lambda *shape: np.zeros(shape, np.float32)  # noqa: E731
        weights = (z(f, 4), z(f), z(1, f, 5 * f), z(1, f), z(f, f), z(f), z(1, f), z(1), z(2, ncols, f))
        u = np.full((2, 1), 0.5, np.float32)
        _run_per_sample(weights, u, z(2, 1), z(2, 1), 2, 1, 1, 1, 0, CHUNK)
        _draw_block(z(2, 1), u, z(2, 1), z(2, 1), 0, 0, z(2, ncols, 2, 2), 2, 0)
        _warm = True
