"""Sample-quality metrics (FID, KID, IS, precision/recall, class accuracy) through torch-fidelity.

The features come from the suite's own evaluation classifier (``bench.evaluate.classifier``), registered with
torch-fidelity as a feature extractor: penultimate features for FID, KID and precision/recall, logits
for the inception score. The extractor's name carries the dataset, the classifier's definition hash and
its weights digest, so two classifiers never share a torch-fidelity cache entry. One
``calculate_metrics`` call per model extracts the features once and shares them between the metrics.

The reference set is always the test split, in the model's track: the 8-bit images (grey or colour) for ``8bit``
models, the fixed binarization for ``binary`` models (a binary model's samples are compared with
binary digits, never penalised for lacking grey levels). The ``data`` rows score real held-out images
(the validation split, which neither the models nor the classifier trained on; binary track: one fixed
binarization) the same way, so a reader sees what a perfect model scores on each track. Scoring
training images there instead would flatter the data row: the classifier's features fit them.

binarized-mnist has no labels; its runs borrow the MNIST classifier (same digits; trained on MNIST's
first 50,000 training images) when the MNIST files are under the data root. Its test images are MNIST's
test digits, which that classifier never saw; its validation images (the data row) are MNIST training
digits, most of which it did see in grey, which the data row's note says.

Two hooks serve the harness: ``prepare_run`` (parent process: classifier, config, ``data`` rows) and
``model_rows`` (worker process, after training).
"""
from __future__ import annotations

import hashlib
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import torch
import torch_fidelity
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from bench.evaluate.metrics import row
from bench.evaluate.samples import draw_samples
from bench.evaluate.classifier import (TrainedClassifier, for_dataset, has_labels, load_shipped, predict_logits,
                                      second_for_dataset)

FEATURES = "penultimate"
LOGITS = "logits"
KID_SUBSET_SIZE = 1000  # torch-fidelity's default; lowered to the smaller set when needed
KID_SUBSETS = 100
ISC_SPLITS = 10
ISC_MIN_SPLIT = 100  # fewer IS splits below 10 x 100 samples: a marginal from a handful of samples is biased
PRC_NEIGHBORHOOD = 3
REFERENCE_SPLIT = "test"


# --- torch-fidelity integration ------------------------------------------------------------------
_CLASSIFIERS: dict[str, torch.nn.Module] = {}  # extractor name -> the classifier it wraps (this process)


class ClassifierFeatureExtractor(FeatureExtractorBase):
    """The evaluation classifier seen through torch-fidelity's feature-extractor interface.

    torch-fidelity instantiates the class itself from the registered name, so the classifier is looked
    up by that name (``register``)."""

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)
        if name not in _CLASSIFIERS:
            raise KeyError(f"feature extractor {name!r} is registered but its classifier is not loaded in this "
                           f"process; call bench.evaluate.sample_quality.register(classifier) first")
        self.classifier = _CLASSIFIERS[name]

    @staticmethod
    def get_provided_features_list():
        return FEATURES, LOGITS

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return LOGITS if metric == "isc" else FEATURES

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        raise NotImplementedError("the evaluation classifier is not compiled")

    def forward(self, images):
        if images.dtype != torch.uint8:
            raise TypeError(f"the feature extractor takes uint8 images, got {images.dtype}")
        features, logits = self.classifier.features_and_logits(images)
        by_name = {FEATURES: features, LOGITS: logits}
        return tuple(by_name[name] for name in self.features_list)


def extractor_name(classifier: TrainedClassifier) -> str:
    return f"genbench-cnn-{classifier.dataset}-{classifier.definition_hash}-{classifier.weights_digest}"


def register(classifier: TrainedClassifier) -> str:
    """Make the classifier available to torch-fidelity under its unique name; returns the name."""
    name = extractor_name(classifier)
    _CLASSIFIERS[name] = classifier.model
    if name not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(name, ClassifierFeatureExtractor)
    return name


class ImageSet(Dataset):
    """uint8 images N x C x H x W as torch-fidelity wants them: a Dataset of uint8 tensors."""

    def __init__(self, images: torch.Tensor):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise TypeError(f"expected uint8 images N x C x H x W, got {images.dtype} {tuple(images.shape)}")
        self.images = images.cpu()

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index]


@torch.no_grad()
def extract(classifier: TrainedClassifier, images: torch.Tensor, batch_size: int = 1000):
    """(penultimate features, logits) of uint8 images, computed directly (for checks, not for metrics)."""
    model = classifier.model
    device = next(model.parameters()).device
    feats, logits = [], []
    for i in range(0, len(images), batch_size):
        f, lg = model.features_and_logits(images[i:i + batch_size].to(device))
        feats.append(f.cpu())
        logits.append(lg.cpu())
    return torch.cat(feats), torch.cat(logits)


# --- the metrics -----------------------------------------------------------------------------------
def score(samples: torch.Tensor, reference: torch.Tensor, classifier: TrainedClassifier,
          device: torch.device | str = "cpu", *, cache_root: str | Path | None = None,
          reference_name: str | None = None, kid_subsets: int = KID_SUBSETS, isc_splits: int = ISC_SPLITS,
          prc_neighborhood: int = PRC_NEIGHBORHOOD, batch_size: int = 500, rng_seed: int = 2020,
          ) -> tuple[dict, list[str]]:
    """FID, KID, IS, precision and recall of ``samples`` against ``reference`` (both uint8 N x C x H x W),
    in one torch-fidelity call; returns (values, notes about adapted settings).

    With ``cache_root`` and ``reference_name`` the reference features are cached on disk (they are the
    same for every model of a run)."""
    _check_images(samples, "samples", classifier)
    _check_images(reference, "reference", classifier)
    n, m = len(samples), len(reference)
    if min(n, m) < prc_neighborhood + 1:
        raise ValueError(f"sample-quality metrics need at least {prc_neighborhood + 1} samples and reference "
                         f"images (precision/recall uses {prc_neighborhood} neighbours); got {n} and {m}")
    notes = []
    kid_size = min(KID_SUBSET_SIZE, n, m)
    if kid_size < KID_SUBSET_SIZE:
        notes.append(f"KID subset size lowered from {KID_SUBSET_SIZE} to {kid_size} (the smaller set)")
    if kid_size == n == m:
        kid_subsets = 1  # every subset would be the whole of both sets: one is exact, the rest copies
    splits = min(isc_splits, max(1, n // ISC_MIN_SPLIT))
    if splits < isc_splits:
        notes.append(f"IS over {splits} split(s) instead of {isc_splits}: {n} samples")
    device = torch.device(device)
    name = register(classifier)
    caching = cache_root is not None and reference_name is not None
    values = torch_fidelity.calculate_metrics(
        input1=ImageSet(samples), input2=ImageSet(reference), feature_extractor=name,
        isc=True, fid=True, kid=True, prc=True,
        cuda=device.type == "cuda", batch_size=batch_size, save_cpu_ram=True,  # no DataLoader worker processes
        kid_subset_size=kid_size, kid_subsets=kid_subsets, isc_splits=splits,
        prc_neighborhood=prc_neighborhood, rng_seed=rng_seed, verbose=False,
        cache=caching, cache_root=str(cache_root) if caching else None,
        input2_cache_name=reference_name if caching else None)
    out = {"fid": values[torch_fidelity.KEY_METRIC_FID],
           "kid": values[torch_fidelity.KEY_METRIC_KID_MEAN], "kid_std": values[torch_fidelity.KEY_METRIC_KID_STD],
           "is": values[torch_fidelity.KEY_METRIC_ISC_MEAN], "is_std": values[torch_fidelity.KEY_METRIC_ISC_STD],
           "precision": values[torch_fidelity.KEY_METRIC_PRECISION],
           "recall": values[torch_fidelity.KEY_METRIC_RECALL],
           "n": n, "m": m, "kid_subset_size": kid_size, "kid_subsets": kid_subsets, "isc_splits": splits,
           "prc_neighborhood": prc_neighborhood, "extractor": name}
    return out, notes


def _check_images(images: torch.Tensor, what: str, classifier: TrainedClassifier):
    if not torch.is_tensor(images) or images.dtype != torch.uint8 or images.dim() != 4:
        raise TypeError(f"{what} must be a uint8 tensor N x C x H x W (see bench.evaluate.samples.to_uint8)")
    if tuple(images.shape[1:]) != classifier.model.image_shape:
        raise ValueError(f"{what} have shape {tuple(images.shape[1:])}, but the evaluation classifier of "
                         f"{classifier.dataset!r} takes {classifier.model.image_shape}")


def metric_rows(values: dict, classifier: TrainedClassifier, what: str, reference: str) -> list[dict]:
    """Metric rows (``metrics.row``) with notes naming the sample count, the reference and the features."""
    base = (f"{values['n']} {what} vs {values['m']} {reference}; features: {values['extractor']} "
            f"({classifier.feature_dim}-d penultimate layer, classifier test accuracy {classifier.test_accuracy:.2%})")
    kid = f"; std {values['kid_std']:.3g} over {values['kid_subsets']} subset(s) of {values['kid_subset_size']}"
    isc = (f"{values['n']} {what}; logits of {values['extractor']}; std {values['is_std']:.3g} over "
           f"{values['isc_splits']} split(s)")
    prc = f"; k={values['prc_neighborhood']} nearest neighbours"
    return [row("fid", values["fid"], "", "estimate", note=base),
            row("kid", values["kid"], "", "estimate", note=base + kid),
            row("is", values["is"], "", "estimate", note=isc),
            row("precision", values["precision"], "fraction", "estimate", note=base + prc),
            row("recall", values["recall"], "fraction", "estimate", note=base + prc)]


def second_space_rows(samples: torch.Tensor, reference: torch.Tensor, labelled, device, outcome) -> list[dict]:
    """``fid_wide``: the same samples against the same reference in the second encoder's features (twice as
    wide, another seed; ``classifier.second_for_dataset``), FID by scipy (``uncertainty.frechet_distance``,
    tested against torch-fidelity). A failure is a note: the first space's rows stand."""
    from bench.evaluate import uncertainty

    try:
        second = second_for_dataset(labelled, device)
        fa, fb = (extract(second, images)[0].numpy() for images in (samples, reference))
        value = uncertainty.frechet_distance(fa, fb)
    except Exception as exc:  # noqa: BLE001 - recorded on the job
        outcome.notes.append(f"the second feature space's FID failed: {type(exc).__name__}: {exc}")
        return []
    return [row("fid_wide", value, "", "estimate",
                note=f"{len(samples)} samples vs {len(reference)} reference images in the second feature space: "
                     f"{second.key} (weights {second.weights_digest}; {second.feature_dim}-d penultimate layer of "
                     f"the same CNN twice as wide, another seed; test accuracy {second.test_accuracy:.2%})")]


def class_accuracy_row(samples: torch.Tensor, labels: torch.Tensor, classifier: TrainedClassifier) -> dict:
    """Conditional models: the fraction of samples drawn for label y that the classifier labels y."""
    predicted = predict_logits(classifier.model, samples).argmax(1)
    agree = (predicted == labels.cpu()).double().mean().item()
    return row("class_accuracy", agree, "fraction", "estimate",
                       note=f"{len(samples)} samples, labels 0..{int(labels.max())} in turn; classifier test "
                            f"accuracy {classifier.test_accuracy:.2%}")


# --- the reference sets ----------------------------------------------------------------------------
def reference_images(data, track: str) -> torch.Tensor:
    """The test split as uint8 images in the track's representation (binary: the fixed binarization)."""
    if track == "binary":
        return (data.test_split("binary") * 255).to(torch.uint8)
    return data.test_images


def reference_name(data, track: str, images: torch.Tensor) -> str:
    """torch-fidelity cache name of a reference set: dataset, track and a digest of the pixels."""
    digest = hashlib.sha1(images.numpy().tobytes()).hexdigest()[:8]
    return f"{data.name}-{REFERENCE_SPLIT}-{track}-{digest}"


def reference_description(data, track: str) -> str:
    kind = "fixed binarization of the " if track == "binary" else ""
    return f"{kind}{REFERENCE_SPLIT} images of {data.name}"


def held_out_indices(data, n: int, seed: int = 0) -> torch.Tensor:
    """Which validation images (a seeded random ``n``) the ``data`` row scores."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(len(data.valid_images), generator=generator)[:n]


def held_out_images(data, n: int, track: str, seed: int = 0) -> torch.Tensor:
    """``n`` validation images in the track's representation (uint8): the ``data`` row's samples. No model
    and not the evaluation classifier trained on them."""
    images = data.valid_split(track)[held_out_indices(data, n, seed)]
    return (images * 255).to(torch.uint8) if track == "binary" else images.to(torch.uint8)


def classifier_data(data, data_root=None):
    """The labelled dataset whose evaluation classifier scores ``data``'s samples; None: there is none."""
    if has_labels(data):
        return data
    if data.name == "binarized-mnist":
        from bench.data.datasets import load_dataset
        from bench.config.errors import DatasetError
        try:
            return load_dataset("mnist", data_root)
        except DatasetError:
            return None
    return None


def _run_tracks(config: dict) -> list[str]:
    import models

    tracks = set()
    for name in config.get("models", []):
        try:
            tracks.add(models.model_class(name).track)
        except KeyError:
            pass
    return sorted(tracks) or ["8bit"]


# --- the harness hooks -----------------------------------------------------------------------------
NO_LABELS_NOTE = ("sample quality skipped: dataset {} has no class labels, so no evaluation classifier "
                  "(binarized-mnist borrows MNIST's when the MNIST files are under the data root)")
BORROWED_NOTE = ("classifier: MNIST's (binarized-mnist has no labels), trained on MNIST's first 50,000 training "
                 "images; the test digits it never saw")
BORROWED_DATA_NOTE = ("data row: binarized-mnist's validation digits come from MNIST's training set, so the "
                      "borrowed MNIST classifier saw most of them in grey: this row is somewhat optimistic")


def prepare_run(config: dict, data, device, out, progress: bool = True, check=None) -> list[dict]:
    """Parent process, before the jobs: load (or train) the classifier, ``config["classifier_file"]`` if the
    user pinned one, record it in ``config``, and score
    real training images (the ``data`` rows, one per track of the run's models). ``check(config)``, called
    once the classifier is known and before anything is written, may refuse the run by raising."""
    from bench.config.job import Job, JobOutcome

    labelled = classifier_data(data, config.get("data_root"))
    if labelled is None:
        config["fidelity_skipped"] = NO_LABELS_NOTE.format(data.name)
        return []
    device, out = torch.device(device), Path(out)
    classifier = for_dataset(labelled, device, config.get("classifier_file"), progress=progress)
    if labelled is not data:
        config["fidelity_classifier_borrowed"] = BORROWED_NOTE
    n_wanted = config.get("fidelity_samples") or len(data.test_images)
    config.update(classifier.describe())
    config.update({"fidelity_reference_split": REFERENCE_SPLIT, "fidelity_feature_extractor": extractor_name(classifier),
                   "fidelity_features": f"penultimate {classifier.feature_dim}-d (FID, KID, precision/recall); "
                                        f"logits (IS)",
                   "fidelity_prc_neighborhood": PRC_NEIGHBORHOOD, "fidelity_samples": n_wanted})
    if check is not None:
        check(config)
    outcomes = []
    for track in _run_tracks(config):
        start = time.perf_counter()
        job = Job(model="data", dataset=data.name, seed=0, budget=config.get("budget", ""), device=str(device),
                  out=str(out), fidelity_samples=n_wanted)
        outcome = JobOutcome(job=asdict(job), info={"family": "data", "track": track, "likelihood": None})
        n = min(n_wanted, len(data.valid_images))
        if n < n_wanted:
            outcome.notes.append(f"data row: only {n} held-out (validation) images for {n_wanted} wanted samples")
        if labelled is not data:
            outcome.notes.append(BORROWED_DATA_NOTE)
        samples = held_out_images(data, n, track)
        reference = reference_images(data, track)
        values, notes = score(samples, reference, classifier, device, cache_root=out / "fidelity",
                              reference_name=reference_name(data, track, reference))
        outcome.notes += notes
        trained_on = ("no model trained on them; the borrowed MNIST classifier saw most of them in grey"
                      if labelled is not data else "never trained on")
        outcome.rows = metric_rows(values, classifier, f"real held-out validation images (random, seed 0, "
                                                       f"{track} track; {trained_on})",
                                   reference_description(data, track))
        outcome.rows += second_space_rows(samples, reference, labelled, device, outcome)
        features = stored_features(samples, reference, classifier, out, f"data__{data.name}__{track}")
        outcome.rows += uncertainty_rows(*features, values, outcome.rows)
        outcome.wall_seconds = time.perf_counter() - start
        _save(outcome, out, track)
        outcomes.append(asdict(outcome))
    return outcomes


def _save(outcome, out: Path, track: str):
    """jobs/data__<dataset>__<track>.json, next to the models' outcomes (``bench report`` reads them)."""
    from bench.config.job import save_outcome

    save_outcome(outcome, out / "jobs" / f"data__{outcome.job['dataset']}__{track}.json")


def model_rows(model, data, device, job, outcome) -> list[dict]:
    """Worker process, after training: draw samples (seeded) and score them. A failure here becomes a note
    on the job (its other metrics stand), not a failed job."""
    labelled = classifier_data(data, getattr(job, "data_root", None))
    if labelled is None:
        outcome.notes.append(NO_LABELS_NOTE.format(data.name))
        return []
    device = torch.device(device)
    classifier = job_classifier(labelled, device, job)  # outside the try: a mismatch fails the job
    try:
        if labelled is not data:
            outcome.notes.append(BORROWED_NOTE)
        n = job.fidelity_samples or len(data.test_images)
        torch.manual_seed(job.seed)
        samples, labels = draw_samples(model, n, device, progress=job.progress)
        reference = reference_images(data, model.track)
        values, notes = score(samples, reference, classifier, device, cache_root=Path(job.out) / "fidelity",
                              reference_name=reference_name(data, model.track, reference))
        outcome.notes += notes
        rows = metric_rows(values, classifier, f"samples ({model.track} track)",
                           reference_description(data, model.track))
        if model.conditional and labels is not None:
            rows.append(class_accuracy_row(samples, labels, classifier))
        rows += second_space_rows(samples, reference, labelled, device, outcome)
        try:
            rows += trust_rows(samples, reference, values, rows, classifier, data, model, job, outcome, labels)
        except Exception as exc:  # noqa: BLE001 - the sample-quality rows above stand
            outcome.notes.append(f"intervals, fid_inf or copy_rate failed: {type(exc).__name__}: {exc}")
            outcome.info["trust_traceback"] = traceback.format_exc()
        return rows
    except Exception as exc:  # noqa: BLE001 - recorded on the job, the likelihood rows stand
        outcome.notes.append(f"sample quality failed: {type(exc).__name__}: {exc}")
        outcome.info["fidelity_traceback"] = traceback.format_exc()
        return []


def job_classifier(labelled, device, job) -> TrainedClassifier:
    """The classifier the driver shipped with the job (digest checked), else the dataset's own (shipped,
    or this machine's cached one)."""
    if getattr(job, "classifier_file", None):
        return load_shipped(job.classifier_file, job.classifier_digest, device)
    return for_dataset(labelled, device, progress=job.progress)


# --- uncertainty, memorisation and the FID check (bench.evaluate.uncertainty, bench.evaluate.memorisation) ---------------
def stored_features(samples, reference, classifier: TrainedClassifier, out, key: str):
    """Penultimate features of samples and reference as numpy arrays, saved to features/<key>.npz (the
    bootstrap, FID_inf and the FID check all read these; nothing is extracted twice)."""
    import numpy as np

    fa = extract(classifier, samples)[0].numpy()
    fb = extract(classifier, reference)[0].numpy()
    path = Path(out) / "features" / f"{key}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, samples=fa, reference=fb)
    return fa, fb


def uncertainty_rows(fa, fb, values: dict, rows: list[dict]) -> list[dict]:
    """Bootstrap 95% intervals onto the FID, KID, precision and recall rows (``ci_low``, ``ci_high``), and
    the density, coverage (with theirs) and fid_inf rows."""
    from bench.evaluate import uncertainty

    estimates = {m: values[m] for m in ("fid", "kid", "precision", "recall")}
    estimates["density"], estimates["coverage"] = uncertainty.density_coverage(fa, fb)
    base = f"on the evaluation classifier's features, k = {uncertainty.DENSITY_NEIGHBOURS} (Naeem et al. 2020)"
    rows = rows + [row("density", estimates["density"], "", "estimate",
                       note=f"mean real k-NN balls holding a sample / k, {base}; 1 when samples match the data"),
                   row("coverage", estimates["coverage"], "fraction", "estimate",
                       note=f"real k-NN balls holding at least one sample, {base}")]
    intervals = uncertainty.bootstrap_intervals(fa, fb, estimates, k=values["prc_neighborhood"])
    capped = max(len(fa), len(fb)) > uncertainty.BOOTSTRAP_MAX_POINTS
    for r in rows:
        if r["metric"] in intervals:
            r["ci_low"], r["ci_high"] = intervals[r["metric"]]
            r["note"] = r.get("note", "") + (f"; 95% bootstrap interval ({uncertainty.BOOTSTRAP_REPLICATES} "
                                             f"replicates{', on a capped subset' if capped else ''})")
    value, fit = uncertainty.fid_inf(fa, fb)
    note = (f"FID extrapolated to infinitely many samples and reference images (Chong & Forsyth 2020): "
            f"line FID_N = FID_inf + k/N fitted over N = {fit['sizes'][0]}..{fit['sizes'][-1]} "
            f"(k = {fit['slope']:.3g})")
    return rows[-2:] + [row("fid_inf", value, "", "estimate", note=note)]


def intra_fid_row(fa, labels, fb, reference_labels) -> dict:
    import numpy as np

    from bench.evaluate import uncertainty

    value, per_class = uncertainty.intra_fid(fa, labels.cpu().numpy(), fb, reference_labels.cpu().numpy())
    counts = np.bincount(labels.cpu().numpy())
    return row("intra_fid", value, "", "estimate",
               note=f"mean of {len(per_class)} per-class FIDs, each class's samples (about {int(np.median(counts))}) "
                    f"against its reference images; per class: "
                    + ", ".join(f"{c}: {v:.4g}" for c, v in per_class.items()))


def trust_rows(samples, reference, values, rows, classifier, data, model, job, outcome, labels=None) -> list[dict]:
    """After the sample-quality rows: intervals, density and coverage, fid_inf, intra-class FID (conditional
    models, ``labels`` those the samples were drawn for), copy_rate with its figure, and the FID check."""
    from bench.evaluate import self_checks
    from bench.evaluate import memorisation

    out = Path(job.out)
    key = getattr(job, "key", None) or f"{model.name}__{data.name}__seed{job.seed}"
    fa, fb = stored_features(samples, reference, classifier, out, key)
    extra = uncertainty_rows(fa, fb, values, rows)
    if model.conditional and labels is not None:
        extra.append(intra_fid_row(fa, labels, fb, data.test_labels))
    outcome.info.setdefault("checks", []).append(self_checks.fid_recompute_check(values["fid"], fa, fb))
    train = data.train_images
    train_features = extract(classifier, train)[0]
    predicted = [predict_logits(classifier.model, images).argmax(1).numpy() for images in (samples, reference)]
    verdict = memorisation.copy_rate(samples, torch.from_numpy(fa), train, train_features, reference,
                                     torch.from_numpy(fb), sample_classes=predicted[0], heldout_classes=predicted[1])
    extra.append(row("copy_rate", verdict.rate, "fraction", "estimate", note=verdict.describe()))
    figure = out / "memorisation" / f"{key}.png"
    memorisation.save_neighbour_figure(samples, train, verdict, figure)
    outcome.info["copy_figure"] = str(figure.relative_to(out))
    return extra
