"""The 8-bit autoregressive models (made-8bit, pixelcnn-8bit): their discrete likelihood normalises over
all 65,536 images of 1 x 1 x 2, their samplers draw from it (chi-square) and from the likelihood's own
conditionals, their conditionals are causal in the model's ordering, and the cached samplers give the
naive samplers' samples, in grey and in colour."""
import itertools

import pytest
import torch
from scipy import stats

import models

NAMES = ["made-8bit", "pixelcnn-8bit"]


def random_model(name, shape, seed=0, **settings):
    """A model with weights spread wide enough that its conditionals differ from pixel to pixel."""
    torch.manual_seed(seed)
    if name == "made-8bit":
        settings.setdefault("hidden_sizes", (24, 24))
    else:
        settings.setdefault("channels", 8)
        settings.setdefault("layers", 2)
    model = models.build(name, image_shape=shape, **settings)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 1.5 / p[0].numel() ** 0.5)
            else:
                p.normal_(0, 0.5)
    return model


def all_images_1x1x2() -> torch.Tensor:
    values = torch.arange(256, dtype=torch.float64)
    return torch.cartesian_prod(values, values).view(-1, 1, 1, 2)


def position(name, shape, c, h, w) -> int:
    """Where subpixel (c, h, w) sits in the model's order (and in its conditionals' second axis)."""
    channels, _, width = shape
    return (h * width + w) * channels + c if name == "pixelcnn-8bit" else (c * shape[1] + h) * width + w


@pytest.mark.parametrize("name,settings", [("made-8bit", {}), ("made-8bit", {"num_masks": 3}),
                                           ("pixelcnn-8bit", {})])
def test_probabilities_of_all_65536_images_sum_to_one(name, settings):
    model = random_model(name, (1, 1, 2), **settings).double()
    with torch.no_grad():
        total = torch.exp(-model.nll(all_images_1x1x2())).sum().item()
    assert abs(total - 1.0) < 1e-6
    assert model.likelihood == "exact" and model.track == "8bit"


@pytest.mark.parametrize("name", NAMES)
def test_sample_frequencies_match_the_enumerated_probabilities(name):
    """Chi-square of 40,000 samples over 40 cells of equal probability mass (cells: the 65,536 images
    sorted by probability), so that every expected count is about 1,000."""
    model = random_model(name, (1, 1, 2), seed=2)
    with torch.no_grad():
        probs = torch.exp(-model.double().nll(all_images_1x1x2())).float()
        model.float()
        torch.manual_seed(7)
        n = 40000
        x = torch.cat([model.sample(5000) for _ in range(n // 5000)])
    codes = (x.flatten(1) * 255).round().long()
    assert codes.min() >= 0 and codes.max() <= 255
    codes = codes[:, 0] * 256 + codes[:, 1]
    order = torch.argsort(probs)
    cell_of = torch.empty(65536, dtype=torch.long)
    cell_of[order] = (torch.cumsum(probs[order].double(), 0) / probs.sum() * 40).long().clamp(max=39)
    expected = torch.bincount(cell_of, weights=probs.double(), minlength=40) / probs.sum() * n
    observed = torch.bincount(cell_of[codes], minlength=40).double()
    keep = expected > 0
    chi2 = ((observed - expected)[keep] ** 2 / expected[keep]).sum().item()
    assert chi2 < stats.chi2.ppf(0.999, int(keep.sum()) - 1), (chi2, observed, expected)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(1, 3, 3), (3, 2, 3)])
def test_changing_a_subpixel_moves_no_conditional_at_or_before_it(name, shape):
    model = random_model(name, shape)
    x = torch.randint(0, 256, (6, *shape), generator=torch.Generator().manual_seed(3)).float()
    with torch.no_grad():
        before = model.conditionals(x)
        moved_later = 0.0
        for c, h, w in itertools.product(*(range(s) for s in shape)):
            changed = x.clone()
            changed[:, c, h, w] = (changed[:, c, h, w] + 97) % 256
            change = (model.conditionals(changed) - before).abs()
            at = position(name, shape, c, h, w)
            assert change[:, :at + 1].max() == 0, f"subpixel {(c, h, w)} leaks into its own past"
            moved_later += change[:, at + 1:].sum().item()
    assert moved_later > 0  # the conditionals do depend on earlier subpixels


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(1, 4, 4), (3, 4, 4)])
def test_cached_sampler_gives_the_naive_samplers_samples_and_the_likelihoods_conditionals(name, shape):
    model = random_model(name, shape)
    naive = {"method": "naive"}
    fast, fast_tables = model.sample_with_conditionals(16, torch.Generator().manual_seed(4))
    slow, slow_tables = model.sample_with_conditionals(16, torch.Generator().manual_seed(4), **naive)
    assert torch.equal(fast, slow)
    assert fast.shape == (16, *shape) and fast.min() >= 0 and fast.max() <= 255 and torch.equal(fast, fast.round())
    assert torch.allclose(fast_tables, slow_tables, atol=1e-6)
    assert torch.allclose(model.conditionals(fast), fast_tables, atol=1e-5)
    assert torch.allclose(fast_tables.sum(-1), torch.ones(()), atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_self_check_passes_and_catches_a_sampler_that_reads_the_wrong_conditionals(name, monkeypatch):
    model = random_model(name, (1, 4, 4))
    (check,) = model.self_checks(torch.zeros(4, 1, 4, 4))
    assert check["passed"] and "256 values" in check["detail"]
    honest = model.conditionals
    monkeypatch.setattr(model, "conditionals", lambda x: honest(x).roll(1, dims=1))  # one pixel off
    (check,) = model.self_checks(torch.zeros(4, 1, 4, 4))
    assert not check["passed"]


@pytest.mark.parametrize("name", NAMES)
def test_sample_returns_8bit_values_scaled_to_the_unit_interval(name):
    model = random_model(name, (3, 5, 5))
    x = model.sample(7)
    assert x.shape == (7, 3, 5, 5)
    assert torch.equal((x * 255).round(), (x * 255).round().clamp(0, 255))
    assert torch.allclose(x * 255, (x * 255).round(), atol=1e-4)


def test_made_8bit_masks_cover_every_row_of_a_pixels_group():
    """The output mask repeats pixel i's row for all 3K of its outputs (the trap in made_8bit's docstring)."""
    model = random_model("made-8bit", (1, 3, 3), hidden_sizes=(16,))
    out_mask = model.masks1[0]  # (D * 3K) x hidden
    per_pixel = model.outputs_per_pixel
    assert out_mask.shape[0] == 9 * per_pixel
    for i in range(9):
        group = out_mask[i * per_pixel:(i + 1) * per_pixel]
        assert torch.equal(group, group[:1].expand_as(group))


def test_binary_models_keep_their_track():
    assert models.model_class("made").track == "binary" and models.model_class("pixelcnn").track == "binary"
    with pytest.raises(ValueError, match="pixelcnn-8bit"):
        models.build("pixelcnn", image_shape=(3, 8, 8))
