"""utils/export.py and ``test.py --export``: each format reloads and matches the eager model.

The checkpoints are untrained (zero steps), written with the framework's own
``save_checkpoint`` and config dict, so the tests stay fast; the comparisons
run at the example size and at odd sizes the export never saw.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np
import pytest
import torch
import yaml

import utils.export as export
from tests.conftest import minimal_config, write_pair
from tests.test_train_e2e import load_test_script
from utils.builders import build_model
from utils.checkpoint import save_checkpoint
from utils.config import Config, config_from_dict

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:FutureWarning")  # torch.jit.load below

MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
ATOL, RTOL = 1e-4, 1e-3
#: (N, H, W) the exports are compared at here, besides those of their own check (128x128, 97x161, 64x64)
SIZES = [(2, 64, 64), (1, 48, 80), (3, 45, 61)]


def make_run(root: Path, model: Dict[str, Any], epoch: int = 0) -> Tuple[Config, torch.nn.Module, Path]:
    """Config, untrained model and its checkpoint (run dir ``root/checkpoint/unit``) for ``model``."""
    data = root / "data"
    rng = np.random.default_rng(0)
    for i in range(2):
        write_pair(data, f"img_{i}", rng)
    raw = minimal_config(data, train={"checkpoint_dir": str(root / "checkpoint"), "progress": False,
                                      "tensorboard": False}, test={"output_dir": str(root / "results")})
    raw["data"]["class_names"] = ["background", "lesion"]
    raw["transforms"]["val"] = [{"name": "resize", "size": 64}, {"name": "normalize", "mean": MEAN, "std": STD}]
    raw["model"] = {"in_channels": 3, "out_channels": 1, "threshold": 0.4, **model}
    cfg = config_from_dict(raw)
    torch.manual_seed(0)
    net = build_model(cfg).eval()
    ckpt = save_checkpoint({"model": net.state_dict(), "epoch": epoch, "config": cfg.to_dict()},
                           cfg.run_dir / "last.pt")
    return cfg, net, ckpt


@pytest.fixture(scope="module")
def unet_run(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Config, torch.nn.Module, Path]:
    return make_run(tmp_path_factory.mktemp("unet"), {"name": "unet", "base_channels": 4, "depth": 2}, epoch=3)


def assert_matches_eager(model: torch.nn.Module, run: Any, sizes=SIZES) -> None:
    """``run(x)`` (the reloaded export) equals the eager model within tolerance at every (N, H, W)."""
    generator = torch.Generator().manual_seed(1)
    for n, h, w in sizes:
        x = torch.randn(n, 3, h, w, generator=generator)
        with torch.no_grad():
            expected = model(x)
        torch.testing.assert_close(run(x), expected, atol=ATOL, rtol=RTOL, msg=lambda m: f"{n}x3x{h}x{w}: {m}")


def read_sidecar(path: Path) -> Dict[str, Any]:
    return json.loads(export.sidecar_path(path).read_text())


def test_torchscript_through_test_py(unet_run, capsys: pytest.CaptureFixture) -> None:
    cfg, model, ckpt = unet_run
    assert load_test_script().main(["--checkpoint", str(ckpt), "--export", "torchscript"]) == 0
    path = ckpt.parent / "model.torchscript.pt"
    assert path.is_file() and not list(ckpt.parent.glob(".*.tmp*")), "temp file left behind"
    assert not Path(cfg.test.output_dir).exists(), "--export must not predict"
    assert str(path) in capsys.readouterr().err

    facts = read_sidecar(path)
    assert facts["format"] == "torchscript" and facts["file"] == "model.torchscript.pt"
    assert (facts["in_channels"], facts["out_channels"], facts["num_classes"]) == (3, 1, 2)
    assert facts["class_names"] == ["background", "lesion"]
    assert (facts["activation"], facts["threshold"]) == ("sigmoid", 0.4)
    assert facts["preprocessing"]["normalize"] == {"mean": MEAN, "std": STD}
    assert facts["preprocessing"]["resize"] == [64, 64]
    assert facts["checkpoint"] == str(ckpt) and facts["checkpoint_epoch"] == 3
    assert facts["input"]["shape"] == ["batch", 3, "height", "width"]
    check = facts["check"]
    assert check["passed"] and 0.0 <= check["max_abs_diff"] <= ATOL
    assert check["inputs"] == [[2, 3, 128, 128], [1, 3, 97, 161], [1, 3, 64, 64]]  # example, odd, val resize

    module = torch.jit.load(str(path))
    assert_matches_eager(model, lambda x: module(x))


def test_torch_export_program(unet_run, tmp_path: Path) -> None:
    cfg, model, ckpt = unet_run
    path = export.export_model(model, cfg, "export", tmp_path / "model.pt2", checkpoint=ckpt, epoch=3)
    assert path == tmp_path / "model.pt2" and read_sidecar(path)["format"] == "export"
    program = torch.export.load(str(path)).module()
    assert_matches_eager(model, program)


def test_onnx(unet_run, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    cfg, model, ckpt = unet_run
    path = export.export_model(model, cfg, "onnx", tmp_path / "model.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.json"]  # weights inside
    facts = read_sidecar(path)
    assert facts["format"] == "onnx" and facts["exported_with"]["opset"] >= 17
    assert facts["checkpoint"] is None and facts["check"]["passed"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.shape) == ("image", ["batch", 3, "height", "width"])
    assert (out.name, out.shape) == ("logits", ["batch", 1, "height", "width"])
    assert_matches_eager(model, lambda x: torch.from_numpy(session.run(None, {"image": x.numpy()})[0]))


def test_encoder_model_with_config_and_export_path(tmp_path: Path) -> None:
    """A torchvision backbone (strided convs, BatchNorm, a decoder resizing to each skip) at sizes the trace
    never saw, through ``test.py --config --checkpoint --export-path``. TorchScript only, to keep this fast."""
    cfg, model, ckpt = make_run(tmp_path, {"name": "unet", "encoder": "resnet18",
                                           "decoder_channels": [16, 16, 8, 8, 8]})
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    target = tmp_path / "deploy" / "seg.pt"
    assert load_test_script().main(["--config", str(config), "--checkpoint", str(ckpt),
                                    "--export", "torchscript", "--export-path", str(target)]) == 0
    facts = read_sidecar(target)
    assert facts["file"] == "seg.pt" and facts["model"]["encoder"] == "resnet18"
    assert facts["check"]["passed"] and facts["check"]["inputs"][1] == [1, 3, 97, 161]
    assert_matches_eager(model, torch.jit.load(str(target)), sizes=[(1, 45, 61)])


def test_failed_check_names_the_file_and_writes_nothing(unet_run, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, model, _ = unet_run
    load = export._LOADERS["torchscript"]
    monkeypatch.setitem(export._LOADERS, "torchscript", lambda path: (lambda x: load(path)(x) + 0.5))
    path = tmp_path / "model.torchscript.pt"
    with pytest.raises(export.ExportError, match=r"model\.torchscript\.pt: .*max abs difference 0\.5"):
        export.export_model(model, cfg, "torchscript", path)
    assert list(tmp_path.iterdir()) == [], "a failed check must leave no file behind"


def test_bad_format_and_missing_packages(unet_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, model, _ = unet_run
    with pytest.raises(ValueError, match="unknown export format 'tflite'; valid formats: torchscript, export, onnx"):
        export.export_model(model, cfg, "tflite", tmp_path / "model.tflite")
    with pytest.raises(SystemExit):
        load_test_script().parse_args(["--checkpoint", "x.pt", "--export", "tflite"])
    monkeypatch.setattr(export, "missing_onnx_packages", lambda check=True: ["onnxruntime"])
    with pytest.raises(export.ExportError, match="needs the packages onnxruntime: pip install"):
        export.export_model(model, cfg, "onnx", tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


def test_missing_checkpoint_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "nowhere" / "best.pt"
    assert load_test_script().main(["--checkpoint", str(missing), "--export", "onnx"]) == 2
    assert f"{missing}: no checkpoint there" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()
