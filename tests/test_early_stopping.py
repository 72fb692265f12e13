"""Early stopping on the validation split: the kept weights are the best epoch's, and patience ends training."""
import torch

import models
from bench.config.budgets import parse_budget
from bench.data.datasets import load_dataset
from bench.train.trainer import train


def test_keeps_the_best_epoch_and_stops_after_patience():
    data = load_dataset("digits")
    torch.manual_seed(0)
    # 10 training images and a large learning rate: FVSBN overfits within a few epochs.
    model = models.build("fvsbn", image_shape=data.image_shape, lr=1.0)
    validation = data.valid_split("binary")
    result = train(model, data.train_images[:10], data.train_labels[:10], parse_budget("200epochs"),
                   torch.device("cpu"), seed=0, batch_size=10, progress=False, validation=validation, patience=3)
    curve = [p["valid_nll"] for p in result.valid_curve]
    assert result.best_epoch == 1 + curve.index(min(curve))
    assert len(curve) == result.best_epoch + 3 < 200  # stopped by patience, not by the budget
    with torch.no_grad():
        kept = model.nll(validation).double().mean().item()  # recomputed on the restored weights
    assert abs(kept - min(curve)) < 1e-6 * abs(kept)
    assert kept < curve[-1]  # the last epoch was worse: restoring mattered


def test_unknown_model_argument_is_a_user_error(tmp_path, capsys):
    from bench.cli import main

    code = main(["run", "--models", "fvsbn", "--budget", "smoke", "--model-args", "fvsbn:learning_rate=0.01",
                 "--out", str(tmp_path / "out"), "--no-progress", "--no-scaling"])
    assert code == 2 and "learning_rate" in capsys.readouterr().err
