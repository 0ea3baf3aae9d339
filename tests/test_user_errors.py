"""A user's mistakes, met as a user meets them: each entry point run as a subprocess.

Every case asserts the exit status (2), that no traceback is shown, that there
is exactly one ERROR line, and that it names the offending file, key or value.
The faults (disk full, NaN loss) are injected by ``tests/entry_faults.py``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import minimal_config, write_pair

REPO = Path(__file__).resolve().parents[1]
USER_ERROR = 2


class Launcher:
    """A client of ``tests/entry_launcher.py``: runs commands in forked children of one warm process."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "entry_launcher.py")], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert json.loads(self.proc.stdout.readline()) == {"ready": True}

    def run(self, argv: Sequence[str], cwd: Path, timeout: float = 300) -> Tuple[int, str]:
        self.proc.stdin.write(json.dumps({"argv": list(argv), "cwd": str(cwd), "timeout": timeout}) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        return reply["status"], reply["output"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module", autouse=True)
def launcher() -> Iterator[Launcher]:
    global LAUNCHER
    LAUNCHER = Launcher()
    yield LAUNCHER
    LAUNCHER.close()
    LAUNCHER = None


LAUNCHER: Optional[Launcher] = None


def run_entry(args: Sequence[str], cwd: Path, faults: Sequence[str] = (), fresh: bool = False) -> Tuple[int, str]:
    """``python <args>`` (a script path under the repo, or ``-m module``) in ``cwd``; (status, stdout+stderr).

    ``fresh`` starts a new interpreter, exactly as a user does; otherwise the command runs in a forked
    child of the warm launcher (the same code path after start-up, without 3.5 s of imports each time).
    """
    command = list(args)
    if faults:
        command = [str(REPO / "tests" / "entry_faults.py"), *faults, "--", *args]
    if fresh or LAUNCHER is None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.run([sys.executable, *command], cwd=cwd, capture_output=True, text=True, timeout=300,
                              env=env)
        return proc.returncode, proc.stdout + proc.stderr
    return LAUNCHER.run(command, cwd)


def train_cmd(*args: str) -> List[str]:
    return [str(REPO / "train.py"), *args]


def predict_cmd(*args: str) -> List[str]:
    return [str(REPO / "test.py"), *args]


def error_line(result: Tuple[int, str], *needles: str) -> str:
    """Assert a clean user error: status 2, no traceback, one ERROR line holding every needle."""
    status, output = result
    assert status == USER_ERROR, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if " ERROR " in line]
    assert len(lines) == 1, output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def write_config(folder: Path, root: Path, **sections: Any) -> Path:
    """A one-epoch config for the folder dataset at ``root``, writing under ``folder``."""
    train: Dict[str, Any] = {"epochs": 1, "batch_size": 4, "val_batch_size": 2, "monitor": "dice_foreground",
                             "checkpoint_dir": str(folder / "ck"), "progress": False}
    train.update(sections.pop("train", {}))
    raw = minimal_config(root, train=train, test={"output_dir": str(folder / "res")}, **sections)
    path = folder / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def make_pairs(root: Path, count: int = 12, size: int = 32, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(count):
        write_pair(root, f"case_{i:02d}", rng, size=size)
    return root


# ----------------------------------------------------------------- data


def _empty_images(root: Path) -> str:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    return "holds no images"


def _image_without_mask(root: Path) -> str:
    (root / "masks" / "case_03.png").unlink()
    return "without a mask: case_03.png"


def _mask_without_image(root: Path) -> str:
    (root / "images" / "case_04.png").unlink()
    return "without an image: case_04.png"


def _no_masks_folder(root: Path) -> str:
    for path in (root / "masks").iterdir():
        path.unlink()
    (root / "masks").rmdir()
    return "masks does not exist"


def _size_mismatch(root: Path) -> str:
    Image.fromarray(np.zeros((30, 32), np.uint8)).save(root / "masks" / "case_05.png")
    return "case_05.png: size 32x30 differs from image"


def _value_outside_classes(root: Path) -> str:
    """Masks of class indices 0/1 (identity mapping), one of which also holds 3."""
    for path in (root / "masks").iterdir():
        mask = (np.array(Image.open(path)) > 0).astype(np.uint8)
        Image.fromarray(mask * (3 if path.stem == "case_06" else 1)).save(path)
    return "case_06.png: holds values {3} but data.num_classes=2"


def _truncated_png(root: Path) -> str:
    data = (root / "images" / "case_07.png").read_bytes()
    (root / "images" / "case_07.png").write_bytes(data[: len(data) // 2])
    return "case_07.png"


def _truncated_jpeg(root: Path) -> str:
    image = Image.open(root / "images" / "case_08.png")
    (root / "images" / "case_08.png").unlink()
    image.save(root / "images" / "case_08.jpg", quality=90)
    data = (root / "images" / "case_08.jpg").read_bytes()
    (root / "images" / "case_08.jpg").write_bytes(data[: len(data) // 2])
    return "case_08.jpg"


def _text_named_png(root: Path) -> str:
    (root / "images" / "case_09.png").write_text("not an image\n")
    return "case_09.png: cannot read the image"


def _same_stem(root: Path) -> str:
    Image.open(root / "images" / "case_10.png").save(root / "images" / "case_10.jpg")
    return "case_10.jpg and case_10.png have the same stem"


DATA_CASES = {
    "empty image folder": (_empty_images, {}),
    "image without mask": (_image_without_mask, {}),
    "mask without image": (_mask_without_image, {}),
    "no masks folder": (_no_masks_folder, {}),
    "size mismatch": (_size_mismatch, {}),
    "mask value outside the classes": (_value_outside_classes, {"mask_mapping": "identity"}),
    "0/255 masks with identity mapping": (lambda root: "set data.mask_mapping: binary", {"mask_mapping": "identity"}),
    "truncated png": (_truncated_png, {}),
    "truncated png, loader worker": (_truncated_png, {"check": "off", "num_workers": 1}),
    "truncated jpeg": (_truncated_jpeg, {}),
    "text file named .png": (_text_named_png, {}),
    "same stem twice": (_same_stem, {}),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data_is_one_line_before_training(case: str, tmp_path: Path) -> None:
    spoil, data_options = DATA_CASES[case]
    root = tmp_path / "data"
    if case != "empty image folder":
        make_pairs(root)
    needle = spoil(root)
    cfg = write_config(tmp_path, root, data=data_options)
    line = error_line(run_entry(train_cmd("--config", str(cfg)), tmp_path), needle)
    if data_options.get("check") != "off":
        assert "training started" not in line
    assert not (tmp_path / "ck" / "unit").exists(), "a failed start left its run folder"


def test_train_split_smaller_than_batch(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, make_pairs(tmp_path / "data", count=6), train={"batch_size": 8})
    error_line(run_entry(train_cmd("--config", str(cfg)), tmp_path), "fewer than train.batch_size=8")


def test_input_smaller_than_the_model_takes(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, make_pairs(tmp_path / "data", size=32),
                       model={"name": "unet", "in_channels": 3, "out_channels": 1, "base_channels": 4, "depth": 6})
    error_line(run_entry(train_cmd("--config", str(cfg)), tmp_path), "needs inputs of at least 64x64", "got 32x32")
    assert not (tmp_path / "ck" / "unit").exists()


def _nan_val_layout(root: Path) -> Path:
    """train/ and val/ folders; one validation image is a float TIFF with a NaN pixel."""
    make_pairs(root / "train", count=8)
    make_pairs(root / "val", count=3, seed=1)
    pixels = np.asarray(Image.open(root / "val" / "images" / "case_01.png").convert("L"), np.float32)
    pixels[3, 4] = np.nan
    (root / "val" / "images" / "case_01.png").unlink()
    Image.fromarray(pixels, mode="F").save(root / "val" / "images" / "case_01.tif")
    return root


@pytest.mark.parametrize("check", ["quick", "off"])
def test_nan_pixel_in_a_validation_image_is_reported(check: str, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, _nan_val_layout(tmp_path / "data"), data={"check": check})
    error_line(run_entry(train_cmd("--config", str(cfg)), tmp_path), "case_01.tif", "NaN or infinite")


# ----------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with data, cfg.yaml (unet, base 4) and a trained run in ck/unit."""
    folder = tmp_path_factory.mktemp("trained")
    cfg = write_config(folder, make_pairs(folder / "data"))
    status, output = run_entry(train_cmd("--config", str(cfg)), folder)
    assert status == 0, output
    return folder


@pytest.mark.parametrize("override, held, asked", [
    ("model.base_channels=8", "base_channels=4", "base_channels=8"),
    ("model.name=unetpp", "unet (base_channels=4, depth=2)", "unetpp"),
    ("data.num_classes=3 model.out_channels=3 train.monitor=miou", "1 output channel, 2 classes",
     "3 output channels, 3 classes"),
])
def test_test_py_with_a_checkpoint_of_another_model(trained: Path, override: str, held: str, asked: str) -> None:
    args = predict_cmd("--config", str(trained / "cfg.yaml"), "--set", *override.split(), "--output", "out")
    line = error_line(run_entry(args, trained), "best.pt: holds", held, asked)
    assert "python test.py --checkpoint" in line and line.index(held) < line.index(asked)


def test_resume_with_a_checkpoint_of_another_width(trained: Path) -> None:
    args = train_cmd("--config", str(trained / "cfg.yaml"), "--resume", "--set", "model.base_channels=8",
                    "train.epochs=2")
    error_line(run_entry(args, trained), "last.pt: holds", "base_channels=4", "base_channels=8", "config.yaml")


def test_resume_without_a_checkpoint_names_the_real_option(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, make_pairs(tmp_path / "data"))
    line = error_line(run_entry(train_cmd("--config", str(cfg), "--resume"), tmp_path), "last.pt: no checkpoint")
    assert "--resume PATH" in line and "--checkpoint" not in line
    assert not (tmp_path / "ck" / "unit").exists()


def test_resume_from_a_truncated_checkpoint(trained: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.pt"
    data = (trained / "ck" / "unit" / "last.pt").read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    args = train_cmd("--config", str(trained / "cfg.yaml"), "--resume", str(cut), "--set", "train.epochs=2")
    error_line(run_entry(args, trained), "cut.pt: cannot be read as a checkpoint")


def test_resume_from_best_pt_says_to_use_last(trained: Path) -> None:
    args = train_cmd("--config", str(trained / "cfg.yaml"), "--resume", str(trained / "ck" / "unit" / "best.pt"),
                    "--set", "train.epochs=2")
    error_line(run_entry(args, trained), "best.pt: holds weights for inference only", "last.pt")


def test_checkpoint_dir_that_is_a_file(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, make_pairs(tmp_path / "data"), train={"checkpoint_dir": str(tmp_path / "afile")})
    (tmp_path / "afile").write_text("")
    error_line(run_entry(train_cmd("--config", str(cfg)), tmp_path), "train.checkpoint_dir", "afile is a file")


# ----------------------------------------------------------------- test.py inputs


def test_unknown_split(trained: Path) -> None:
    error_line(run_entry(predict_cmd("--config", str(trained / "cfg.yaml"), "--split", "nope"), trained),
               "test.split='nope'", "split must be one of")


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt"])
def test_input_folder_problems(case: str, trained: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    if case != "missing":
        folder.mkdir()
    if case == "corrupt":
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "a.png")
        (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    needle = {"missing": "folder does not exist", "empty": "holds no images", "corrupt": "b.png"}[case]
    args = predict_cmd("--config", str(trained / "cfg.yaml"), "--input", str(folder), "--output", str(tmp_path / "o"))
    error_line(run_entry(args, trained), needle)


def test_bare_test_py_without_any_run(tmp_path: Path) -> None:
    (tmp_path / "checkpoint" / "cut").mkdir(parents=True)
    (tmp_path / "checkpoint" / "cut" / "last.pt").write_bytes(b"")  # a run cut short has no best.pt
    error_line(run_entry(predict_cmd(), tmp_path), "no --config/--checkpoint given", "checkpoint/",
               "train first", "--config CONFIG / --checkpoint PATH")


def test_output_that_is_a_file(trained: Path, tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("")
    args = predict_cmd("--config", str(trained / "cfg.yaml"), "--output", str(tmp_path / "taken"))
    error_line(run_entry(args, trained), "--output", "taken: is a file")


# ----------------------------------------------------------------- faults


def test_disk_full_while_saving_keeps_the_previous_checkpoints(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, make_pairs(tmp_path / "data"), train={"epochs": 3})
    run_dir = tmp_path / "ck" / "unit"
    # Saves: round 1 writes best.pt then last.pt; the 3rd save (round 2) hits a full disk half-way.
    result = run_entry(train_cmd("--config", str(cfg)), tmp_path, faults=["--disk-full-at-save", "3"])
    error_line(result, "cannot write", "the disk is full", "unchanged")
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == [], "temp file left behind"
    for name in ("last.pt", "best.pt"):
        assert torch.load(run_dir / name, weights_only=True)["round"] == 1


def test_nan_loss_stops_cleanly_and_keeps_the_last_good_round(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, make_pairs(tmp_path / "data"), train={"epochs": 3})
    run_dir = tmp_path / "ck" / "unit"
    # 10 training pairs, batch 4: two steps a round; step 3 is the first of round 2.
    result = run_entry(train_cmd("--config", str(cfg)), tmp_path, faults=["--nan-loss-at-step", "3"])
    error_line(result, "epoch 2/3, step 1", "the loss is nan", "last.pt holds the last completed round")
    last = torch.load(run_dir / "last.pt", weights_only=True)
    best = torch.load(run_dir / "best.pt", weights_only=True)
    assert last["round"] == 1 and best["round"] == 1
    assert all(torch.isfinite(t).all() for t in best["model"].values() if t.is_floating_point())
    assert np.isfinite(best["best_metric"])


# ----------------------------------------------------------------- overrides and re-runs


def test_every_set_group_applies(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, make_pairs(tmp_path / "data"))
    args = train_cmd("--config", str(cfg), "--set", "train.epochs=3", "--set", "experiment=two_groups",
                    "--set", "train.epochs=2")
    status, output = run_entry(args, tmp_path)
    assert status == 0, output
    assert "--set train.epochs is given more than once; the last value, 2, applies" in output
    saved = yaml.safe_load((tmp_path / "ck" / "two_groups" / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 2 and saved["experiment"] == "two_groups"
    assert torch.load(tmp_path / "ck" / "two_groups" / "last.pt", weights_only=True)["round"] == 2


def test_a_rerun_never_overwrites_a_trained_run(trained: Path) -> None:
    run_dir = trained / "ck" / "unit"
    before = {name: (run_dir / name).read_bytes() for name in ("best.pt", "last.pt", "metrics.json", "train.log")}
    line = error_line(run_entry(train_cmd("--config", str(trained / "cfg.yaml")), trained),
                      "already holds a trained run")
    assert "--resume" in line and "--overwrite" in line
    assert {name: (run_dir / name).read_bytes() for name in before} == before


def test_overwrite_starts_again_and_clears_leftover_temp_files(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, make_pairs(tmp_path / "data"))
    run_dir = tmp_path / "ck" / "unit"
    assert run_entry(train_cmd("--config", str(cfg)), tmp_path)[0] == 0
    leftover = run_dir / ".last.pt.abc123.tmp"  # what a write killed half-way leaves
    leftover.write_bytes(b"half")
    status, output = run_entry(train_cmd("--config", str(cfg), "--overwrite", "--set", "seed=5"), tmp_path)
    assert status == 0, output
    assert not leftover.exists() and "left by a write that was killed" in output
    assert "--overwrite: removed the previous run's" in output
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["seed"] == 5


# ----------------------------------------------------------------- the other entry points


def test_data_check_entry_point_names_the_missing_root(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, tmp_path / "absent")
    error_line(run_entry(train_cmd("--config", str(cfg), "--check-data"), tmp_path), "data.root", "absent")
    # the old command line says what replaced it instead of exiting 0 having checked nothing
    error_line(run_entry(["-m", "datasets.check", "--config", str(cfg)], tmp_path),
               "python train.py --config CONFIG --check-data")


def test_preview_augmentations_writes_the_grid_and_names_a_broken_image(tmp_path: Path) -> None:
    """``train.py --preview-augmentations OUT`` writes the grid and trains nothing; a broken image is one line."""
    root = make_pairs(tmp_path / "data")
    cfg = write_config(tmp_path, root)
    out = tmp_path / "sheet.png"
    args = train_cmd("--config", str(cfg), "--preview-augmentations", str(out), "--preview-num", "4",
                     "--set", "data.val_fraction=0.0")
    status, output = run_entry(args, tmp_path)
    assert status == 0, output
    sheet = np.array(Image.open(out))
    assert sheet.ndim == 3 and sheet.shape[2] == 3 and sheet.shape[1] > sheet.shape[0]  # 4 pairs side by side
    assert f"wrote {out}" in output and not (tmp_path / "ck").exists()  # nothing trained
    needle = _text_named_png(root)
    error_line(run_entry(args, tmp_path), needle.split(":")[0], "cannot read image")


def test_debug_shows_the_traceback_of_a_user_error(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, make_pairs(tmp_path / "data"), train={"batch_size": 64})
    status, output = run_entry(train_cmd("--config", str(cfg), "--debug"), tmp_path)
    assert status == USER_ERROR and "Traceback" in output and "fewer than train.batch_size=64" in output


# ----------------------------------------------------------------- the launcher is faithful


def _strip_time(output: str) -> List[str]:
    return [line.split(" ", 1)[1] for line in output.splitlines() if " ERROR " in line or " WARNING " in line]


@pytest.mark.parametrize("case", ["bad data", "disk full", "re-run", "test.py"])
def test_a_fresh_interpreter_gives_what_the_launcher_gives(case: str, trained: Path, tmp_path: Path) -> None:
    """The fast path (a forked child of the warm launcher) and ``python script`` as a user runs it agree."""
    faults: List[str] = []
    if case == "bad data":
        root = make_pairs(tmp_path / "data")
        _size_mismatch(root)
        args, cwd = train_cmd("--config", str(write_config(tmp_path, root))), tmp_path
    elif case == "disk full":
        args = train_cmd("--config", str(write_config(tmp_path, make_pairs(tmp_path / "data"))))
        cwd, faults = tmp_path, ["--disk-full-at-save", "1"]
    elif case == "re-run":
        args, cwd = train_cmd("--config", str(trained / "cfg.yaml")), trained
    else:
        args, cwd = predict_cmd("--config", str(trained / "cfg.yaml"), "--set", "model.base_channels=8"), trained
    fresh = run_entry(args, cwd, faults, fresh=True)
    if case == "disk full":
        shutil.rmtree(tmp_path / "ck")
    forked = run_entry(args, cwd, faults)
    error_line(fresh)
    assert fresh[0] == forked[0] and _strip_time(fresh[1]) == _strip_time(forked[1])
