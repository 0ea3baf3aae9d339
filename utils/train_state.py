"""What a training run keeps between rounds, and the checkpoint it writes.

* :class:`RoundPlan`: how the run is cut into *rounds*, the stretch of training
  between two validations (epochs, or ``train.val_interval`` iterations);
* :class:`RoundStats`: the running sums of one round (saved when Ctrl-C cuts it short);
* :class:`TrainState`: the model and its optimizer, schedule, scaler and EMA,
  the counters, the best metric and history; :meth:`TrainState.checkpoint`
  and :meth:`TrainState.restore` turn it into a plain-typed checkpoint and back,
  :meth:`TrainState.record_validation` keeps the best and early stopping;
* :func:`resume_round`: resuming inside a round that Ctrl-C cut short.
"""
from __future__ import annotations

import datetime
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch

from utils.checkpoint import load_checkpoint, load_weights, require_resumable
from utils.config import Config
from utils.distributed import broadcast_buffers, mean_over_ranks
from utils.ema import ModelEMA
from utils.errors import ConfigError, TrainingDiverged
from utils.runtime import capture_rng, restore_rng

log = logging.getLogger("train")


@dataclass(frozen=True)
class RoundPlan:
    """How a run is cut into rounds.

    Epoch mode (``train.epochs``): round r is epoch r, ``steps_per_epoch``
    optimizer steps; validation after every ``val_interval``-th round and the
    last. Iteration mode (``train.iterations``): ``val_interval`` optimizer
    steps per round (the last may be shorter), validation after each. An
    optimizer step takes ``train.accumulate`` batches.
    """

    iteration_mode: bool
    total_steps: int
    steps_per_epoch: int
    val_interval: int

    @property
    def rounds(self) -> int:
        if self.iteration_mode:
            return math.ceil(self.total_steps / self.val_interval)
        return self.total_steps // self.steps_per_epoch

    @property
    def length(self) -> str:
        """"50 epochs" or "80000 iterations"."""
        return f"{self.total_steps} iterations" if self.iteration_mode else f"{self.rounds} epochs"

    def steps_in(self, round_index: int) -> int:
        """Optimizer steps in round ``round_index`` (1-based)."""
        if self.iteration_mode:
            return min(self.val_interval, self.total_steps - (round_index - 1) * self.val_interval)
        return self.steps_per_epoch

    def validates_after(self, round_index: int) -> bool:
        return self.iteration_mode or round_index % self.val_interval == 0 or round_index == self.rounds

    def label(self, round_index: int) -> str:
        if self.iteration_mode:
            done = min(round_index * self.val_interval, self.total_steps)
            return f"iteration {done}/{self.total_steps}"
        return f"epoch {round_index}/{self.rounds}"


def make_plan(cfg: Config, batches_per_epoch: int) -> RoundPlan:
    steps_per_epoch = batches_per_epoch // cfg.train.accumulate
    if steps_per_epoch < 1:
        raise ConfigError(f"{cfg.source}: train.accumulate={cfg.train.accumulate} is more than the "
                          f"{batches_per_epoch} batches of an epoch; lower it or the batch size")
    if cfg.train.iterations is not None:
        return RoundPlan(True, cfg.train.iterations, steps_per_epoch, cfg.train.val_interval)
    return RoundPlan(False, cfg.train.epochs * steps_per_epoch, steps_per_epoch, cfg.train.val_interval)


@dataclass
class RoundStats:
    """Running sums of a round; saved in ``last.pt`` when Ctrl-C cuts the round short."""

    loss: float = 0.0
    loss_terms: Dict[str, float] = field(default_factory=dict)
    seen: int = 0
    steps: int = 0
    seconds: float = 0.0

    def add_step(self, loss: float, loss_terms: Dict[str, float], seen: int, seconds: float) -> None:
        self.loss += loss
        for key, value in loss_terms.items():
            self.loss_terms[key] = self.loss_terms.get(key, 0.0) + value
        self.seen += seen
        self.steps += 1
        self.seconds = seconds

    def images_per_s(self, world_size: int = 1) -> float:
        return self.seen * world_size / self.seconds if self.seconds > 0 else 0.0

    def means_over_ranks(self, device: torch.device) -> Tuple[float, Dict[str, float]]:
        """The round's mean loss and mean loss terms per step, averaged over the processes under DDP."""
        steps = max(self.steps, 1)
        means = mean_over_ranks({"loss": self.loss / steps,
                                 **{f"term/{k}": v / steps for k, v in self.loss_terms.items()}}, device)
        loss = means.pop("loss")
        return loss, {k[len("term/"):]: v for k, v in means.items()}


@dataclass
class TrainState:
    """Everything ``train.py`` keeps between rounds.

    ``model`` is the plain module (what is saved and validated); ``wrapped`` is
    what runs the training forward (the same module, or DDP / torch.compile
    around it).
    """

    cfg: Config
    device: torch.device
    model: torch.nn.Module
    wrapped: torch.nn.Module
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    ema: Optional[ModelEMA]
    round: int = 0                                   # rounds completed
    step: int = 0                                    # optimizer steps completed
    best: Optional[float] = None
    best_round: Optional[int] = None
    history: List[Dict[str, Any]] = field(default_factory=list)
    validations_since_best: int = 0                  # early stopping counts these
    early_stopped: bool = False
    clock: Optional[Tuple[float, int]] = None        # (time, step) when this process started training

    def eval_model(self) -> torch.nn.Module:
        """The weights that are validated: the EMA copy with ``train.ema_eval``, else the live model."""
        return self.ema.module if self.ema is not None and self.cfg.train.ema_eval else self.model

    def share_buffers(self) -> None:
        """Give every process rank 0's BatchNorm statistics (of the model and the EMA), so all validate one model."""
        broadcast_buffers(self.model)
        if self.ema is not None:
            broadcast_buffers(self.ema.module)

    def start_clock(self) -> None:
        """Mark the start of training in this process (steps before a resume do not count)."""
        self.clock = (time.perf_counter(), self.step)

    def progress(self, total_steps: int) -> str:
        """"run 40% done, ETA 0:12:34": the share of the whole run done and the time left at this
        process's pace so far (training and validation together)."""
        share = f"run {100 * self.step / total_steps:.0f}% done"
        if self.clock is None or self.step <= self.clock[1]:
            return share
        start, first_step = self.clock
        left = (time.perf_counter() - start) / (self.step - first_step) * (total_steps - self.step)
        return f"{share}, ETA {datetime.timedelta(seconds=round(left))}"

    def record_validation(self, value: Optional[float]) -> bool:
        """Keep ``value`` of the monitored metric; returns whether it is the best so far."""
        train = self.cfg.train
        if is_better(value, self.best, train.monitor_mode):
            self.best, self.best_round, self.validations_since_best = value, self.round, 0
            return True
        self.validations_since_best += 1
        if train.early_stop is not None and self.validations_since_best >= train.early_stop:
            self.early_stopped = True
        return False

    def checkpoint(self, interrupted: Optional[RoundStats] = None) -> Dict[str, Any]:
        """The checkpoint: plain types and tensors only. ``interrupted`` is a round Ctrl-C cut short."""
        cfg = self.cfg
        state: Dict[str, Any] = {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None, "ema_eval": cfg.train.ema_eval,
            "round": self.round, "step": self.step,
            "epoch": None if cfg.train.iterations is not None else self.round,
            "best_metric": self.best, "best_round": self.best_round,
            "validations_since_best": self.validations_since_best,
            "monitor": cfg.train.monitor, "history": self.history, "config": cfg.to_dict(),
            "plan": cfg.volume_plan, "interrupted_round": None,
        }
        if interrupted is not None:
            state["interrupted_round"] = {
                "round": self.round + 1, "loss": interrupted.loss, "loss_terms": interrupted.loss_terms,
                "seen": interrupted.seen, "steps": interrupted.steps, "seconds": interrupted.seconds,
                "rng": capture_rng()}
        return state

    def restore(self, state: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """Restore all but the weights (:meth:`resume` loads those, checked) from a checkpoint; returns the
        round Ctrl-C cut short in it, if any."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
            else:
                log.warning("the checkpoint has no EMA weights; the EMA starts from the current weights")
        self.round = int(state.get("round", state.get("epoch") or 0))
        self.step = int(state.get("step", 0))
        self.best, self.best_round = state["best_metric"], state.get("best_round")
        self.validations_since_best = int(state.get("validations_since_best", state.get("stale", 0)))
        self.history = list(state["history"])
        interrupted = state.get("interrupted_round", state.get("partial"))  # "partial": checkpoints before 12/2026
        if interrupted is not None and "parts" in interrupted:
            interrupted = {**interrupted, "loss_terms": interrupted["parts"]}
        return interrupted

    def resume(self, resume: str, run_dir: Path) -> Optional[Dict[str, Any]]:
        """Load ``--resume [PATH]`` (default ``<run_dir>/last.pt``); returns its interrupted round, if any."""
        path = Path(resume) if resume else run_dir / "last.pt"
        checkpoint = load_checkpoint(path, map_location=self.device, missing_hint=(
            "start without --resume, or name a checkpoint: --resume PATH"))
        require_resumable(checkpoint, path)
        load_weights(self.model, checkpoint["model"], path, checkpoint, self.cfg.to_dict(),
                     f"resume with the config it was trained with (saved as {path.parent / 'config.yaml'}), "
                     "or start a new run with --overwrite or --set experiment=NAME")
        interrupted = self.restore(checkpoint)
        warn_if_schedule_changed(checkpoint.get("config") or {}, self.cfg.to_dict())
        log.info("resumed from %s after %s round(s) (best %s so far: %s)", path, self.round,
                 self.cfg.train.monitor, self.best)
        return interrupted

    def check_finite(self, label: str) -> None:
        """Raise TrainingDiverged before a checkpoint would record NaN or Inf weights or statistics."""
        for owner, module in (("model", self.model), ("EMA", self.ema.module if self.ema is not None else None)):
            if module is None:
                continue
            bad = [name for name, t in module.state_dict().items()
                   if t.is_floating_point() and not torch.isfinite(t).all()]
            if bad:
                raise TrainingDiverged(f"{label}: the {owner} weights hold NaN or Inf ({', '.join(bad[:3])}); "
                                       "nothing was saved, last.pt holds the last good round. Lower "
                                       "optimizer.lr or set train.grad_clip, then --resume or start again "
                                       "with --overwrite")


def warn_if_schedule_changed(saved: Dict[str, Any], asked: Dict[str, Any]) -> None:
    """The learning-rate schedule is restored with the length it was built for: say so when the config
    now asks for another length or schedule (``--resume --set train.epochs=N`` does not stretch it)."""
    keys = [("train", "epochs"), ("train", "iterations"), *(("scheduler", k) for k in asked.get("scheduler", {}))]
    changed = [f"{a}.{b}: {saved.get(a, {}).get(b)!r} -> {asked.get(a, {}).get(b)!r}" for a, b in keys
               if a in saved and saved.get(a, {}).get(b) != asked.get(a, {}).get(b)]
    if changed:
        log.warning("resumed with %s: the learning-rate schedule continues as it was built, for the original "
                    "length (a poly or cosine schedule stays at its final rate past it); start a new run with "
                    "--overwrite to train with the new schedule", ", ".join(changed))


def is_better(value: Optional[float], best: Optional[float], mode: str) -> bool:
    """Whether ``value`` improves on ``best`` (``mode`` max or min); NaN and None never do."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None:
        return True
    return value > best if mode == "max" else value < best


def diverged(label: str, step: int, bad_loss: Optional[Tuple[float, Dict[str, float]]]) -> TrainingDiverged:
    """The error that stops a run whose loss became NaN or Inf (``bad_loss`` is None on the other processes)."""
    what = (f"the loss is {bad_loss[0]} (terms {bad_loss[1]})" if bad_loss
            else "the loss is not finite on another process")
    return TrainingDiverged(f"{label}, step {step}: {what}; the run stopped before this step changed the weights "
                            "and last.pt holds the last completed round. Lower optimizer.lr, set "
                            "train.grad_clip, or check the data with --check-data; then continue with --resume "
                            "or start again with --overwrite")


def resume_round(interrupted: Optional[Dict[str, Any]], index: int, batches: Iterator[Any],
                 accumulate: int) -> RoundStats:
    """Resume inside a round: skip the batches it trained on, then restore the RNGs as they were."""
    if interrupted is None or interrupted["round"] != index:
        return RoundStats()
    for _ in range(interrupted["steps"] * accumulate):
        next(batches)
    restore_rng(interrupted["rng"])
    return RoundStats(interrupted["loss"], dict(interrupted["loss_terms"]), interrupted["seen"],
                      interrupted["steps"], interrupted["seconds"])
