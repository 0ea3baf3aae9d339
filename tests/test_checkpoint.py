"""Checkpoints: atomic writes, weights_only loading, clear errors."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.errors import CheckpointError


class NotPlain:
    """Not a tensor or builtin: weights_only loading must refuse it."""


class Unpicklable:
    def __reduce__(self):  # noqa: D401 - pickling hook
        raise RuntimeError("boom")


def test_round_trip_plain_types(tmp_path: Path) -> None:
    state = {"model": {"w": torch.arange(3.0)}, "epoch": 2, "best_metric": 0.5, "history": [{"a": 1.0}],
             "config": {"experiment": "x", "betas": (0.9, 0.999)}}
    path = save_checkpoint(state, tmp_path / "run" / "last.pt")
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert loaded["epoch"] == 2 and loaded["config"]["betas"] == (0.9, 0.999)


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = save_checkpoint({"model": {}, "epoch": 1}, tmp_path / "last.pt")
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint({"model": {}, "epoch": 2, "bad": Unpicklable()}, path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]  # no temp file left behind


def test_non_plain_content_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": NotPlain()}, path)
    with pytest.raises(CheckpointError, match=f"{path}: holds objects other than tensors"):
        load_checkpoint(path)


def test_missing_corrupt_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="none.pt: no checkpoint there; train first"):
        load_checkpoint(tmp_path / "none.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt.pt: cannot be read as a checkpoint .*truncated"):
        load_checkpoint(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="no 'model' entry"):
        load_checkpoint(foreign)
