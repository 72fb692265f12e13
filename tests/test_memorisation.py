"""copy_rate: memorising models (the copy plugins, verbatim and shifted by a pixel) score near 1, held-out
real images and a smoothed stand-in for a good model score near 0."""
import pytest
import torch
import torch.nn.functional as F

from bench.evaluate import sample_quality as fidelity
from bench.evaluate import memorisation
from bench.evaluate.classifier import TrainingSpec, load_or_train
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
    data, classifier, calibration, _, f = setting
    sample_features = fidelity.extract(classifier, samples)[0]
    return memorisation.copy_rate(samples, sample_features, data.train_images, f["train"], calibration,
                                  f["calibration"]).rate


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
