"""Training features: accumulation, EMA, iteration schedules, early stopping, AMP modes,
channels_last, torch.compile, determinism and exact resume, gradient clipping and encoder freezing."""
from __future__ import annotations

import functools
import logging
import os
import signal
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import train
import utils.reporting as reporting
from utils.builders import build_loaders, build_optimizer, build_scheduler
from utils.distributed import DistInfo
from utils.runtime import StopFlag
from utils.train_state import RoundStats, TrainState, make_plan
from tests.conftest import minimal_config
from utils.amp import resolve_amp
from utils.checkpoint import load_checkpoint
from utils.config import config_from_dict, load_config
from utils.ema import ModelEMA
from utils.losses import build_loss


def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "checkpoint" / "unit"


def losses(history: List[Dict[str, Any]]) -> List[float]:
    return [record["train_loss"] for record in history]


def train_history(config: Path, tmp_path: Path, overrides: List[str], name: str,
                  resume: bool = False) -> List[Dict[str, Any]]:
    """Train experiment ``name`` (or resume it) and return the history saved in its last.pt."""
    train.run(load_config(config, [*overrides, f"experiment={name}"]), resume="" if resume else None)
    return load_checkpoint(tmp_path / "checkpoint" / name / "last.pt")["history"]


def interrupted_at_step(step: int, action: Callable[[], Any]) -> Any:
    """Run ``action`` with a real Ctrl-C (SIGINT to this process, which train.py's handler catches) right after
    its optimizer step ``step``, counted from 1 over the whole action (as tests/entry_faults.py does)."""
    steps = 0

    def after_step(optimizer: Any, args: Any, kwargs: Any) -> None:
        nonlocal steps
        steps += 1
        if steps == step:
            os.kill(os.getpid(), signal.SIGINT)

    hook = register_optimizer_step_post_hook(after_step)
    try:
        return action()
    finally:
        hook.remove()


# ----------------------------------------------------------------- units


def test_ema_follows_the_hand_computed_average() -> None:
    model = nn.Linear(1, 1, bias=False)
    model.weight.data.fill_(0.0)
    ema = ModelEMA(model, decay=0.9)
    expected = 0.0
    for n, value in enumerate([1.0, 2.0, 4.0, 4.0], start=1):
        model.weight.data.fill_(value)
        d = min(0.9, (1 + n) / (10 + n))  # 2/11, 3/12, 4/13, 5/14: the ramp is below 0.9 here
        expected = d * expected + (1 - d) * value
        ema.update(model)
        assert ema.module.weight.item() == pytest.approx(expected, rel=1e-6)
    assert not ema.module.weight.requires_grad
    assert ema.updates == 4 and ema.current_decay() == pytest.approx(min(0.9, 6 / 15))


def test_ema_copies_integer_buffers() -> None:
    model = nn.BatchNorm2d(2)
    ema = ModelEMA(model, decay=0.99)
    model.train()
    model(torch.randn(4, 2, 3, 3))
    ema.update(model)
    assert ema.module.num_batches_tracked.item() == 1
    restored = ModelEMA(nn.BatchNorm2d(2), decay=0.99)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 1 and torch.equal(restored.module.running_mean, ema.module.running_mean)


def _conv_bn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 1, 1))


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    model.train()
    optimizer.zero_grad()
    model(torch.randn(2, 2, 6, 6)).square().mean().backward()
    optimizer.step()


def test_ema_averages_every_state_entry_by_hand() -> None:
    """Weights and BatchNorm running statistics follow the ramped average; the batch count is copied."""
    model = _conv_bn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ema = ModelEMA(model, decay=0.3)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for n in range(1, 6):
        _train_step(model, optimizer)
        ema.update(model)
        d = min(0.3, (1 + n) / (10 + n))  # 2/11, 3/12, then 0.3 from n = 3 on (4/13 > 0.3)
        for key, live in model.state_dict().items():
            expected[key] = d * expected[key] + (1 - d) * live if live.is_floating_point() else live.clone()
    averaged = ema.module.state_dict()
    assert averaged.keys() == expected.keys()   # the plain model's keys: what inference_weights loads
    for key, value in expected.items():
        assert torch.allclose(averaged[key], value, atol=1e-6), key
    assert averaged["1.num_batches_tracked"].item() == 5 and ema.current_decay() == 0.3


def test_ema_resumes_through_a_checkpoint(tmp_path: Path) -> None:
    """Three updates, save, a new EMA loads the state and two more: the same as five in a row."""
    def updates(ema: ModelEMA, model: nn.Module, optimizer: torch.optim.Optimizer, count: int) -> None:
        for _ in range(count):
            _train_step(model, optimizer)
            ema.update(model)

    model = _conv_bn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    whole = ModelEMA(model, decay=0.9)
    torch.manual_seed(1)
    updates(whole, model, optimizer, 5)

    model = _conv_bn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    first = ModelEMA(model, decay=0.9)
    resumed = ModelEMA(_conv_bn(), decay=0.9)  # built before the draws: _conv_bn seeds the generator
    torch.manual_seed(1)
    updates(first, model, optimizer, 3)
    torch.save(first.state_dict(), tmp_path / "ema.pt")
    state = torch.load(tmp_path / "ema.pt", weights_only=True)
    assert state["updates"] == 3 and state["decay"] == 0.9
    resumed.load_state_dict(state)
    updates(resumed, model, optimizer, 2)
    assert resumed.updates == whole.updates == 5
    for key, value in whole.module.state_dict().items():
        assert torch.equal(resumed.module.state_dict()[key], value), key


def test_accumulating_two_batches_of_two_equals_one_batch_of_four(binary_folder: Path) -> None:
    """Same gradients, so the same weights after one SGD step (pixel-mean BCE, no BatchNorm)."""
    base = minimal_config(binary_folder, loss=[{"name": "bce"}], optimizer={"name": "sgd", "lr": 0.5, "momentum": 0.0},
                          scheduler={"name": "none"})
    images = torch.randn(4, 3, 8, 8)
    masks = (torch.rand(4, 8, 8) > 0.5).long()
    results = []
    for batch, accumulate in ((4, 1), (2, 2)):
        cfg = config_from_dict({**base, "train": {**base["train"], "batch_size": batch, "accumulate": accumulate}},
                               check_paths=False)
        torch.manual_seed(0)
        model = nn.Conv2d(3, 1, 3, padding=1)
        optimizer = build_optimizer(cfg, model)
        scheduler = build_scheduler(cfg, optimizer, steps_per_epoch=1)
        batches = iter([(images[i:i + batch], masks[i:i + batch]) for i in range(0, 4, batch)])
        state = TrainState(cfg, torch.device("cpu"), model, model, build_loss(cfg.loss), optimizer, scheduler,
                           torch.amp.GradScaler("cpu", enabled=False), None)
        stats = train.train_one_round(state, batches, 1, RoundStats(), StopFlag())
        assert stats.steps == 1 and stats.seen == 4
        results.append((model.weight.detach().clone(), stats.loss))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-6)
    assert results[0][1] == pytest.approx(results[1][1], rel=1e-5)


def test_plan_in_epochs_and_in_iterations(binary_folder: Path) -> None:
    cfg = config_from_dict(minimal_config(binary_folder, train={"epochs": 3, "accumulate": 2, "val_interval": 2}))
    plan = make_plan(cfg, batches_per_epoch=5)  # 2 whole steps of 2 batches per epoch
    assert (plan.rounds, plan.total_steps, plan.steps_per_epoch) == (3, 6, 2)
    assert [plan.validates_after(r) for r in (1, 2, 3)] == [False, True, True]
    cfg = config_from_dict(minimal_config(binary_folder, train={"iterations": 7, "val_interval": 3}))
    plan = make_plan(cfg, batches_per_epoch=5)
    assert plan.rounds == 3 and [plan.steps_in(r) for r in (1, 2, 3)] == [3, 3, 1]
    assert plan.label(3) == "iteration 7/7" and all(plan.validates_after(r) for r in (1, 2, 3))


def test_amp_modes_resolve_per_device(caplog: pytest.LogCaptureFixture) -> None:
    cpu = torch.device("cpu")
    assert resolve_amp("bf16", cpu) == "bf16" and resolve_amp("off", cpu) == "off"
    with caplog.at_level(logging.INFO, logger="utils.amp"):
        assert resolve_amp("fp16", cpu) == "off"
    assert "fp16 needs CUDA" in caplog.text
    with pytest.raises(ValueError, match="bf16, fp16, off"):
        resolve_amp("half", cpu)


def test_amp_true_and_false_in_yaml_mean_fp16_and_off(binary_folder: Path) -> None:
    assert config_from_dict(minimal_config(binary_folder, train={"amp": True})).train.amp == "fp16"
    assert config_from_dict(minimal_config(binary_folder, train={"amp": False})).train.amp == "off"


# ----------------------------------------------------------------- runs


def test_iteration_mode_validates_every_k_iterations(tiny_run: Path, tmp_path: Path) -> None:
    assert train.main(["--config", str(tiny_run), "--set", "train.iterations=5", "train.val_interval=2",
                       "scheduler.name=poly", "train.tensorboard=false"]) == 0
    state = load_checkpoint(run_dir(tmp_path) / "last.pt")
    assert [r["iteration"] for r in state["history"]] == [2, 4, 5]
    assert all("val" in r for r in state["history"]) and state["epoch"] is None and state["step"] == 5
    assert state["history"][-1]["lr"] == 0.0  # poly reaches 0 exactly at the last iteration


def test_early_stopping_after_patience(tiny_run: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    scores = iter([0.5, 0.7, 0.6, 0.7, 0.65, 0.9])

    def fake_evaluate(*args: Any, **kwargs: Any) -> Any:
        return {"dice_foreground": next(scores)}, []

    monkeypatch.setattr(train, "evaluate", fake_evaluate)
    monkeypatch.setattr(reporting, "format_metrics", lambda m: str(m))
    summary = train.run(load_config(tiny_run, ["train.epochs=6", "train.early_stop=3", "train.tensorboard=false"]))
    # 0.7 at round 2 is the best; 0.6, 0.7 (not better) and 0.65 make three without improvement.
    assert summary["early_stopped"] and summary["round"] == 5 and summary["best"] == 0.7
    state = load_checkpoint(run_dir(tmp_path) / "best.pt")
    assert state["round"] == 2


def test_ema_run_validates_and_saves_the_average(tiny_run: Path, tmp_path: Path) -> None:
    assert train.main(["--config", str(tiny_run), "--set", "train.ema=0.9", "train.epochs=2",
                       "train.tensorboard=false"]) == 0
    state = load_checkpoint(run_dir(tmp_path) / "last.pt")
    assert state["ema"]["updates"] == state["step"] == 8 and state["ema_eval"] is True
    convs = [k for k, v in state["model"].items() if v.ndim == 4]
    assert convs and state["ema"]["module"].keys() == state["model"].keys()
    assert all(not torch.equal(state["ema"]["module"][k], state["model"][k]) for k in convs)


def test_bf16_channels_last_and_compile_train_on_cpu(tiny_run: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # The eager backend runs the torch.compile path (Dynamo tracing) without a C++ toolchain build.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    summary = train.run(load_config(tiny_run, ["train.amp=bf16", "train.channels_last=true", "train.compile=true",
                                               "train.epochs=1", "train.tensorboard=false"]))
    assert not summary["interrupted"]
    state = load_checkpoint(run_dir(tmp_path) / "last.pt")
    assert all(not k.startswith(("_orig_mod.", "module.")) for k in state["model"])
    assert torch.isfinite(torch.tensor(state["history"][0]["train_loss"]))


def test_deterministic_runs_repeat_and_resume_exactly(tiny_run: Path, tmp_path: Path) -> None:
    common = ["deterministic=true", "train.epochs=3", "train.tensorboard=false", "scheduler.name=poly",
              "transforms.train=[{name: hflip}, {name: random_resized_crop, size: 24}, {name: normalize}]",
              "train.ema=0.9"]

    first, second = (train_history(tiny_run, tmp_path, common, name) for name in ("a", "b"))
    assert losses(first) == losses(second)
    assert [r["val"]["confusion_matrix"] for r in first] == [r["val"]["confusion_matrix"] for r in second]

    # Ctrl-C in the middle of epoch 2 (4 steps an epoch: right after its third step), then --resume.
    cut = interrupted_at_step(7, lambda: train_history(tiny_run, tmp_path, common, "c"))
    state = load_checkpoint(tmp_path / "checkpoint" / "c" / "last.pt")
    assert len(cut) == 1 and state["interrupted_round"]["round"] == 2 and state["interrupted_round"]["steps"] == 3
    resumed = train_history(tiny_run, tmp_path, common, "c", resume=True)
    assert losses(resumed) == losses(first)
    assert [r["val"] for r in resumed] == [r["val"] for r in first]


def test_mid_epoch_resume_is_exact_with_loader_workers(tiny_run: Path, tmp_path: Path) -> None:
    """With a (persistent) worker process the augmentations run there; each sample is seeded from
    (round, pass, position), so the replay after --resume in a fresh worker draws them again identically."""
    common = ["train.epochs=2", "train.tensorboard=false", "data.num_workers=1",
              "transforms.train=[{name: hflip}, {name: random_resized_crop, size: 24}, {name: normalize}]"]

    whole = train_history(tiny_run, tmp_path, common, "whole")
    # Each sample's augmentation has its own seed: the curve does not depend on where samples are loaded.
    in_process = train_history(tiny_run, tmp_path, [*common, "data.num_workers=0"], "in_process")
    assert losses(in_process) == losses(whole)
    interrupted_at_step(6, lambda: train_history(tiny_run, tmp_path, common, "cut"))
    assert load_checkpoint(tmp_path / "checkpoint" / "cut" / "last.pt")["interrupted_round"]["steps"] == 2
    resumed = train_history(tiny_run, tmp_path, common, "cut", resume=True)
    assert losses(resumed) == losses(whole)
    assert [r["val"] for r in resumed] == [r["val"] for r in whole]


def test_too_few_images_per_process_is_a_clear_error(binary_folder: Path) -> None:
    cfg = config_from_dict(minimal_config(binary_folder, train={"batch_size": 4}))
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="has 5 images, 2 per process for 2 processes, fewer than train.batch_size=4"):
        build_loaders(cfg, range(5), range(2), cpu, DistInfo(rank=0, local_rank=0, world_size=2))
    with pytest.raises(ValueError, match="has 3 images, fewer than train.batch_size=4"):
        build_loaders(cfg, range(3), range(2), cpu)


# ----------------------------------------------------------------- gradient clipping, encoder freezing


def grad_norm(optimizer: torch.optim.Optimizer) -> float:
    """The global L2 norm of the gradients the optimizer is about to apply."""
    grads = [p.grad.detach().flatten() for group in optimizer.param_groups for p in group["params"]
             if p.grad is not None]
    return torch.cat(grads).norm().item()


@pytest.mark.parametrize("clip", [None, 0.02])
def test_grad_clip_bounds_the_gradient_norm_at_every_step(clip: Any, binary_folder: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The norm of the gradients optimizer.step applies is at most train.grad_clip, at every step; unset,
    the same run applies larger ones (so the bound is not met by chance) and clips nothing."""
    clip_calls: List[Dict[str, float]] = []
    real_clip = torch.nn.utils.clip_grad_norm_

    def spy(parameters: Any, max_norm: float, *args: Any, **kwargs: Any) -> torch.Tensor:
        total = real_clip(parameters, max_norm, *args, **kwargs)
        clip_calls.append({"max_norm": max_norm, "before": total.item()})
        return total

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    raw = minimal_config(binary_folder, train={"epochs": 2, "batch_size": 4, "grad_clip": clip,
                                               "checkpoint_dir": str(tmp_path / "checkpoint"), "tensorboard": False},
                         optimizer={"lr": 0.01}, scheduler={"name": "none"})
    applied: List[float] = []  # the gradient norm at each optimizer step, seen from inside optimizer.step
    hook = register_optimizer_step_pre_hook(lambda opt, args, kwargs: applied.append(grad_norm(opt)))
    try:
        summary = train.run(config_from_dict(raw))
    finally:
        hook.remove()
    steps = summary["step"]
    assert steps >= 4 and len(applied) == steps
    if clip is None:
        assert clip_calls == []
        assert min(applied) > 0.02  # every step would break the bound below: the clipped run is no accident
    else:
        assert all(norm <= clip * (1 + 1e-4) for norm in applied), applied
        assert applied == pytest.approx([clip] * steps, rel=1e-4)  # larger norms, scaled down to the bound
        assert len(clip_calls) == steps and all(call["max_norm"] == clip for call in clip_calls)
        assert all(call["before"] > clip for call in clip_calls)  # each step really was clipped


def snapshot(model: nn.Module) -> Dict[str, torch.Tensor]:
    return {name: value.detach().cpu().clone() for name, value in model.state_dict().items()}


def test_freeze_encoder_epochs_keeps_the_encoder_fixed_then_trains_it(
        binary_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """train.freeze_encoder_epochs=1 over 2 epochs: during every step of epoch 1 the encoder's weights and
    BatchNorm statistics stay as built while the decoder's weights change; in every step of epoch 2 both change."""
    from utils.registry import MODELS

    built: List[nn.Module] = []
    previous: Dict[str, torch.Tensor] = {}  # the model's weights and buffers after the last step (or as built)
    steps: List[set] = []  # per optimizer step: the names of the entries it changed
    real_build = MODELS.build

    def build(name: str, **kwargs: Any) -> Any:
        nonlocal previous
        model = real_build(name, **kwargs)
        built.append(model)
        previous = snapshot(model)
        return model

    def after_step(optimizer: Any, args: Any, kwargs: Any) -> None:
        nonlocal previous
        current = snapshot(built[0])
        steps.append({k for k, v in current.items() if not torch.equal(v, previous[k])})
        previous = current

    raw = minimal_config(binary_folder, train={"epochs": 2, "batch_size": 4, "freeze_encoder_epochs": 1,
                                               "checkpoint_dir": str(tmp_path / "checkpoint"), "tensorboard": False},
                         model={"name": "unet", "in_channels": 3, "out_channels": 1, "encoder": "resnet18",
                                "decoder_channels": [32, 16, 8, 8, 8]},
                         optimizer={"lr": 0.01}, scheduler={"name": "none"})
    raw["model"].pop("base_channels"), raw["model"].pop("depth")
    cfg = config_from_dict(raw)

    monkeypatch.setattr(MODELS, "build", build)
    hook = register_optimizer_step_post_hook(after_step)
    try:
        train.run(cfg)
    finally:
        hook.remove()

    assert len(built) == 1 and built[0].encoder is not None
    state = load_checkpoint(run_dir(tmp_path) / "last.pt")
    per_epoch = state["history"][0]["iteration"]
    assert per_epoch >= 1 and len(steps) == state["step"] == 2 * per_epoch
    names = list(previous)
    encoder = [k for k in names if k.startswith("encoder.")]
    encoder_weights = [k for k in encoder if k.endswith(".weight") and previous[k].ndim == 4]
    encoder_stats = [k for k in encoder if k.endswith("running_mean")]
    decoder_weights = [k for k in names if not k.startswith("encoder.") and k.endswith(".weight")
                       and previous[k].ndim == 4]
    assert encoder_weights and encoder_stats and decoder_weights
    for k, changed in enumerate(steps, start=1):
        assert set(decoder_weights) <= changed, f"step {k}: decoder weights left unchanged"
        if k <= per_epoch:
            leaked = sorted(changed & set(encoder))
            assert not leaked, f"step {k} (frozen epoch) changed {len(leaked)} encoder entries: {leaked[:3]} ..."
        else:
            still = [name for name in encoder_weights + encoder_stats if name not in changed]
            assert not still, f"step {k} (after the freeze) left {len(still)} encoder entries unchanged: {still[:3]}"
