"""The evaluation classifier: a small CNN whose features define the suite's sample-quality metrics.

torch-fidelity's InceptionV3 cannot be downloaded here and fits 28x28 grey digits poorly, so the suite
uses its own classifier (docs/design.md, "Traps"): penultimate features feed FID, KID and
precision/recall, logits feed the inception score (``bench.evaluate.sample_quality`` registers it with torch-fidelity).

FID and its kin are defined by the extractor's weights, so the weights are pinned, as FID pins Inception's:

- **The embedded default, mnist5k, ships its classifier** (``bench/assets/classifier-mnist5k.pt``, SHA-256
  in ``PINNED``): every machine scores with identical features, and a changed byte is refused. The file
  was made with ``python -m bench classifier --dataset mnist5k --out bench/assets/classifier-mnist5k.pt``
  (``DEFAULT_SPEC``, on the CPU, one thread); that command retrains it.
- **``--classifier FILE``** scores any dataset with a file made by that command, so a team shares one.
- **Any other dataset** trains its classifier once, deterministically (seeded data order and dropout, one
  CPU thread, torch's deterministic kernels: two trainings on one machine give bit-identical weights), and
  caches it under ``<cache>/classifiers/``. The cache key is the dataset plus a hash of everything that
  defines the classifier: the source code of the network, the augmentation and the training loop, the
  hyper-parameters (``TrainingSpec``) and a fingerprint of the training data.

The classifier trains on the training split only (``data.train_images``: never the validation split,
whose images are the ``data`` row's held-out samples, nor the test split, the reference set). Its test
accuracy (on the grey test split and on its fixed binarization) is stored with the weights. Training sees
light augmentation (random shifts of about 2 pixels at 28x28) and, half of the time, a dynamically
binarized image, so the features stay meaningful for binary-track samples. A dataset without a binary
track (cifar10, colour) is never binarized (``default_spec``: ``binarize_prob`` 0) and has no binarized
accuracy (None).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from bench.config.errors import UserError
from bench.config.paths import cache_dir

FEATURE_DIM = 128


@dataclass(frozen=True)
class TrainingSpec:
    """Everything about the training that changes the weights (part of the cache key)."""

    epochs: int = 20
    min_steps: int = 300  # small datasets get at least this many steps
    max_steps: int = 3000  # large datasets (60k MNIST) stop here: about 6 epochs
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-4
    max_shift: float = 0.075  # random translation, as a fraction of the image side (2.1 px at 28x28)
    binarize_prob: float = 0.5
    seed: int = 0

    def steps_for(self, train_size: int) -> int:
        per_epoch = math.ceil(train_size / self.batch_size)
        return int(min(self.max_steps, max(self.min_steps, self.epochs * per_epoch)))


DEFAULT_SPEC = TrainingSpec()


def default_spec(data) -> TrainingSpec:
    """``DEFAULT_SPEC`` (looked up at call time), without the binarization for a dataset that has no binary
    track: no model of such a dataset draws binary samples, so the features need not cover them."""
    if "binary" in data.tracks:
        return DEFAULT_SPEC
    return replace(DEFAULT_SPEC, binarize_prob=0.0)


class EvalClassifier(nn.Module):
    """Three stride-2 convolutions, one hidden layer (the features), one linear layer (the logits).

    Stride-2 convolutions instead of full-resolution convolutions plus pooling: several times cheaper
    per image, which keeps the metric step fast (features of 20,000 images in about a second)."""

    def __init__(self, image_shape=(1, 28, 28), num_classes: int = 10, width: int = 32,
                 feature_dim: int = FEATURE_DIM, dropout: float = 0.3):
        super().__init__()
        c = image_shape[0]
        self.image_shape, self.num_classes, self.feature_dim = tuple(image_shape), num_classes, feature_dim
        self.convs = nn.Sequential(
            nn.Conv2d(c, width, 5, stride=2, padding=2), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.BatchNorm2d(4 * width), nn.ReLU(),
            nn.Flatten())
        side = lambda n: math.ceil(math.ceil(math.ceil(n / 2) / 2) / 2)  # noqa: E731 - three stride-2 convs
        flat = 4 * width * side(image_shape[1]) * side(image_shape[2])
        self.hidden = nn.Sequential(nn.Linear(flat, feature_dim), nn.ReLU())
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    @staticmethod
    def normalise(images: torch.Tensor) -> torch.Tensor:
        """uint8 (or 0..255 float) pixels to roughly zero-mean inputs."""
        return images.float() / 127.5 - 1.0

    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.hidden(self.convs(self.normalise(images)))
        return features, self.head(self.dropout(features))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(images)[1]


def augment(images: torch.Tensor, spec: TrainingSpec, generator: torch.Generator) -> torch.Tensor:
    """A training batch (0..255 floats, on the CPU where the data live): random shifts, then, with
    probability ``binarize_prob`` per image, a dynamic binarization."""
    n = len(images)
    x = images.float() / 255.0
    if spec.max_shift > 0:
        shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * (2 * spec.max_shift)  # grid units span 2
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        theta[:, :, 2] = shift
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)
    if spec.binarize_prob > 0:
        chosen = torch.rand(n, 1, 1, 1, generator=generator) < spec.binarize_prob
        x = torch.where(chosen, torch.bernoulli(x.clamp(0, 1), generator=generator), x)
    return x * 255.0


def warmup_cosine(step: int, total: int, warmup_fraction: float = 0.1) -> float:
    """Learning-rate factor: linear warm-up over the first 10% of the steps, then a cosine decay to 0."""
    warmup = max(1, int(warmup_fraction * total))
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


TRAINING_THREADS = 1  # the classifier's training threads: a reduction's order, so its bits, depends on it


@contextmanager
def deterministic_cpu(threads: int = TRAINING_THREADS):
    """One fixed thread count and torch's deterministic kernels for the duration; the caller's settings and
    random state are restored afterwards (training a classifier must not move a run's random streams)."""
    previous_threads, previous_mode = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.use_deterministic_algorithms(previous_mode)
        torch.set_num_threads(previous_threads)


def fit(arch: dict, images: torch.Tensor, labels: torch.Tensor, spec: TrainingSpec,
        progress: bool = False) -> EvalClassifier:
    """A new classifier trained by AdamW with linear warm-up and cosine decay on augmented batches, on the
    CPU with one thread and deterministic kernels, its initial weights, data order and dropout seeded: the
    same weights every time on one machine. (The initial weights are the trap: drawn before the seed is
    set, they came from whatever the process's random state was, and no two trainings agreed.)"""
    with deterministic_cpu():
        torch.manual_seed(spec.seed)  # the initial weights, then dropout
        model = EvalClassifier(**arch).train()
        generator = torch.Generator().manual_seed(spec.seed)  # data order, augmentation
        optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
        steps = spec.steps_for(len(images))
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, steps))
        batch = min(spec.batch_size, len(images))
        order, pos = torch.randperm(len(images), generator=generator), 0
        for _ in tqdm(range(steps), desc="evaluation classifier", leave=False, disable=not progress):
            if pos + batch > len(images):
                order, pos = torch.randperm(len(images), generator=generator), 0
            idx = order[pos:pos + batch]
            pos += batch
            x = augment(images[idx].cpu(), spec, generator)
            loss = F.cross_entropy(model(x), labels[idx].cpu())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


@torch.no_grad()
def predict_logits(model: EvalClassifier, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    device = next(model.parameters()).device
    model.eval()
    return torch.cat([model(images[i:i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)])


def accuracy(model: EvalClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    return (predict_logits(model, images).argmax(1) == labels).double().mean().item()


# --- where a run's classifier comes from: the shipped file, a user's file, or the cache ---------------
DEFINITION = (TrainingSpec, EvalClassifier, augment, warmup_cosine, fit)  # the code whose source is part of the cache key
ASSETS = Path(__file__).resolve().parents[1] / "assets"  # bench/assets: package data (pyproject.toml)


@dataclass(frozen=True)
class PinnedClassifier:
    """A classifier shipped with the package: its file under ``bench/assets/`` and that file's SHA-256."""

    file: str
    sha256: str

    @property
    def path(self) -> Path:
        return ASSETS / self.file


PINNED = {
    "mnist5k": PinnedClassifier("classifier-mnist5k.pt",
                                "5b493e9948c48bed9eba7b6ad4f769d00df4dad999106c6e7a3eae487e1089e3"),
}

# The second feature space (Stein et al. 2023: model rankings move with the encoder): the same network
# twice as wide, from another seed, trained on the same split. Its FID (``fid_wide``) stands beside the first,
# and the report compares the two rankings. mnist5k's ships too, made with
# ``python -m bench classifier --dataset mnist5k --second --out bench/assets/classifier-mnist5k-wide.pt``.
SECOND_ARCH = {"width": 64}
SECOND_SEED = 1
PINNED_SECOND = {
    "mnist5k": PinnedClassifier("classifier-mnist5k-wide.pt",
                                     "2a5d29a7eb9a45827386943820ae4aedfc160c07bf91a1bec262b6189b4718a2"),
}


@dataclass
class TrainedClassifier:
    model: EvalClassifier
    dataset: str
    definition_hash: str
    weights_digest: str
    test_accuracy: float
    test_accuracy_binarized: float | None  # None: the dataset has no binary track
    train_seconds: float | None  # None: loaded from a file, not trained by this process
    path: Path
    source: str  # shipped | file (--classifier, or shipped by the driver) | cache | trained

    @property
    def trained_now(self) -> bool:
        return self.source == "trained"

    @property
    def key(self) -> str:
        """The dataset plus the definition hash: the cache file's name."""
        return f"{self.dataset}-{self.definition_hash}"

    @property
    def feature_dim(self) -> int:
        return self.model.feature_dim

    def describe(self) -> dict:
        return {"classifier_key": self.key, "classifier_hash": self.definition_hash,
                "classifier_weights_digest": self.weights_digest, "classifier_accuracy": self.test_accuracy,
                "classifier_accuracy_binarized": self.test_accuracy_binarized,
                "classifier_feature_dim": self.feature_dim, "classifier_train_seconds": self.train_seconds,
                "classifier_path": str(self.path), "classifier_source": SOURCES[self.source]}


SOURCES = {"shipped": "shipped with the package (pinned, SHA-256 checked)",
           "file": "--classifier file (digest checked)",
           "cache": "trained on this machine (deterministic), from the cache",
           "trained": "trained on this machine (deterministic), now"}


def has_labels(data) -> bool:
    return data.num_classes > 0 and bool((data.train_labels >= 0).all())


def definition_hash(data, spec: TrainingSpec, arch: dict | None = None) -> str:
    """Hash of the classifier's code (``DEFINITION``), its hyper-parameters (``arch``: any non-default network
    settings, such as the second space's width) and the training data it sees."""
    h = hashlib.sha256()
    for obj in DEFINITION:
        h.update(inspect.getsource(obj).encode())
    h.update(json.dumps(asdict(spec), sort_keys=True).encode())
    if arch:
        h.update(json.dumps(arch, sort_keys=True).encode())
    h.update(json.dumps([data.name, list(data.image_shape), data.num_classes, len(data.train_images)]).encode())
    h.update(data.train_images.numpy().tobytes())
    h.update(data.train_labels.numpy().tobytes())
    return h.hexdigest()[:16]


def weights_digest(state: dict) -> str:
    """The weights' identity (12 hex digits of a SHA-256 over every tensor): what a run, a baseline and a
    comparison record, independent of how the file was serialised."""
    h = hashlib.sha256()
    for name, tensor in state.items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def for_dataset(data, device: torch.device | str = "cpu", classifier_file: str | Path | None = None,
                spec: TrainingSpec | None = None, progress: bool = False) -> TrainedClassifier:
    """The classifier that scores ``data``: ``classifier_file`` if given, else the shipped one for a
    dataset in ``PINNED``, else the cached (or newly trained) one."""
    if classifier_file:
        return load_file(classifier_file, data, device)
    if data.name in PINNED and spec is None:
        return load_pinned(data.name, device)
    return load_or_train(data, device, spec, progress)


def second_spec(data) -> TrainingSpec:
    return replace(default_spec(data), seed=SECOND_SEED)


def second_for_dataset(data, device: torch.device | str = "cpu", progress: bool = False) -> TrainedClassifier:
    """The second feature space's encoder for ``data``: shipped (mnist5k), else cached or trained now."""
    if data.name in PINNED_SECOND:
        return load_pinned(data.name, device, PINNED_SECOND)
    return load_or_train(data, device, second_spec(data), progress, arch=SECOND_ARCH)


def load_pinned(name: str, device: torch.device | str = "cpu", table: dict | None = None) -> TrainedClassifier:
    """The classifier shipped for dataset ``name`` (``table``: PINNED, or PINNED_SECOND), refused unless its
    file's SHA-256 is the pinned one."""
    pinned = (PINNED if table is None else table)[name]
    if not pinned.path.is_file():
        raise UserError(f"the shipped evaluation classifier {pinned.path} is missing: reinstall the package, or "
                        f"restore it with `git checkout -- bench/assets/{pinned.file}`")
    actual = file_sha256(pinned.path)
    if actual != pinned.sha256:
        raise UserError(f"the shipped evaluation classifier {pinned.path} has SHA-256 {actual[:16]}..., not the "
                        f"pinned {pinned.sha256[:16]}...: the file is corrupt or was changed. Restore it with "
                        f"`git checkout -- bench/assets/{pinned.file}` (or reinstall the package)")
    return _from_payload(_read_payload(pinned.path), pinned.path, "shipped", device)


def load_file(path: str | Path, data, device: torch.device | str = "cpu") -> TrainedClassifier:
    """``--classifier FILE``: a file written by ``python -m bench classifier``, checked against the dataset."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--classifier {path}: no such file; write one with `python -m bench classifier "
                        f"--dataset {data.name} --out {path}`")
    payload = _read_payload(path)
    shape, classes = tuple(payload["arch"]["image_shape"]), payload["arch"]["num_classes"]
    if shape != tuple(data.image_shape) or classes != data.num_classes:
        raise UserError(f"--classifier {path} was trained on {payload.get('dataset')!r} images of shape {shape} "
                        f"with {classes} classes; dataset {data.name!r} has shape {tuple(data.image_shape)} and "
                        f"{data.num_classes} classes: give a classifier for this dataset")
    return _from_payload(payload, path, "file", device)


class ClassifierMismatch(Exception):
    """A worker's evaluation classifier is not the one the run's driver chose: its scores would not compare."""


def load_shipped(path: str | Path, expected_digest: str, device: torch.device | str = "cpu") -> TrainedClassifier:
    """The classifier the driver shipped to this worker (its file, copied if need be), checked against the
    driver's weights digest: every model of a run must be scored by the same classifier."""
    try:
        payload = _read_payload(Path(path))
    except UserError as exc:
        raise ClassifierMismatch(f"the run's evaluation classifier is unusable in this worker: {exc}") from None
    if payload["weights_digest"] != expected_digest:
        raise ClassifierMismatch(f"the evaluation classifier in this worker has weights digest "
                                 f"{payload['weights_digest']}, the run's has {expected_digest}: every model of a "
                                 f"run must be scored by one classifier")
    return _from_payload(payload, Path(path), "file", device)


def load_or_train(data, device: torch.device | str = "cpu", spec: TrainingSpec | None = None,
                  progress: bool = False, arch: dict | None = None) -> TrainedClassifier:
    """The dataset's classifier from the cache, or trained now (deterministically, on the CPU) and cached.

    ``spec`` defaults to ``default_spec(data)``, looked up at call time (tests swap in a tiny training);
    ``arch``: network settings other than the default (the second space's width)."""
    spec = spec or default_spec(data)
    if not has_labels(data):
        raise UserError(f"dataset {data.name!r} has no class labels, so it has no evaluation classifier; "
                        f"sample-quality metrics need a labelled dataset such as mnist5k or mnist")
    digest = definition_hash(data, spec, arch)
    path = cache_dir() / "classifiers" / f"{data.name}-{digest}.pt"
    try:
        payload, source, seconds = _read_payload(path), "cache", None
    except UserError:  # missing, or a truncated cache file: trained again, not an error
        path.unlink(missing_ok=True)
        (payload, seconds), source = train_payload(data, spec, progress, arch), "trained"
        save_payload(payload, path)
    return _from_payload(payload, path, source, device, seconds)


def train_payload(data, spec: TrainingSpec | None = None, progress: bool = False,
                  extra_arch: dict | None = None) -> tuple[dict, float]:
    """Train the dataset's classifier; returns what its file holds (architecture, weights and their digest,
    the definition hash, the spec and the test accuracies: what defines the classifier, no timing) and the
    seconds it took."""
    spec = spec or default_spec(data)
    arch = {"image_shape": tuple(data.image_shape), "num_classes": data.num_classes, **(extra_arch or {})}
    start = time.perf_counter()
    model = fit(arch, data.train_images, data.train_labels, spec, progress)
    seconds = time.perf_counter() - start
    binary = "binary" in data.tracks
    binarized = (data.test_split("binary") * 255).to(torch.uint8) if binary else None
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    return {"arch": arch, "state_dict": state, "weights_digest": weights_digest(state),
            "dataset": data.name, "definition_hash": definition_hash(data, spec, extra_arch), "spec": asdict(spec),
            "test_accuracy": accuracy(model, data.test_images, data.test_labels),
            "test_accuracy_binarized": accuracy(model, binarized, data.test_labels) if binary else None,
            "device": "cpu", "threads": TRAINING_THREADS, "torch": str(torch.__version__)}, round(seconds, 2)


def save_payload(payload: dict, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(payload, tmp)
    tmp.replace(path)  # atomic: a reader never sees half a file


PAYLOAD_KEYS = ("arch", "state_dict", "weights_digest", "dataset", "definition_hash", "test_accuracy",
                "test_accuracy_binarized")


def _read_payload(path: Path) -> dict:
    """A classifier file's contents, its weights checked against the digest it records; UserError if not."""
    if not path.is_file():
        raise UserError(f"evaluation classifier {path}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, not a torch file, or foreign objects inside
        raise UserError(f"evaluation classifier {path} is not readable ({type(exc).__name__}); write it again with "
                        f"`python -m bench classifier`") from None
    if not isinstance(payload, dict) or any(k not in payload for k in PAYLOAD_KEYS):
        raise UserError(f"{path} is not an evaluation classifier written by `python -m bench classifier`")
    if weights_digest(payload["state_dict"]) != payload["weights_digest"]:
        raise UserError(f"evaluation classifier {path}: its weights do not match the digest recorded with them "
                        f"(the file is corrupt); write it again with `python -m bench classifier`")
    return payload


def _from_payload(payload: dict, path: Path, source: str, device, seconds: float | None = None) -> TrainedClassifier:
    model = EvalClassifier(**payload["arch"])
    model.load_state_dict(payload["state_dict"])
    model.requires_grad_(False)
    return TrainedClassifier(model.to(torch.device(device)).eval(), payload["dataset"], payload["definition_hash"],
                             payload["weights_digest"], payload["test_accuracy"], payload["test_accuracy_binarized"],
                             seconds, Path(path), source)
