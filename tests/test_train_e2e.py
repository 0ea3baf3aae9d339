"""End to end on tiny data: train 2 epochs, checkpoints, resume, Ctrl-C, test.py results."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Sequence

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import train

REPO = Path(__file__).resolve().parents[1]


def load_test_script() -> ModuleType:
    """test.py by path (``import test`` would find the standard library's package)."""
    spec = importlib.util.spec_from_file_location("seg_test_script", REPO / "test.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_train_resume_and_predict(tiny_run: Path, tmp_path: Path) -> None:
    assert train.main(["--config", str(tiny_run)]) == 0
    run_dir = tmp_path / "checkpoint" / "unit"
    for name in ("last.pt", "best.pt", "config.yaml", "metrics.json", "train.log"):
        assert (run_dir / name).is_file(), name
    assert list(run_dir.glob("events.out.tfevents.*")), "no TensorBoard events"
    assert not list(run_dir.glob("*.tmp")), "temp files left behind"

    last = torch.load(run_dir / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and len(last["history"]) == 2
    losses = [h["train_loss"] for h in last["history"]]
    assert losses[1] < losses[0], f"loss did not fall: {losses}"
    assert set(last) >= {"model", "optimizer", "scheduler", "scaler", "epoch", "best_metric", "config"}
    best = torch.load(run_dir / "best.pt", weights_only=True)
    history = json.loads((run_dir / "metrics.json").read_text())
    assert history["best"] == best["best_metric"] == max(h["val"]["dice_foreground"] for h in history["history"])
    assert "definitions" in history["history"][0]["val"]

    # Resume continues at epoch 3 with the stored optimizer state and history.
    assert train.main(["--config", str(tiny_run), "--set", "train.epochs=3", "--resume"]) == 0
    resumed = torch.load(run_dir / "last.pt", weights_only=True)
    assert resumed["epoch"] == 3 and len(resumed["history"]) == 3
    assert resumed["history"][:2] == last["history"]
    assert resumed["optimizer"]["state"][0]["step"] > last["optimizer"]["state"][0]["step"]
    log = (run_dir / "train.log").read_text()
    assert "resumed from" in log
    assert "resumed with train.epochs: 2 -> 3: the learning-rate schedule continues as it was built" in log

    # test.py with only the checkpoint: config comes from inside it.
    script = load_test_script()
    out = tmp_path / "preds"
    assert script.main(["--checkpoint", str(run_dir / "best.pt"), "--output", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    n = summary["num_images"]
    assert n > 0 and summary["checkpoint"] == str(run_dir / "best.pt")
    assert len(list((out / "masks").glob("*.png"))) == n
    assert len(list((out / "overlays").glob("*.png"))) == n
    assert (out / "overview.png").is_file()
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert len(rows) == n and {"image", "dice_foreground", "iou_foreground"} <= set(rows[0])
    metrics = summary["metrics"]
    for key in ("miou", "mean_dice", "dice_foreground", "iou_foreground", "pixel_accuracy", "definitions"):
        assert key in metrics
    assert "including background" in metrics["definitions"]["miou"]
    mask = np.array(Image.open(next((out / "masks").glob("*.png"))))
    assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 255}


def test_predictions_restored_to_original_size_for_an_image_folder(tiny_run: Path, tmp_path: Path) -> None:
    cfg_raw = yaml.safe_load(tiny_run.read_text())
    cfg_raw["transforms"]["val"] = [{"name": "resize", "size": 24}, {"name": "normalize"}]
    tiny_run.write_text(yaml.safe_dump(cfg_raw))
    assert train.main(["--config", str(tiny_run), "--set", "train.epochs=1"]) == 0
    folder = tmp_path / "new_images"
    folder.mkdir()
    Image.fromarray(np.zeros((45, 61, 3), np.uint8)).save(folder / "odd.png")
    (folder / "notes.txt").write_text("not an image")
    script = load_test_script()
    out = tmp_path / "folder_preds"
    assert script.main(["--config", str(tiny_run), "--input", str(folder), "--output", str(out)]) == 0
    assert [p.name for p in (out / "masks").iterdir()] == ["odd.png"]
    assert Image.open(out / "masks" / "odd.png").size == (61, 45)
    assert not (out / "per_image.csv").exists()
    assert json.loads((out / "summary.json").read_text())["num_images"] == 1


def test_test_script_reports_missing_checkpoint(tiny_run: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    """One ERROR line naming the checkpoint it looked for (test.checkpoint, best.pt, in the run folder).

    Read from stderr, where the user sees it: the entry point's logging set-up replaces the root
    logger's handlers (basicConfig(force=True)), pytest's caplog handler included."""
    script = load_test_script()
    assert script.main(["--config", str(tiny_run)]) == 2
    err = capsys.readouterr().err
    missing = tmp_path / "checkpoint" / "unit" / "best.pt"
    errors = [line for line in err.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and f"{missing}: no checkpoint there; train first" in errors[0], err
    assert "Traceback" not in err


def run_entry(*command: str, faults: Sequence[str] = (), timeout: float = 300) -> subprocess.CompletedProcess:
    """``python tests/entry_faults.py FAULTS -- COMMAND`` from the repository root, in a session of its own
    (as a terminal runs a command); a hang fails the test at ``timeout`` seconds."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(REPO / "tests" / "entry_faults.py"), *faults, "--", *command],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
                          start_new_session=True)


def test_sigint_mid_round_saves_last_and_resume_matches_an_uninterrupted_run(tiny_run: Path,
                                                                             tmp_path: Path) -> None:
    """Ctrl-C right after optimizer step 6 (4 steps per epoch: step 2 of epoch 2), with a loader worker:
    exit 130, last.pt holds the cut round, and --resume ends where a run never stopped ends."""
    common = ["--config", str(tiny_run), "--set", "train.epochs=3", "data.num_workers=1", "train.tensorboard=false"]
    cut = run_entry("train.py", *common, "experiment=cut", faults=["--sigint-at-step", "6"])
    log = cut.stdout + cut.stderr
    run_dir = tmp_path / "checkpoint" / "cut"
    assert cut.returncode == 130, log
    assert "Traceback" not in log, log
    assert f"interrupted 2/4 steps into epoch 2/3: saved {run_dir / 'last.pt'}; continue with --resume" in log, log

    state = torch.load(run_dir / "last.pt", weights_only=True)
    assert state["round"] == state["epoch"] == len(state["history"]) == 1 and state["step"] == 4
    assert state["interrupted_round"] is not None, "a cut inside a round must be saved as an interrupted round"
    assert state["interrupted_round"]["round"] == 2 and state["interrupted_round"]["steps"] == 6 - 4
    assert state["interrupted_round"]["seen"] == 2 * 4  # two steps of batch_size 4
    assert all(s["step"] == 6 for s in state["optimizer"]["state"].values())  # the weights after step 6

    resumed = run_entry("train.py", *common, "experiment=cut", "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    whole = run_entry("train.py", *common, "experiment=whole")
    assert whole.returncode == 0, whole.stdout + whole.stderr
    done, reference = (torch.load(tmp_path / "checkpoint" / name / "last.pt", weights_only=True)
                       for name in ("cut", "whole"))
    assert done["interrupted_round"] is None and done["round"] == reference["round"] == 3 and done["step"] == 12
    same = ("round", "iteration", "train_loss", "loss_parts", "lr", "val")  # all but the throughput
    assert [{k: r[k] for k in same} for r in done["history"]] == [{k: r[k] for k in same}
                                                                  for r in reference["history"]]
    assert all(torch.equal(done["model"][k], reference["model"][k]) for k in reference["model"])


def _speed_overrides(tmp_path: Path) -> list:
    """Overrides that only make a shipped config fast enough for a unit test."""
    return ["train.epochs=1", "train.batch_size=4", "model.base_channels=4", "model.depth=2", "data.num_workers=0",
            "train.progress=false", f"train.checkpoint_dir={tmp_path / 'checkpoint'}",
            "transforms.train.0.size=32", "transforms.val.0.size=32"]


def test_users_own_folder_with_the_demo_config(tmp_path: Path) -> None:
    """A folder of JPEG images of mixed sizes with 0/255 masks trains through configs/demo.yaml
    with only data.root changed; predictions come back at each image's own size."""
    root = tmp_path / "my_data"
    rng = np.random.default_rng(3)
    sizes = {}
    for i in range(10):
        h, w = int(rng.integers(40, 70)), int(rng.integers(40, 90))
        image = rng.integers(0, 255, (h, w, 3)).astype(np.uint8)
        mask = np.zeros((h, w), np.uint8)
        mask[h // 4: h // 2, w // 4: w // 2] = 255
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "images" / f"IMG_{i}.JPG", quality=90)
        Image.fromarray(mask).save(root / "masks" / f"IMG_{i}.png")
        sizes[f"IMG_{i}"] = (w, h)
    (root / "images" / "LICENSE.txt").write_text("CC-BY")
    config = REPO / "configs" / "demo.yaml"
    overrides = [f"data.root={root}", *_speed_overrides(tmp_path)]
    assert train.main(["--config", str(config), "--set", *overrides]) == 0
    run_dir = tmp_path / "checkpoint" / "demo"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["data"]["root"] == str(root) and saved["data"]["mask_mapping"] == "binary"

    out = tmp_path / "results"
    script = load_test_script()
    assert script.main(["--config", str(config), "--set", *overrides, "--output", str(out)]) == 0
    written = sorted((out / "masks").glob("*.png"))
    assert written, "no predictions written"
    for path in written:
        assert Image.open(path).size == sizes[path.stem]


def test_multiclass_config_writes_palette_masks(tmp_path: Path) -> None:
    from datasets.synthetic import generate

    root = generate(tmp_path / "mc", num_classes=4, num_train=8, num_val=3, image_size=32, seed=0)
    config = REPO / "configs" / "demo_multiclass.yaml"
    overrides = [f"data.root={root}", *_speed_overrides(tmp_path)]
    assert train.main(["--config", str(config), "--set", *overrides]) == 0
    out = tmp_path / "results"
    assert load_test_script().main(["--config", str(config), "--set", *overrides, "--output", str(out)]) == 0
    masks = sorted((out / "masks").glob("*.png"))
    assert len(masks) == 3
    img = Image.open(masks[0])
    assert img.mode == "P" and img.getpalette()[3:6] != [0, 0, 0]
    assert int(np.array(img).max()) < 4
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["metrics"]["iou_per_class"]) == {"background", "blob", "ellipse", "triangle"}
    assert "dice_foreground" not in summary["metrics"]
