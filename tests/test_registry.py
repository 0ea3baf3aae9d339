"""Registries: decorator registration, duplicates, unknown names listing valid ones."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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


def test_each_registry_imports_its_package_on_the_first_lookup() -> None:
    """The config layer imports no plugin: a registry brings its package in when a name is looked up."""
    code = (
        "import sys\n"
        "import utils.config\n"
        "from utils.registry import DATASETS, LOSSES, MODELS, TRANSFORMS\n"
        "plugins = ('models', 'datasets', 'utils.losses', 'utils.transforms')\n"
        "assert not [p for p in plugins if p in sys.modules], [p for p in plugins if p in sys.modules]\n"
        "assert 'unet' in MODELS and 'models' in sys.modules and 'datasets' not in sys.modules\n"
        "DATASETS.get('folder'); LOSSES.names(); TRANSFORMS.get('hflip')\n"
        "assert all(p in sys.modules for p in plugins)\n"
    )
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
