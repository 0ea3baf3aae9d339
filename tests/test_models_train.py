"""Every model trains through a shipped YAML for two epochs on tiny demo data, and test.py predicts."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List

import pytest
import torch

import train
from datasets.synthetic import generate
from tests.test_train_e2e import REPO, load_test_script

# Model sections for --set model=..., small enough for 32x32 images on a CPU.
MODELS = {
    "unet": "{name: unet, out_channels: 1, base_channels: 4, depth: 2}",
    "unetpp_ds": "{name: unetpp, out_channels: 1, base_channels: 4, deep_supervision: true, prune_level: 3}",
    "unet3p_ds_cgm": "{name: unet3p, out_channels: 1, base_channels: 4, deep_supervision: true, "
                     "classification_guided: true}",
    "unet_resnet18_frozen": "{name: unet, out_channels: 1, encoder: resnet18}",
    "deeplabv3plus": "{name: deeplabv3plus, out_channels: 1, encoder: mobilenet_v3_small}",
    "fcn": "{name: fcn, out_channels: 1, encoder: resnet18}",
}
EXTRA = {"unet_resnet18_frozen": ["train.freeze_encoder_epochs=1"],
         "unetpp_ds": ["train.deep_supervision_weights=[0.4, 0.3, 0.2, 0.1]"]}


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("demo") / "data", num_classes=2, num_train=8, num_val=2,
                    image_size=32, seed=0)


@pytest.mark.parametrize("key", sorted(MODELS))
def test_model_trains_two_epochs_and_predicts(key: str, demo_root: Path, tmp_path: Path) -> None:
    overrides: List[str] = [
        f"data.root={demo_root}", f"model={MODELS[key]}", "train.epochs=2", "train.batch_size=4",
        "train.val_batch_size=2", "train.progress=false", "train.tensorboard=false",
        f"train.checkpoint_dir={tmp_path / 'checkpoint'}",
        "transforms.train.0.size=32", "transforms.val.0.size=32", *EXTRA.get(key, [])]
    config = str(REPO / "configs" / "demo.yaml")
    assert train.main(["--config", config, "--set", *overrides]) == 0
    state = torch.load(tmp_path / "checkpoint" / "demo" / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and state["config"]["model"]["name"] == MODELS[key].split(",")[0][7:]
    if key == "unetpp_ds":
        assert {"ds_0", "ds_3"} <= set(state["history"][0]["loss_parts"])
    if key == "unet3p_ds_cgm":
        assert "cls" in state["history"][0]["loss_parts"]
    out = tmp_path / "results"
    assert load_test_script().main(["--config", config, "--set", *overrides, "--output", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_images"] == 2 and 0.0 <= summary["metrics"]["pixel_accuracy"] <= 1.0


SWITCHES = ["deeplabv3", "deeplabv3plus", "fcn", "pspnet", "unet3p", "unetpp"]


def test_every_registered_model_is_switched_to_below() -> None:
    import models  # noqa: F401 - fills the registry
    from utils.registry import MODELS

    assert sorted(MODELS.names()) == sorted(["unet", *SWITCHES]), "add the new model to SWITCHES"


@pytest.mark.parametrize("name", SWITCHES)
def test_model_name_switch_on_demo_yaml(name: str, demo_root: Path, tmp_path: Path) -> None:
    """`--set model.name=X` on configs/demo.yaml is all it takes, with each model's default options."""
    overrides: List[str] = [
        f"data.root={demo_root}", f"model.name={name}", "train.epochs=2", "train.batch_size=4",
        "train.val_batch_size=2", "train.progress=false", "train.tensorboard=false",
        f"train.checkpoint_dir={tmp_path / 'checkpoint'}",
        "transforms.train.0.size=32", "transforms.val.0.size=32"]
    config = str(REPO / "configs" / "demo.yaml")
    assert train.main(["--config", config, "--set", *overrides]) == 0
    state = torch.load(tmp_path / "checkpoint" / "demo" / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and state["config"]["model"]["name"] == name
    if name == "pspnet":  # ResNet-50 with the auxiliary head, weighted 0.4 without any setting
        assert "aux" in state["history"][0]["loss_parts"]
    out = tmp_path / "results"
    assert load_test_script().main(["--config", config, "--set", *overrides, "--output", str(out)]) == 0
    assert len(list((out / "masks").glob("*.png"))) == 2
