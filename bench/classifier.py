"""The evaluation classifier: a small CNN the suite trains per dataset for its sample-quality metrics.

torch-fidelity's InceptionV3 cannot be downloaded here and fits 28x28 grey digits poorly, so the suite
trains its own classifier (docs/design.md, "Traps"): penultimate features feed
FID, KID and precision/recall, logits feed the inception score (``bench.fidelity`` registers it with
torch-fidelity).

The classifier is trained once per dataset on the training split only (``data.train_images``: never the
validation split, whose images are the ``data`` row's held-out samples, nor the test split, the reference
set) with a fixed seed and cached under
``<cache>/classifiers/``. The cache key is the dataset name plus a hash of everything that defines the
classifier: the source code of the network, the augmentation and the training loop, the training
hyper-parameters (``TrainingSpec``) and a fingerprint of the training data; change any of them and the
classifier is retrained. Its test accuracy (on the grey test split and on its fixed binarization) is
stored with the weights.

Training sees light augmentation (random shifts of about 2 pixels at 28x28) and, half of the time, a
dynamically binarized image, so the features stay meaningful for binary-track samples.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from bench.errors import UserError
from bench.paths import cache_dir

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


def fit(model: EvalClassifier, images: torch.Tensor, labels: torch.Tensor, spec: TrainingSpec,
        device: torch.device, progress: bool = False) -> EvalClassifier:
    """AdamW with linear warm-up and cosine decay on augmented batches. Seeded: a retrain on the same
    hardware and thread count gives the same weights."""
    generator = torch.Generator().manual_seed(spec.seed)
    torch.manual_seed(spec.seed)  # dropout
    model.to(device).train()
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
        x = augment(images[idx].cpu(), spec, generator).to(device)
        loss = F.cross_entropy(model(x), labels[idx].to(device))
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


# --- the cache ------------------------------------------------------------------------------------
DEFINITION = (TrainingSpec, EvalClassifier, augment, warmup_cosine, fit)  # the code whose source is part of the cache key


@dataclass
class TrainedClassifier:
    model: EvalClassifier
    dataset: str
    definition_hash: str
    weights_digest: str
    test_accuracy: float
    test_accuracy_binarized: float
    train_seconds: float
    path: Path
    trained_now: bool  # False: loaded from the cache

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
                "classifier_path": str(self.path)}


def has_labels(data) -> bool:
    return data.num_classes > 0 and bool((data.train_labels >= 0).all())


def definition_hash(data, spec: TrainingSpec) -> str:
    """Hash of the classifier's code (``DEFINITION``), its hyper-parameters and the training data it sees."""
    h = hashlib.sha256()
    for obj in DEFINITION:
        h.update(inspect.getsource(obj).encode())
    h.update(json.dumps(asdict(spec), sort_keys=True).encode())
    h.update(json.dumps([data.name, list(data.image_shape), data.num_classes, len(data.train_images)]).encode())
    h.update(data.train_images.numpy().tobytes())
    h.update(data.train_labels.numpy().tobytes())
    return h.hexdigest()[:16]


def _weights_digest(state: dict) -> str:
    h = hashlib.sha256()
    for name, tensor in state.items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def load_or_train(data, device: torch.device | str = "cpu", spec: TrainingSpec | None = None,
                  progress: bool = False) -> TrainedClassifier:
    """The dataset's evaluation classifier: from the cache, or trained now (and cached).

    ``spec`` defaults to ``DEFAULT_SPEC``, looked up at call time (tests swap in a tiny training)."""
    spec = spec or DEFAULT_SPEC
    if not has_labels(data):
        raise UserError(f"dataset {data.name!r} has no class labels, so it has no evaluation classifier; "
                        f"sample-quality metrics need a labelled dataset such as mnist5k or mnist")
    device = torch.device(device)
    digest = definition_hash(data, spec)
    path = cache_dir() / "classifiers" / f"{data.name}-{digest}.pt"
    payload = _read(path)
    trained_now = payload is None
    if trained_now:
        payload = _train_and_save(data, spec, digest, path, device, progress)
    model = EvalClassifier(**payload["arch"])
    model.load_state_dict(payload["state_dict"])
    model.requires_grad_(False)
    return TrainedClassifier(model.to(device).eval(), data.name, digest, payload["weights_digest"],
                             payload["test_accuracy"], payload["test_accuracy_binarized"],
                             payload["train_seconds"], path, trained_now)


class ClassifierMismatch(Exception):
    """A worker's evaluation classifier is not the one the run's driver trained: its scores would not compare."""


def load_shipped(path: str | Path, expected_digest: str, device: torch.device | str = "cpu") -> TrainedClassifier:
    """The classifier the driver shipped to this worker (its cache file, copied if need be), checked against
    the driver's weights digest: every model of a run must be scored by the same classifier."""
    payload = _read(Path(path), keep=True)
    if payload is None:
        raise ClassifierMismatch(f"the run's evaluation classifier {path} is missing or unreadable in this worker")
    digest = _weights_digest(payload["state_dict"])
    if digest != expected_digest or payload["weights_digest"] != expected_digest:
        raise ClassifierMismatch(f"the evaluation classifier in this worker has weights digest {digest}, the run's "
                                 f"has {expected_digest}: every model of a run must be scored by one classifier")
    model = EvalClassifier(**payload["arch"])
    model.load_state_dict(payload["state_dict"])
    model.requires_grad_(False)
    return TrainedClassifier(model.to(device).eval(), payload["dataset"], payload["definition_hash"], digest,
                             payload["test_accuracy"], payload["test_accuracy_binarized"],
                             payload["train_seconds"], Path(path), False)


def _read(path: Path, keep: bool = False) -> dict | None:
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # a truncated cache file is retrained, not an error
        if not keep:
            path.unlink(missing_ok=True)
        return None


def _train_and_save(data, spec: TrainingSpec, digest: str, path: Path, device: torch.device,
                    progress: bool) -> dict:
    arch = {"image_shape": tuple(data.image_shape), "num_classes": data.num_classes}
    start = time.perf_counter()
    model = fit(EvalClassifier(**arch), data.train_images, data.train_labels, spec, device, progress)
    seconds = time.perf_counter() - start
    binarized = (data.test_split("binary") * 255).to(torch.uint8)
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    payload = {"arch": arch, "state_dict": state, "weights_digest": _weights_digest(state),
               "dataset": data.name, "definition_hash": digest, "spec": asdict(spec),
               "test_accuracy": accuracy(model, data.test_images, data.test_labels),
               "test_accuracy_binarized": accuracy(model, binarized, data.test_labels),
               "train_seconds": round(seconds, 2), "device": str(device), "torch": torch.__version__}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{id(payload)}")
    torch.save(payload, tmp)
    tmp.replace(path)  # atomic: a reader never sees half a file
    return payload
