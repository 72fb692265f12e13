"""Budgets: the forms they take, and FLOP budgets spent exactly, whatever the wall clock says."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from bench.train import trainer
from bench.config.budgets import parse_budget
from bench.config.errors import UserError
from tests.test_flops import LinearScorer

IMAGES = (torch.arange(40 * 16) % 256).float().view(40, 1, 4, 4).to(torch.uint8)
LABELS = torch.zeros(40, dtype=torch.long)
BATCH = 8
STEP_FLOPS = LinearScorer.step_flops(BATCH, 16)


@pytest.mark.parametrize("text, amount", [("2e12flops", 2e12), ("5e11flops", 5e11), ("1.5tflops", 1.5e12),
                                          ("300gflops", 3e11), ("1e10flop", 1e10), ("7000flops", 7000.0)])
def test_flop_budgets_parse_to_flops(text, amount):
    budget = parse_budget(text)
    assert budget.kind == "flops" and budget.amount == pytest.approx(amount) and str(budget) == text


@pytest.mark.parametrize("text, kind, amount", [("500steps", "steps", 500), ("3epochs", "epochs", 3),
                                                ("5min", "seconds", 300), ("1e3steps", "steps", 1000)])
def test_other_forms_still_parse(text, kind, amount):
    budget = parse_budget(text)
    assert (budget.kind, budget.amount) == (kind, amount)


@pytest.mark.parametrize("text", ["0flops", "1e1.5flops", "2exaflops"])
def test_bad_flop_budgets_are_refused(text):
    with pytest.raises(UserError, match="budget"):
        parse_budget(text)


def _train(budget_text: str, monkeypatch=None, slow_clock: bool = False):
    torch.manual_seed(0)
    model = LinearScorer()
    if slow_clock:  # every reading of the clock is an hour later: a time budget would stop at once
        hours = itertools.count(0, 3600.0)
        monkeypatch.setattr(trainer.time, "perf_counter", lambda: next(hours))
    result = trainer.train(model, IMAGES, LABELS, parse_budget(budget_text), torch.device("cpu"), seed=0,
                           batch_size=BATCH, progress=False)
    return model, result


@pytest.mark.parametrize("budget_flops", [STEP_FLOPS * 5, STEP_FLOPS * 5 + 1, STEP_FLOPS * 0.5])
def test_flop_budget_stops_at_the_first_step_reaching_it_whatever_the_clock(budget_flops, monkeypatch):
    _, result = _train(f"{budget_flops:.17g}flops", monkeypatch, slow_clock=True)
    assert result.flops_per_step == STEP_FLOPS
    assert result.steps == math.ceil(budget_flops / STEP_FLOPS)
    assert result.flops == result.steps * STEP_FLOPS
    assert result.seconds >= 3600 * result.steps  # the clock said hours: the FLOP budget did not care


def test_every_budget_kind_reports_training_flops():
    _, result = _train("3steps")
    assert result.steps == 3 and result.flops == 3 * STEP_FLOPS


def test_counting_flops_does_not_change_training(monkeypatch):
    counted, _ = _train("4steps")
    monkeypatch.setattr(trainer, "step_flops", lambda *a, **k: float("nan"))  # no counting at all
    uncounted, result = _train("4steps")
    assert math.isnan(result.flops)
    for (name, a), (_, b) in zip(counted.state_dict().items(), uncounted.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_flop_budget_on_a_model_the_counter_cannot_see_fails_with_a_reason(monkeypatch):
    monkeypatch.setattr(trainer.flop_count, "train_step_flops", lambda *a, **k: 0.0)
    with pytest.raises(RuntimeError, match="use a step or time budget"):
        _train("1e6flops")


class GrowingSolver(LinearScorer):
    """Stands in for an adaptive-solver model: each 20 steps of training add one more pass of its layer,
    so a step's FLOPs grow with training (k passes: k * STEP_FLOPS)."""

    sampling_cost_depends_on_weights = True

    def __init__(self, image_shape=(1, 4, 4)):
        super().__init__(image_shape)
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))

    def nll(self, x):
        passes = 1 + int(self.steps_done) // 20
        inputs = x.flatten(1) / 255
        return sum((self.layer(inputs) ** 2).sum(1) for _ in range(passes))

    def train_step(self, batch, optimizers):
        stats = super().train_step(batch, optimizers)
        self.steps_done += 1
        return stats


def test_a_weight_dependent_model_is_recounted_as_it_trains():
    assert trainer.RECOUNT_EVERY == 20
    model = GrowingSolver()
    result = trainer.train(model, IMAGES, LABELS, parse_budget("45steps"), torch.device("cpu"), seed=0,
                           batch_size=BATCH, progress=False)
    # Steps 1-20 at one pass, 21-40 at two, 41-45 at three: what was run, not 45 x the first count.
    assert result.flops == (20 * 1 + 20 * 2 + 5 * 3) * STEP_FLOPS
    assert result.flops_per_step == 3 * STEP_FLOPS


# --- the default budget: each model's own steps ----------------------------------------------------------
def _package_models() -> list[str]:
    """The registered models of the package (test plugins registered by other test files left out)."""
    import models

    return sorted(n for n in models.names() if models.model_class(n).__module__.startswith("models."))


def test_the_default_budget_is_each_models_declared_steps():
    """Every registered model declares the steps of its default budget (a minute of training on the 2-core
    CPU the suite is built on), and ``default`` resolves to them: no model's default depends on the clock."""
    import models
    from bench.config.budgets import budget_for

    assert len(_package_models()) >= 15
    for name in _package_models():
        cls = models.model_class(name)
        assert isinstance(cls.default_steps, int) and cls.default_steps > 0, f"{name} declares no default_steps"
        budget = budget_for("default", cls)
        assert (budget.kind, budget.amount, budget.label) == ("steps", cls.default_steps, "default"), name
    assert budget_for("60s", models.model_class("fvsbn")).kind == "seconds"  # time budgets stay


def test_the_unresolved_default_budget_cannot_be_spent():
    with pytest.raises(ValueError, match="per model"):
        parse_budget("default").exhausted(0, 0.0, 0.0)


@pytest.mark.parametrize("name", _package_models())
def test_the_default_budget_stops_at_the_same_step_on_a_fast_or_slow_machine(name, monkeypatch):
    """Under a clock that jumps an hour at every reading (the slowest machine there is) the default budget
    still stops at the model's declared step: here patched to 2 steps, on 8x8 images, for speed. A 60 s
    budget under the same clock stops after the first step, so the test can fail."""
    import models
    from bench.config.budgets import budget_for
    from bench.data.datasets import load_dataset

    data = load_dataset("mnist5k")
    images = torch.nn.functional.interpolate(data.train_images[:64].float(), size=(8, 8), mode="area").round()
    steps = {}
    for budget_text in ("default", "60s"):
        torch.manual_seed(0)
        model = models.build(name, image_shape=(1, 8, 8))
        monkeypatch.setattr(model, "default_steps", 2, raising=False)
        hours = itertools.count(0, 3600.0)
        monkeypatch.setattr(trainer.time, "perf_counter", lambda: next(hours))
        result = trainer.train(model, images, data.train_labels[:64], budget_for(budget_text, model),
                               torch.device("cpu"), seed=0, batch_size=8, progress=False)
        monkeypatch.undo()
        steps[budget_text] = result.steps
    assert steps == {"default": 2, "60s": 1}
