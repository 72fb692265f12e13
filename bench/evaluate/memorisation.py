"""Memorisation: the fraction of samples that are copies of training images (``copy_rate``).

A low FID is no achievement if the model hands back its training set. Following the idea of Meehan et
al. 2020 ("A non-parametric test to detect data-copying in generative models"), a sample is judged
against *held-out real images*: a held-out image is by construction not a copy, so its distance to the
nearest training image says how close "close" is for an honest image of the same distribution.

Rule. For each sample, d = its distance to the nearest training image, in two spaces:
- pixels: L2 distance in [0, 1]^D to the grey training image, minimised over shifts of the sample by
  -1, 0, +1 pixel in each direction (9 shifts, zero fill), so a copy moved by a pixel is still a copy;
- features: L2 distance in the evaluation classifier's penultimate features (trained with random
  shifts, so nearly shift invariant).
A sample is a copy when d is below the ``quantile`` (1%) of the same distances of held-out real images
in *either* space. So at most ~2% of held-out images would be called copies (1% per space); a model that
copies scores near 1.

Calibrated per region of the data, as Meehan et al.'s C_T test compares cell by cell: each class of the
evaluation classifier's prediction (with at least ``MIN_PER_CLASS`` held-out images; else the global
thresholds) has its own distance scale, the median distance of its held-out images. The thresholds are one
quantile of every held-out distance in units of its class's scale, times the sample's class's scale (a
class's own 1% quantile, about its nearest held-out image of a hundred, would be too noisy). One global quantile would flag mode collapse as
copying: thin digits (1s) sit nearer their training neighbours than average, so with global thresholds
held-out 1s alone score several times the rate of all digits (``tests/test_memorisation.py`` measures it).

Limit, binary track: samples and held-out images are binary, the training images grey. A fresh random
binarization of a training image lies about as far from it as a different digit does (on mnist5k only
16% of such draws are flagged, 7-8% when also shifted by a pixel), so on the binary track copy_rate catches copies of a fixed
binarization, not a model that reproduces training digits with new binarization noise.

The one trap: searching only near neighbours by unshifted pixels (or a blur, or the features) misses
a third of the copies moved diagonally by a pixel; the shift search is exhaustive (9 N x N_train matrix
products), so samples are capped at ``MAX_SAMPLES`` (seconds on mnist5k; 15 times more against the
60,000 MNIST training images, an estimate, not measured).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

QUANTILE = 0.01
MAX_SAMPLES = 500  # samples judged (the first ones drawn)
MAX_HELDOUT = 2000  # held-out images that calibrate (per class: about a tenth each)
MIN_PER_CLASS = 50  # held-out images a class needs for thresholds of its own
SHIFTS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


@dataclass
class Neighbours:
    pixel: np.ndarray  # shift-minimised pixel distance to the nearest training image
    feature: np.ndarray  # feature distance to the nearest training image
    index: np.ndarray  # that training image (nearest in pixels, after shifts)


def _flat(images: torch.Tensor) -> torch.Tensor:
    """uint8 or [0, 1] images -> float32 rows in [0, 1]."""
    x = images.float()
    if images.dtype == torch.uint8:
        x = x / 255.0
    return x.reshape(len(x), -1)


def _shift(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Move the image content by (dy, dx) pixels, filling with zeros (not wrapping round)."""
    padded = F.pad(images, (1, 1, 1, 1))
    h, w = images.shape[-2:]
    return padded[..., 1 - dy:1 - dy + h, 1 - dx:1 - dx + w]


def _sq_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T).clamp_min(0.0)


def nearest_training(images: torch.Tensor, features: torch.Tensor, train: torch.Tensor,
                     train_features: torch.Tensor, chunk: int = 250) -> Neighbours:
    """Nearest-training-image distances of ``images`` (uint8 N x C x H x W) in pixels (minimised over the 9
    shifts of at most one pixel, an exhaustive search: 9 matrix products) and in features."""
    train_flat = _flat(train)
    train_sq = (train_flat * train_flat).sum(1)
    tf = train_features.float()
    pixel, feature, index = [], [], []
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk]
        grey = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        best = torch.full((len(x), len(train)), float("inf"))
        for dy, dx in SHIFTS:
            moved = _flat(_shift(grey, dy, dx))
            sq = (moved * moved).sum(1)[:, None] + train_sq[None, :] - 2.0 * moved @ train_flat.T
            best = torch.minimum(best, sq)
        value, nearest = best.min(1)
        pixel.append(value.clamp_min(0.0).sqrt())
        index.append(nearest)
        feature.append(_sq_distances(features[start:start + chunk].float(), tf).min(1).values.sqrt())
    return Neighbours(torch.cat(pixel).numpy(), torch.cat(feature).numpy(), torch.cat(index).numpy())


@dataclass
class CopyVerdict:
    rate: float
    is_copy: np.ndarray
    samples: Neighbours
    pixel_threshold: float  # the global thresholds (per class: ``class_thresholds``)
    feature_threshold: float
    n_heldout: int
    class_thresholds: dict | None = None  # class -> (pixel, feature) thresholds, where calibrated per class

    def describe(self) -> str:
        per_class = (f"; calibrated per class of the classifier's prediction ({len(self.class_thresholds)} classes "
                     f"with at least {MIN_PER_CLASS} held-out images; others: the global thresholds)"
                     if self.class_thresholds else "")
        return (f"{len(self.is_copy)} samples; a copy: nearest training image closer than the "
                f"{QUANTILE:.0%} quantile of {self.n_heldout} held-out real images' nearest-training distances, "
                f"in pixels (min over +-1 px shifts; global threshold {self.pixel_threshold:.3g}) or in classifier "
                f"features (global threshold {self.feature_threshold:.3g}){per_class}; Meehan et al. 2020")


def copy_rate(samples, sample_features, train, train_features, heldout, heldout_features,
              quantile: float = QUANTILE, max_samples: int = MAX_SAMPLES, sample_classes=None,
              heldout_classes=None, max_heldout: int = MAX_HELDOUT) -> CopyVerdict:
    """The fraction of samples judged copies of training images, calibrated on held-out real images: per
    class when ``sample_classes`` and ``heldout_classes`` (the classifier's predictions) are given."""
    samples, sample_features = samples[:max_samples], sample_features[:max_samples]
    heldout, heldout_features = heldout[:max_heldout], heldout_features[:max_heldout]
    ref = nearest_training(heldout, heldout_features, train, train_features)
    pixel_threshold = float(np.quantile(ref.pixel, quantile))
    feature_threshold = float(np.quantile(ref.feature, quantile))
    found = nearest_training(samples, sample_features, train, train_features)
    pixel_limit = np.full(len(found.pixel), pixel_threshold)
    feature_limit = np.full(len(found.pixel), feature_threshold)
    class_thresholds = None
    if sample_classes is not None and heldout_classes is not None:
        sample_classes = np.asarray(sample_classes)[:max_samples]
        heldout_classes = np.asarray(heldout_classes)[:max_heldout]
        scales = {int(c): (np.median(ref.pixel[heldout_classes == c]), np.median(ref.feature[heldout_classes == c]))
                  for c in np.unique(heldout_classes) if (heldout_classes == c).sum() >= MIN_PER_CLASS}
        if scales:
            # Distances in units of their class's median, one quantile over every calibrated held-out image: a
            # class's median is stable from a hundred images, its own 1% quantile (about its nearest) is not.
            calibrated = np.isin(heldout_classes, list(scales))
            own = np.array([scales[int(c)] for c in heldout_classes[calibrated]])
            pixel_q = float(np.quantile(ref.pixel[calibrated] / own[:, 0], quantile))
            feature_q = float(np.quantile(ref.feature[calibrated] / own[:, 1], quantile))
            class_thresholds = {c: (pixel_q * p, feature_q * f) for c, (p, f) in scales.items()}
            for c, (p, f) in class_thresholds.items():
                judged = sample_classes == c
                pixel_limit[judged], feature_limit[judged] = p, f
    is_copy = (found.pixel < pixel_limit) | (found.feature < feature_limit)
    return CopyVerdict(float(is_copy.mean()), is_copy, found, pixel_threshold, feature_threshold, len(heldout),
                       class_thresholds)


def save_neighbour_figure(samples: torch.Tensor, train: torch.Tensor, verdict: CopyVerdict, path, count: int = 8):
    """A PNG: top row the ``count`` samples nearest to the training set (pixels), bottom row their nearest
    training images."""
    from torchvision.utils import save_image

    order = np.argsort(verdict.samples.pixel)[:count]
    top = samples[torch.from_numpy(order)].float() / 255.0
    bottom = train[torch.from_numpy(verdict.samples.index[order])].float()
    bottom = bottom / 255.0 if train.dtype == torch.uint8 else bottom
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(torch.cat([top, bottom]), path, nrow=len(order), padding=2, pad_value=0.5)
    return order
