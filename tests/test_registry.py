"""Registries: decorator registration, duplicates, unknown names listing valid ones."""
from __future__ import annotations

import pytest

import datasets  # noqa: F401  (fills DATASETS)
import models  # noqa: F401  (fills MODELS)
import utils.losses  # noqa: F401
import utils.transforms  # noqa: F401
from utils.registry import DATASETS, LOSSES, MODELS, TRANSFORMS, Registry


def test_register_build_and_names() -> None:
    reg = Registry("widget")

    @reg.register("b")
    class B:
        def __init__(self, size: int = 1) -> None:
            self.size = size

    @reg.register("a")
    class A:
        pass

    assert reg.names() == ["a", "b"]
    assert "a" in reg and "c" not in reg
    assert reg.get("b") is B
    assert reg.build("b", size=3).size == 3


def test_duplicate_name_raises() -> None:
    reg = Registry("widget")
    reg.register("a")(type("A", (), {}))
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        reg.register("a")(type("A2", (), {}))


def test_unknown_name_lists_valid_names_and_suggests() -> None:
    reg = Registry("widget")
    for name in ("unet", "fcn"):
        reg.register(name)(type(name, (), {}))
    with pytest.raises(KeyError) as err:
        reg.get("unte")
    msg = str(err.value)
    assert "unknown widget 'unte'" in msg and "fcn, unet" in msg and "did you mean 'unet'" in msg


def test_project_registries_are_filled_on_import() -> None:
    assert "unet" in MODELS.names()
    assert {"folder", "synthetic"} <= set(DATASETS.names())
    assert {"bce", "ce", "dice"} <= set(LOSSES.names())
    assert {"resize", "random_resized_crop", "random_crop", "hflip", "vflip", "rotate", "color_jitter",
            "gaussian_blur", "normalize"} <= set(TRANSFORMS.names())
    with pytest.raises(KeyError, match="valid model names: .*unet"):
        MODELS.build("segformer")
