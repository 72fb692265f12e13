"""copy_rate: memorising models (the copy plugins, verbatim and shifted by a pixel) score near 1, held-out
real images and a smoothed stand-in for a good model score near 0, and so do held-out images of any one
class (a collapsed but honest model)."""
import pytest
import torch
import torch.nn.functional as F

from bench.evaluate import sample_quality as fidelity
from bench.evaluate import memorisation
from bench.evaluate.classifier import TrainingSpec, for_dataset, load_or_train, predict_logits
from bench.data.datasets import load_dataset
from tests.plugins.copy_model import CopyTrain, CopyTrainShifted, move

TINY = TrainingSpec(epochs=1, min_steps=40, max_steps=40, batch_size=64)


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """mnist5k, a quickly trained classifier, training features, and the test split cut in two: the first
    half calibrates, the second is scored as 'held-out real images'."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCH_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        data = load_dataset("mnist5k")
        classifier = load_or_train(data, "cpu", spec=TINY)
    calibration, heldout = data.test_images[:500], data.test_images[500:]
    features = {name: fidelity.extract(classifier, images)[0]
                for name, images in (("train", data.train_images), ("calibration", calibration))}
    return data, classifier, calibration, heldout, features


def rate(setting, samples):
    """copy_rate as a run computes it: calibrated per class of the classifier's prediction."""
    data, classifier, calibration, _, f = setting
    sample_features = fidelity.extract(classifier, samples)[0]
    classes = [predict_logits(classifier.model, images).argmax(1).numpy() for images in (samples, calibration)]
    return memorisation.copy_rate(samples, sample_features, data.train_images, f["train"], calibration,
                                  f["calibration"], sample_classes=classes[0], heldout_classes=classes[1]).rate


def plugin_samples(model_class, data, n=300):
    model = model_class()
    for start in range(0, 640, 64):
        model.train_step((data.train_images[start:start + 64].float(), None), [])
    torch.manual_seed(0)
    return (model.sample(n) * 255).round().to(torch.uint8)


@pytest.mark.parametrize("model_class", [CopyTrain, CopyTrainShifted])
def test_copying_models_are_caught(setting, model_class):
    samples = plugin_samples(model_class, setting[0])
    if model_class is CopyTrainShifted:  # really moved: no sample equals a training image pixel for pixel
        assert not (samples[:, None] == setting[0].train_images[None, :640]).flatten(2).all(2).any()
    assert rate(setting, samples) >= 0.9


def test_shift_in_every_direction_is_caught(setting):
    originals = setting[0].train_images[1000:1200]
    for dy, dx in [(-1, 0), (0, 1), (1, -1)]:
        moved = (move(originals.float() / 255, dy, dx) * 255).round().to(torch.uint8)
        assert rate(setting, moved) >= 0.9, (dy, dx)


def test_held_out_images_are_not_copies(setting):
    assert rate(setting, setting[3]) <= 0.05


def test_a_smoothed_stand_in_for_a_good_model_is_not_a_copier(setting):
    """Held-out digits, blurred: new images of the right kind, as a well trained model would draw."""
    heldout = setting[3].float() / 255
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]).view(1, 1, 3, 3) / 16
    smooth = (F.conv2d(heldout, kernel, padding=1).clamp(0, 1) * 255).round().to(torch.uint8)
    assert rate(setting, smooth) <= 0.05


def test_blurred_training_images_show_the_threshold_is_not_trivially_loose(setting):
    """The same blur applied to *training* images is still judged close (mostly copies): the rule reacts to
    which image a sample came from, not to the blur."""
    train = setting[0].train_images[:300].float() / 255
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, 12.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3) / 16
    light = (F.conv2d(train, kernel, padding=1).clamp(0, 1) * 255).round().to(torch.uint8)
    assert rate(setting, light) >= 0.5


def test_neighbour_figure_is_written(setting, tmp_path):
    data, classifier, calibration, _, f = setting
    samples = plugin_samples(CopyTrain, data, n=50)
    verdict = memorisation.copy_rate(samples, fidelity.extract(classifier, samples)[0], data.train_images,
                                     f["train"], calibration, f["calibration"])
    order = memorisation.save_neighbour_figure(samples, data.train_images, verdict, tmp_path / "nn.png")
    assert (tmp_path / "nn.png").stat().st_size > 0 and len(order) == 8
    # For a verbatim copier, every shown neighbour is the sample itself.
    nearest = data.train_images[verdict.samples.index[order]]
    assert torch.equal(nearest, samples[order])


def test_held_out_images_of_any_one_class_are_not_copies():
    """A model collapsed onto one digit, copying nothing: the validation images of one class (never trained
    on, not the calibration set) as its samples. Calibrated per class, every class scores at most 0.05; with
    one global threshold the thin 1s, which sit nearer their training neighbours, would not (the test can
    fail). As a run does: the pinned classifier, the test split calibrating."""
    data = load_dataset("mnist5k")
    classifier = for_dataset(data, "cpu")
    train_features = fidelity.extract(classifier, data.train_images)[0]
    reference = data.test_images
    reference_features = fidelity.extract(classifier, reference)[0]
    reference_classes = predict_logits(classifier.model, reference).argmax(1).numpy()
    per_class, global_rates = {}, {}
    for c in range(10):
        samples = data.valid_images[data.valid_labels == c]
        features = fidelity.extract(classifier, samples)[0]
        classes = predict_logits(classifier.model, samples).argmax(1).numpy()
        per_class[c] = memorisation.copy_rate(samples, features, data.train_images, train_features, reference,
                                              reference_features, sample_classes=classes,
                                              heldout_classes=reference_classes).rate
        global_rates[c] = memorisation.copy_rate(samples, features, data.train_images, train_features, reference,
                                                 reference_features).rate
    assert max(per_class.values()) <= 0.05, per_class
    assert global_rates[1] > 0.05, global_rates
