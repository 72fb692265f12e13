"""The compiled PixelCNN samplers (models/autoregressive/pixelcnn_kernels.py) against their oracle, the
torch cached sampler: the same uniforms give the same samples, binary and 8-bit (grey and colour), on both
sides of the switch-over between the per-sample kernel and the batched form; the 8-bit kernel's draws have
the likelihood's frequencies (a test that an off-by-one value or a missing colour coupling fails);
``sampling_flops`` is torch's FLOP count of the cached sampler; and "auto" is the compiled sampler on a CPU."""
import pytest
import torch
from scipy import stats

import models
from bench.instruments import flops
from models.autoregressive import pixelcnn_kernels as kernels
from models.autoregressive.pixelcnn import PixelCNN

needs_numba = pytest.mark.skipif(not kernels.numba_available(), reason="numba not installed")
SMALL, LARGE = 5, kernels.BATCHED_FROM + 3  # below and above the switch-over


def _random_pixelcnn(shape, seed=0, channels=8, layers=2):
    """A binary PixelCNN whose weights are re-drawn from a seeded normal, spread so that its conditionals
    are far from 1/2 (like tests/test_pixelcnn.py's, spread wider)."""
    torch.manual_seed(seed)
    model = models.build("pixelcnn", image_shape=shape, channels=channels, layers=layers)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 1.5 / p[0].numel() ** 0.5 if p.dim() > 1 else 0.5)
        model.head[-1].weight.normal_(0, 4.0 / channels ** 0.5)  # zero-mean over the positive ReLU features
        model.head[-1].bias.zero_()
    return model


def _random_8bit(shape, seed=0, sharp=False, **settings):
    """pixelcnn-8bit with weights spread so that its mixtures differ from pixel to pixel. ``sharp``: a head
    that is mostly its bias, components about one value wide at spread-out means, and strong colour
    coupling (tanh ~ +-0.96), so that the frequency test sees a value off by one or a coupling left out."""
    torch.manual_seed(seed)
    settings.setdefault("channels", 8)
    settings.setdefault("layers", 2)
    model = models.build("pixelcnn-8bit", image_shape=shape, **settings)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 1.5 / p[0].numel() ** 0.5)
            else:
                p.normal_(0, 0.5)
        if sharp:
            c, k = shape[0], model.components
            out = model.head[-1]
            out.weight.mul_(0.05)
            for ch in range(c):
                base = ch * 3 * k
                out.bias[base + k:base + 2 * k] = torch.linspace(-0.7, 0.7, k) + 0.1 * ch
                out.bias[base + 2 * k:base + 3 * k] = -5.0  # s = e^-5: about one value (a bin is 2/255)
            out.bias[c * 3 * k:] = 2.0 * torch.sign(torch.randn(out.bias[c * 3 * k:].shape))
    return model


def _draw(model, n, method, seed=4):
    """(samples, the per-pixel statistics the sampler drew with): binary p(x_i = 1 | x_<i), 8-bit params."""
    extra = {"tables": False} if model.track == "8bit" else {}
    return model.sample_with_conditionals(n, torch.Generator().manual_seed(seed), method=method, **extra)


def _forms(model, n, seed=4):
    """Both compiled forms called directly on the same uniforms, with blocks and chunks that leave a partial
    one at the end (the batched form in blocks of 4, the per-sample kernel 3 samples in lockstep)."""
    uniforms = model.draw_uniforms(n, torch.Generator().manual_seed(seed))
    per_sample = kernels.sample_per_sample(model, uniforms, chunk=3)
    batched = kernels.sample_batched(model, uniforms, block=4)
    return [model.compiled_outputs(values.permute(0, 3, 1, 2).contiguous(), s) for values, s in (per_sample, batched)]


@needs_numba
@pytest.mark.parametrize("n", [SMALL, LARGE])
def test_binary_compiled_sampler_draws_the_cached_samplers_samples(n):
    model = _random_pixelcnn((1, 6, 7), layers=3)  # not square: rows and columns kept apart
    x_ref, p_ref = _draw(model, n, "cached")
    assert 0.05 < (p_ref - 0.5).abs().mean() < 0.45  # conditionals far from 1/2, yet not all 0 or 1
    for x, p in [_draw(model, n, "compiled"), *_forms(model, n)]:
        assert torch.equal(x, x_ref)
        assert torch.allclose(p, p_ref, atol=1e-6)
        assert torch.allclose(model.conditionals(x), p, atol=1e-6)


@needs_numba
@pytest.mark.parametrize("shape", [(1, 6, 6), (3, 5, 4)])
@pytest.mark.parametrize("n", [SMALL, LARGE])
def test_8bit_compiled_sampler_draws_the_cached_samplers_samples(shape, n):
    model = _random_8bit(shape)
    x_ref, params_ref = _draw(model, n, "cached")
    assert x_ref.std() > 20  # values spread over the range
    for x, params in [_draw(model, n, "compiled"), *_forms(model, n)]:
        assert torch.equal(x, x_ref)
        assert torch.allclose(params, params_ref, atol=1e-5)
    tables = model.sample_with_conditionals(n, torch.Generator().manual_seed(4), method="compiled")[1]
    assert torch.allclose(model.conditionals(x), tables, atol=1e-5)


@needs_numba
def test_compiled_sampler_is_the_same_in_any_thread_count():
    model = _random_pixelcnn((1, 5, 5), seed=1)
    threads = torch.get_num_threads()
    try:
        draws = []
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            draws.append(_draw(model, 7, "compiled"))
    finally:
        torch.set_num_threads(threads)
    for x, p in draws[1:]:
        assert torch.equal(x, draws[0][0]) and torch.equal(p, draws[0][1])


@needs_numba
def test_compiled_sampler_sees_weights_changed_after_an_earlier_call():
    model = _random_pixelcnn((1, 5, 5), seed=1)
    for n in (SMALL, LARGE):
        _draw(model, n, "compiled")  # fills the kernels' prepared weights
    with torch.no_grad():
        model.blocks[0].conv.weight.mul_(-1.0)
        model.head[-1].bias.add_(0.7)
    for n in (SMALL, LARGE):
        x_ref, p_ref = _draw(model, n, "cached")
        x, p = _draw(model, n, "compiled")
        assert torch.equal(x, x_ref) and torch.allclose(p, p_ref, atol=1e-6)


def _all_images(shape):
    values = torch.arange(256, dtype=torch.float64)
    return torch.cartesian_prod(values, values).view(-1, *shape)


def _chi2(codes, probs):
    """Chi-square of observed codes against probabilities over 65,536 states: every state expected at
    least 5 times is a cell of its own, the rest one pooled cell. (statistic, its 99.9% quantile)."""
    n = len(codes)
    observed = torch.bincount(codes, minlength=len(probs)).double()
    expected = probs * n
    own = expected >= 5
    obs = torch.cat([observed[own], observed[~own].sum().view(1)])
    exp = torch.cat([expected[own], expected[~own].sum().view(1)])
    chi2 = ((obs - exp) ** 2 / exp).sum().item()
    return chi2, stats.chi2.ppf(0.999, len(obs) - 1)


@needs_numba
@pytest.mark.parametrize("shape", [(2, 1, 1), (1, 1, 2)])
def test_8bit_compiled_frequencies_match_the_enumerated_likelihood(shape):
    """(2, 1, 1): G's mixture moves with R only through the colour coupling; (1, 1, 2): the second pixel's
    mixture depends on the first through the network. 60,000 compiled draws against exp(-nll) of all
    65,536 images; the same samples shifted by one value, or scored against the model with its coupling
    removed, fail the same test, so a kernel off by one in rounding, or whose coupling reads a channel's own
    (not yet drawn) value, would fail it."""
    model = _random_8bit(shape, seed=2, sharp=True)
    images = _all_images(shape)
    with torch.no_grad():
        probs = torch.exp(-model.double().nll(images))
        model.float()
    assert abs(probs.sum().item() - 1.0) < 1e-6
    x, _ = model.sample_with_conditionals(60000, torch.Generator().manual_seed(11), method="compiled", tables=False)
    flat = x.flatten(1).long()
    codes = flat[:, 0] * 256 + flat[:, 1]
    chi2, limit = _chi2(codes, probs)
    assert chi2 < limit, (chi2, limit)
    shifted = (flat + 1).clamp(max=255)
    assert _chi2(shifted[:, 0] * 256 + shifted[:, 1], probs)[0] > 10 * limit
    if shape[0] == 2:
        uncoupled = model.double()
        with torch.no_grad():
            k = uncoupled.components
            uncoupled.head[-1].weight[2 * 3 * k:] = 0.0
            uncoupled.head[-1].bias[2 * 3 * k:] = 0.0  # tanh(0) = 0: G no longer sees R
            probs_uncoupled = torch.exp(-uncoupled.nll(images))
        assert _chi2(codes, probs_uncoupled)[0] > 10 * limit


@pytest.mark.parametrize("name,shape,settings", [
    ("pixelcnn", (1, 5, 7), {"channels": 8, "layers": 2}),
    ("pixelcnn", (1, 4, 3), {"channels": 4, "layers": 3, "first_kernel": 5}),
    ("pixelcnn-8bit", (1, 4, 4), {"channels": 6, "layers": 2}),
    ("pixelcnn-8bit", (3, 3, 5), {"channels": 6, "layers": 1, "components": 3}),
])
def test_sampling_flops_equal_the_counters_count_of_the_cached_sampler(name, shape, settings):
    model = models.build(name, image_shape=shape, **settings)
    n = 3
    extra = {"tables": False} if name == "pixelcnn-8bit" else {}
    counted = flops.count(lambda: model.sample_with_conditionals(n, method="cached", **extra))
    assert counted > 0 and model.sampling_flops(n) == counted
    assert flops.sample_flops_per_sample(model, n) == counted / n  # the harness takes the model's own count


def test_sampling_flops_of_the_default_model():
    # 28x28, 32 channels, 7x7 type A, 5 residual layers: what the counter saw on model.sample before the
    # sampler moved to numba (the border positions and the rows above the image included).
    assert models.build("pixelcnn").sampling_flops(2) == 2 * 63131136


@needs_numba
def test_auto_is_the_compiled_sampler_on_a_cpu(monkeypatch):
    assert PixelCNN._resolve_method("auto", torch.device("cpu")) == "compiled"
    assert PixelCNN._resolve_method("auto", torch.device("cuda")) == "cuda-graph"
    with pytest.raises(ValueError, match="CPU"):
        PixelCNN._resolve_method("compiled", torch.device("cuda"))
    with pytest.raises(ValueError, match="auto, compiled, cuda-graph, cached, windowed or naive"):
        PixelCNN._resolve_method("fast", torch.device("cpu"))
    model = _random_pixelcnn((1, 3, 3))
    monkeypatch.setattr(model, "_sample_torch", lambda *args: pytest.fail("sample() ran a torch sampler"))
    assert model.sample(4).shape == (4, 1, 3, 3)
    monkeypatch.setattr(kernels, "numba_available", lambda: False)
    assert PixelCNN._resolve_method("auto", torch.device("cpu")) == "cached"


@needs_numba
def test_the_batched_form_runs_from_the_switch_over_at_one_thread(monkeypatch):
    model = _random_pixelcnn((1, 3, 3))
    calls = []
    for form in ("sample_per_sample", "sample_batched"):
        original = getattr(kernels, form)
        monkeypatch.setattr(kernels, form, lambda *a, _f=original, _n=form, **k: calls.append(_n) or _f(*a, **k))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        for n in (kernels.BATCHED_FROM - 1, kernels.BATCHED_FROM):
            _draw(model, n, "compiled")
        torch.set_num_threads(2)  # more threads: the per-sample kernel splits the batch across them
        _draw(model, kernels.BATCHED_FROM, "compiled")
    finally:
        torch.set_num_threads(threads)
    assert calls == ["sample_per_sample", "sample_batched", "sample_per_sample"]


@pytest.mark.parametrize("name", ["pixelcnn", "pixelcnn-8bit"])
def test_the_cuda_graph_method_replays_the_cached_loop_on_the_given_uniforms(name, monkeypatch):
    """On the CPU, with a stand-in for models/cuda_graphs.replay that runs the loop it would capture: the
    loop is the cached sampler on the uniforms passed in, and the key names the device, the batch, the
    image shape and the parameters (the graph itself needs a GPU: tests/test_cuda.py, which .ci/gpu runs)."""
    from models import cuda_graphs

    model = _random_pixelcnn((1, 4, 5)) if name == "pixelcnn" else _random_8bit((3, 3, 4))
    keys = []

    def replay(cache, key, loop, inputs):
        keys.append(key)
        return loop(*inputs)

    monkeypatch.setattr(cuda_graphs, "replay", replay)
    x, drawn_with = _draw(model, 6, "cuda-graph")
    x_ref, drawn_with_ref = _draw(model, 6, "cached")
    assert torch.equal(x, x_ref) and torch.equal(drawn_with, drawn_with_ref)
    (key,) = keys
    assert key[:3] == (torch.device("cpu"), 6, tuple(model.image_shape))
    assert key[-1] == cuda_graphs.parameters_key(model)
