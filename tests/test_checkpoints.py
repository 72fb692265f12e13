"""Checkpoints: resuming training is exact, a corrupt file is refused, a finished job's files are checked."""
import json

import pytest
import torch

import models
from bench.train import checkpoints
from bench.config.run_config import RunConfig
from bench.run import resume
from bench.config.budgets import parse_budget
from bench.data.datasets import load_dataset
from bench.config.job import Job, config_hash, training_hash
from bench.run.runner import seed_everything
from bench.train.trainer import Checkpointing, TrainResult, train


@pytest.fixture(scope="module")
def data():
    return load_dataset("mnist5k")


def _train(name, data, budget, plan=None, seed=3):
    seed_everything(seed)
    model = models.build(name, image_shape=data.image_shape)
    result = TrainResult()
    train(model, data.train_images[:512], data.train_labels[:512], parse_budget(budget), torch.device("cpu"), seed,
          batch_size=32, progress=False, result=result, checkpoint=plan)
    return model, result


# One model per kind of state a checkpoint must carry: plain Adam (fvsbn), two optimisers (cgan), a replay
# buffer outside the state_dict (ebm), data-dependent initialisation (glow), dequantization noise (realnvp).
@pytest.mark.parametrize("name", ["fvsbn", "cgan", "ebm", "glow", "realnvp"])
def test_training_resumed_from_a_checkpoint_gives_the_same_weights(name, data, tmp_path):
    straight, straight_result = _train(name, data, "6steps")
    path = tmp_path / "ckpt.pt"
    _train(name, data, "3steps", Checkpointing(path, "h", parse_budget("3steps")))
    saved = checkpoints.load(path, "h")
    assert saved["trainer"]["steps"] == 3 and not saved["complete"]
    resumed, resumed_result = _train(name, data, "6steps", Checkpointing(path, "h", resume=saved))
    assert resumed_result.steps == straight_result.steps == 6
    for (key, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), f"{name}: {key} differs after resuming"
    assert [p["loss"] for p in resumed_result.curve] == [p["loss"] for p in straight_result.curve]


def test_resuming_without_the_saved_random_state_would_differ(data, tmp_path):
    """The test above can fail: drop the saved RNG state and the resumed weights are not the same."""
    straight, _ = _train("realnvp", data, "6steps")
    path = tmp_path / "ckpt.pt"
    _train("realnvp", data, "3steps", Checkpointing(path, "h", parse_budget("3steps")))
    saved = checkpoints.load(path, "h")
    saved["rng"] = checkpoints.rng_state()  # the state of a different moment
    torch.manual_seed(999)
    saved["rng"]["torch"] = torch.get_rng_state()
    resumed, _ = _train("realnvp", data, "6steps", Checkpointing(path, "h", resume=saved))
    assert any(not torch.equal(a, b) for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()))


def test_a_corrupt_or_foreign_checkpoint_is_refused(data, tmp_path):
    path = tmp_path / "ckpt.pt"
    _train("fvsbn", data, "2steps", Checkpointing(path, "h", parse_budget("2steps")))
    with pytest.raises(checkpoints.CheckpointError, match="another configuration"):
        checkpoints.load(path, "other")
    payload = checkpoints.load(path, "h")
    first = next(iter(payload["state_dict"]))
    payload["state_dict"][first] = payload["state_dict"][first] + 1  # weights that no longer match their digest
    torch.save(payload, path)
    with pytest.raises(checkpoints.CheckpointError, match="digest"):
        checkpoints.load(path, "h")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(checkpoints.CheckpointError, match="unreadable"):
        checkpoints.load(path, "h")


def test_the_training_hash_ignores_evaluation_settings_and_the_config_hash_does_not():
    job = Job("fvsbn", "mnist5k", 0, "smoke", "cpu", "/a")
    more_samples = Job("fvsbn", "mnist5k", 0, "smoke", "cpu", "/b", fidelity_samples=1000)
    assert training_hash(job) == training_hash(more_samples)
    assert config_hash(job) != config_hash(more_samples)
    assert training_hash(job) != training_hash(Job("fvsbn", "mnist5k", 1, "smoke", "cpu", "/a"))


def _finished_job(tmp_path, status="ok"):
    job = Job("fvsbn", "mnist5k", 0, "smoke", "cpu", str(tmp_path))
    job.checkpoint_path.parent.mkdir(parents=True)
    job.checkpoint_path.write_bytes(b"weights")
    job.outcome_path.parent.mkdir(parents=True)
    info = {"config_hash": config_hash(job), "checkpoint": "checkpoints/fvsbn__mnist5k__seed0.pt",
            "checkpoint_digest": checkpoints.file_digest(job.checkpoint_path)}
    job.outcome_path.write_text(json.dumps({"status": status, "info": info}))
    return job


def test_a_finished_job_is_kept_only_while_its_files_check_out(tmp_path):
    job = _finished_job(tmp_path)
    assert resume.finished(job) == (True, "")
    job.checkpoint_path.write_bytes(b"weightz")
    assert resume.finished(job) == (False, "its checkpoint does not match the digest recorded with it")
    job.checkpoint_path.unlink()
    assert resume.finished(job) == (False, "its checkpoint is missing")
    job.outcome_path.write_text("{not json")
    assert resume.finished(job) == (False, "its outcome file is corrupt")


def test_a_failed_job_or_another_configuration_is_run_again(tmp_path):
    assert resume.finished(_finished_job(tmp_path / "a", status="failed")) == (False, "it ended failed")
    job = _finished_job(tmp_path / "b")
    other = Job("fvsbn", "mnist5k", 0, "20steps", "cpu", str(tmp_path / "b"))
    assert resume.finished(other) == (False, "its outcome was measured under another configuration")
    assert resume.finished(job)[0]


def test_differences_name_each_changed_setting():
    before = {"run_config": RunConfig(models=("vae-z2",), budget="smoke").to_json(),
              "model_settings": {"vae-z2": {"lr": 0.001, "channels": [32, 64]}}}
    now = RunConfig(models=("vae-z2",), budget="default")
    assert resume.differences(before, now, {"vae-z2": {"lr": 0.002, "channels": (32, 64)}}) == [
        "budget is 'smoke' in the folder, 'default' now", "vae-z2 setting lr is 0.001 in the folder, 0.002 now"]
    same = RunConfig(models=("vae-z2",), budget="smoke", workers=3)  # how a run goes is not compared
    assert resume.differences(before, same, {"vae-z2": {"lr": 0.001, "channels": (32, 64)}}) == []


def test_a_folder_from_before_the_run_config_was_recorded_is_compared_by_its_keys():
    legacy = {"models": ["fvsbn"], "dataset": "mnist5k", "budget": "smoke", "seeds": [0], "device": "cpu",
              "eval_size": 200, "fidelity_samples": 200, "throughput_cap_s": 8.0, "executor": {"executor": "local"}}
    now = RunConfig(models=("fvsbn",), budget="smoke").resolved(1000, "cpu")
    assert resume.differences(legacy, now, {}) == []
    assert resume.differences(legacy, now.replace(eval_size=100), {}) == [
        "test images scored is 200 in the folder, 100 now"]


def test_early_stopping_resumes_with_its_best_weights_and_curve(data, tmp_path):
    """An early-stopped run interrupted after an epoch: the validation curve, the kept best weights and the
    halved learning rate all continue as if it had not stopped."""
    # Inverted digits: the model gets worse on them as it learns digits, so the best epoch is the first and
    # the kept weights are those the checkpoint must carry (not the last ones).
    validation = 1 - data.valid_split("binary")[:200]

    def run(budget, plan=None):
        seed_everything(3)
        model = models.build("fvsbn", image_shape=data.image_shape)
        result = TrainResult()
        train(model, data.train_images[:256], data.train_labels[:256], parse_budget(budget), torch.device("cpu"), 3,
              batch_size=32, progress=False, result=result, validation=validation, checkpoint=plan)
        return model, result

    straight, straight_result = run("40steps")
    path = tmp_path / "ckpt.pt"
    run("20steps", Checkpointing(path, "h", parse_budget("20steps")))  # 8 steps an epoch: two epochs and a half
    saved = checkpoints.load(path, "h")
    assert saved["stopper"]["best_state"] is not None and len(saved["trainer"]["valid_curve"]) == 2
    resumed, resumed_result = run("40steps", Checkpointing(path, "h", resume=saved))
    assert resumed_result.valid_curve == straight_result.valid_curve
    assert resumed_result.best_epoch == straight_result.best_epoch == 1
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_a_trained_model_is_measured_again_with_another_sampler_setting(tmp_path, isolated_cache):
    """``bench evaluate --sampler-args ddpm:sampling_steps=10``: the same checkpoint, another sampler."""
    from dataclasses import replace

    from bench.run.runner import run_job

    job = Job("ddpm", "digits", 0, "2steps", "cpu", str(tmp_path), progress=False, throughput_cap_s=1.0,
              fidelity_samples=50, eval_size=50)
    trained = run_job(job)
    assert trained.status == "ok", trained.reason + trained.info.get("traceback", "")
    again = run_job(replace(job, evaluate_only=True, sampler_args={"sampling_steps": 10}))
    assert again.status == "ok", again.reason + again.info.get("traceback", "")
    assert again.info["trained_by_earlier_run"]
    nfe = {o: next(r["value"] for r in out.rows if r["metric"] == "sampling_nfe" and r.get("steps") is None)
           for o, out in (("trained", trained), ("again", again))}
    assert nfe == {"trained": 50, "again": 10}
    assert "10 respaced steps" in again.info["sampler"]
    steps = [next(r["value"] for r in out.rows if r["metric"] == "train_steps") for out in (trained, again)]
    assert steps == [2, 2] and again.curve == trained.curve


def test_sampler_args_may_only_change_the_sampler():
    from bench.config.errors import UserError
    from bench.config.model_settings import parse_sampler_args

    assert parse_sampler_args(["ddpm:sampling_steps=20,sampler=ddim"], ["ddpm"]) == {
        "ddpm": {"sampling_steps": 20, "sampler": "ddim"}}
    with pytest.raises(UserError, match="would change training.*sampling_steps, sampler, eta"):
        parse_sampler_args(["ddpm:lr=0.1"], ["ddpm"])
    with pytest.raises(UserError, match="no finished job of 'glow'"):
        parse_sampler_args(["glow:temperature=0.7"], ["ddpm"])


def test_a_field_added_to_job_at_its_default_leaves_the_hashes_of_earlier_runs_alone():
    """Outcomes written before a Job field existed lack it; their hash must not change when it appears."""
    from dataclasses import asdict

    job = Job("fvsbn", "mnist5k", 0, "smoke", "cpu", "/a", model_args={"lr": 0.01})
    older = {k: v for k, v in asdict(job).items() if k not in ("sampler_args", "checkpoint_every")}
    assert config_hash(older) == config_hash(job) and training_hash(older) == training_hash(job)
    assert config_hash(Job("fvsbn", "mnist5k", 0, "smoke", "cpu", "/a", sampler_args={"x": 1})) != config_hash(
        Job("fvsbn", "mnist5k", 0, "smoke", "cpu", "/a"))


def test_the_run_grows_by_models_or_seeds_in_the_order_given():
    assert resume.merged_list(["fvsbn", "made"], ["made", "ddpm"]) == ["fvsbn", "made", "ddpm"]
    assert resume.merged_list([0, 1], [1, 2]) == [0, 1, 2]


def test_peek_reads_a_checkpoints_progress_without_trusting_its_weights(data, tmp_path):
    path = tmp_path / "ckpt.pt"
    _train("fvsbn", data, "2steps", Checkpointing(path, "h", parse_budget("2steps")))
    assert checkpoints.peek(path) == {"complete": False, "trainer": {"steps": 2}}
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoints.CheckpointError, match="unreadable"):
        checkpoints.peek(path)


def test_tables_list_jobs_in_the_runs_model_order(tmp_path):
    from bench.config.job import load_outcomes

    (tmp_path / "jobs").mkdir()
    for model in ("ddpm", "data", "fvsbn", "cgan"):
        (tmp_path / "jobs" / f"{model}.json").write_text(json.dumps({"job": {"model": model, "seed": 0}}))
    (tmp_path / "config.json").write_text(json.dumps({"models": ["fvsbn", "cgan", "ddpm"]}))
    assert [o["job"]["model"] for o in load_outcomes(tmp_path)] == ["data", "fvsbn", "cgan", "ddpm"]


def test_a_time_budget_with_more_workers_than_cores_says_so(monkeypatch, capsys):
    from bench import suite

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    suite._warn_if_oversubscribed("60s", 3)
    assert "3 workers x 1 thread(s) on 2 cores" in capsys.readouterr().out
    suite._warn_if_oversubscribed("60s", 2)
    suite._warn_if_oversubscribed("500steps", 8)  # steps are the same steps however many run at once
    assert capsys.readouterr().out == ""


def _train_ffjord(images, budget, plan=None, seed=5):
    seed_everything(seed)
    model = models.build("ffjord", image_shape=(1, 6, 6))
    result = TrainResult()
    train(model, images, torch.zeros(len(images), dtype=torch.long), budget, torch.device("cpu"), seed,
          batch_size=16, progress=False, result=result, checkpoint=plan)
    rows = {row["metric"]: row["value"] for row in model.extra_metrics(images[:4])}
    return model, result, rows["train_nfe"]


def test_ffjord_under_a_flop_budget_resumes_exactly(data, tmp_path):
    """A model whose step cost depends on its weights (FFJORD's adaptive solver, recounted every
    RECOUNT_EVERY steps): interrupted at step 23 and resumed under a FLOP budget, it stops at the same step
    with the same FLOPs, the same mean training NFE and the same weights as the run never interrupted."""
    images = torch.nn.functional.interpolate(data.train_images[:256].float(), size=(6, 6), mode="area").round()
    _, by_steps, _ = _train_ffjord(images, parse_budget("30steps"))
    budget = parse_budget(f"{by_steps.flops * (1 - 1e-9):.12e}flops")  # exhausted by the 30th step, not before
    straight, straight_result, straight_nfe = _train_ffjord(images, budget)
    path = tmp_path / "ckpt.pt"
    _train_ffjord(images, parse_budget("23steps"), Checkpointing(path, "h", parse_budget("23steps")))
    saved = checkpoints.load(path, "h")
    assert saved["trainer"]["steps"] == 23 and not saved["complete"]
    resumed, resumed_result, resumed_nfe = _train_ffjord(images, budget, Checkpointing(path, "h", resume=saved))
    assert straight_result.steps == resumed_result.steps == 30
    assert resumed_result.flops == straight_result.flops
    assert resumed_nfe == straight_nfe
    for (key, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), f"ffjord: {key} differs after resuming"


def test_an_ffjord_checkpoint_from_before_the_nfe_buffers_still_loads():
    """Weights saved without train_nfe_total and train_solves (older runs) load, the counts starting at zero."""
    model = models.build("ffjord", image_shape=(1, 6, 6))
    old = {k: v for k, v in model.state_dict().items() if k not in ("train_nfe_total", "train_solves")}
    fresh = models.build("ffjord", image_shape=(1, 6, 6))
    fresh.train_solves += 5
    fresh.load_state_dict(old)
    assert int(fresh.train_solves) == 0 and int(fresh.train_nfe_total) == 0
