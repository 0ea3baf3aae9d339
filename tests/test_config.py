"""Config loading: defaults, validation errors that name file/key/fix, overrides, saving."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import minimal_config
from utils.config import (Config, ConfigError, apply_overrides, check_type, config_from_dict, load_config,
                          save_config)

REPO = Path(__file__).resolve().parents[1]


def write_yaml(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def test_minimal_config_fills_defaults(binary_folder: Path) -> None:
    cfg = config_from_dict(minimal_config(binary_folder))
    assert isinstance(cfg, Config)
    assert cfg.seed == 0 and cfg.device == "auto"
    assert cfg.optimizer.name == "adamw" and cfg.scheduler.name == "poly"
    assert cfg.model.options == {"base_channels": 4, "depth": 2}
    assert cfg.data.options == {"mask_mapping": "binary"}
    assert cfg.binary_sigmoid
    assert cfg.loss[1] == {"name": "dice", "weight": 0.5}


def test_int_given_for_float_is_converted(binary_folder: Path) -> None:
    cfg = config_from_dict(minimal_config(binary_folder, optimizer={"lr": 1}))
    assert cfg.optimizer.lr == 1.0 and isinstance(cfg.optimizer.lr, float)


def test_typo_in_section_key_names_file_key_and_suggestion(tmp_path: Path, binary_folder: Path) -> None:
    raw = minimal_config(binary_folder)
    raw["data"]["num_clases"] = 2
    path = write_yaml(tmp_path / "exp.yaml", raw)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "data" in msg and "'num_clases'" in msg and "did you mean 'num_classes'" in msg


def test_typo_in_top_level_section(binary_folder: Path) -> None:
    raw = minimal_config(binary_folder)
    raw["optimiser"] = {"lr": 0.1}
    with pytest.raises(ConfigError, match="did you mean 'optimizer'"):
        config_from_dict(raw, source="x.yaml")


def test_typo_in_model_option_checked_against_model_signature(binary_folder: Path) -> None:
    raw = minimal_config(binary_folder, model={"base_channel": 8})
    with pytest.raises(ConfigError, match=r"model: unknown key 'base_channel' \(did you mean 'base_channels'\?\)"):
        config_from_dict(raw, source="x.yaml")


def test_typo_in_transform_argument(binary_folder: Path) -> None:
    raw = minimal_config(binary_folder, transforms={"train": [{"name": "hflip", "prob": 0.5}], "val": []})
    with pytest.raises(ConfigError, match=r"transforms.train\[0\]: unknown key 'prob'"):
        config_from_dict(raw, source="x.yaml")


def test_unknown_registered_names_list_valid_ones(binary_folder: Path) -> None:
    with pytest.raises(ConfigError, match=r"model.name: unknown model 'unett'.*unet"):
        config_from_dict(minimal_config(binary_folder, model={"name": "unett"}), source="x.yaml")
    with pytest.raises(ConfigError, match=r"loss\[0\].name: unknown loss 'bec'.*bce"):
        config_from_dict(minimal_config(binary_folder, loss=[{"name": "bec"}]), source="x.yaml")
    with pytest.raises(ConfigError, match=r"data.name: unknown dataset 'folders'.*folder"):
        config_from_dict(minimal_config(binary_folder, data={"name": "folders"}), source="x.yaml")


def test_wrong_type_names_key_expected_and_got(tmp_path: Path, binary_folder: Path) -> None:
    raw = minimal_config(binary_folder, train={"epochs": "ten"})
    path = write_yaml(tmp_path / "exp.yaml", raw)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "train.epochs" in msg and "expected int" in msg and "got string 'ten'" in msg


def test_bool_is_not_an_int(binary_folder: Path) -> None:
    with pytest.raises(ConfigError, match="train.batch_size: expected int, got bool True"):
        config_from_dict(minimal_config(binary_folder, train={"batch_size": True}), source="x.yaml")


def test_wrong_type_inside_a_list(binary_folder: Path) -> None:
    raw = minimal_config(binary_folder, transforms={"train": [{"name": "resize", "size": [32, "x"]}], "val": []})
    with pytest.raises(ConfigError, match=r"transforms.train\[0\].size"):
        config_from_dict(raw, source="x.yaml")


def test_literal_choice_is_checked(binary_folder: Path) -> None:
    with pytest.raises(ConfigError, match="optimizer.name: expected one of 'adamw', 'adam', 'sgd', got string 'lbfgs'"):
        config_from_dict(minimal_config(binary_folder, optimizer={"name": "lbfgs"}), source="x.yaml")


def test_missing_data_root_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError) as err:
        config_from_dict(minimal_config(missing), source="x.yaml")
    assert "data.root" in str(err.value) and str(missing) in str(err.value)
    # Inference on a folder of images does not need the dataset.
    cfg = config_from_dict(minimal_config(missing), source="x.yaml", check_paths=False)
    assert cfg.data.root == str(missing)


def test_num_classes_and_out_channels_must_agree(binary_folder: Path) -> None:
    config_from_dict(minimal_config(binary_folder, model={"out_channels": 2}))  # 2 classes, softmax: fine
    with pytest.raises(ConfigError, match="model.out_channels.*data.num_classes=2"):
        config_from_dict(minimal_config(binary_folder, model={"out_channels": 3}), source="x.yaml")
    raw = minimal_config(binary_folder, data={"num_classes": 3, "mask_mapping": "identity"},
                         train={"monitor": "miou"})
    with pytest.raises(ConfigError, match="model.out_channels: 1 output channels do not fit data.num_classes=3"):
        config_from_dict(raw, source="x.yaml")


def test_monitor_must_be_a_metric(binary_folder: Path) -> None:
    with pytest.raises(ConfigError, match="train.monitor: unknown metric 'dice_forground'.*did you mean 'dice_foreground'"):
        config_from_dict(minimal_config(binary_folder, train={"monitor": "dice_forground"}), source="x.yaml")


def test_bad_mask_mapping_fails_at_start(binary_folder: Path) -> None:
    with pytest.raises(ConfigError, match="data.mask_mapping"):
        config_from_dict(minimal_config(binary_folder, data={"mask_mapping": "binarry"}), source="x.yaml")


def test_framework_provided_argument_is_rejected(binary_folder: Path) -> None:
    with pytest.raises(ConfigError, match="data.split: is set by the framework"):
        config_from_dict(minimal_config(binary_folder, data={"split": "train"}), source="x.yaml")


def test_overrides_are_yaml_typed_and_validated(tmp_path: Path, binary_folder: Path) -> None:
    path = write_yaml(tmp_path / "exp.yaml", minimal_config(binary_folder))
    cfg = load_config(path, ["train.epochs=7", "optimizer.lr=1e-2", "train.amp=false", "model.depth=3",
                             "transforms.train.0.p=0.25", "data.class_names=[bg, fg]"])
    assert cfg.train.epochs == 7 and cfg.optimizer.lr == 0.01 and cfg.train.amp == "off"
    assert cfg.model.options["depth"] == 3
    assert cfg.transforms.train[0] == {"name": "hflip", "p": 0.25}
    assert cfg.data.class_names == ["bg", "fg"]
    with pytest.raises(ConfigError, match=r"--set train.epochs: train.epochs: expected int"):
        load_config(path, ["train.epochs=many"])
    with pytest.raises(ConfigError, match="--set train.epoch: train: unknown key 'epoch'"):
        load_config(path, ["train.epoch=3"])
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_config(path, ["train.epochs"])
    with pytest.raises(ConfigError, match="not a valid index"):
        load_config(path, ["transforms.train.9.p=0.1"])


def test_override_of_data_root(tmp_path: Path, binary_folder: Path) -> None:
    path = write_yaml(tmp_path / "exp.yaml", minimal_config(tmp_path / "missing"))
    cfg = load_config(path, [f"data.root={binary_folder}"])
    assert cfg.data.root == str(binary_folder)


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match=f"{bad}: not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(listy)


def test_python_tags_are_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.yaml"
    evil.write_text("experiment: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(evil)


def test_saved_config_round_trips(tmp_path: Path, binary_folder: Path) -> None:
    cfg = config_from_dict(minimal_config(binary_folder, model={"bilinear": False}))
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(path)
    assert again.to_dict() == cfg.to_dict()
    assert again.model.options == {"base_channels": 4, "depth": 2, "bilinear": False}
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_check_type_containers() -> None:
    from typing import Dict, List, Optional, Tuple, Union
    assert check_type([1, 2], Tuple[float, float]) == (1.0, 2.0)
    assert check_type(None, Optional[int]) is None
    assert check_type(3, Union[int, List[int]]) == 3
    assert check_type({"a": 1}, Dict[str, int]) == {"a": 1}


def test_apply_overrides_creates_sections() -> None:
    raw: dict = {}
    assert apply_overrides(raw, ["train.epochs=3", "seed=5"]) == ["train.epochs", "seed"]
    assert raw == {"train": {"epochs": 3}, "seed": 5}


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_validate(name: str) -> None:
    cfg = load_config(REPO / "configs" / name, check_paths=False)
    assert cfg.experiment


def test_exponent_floats_without_a_dot(binary_folder: Path) -> None:
    """PyYAML reads ``1e-4`` as a string; float keys still take it."""
    cfg = config_from_dict(minimal_config(binary_folder, optimizer={"lr": "1e-4", "weight_decay": "5E-5"}))
    assert cfg.optimizer.lr == 1e-4 and cfg.optimizer.weight_decay == 5e-5
    with pytest.raises(ConfigError, match="expected float"):
        config_from_dict(minimal_config(binary_folder, optimizer={"lr": "fast"}), source="x.yaml")


def test_switching_model_on_command_line_drops_only_the_old_models_options(
        tmp_path: Path, binary_folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    raw = minimal_config(binary_folder, model={"base_channels": 8, "depth": 3})
    path = write_yaml(tmp_path / "exp.yaml", raw)
    with caplog.at_level("WARNING", logger="utils.config"):
        cfg = load_config(path, ["model.name=deeplabv3", "model.encoder=resnet18"])
    assert cfg.model.name == "deeplabv3"
    assert cfg.model.options == {"encoder": "resnet18"}
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "model.base_channels=8 applies to 'unet', not to 'deeplabv3'" in messages[0]
    assert "model.depth=3" in messages[1] and str(path) in messages[1]
    # UNet++ takes base_channels but has no depth option: only depth is dropped.
    assert load_config(path, ["model.name=unetpp"]).model.options == {"base_channels": 8}


def test_switching_model_keeps_strict_checks(tmp_path: Path, binary_folder: Path) -> None:
    # A misspelled key in the file is not the old model's option: still an error, naming the file.
    raw = minimal_config(binary_folder, model={"base_chanels": 8})
    path = write_yaml(tmp_path / "typo.yaml", raw)
    with pytest.raises(ConfigError, match=rf"{path}: model: unknown key 'base_chanels'"):
        load_config(path, ["model.name=fcn"])
    # An option of the old model given on the command line is the user's explicit ask: an error naming that flag.
    good = write_yaml(tmp_path / "good.yaml", minimal_config(binary_folder))
    with pytest.raises(ConfigError, match=r"--set model.base_channels: model: unknown key 'base_channels'"):
        load_config(good, ["model.name=fcn", "model.base_channels=8"])
