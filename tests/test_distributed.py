"""DDP through torchrun with 2 CPU processes (gloo): sharding, rank-0 writing, resume, exact metrics."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List

import torch

import train
from utils.builders import build_datasets, build_loaders, build_model
from tests.test_train_e2e import REPO
from utils.checkpoint import load_checkpoint
from utils.config import load_config
from utils.distributed import ShardSampler


def torchrun(config: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd: List[str] = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                      str(REPO / "train.py"), "--config", str(config), *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)


def test_shard_sampler_covers_every_sample_once() -> None:
    shards = [list(ShardSampler(range(7), rank, 3)) for rank in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(i for shard in shards for i in shard) == list(range(7))


def test_two_gloo_processes_train_resume_and_match_single_process_metrics(tiny_run: Path,
                                                                          tmp_path: Path) -> None:
    # Batch 1 and one thread in every process and below, so the same image meets the same kernels.
    result = torchrun(tiny_run, "--set", "train.sync_bn=true", "train.tensorboard=false", "train.val_batch_size=1")
    assert result.returncode == 0, result.stderr[-4000:]
    log = result.stderr
    assert "x 2 processes" in log
    # SyncBatchNorm runs on CUDA only: on CPU processes it falls back with a warning instead of crashing.
    assert "train.sync_bn: keeping plain BatchNorm, because it runs on CUDA only" in log

    run_dir = tmp_path / "checkpoint" / "unit"
    state = load_checkpoint(run_dir / "last.pt")
    # 19 training images: 9 per process, 2 batches of 4 each, so 2 optimizer steps per epoch (4 for one process).
    assert state["epoch"] == 2 and state["step"] == 4
    # Only rank 0 writes the log file.
    assert (run_dir / "train.log").read_text().count("training started") == 1

    # The validation metrics of the 2-process run equal one process evaluating the same checkpoint:
    # 5 validation images split 3 + 2, confusion matrices summed.
    cfg = load_config(tiny_run, ["train.val_batch_size=1"])
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    train_ds, val_ds = build_datasets(cfg)
    _, val_loader = build_loaders(cfg, train_ds, val_ds, torch.device("cpu"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single, _ = train.evaluate(model, val_loader, cfg, torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    distributed = state["history"][-1]["val"]
    assert distributed["confusion_matrix"] == single["confusion_matrix"]
    assert distributed == single

    # Resume under DDP: one more epoch from last.pt.
    result = torchrun(tiny_run, "--resume", "--set", "train.epochs=3", "train.tensorboard=false",
                      "train.val_batch_size=1")
    assert result.returncode == 0, result.stderr[-4000:]
    resumed = load_checkpoint(run_dir / "last.pt")
    assert resumed["epoch"] == 3 and resumed["step"] == 6
    assert resumed["history"][:2] == state["history"]
