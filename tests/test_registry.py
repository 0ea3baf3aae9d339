"""Registries: decorator registration, duplicates, unknown names listing valid ones, argument checks."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from utils.errors import ConfigError
from utils.registry import (DATASETS, LOSSES, MODELS, TRANSFORMS, ArgumentError, Registry, check_arguments,
                            signature_params)


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


class Widget:
    def __init__(self, size: int, names: List[str] = [], *args: int, split: str = "train", **extra: float) -> None:
        pass


def test_signature_params_resolve_annotations_and_leave_out_provided_and_varargs() -> None:
    params = signature_params(Widget, provided={"split"})
    assert list(params) == ["size", "names"]
    assert params["size"].annotation is int and params["names"].annotation == List[str]
    assert params["names"].default == []


def test_check_arguments_returns_the_checked_values() -> None:
    seen = []

    def double(key, value, annotation):
        seen.append((key, value, annotation))
        return 2 * value

    assert check_arguments(Widget, {"size": 3}, "widget 'w'") == {"size": 3}
    assert check_arguments(Widget, {"names": ["a"], "size": 3}, "widget 'w'", check_value=double) == {
        "names": ["a", "a"], "size": 6}
    assert seen == [("names", ["a"], List[str]), ("size", 3, int)]


@pytest.mark.parametrize("kwargs, problem, key, message", [
    ({"size": 1, "sise": 2}, "unknown", "sise",
     r"widget 'w': unknown argument 'sise' \(did you mean 'size'\?\); accepted: size, names$"),
    ({"size": 1, "split": "val"}, "provided", "split", "widget 'w': 'split' is set by the framework; remove it"),
    ({"names": []}, "missing", "size", "widget 'w': needs the argument 'size'"),
])
def test_check_arguments_errors(kwargs, problem, key, message) -> None:
    with pytest.raises(ArgumentError, match=message) as err:
        check_arguments(Widget, kwargs, "widget 'w'", provided={"split"})
    assert isinstance(err.value, ConfigError) and isinstance(err.value, ValueError)
    assert (err.value.problem, err.value.key, err.value.accepted) == (problem, key, ["size", "names"])
    if problem == "missing":
        assert err.value.annotation is int


def test_registry_check_arguments_names_the_entry() -> None:
    reg = Registry("widget")
    reg.register("w")(Widget)
    assert reg.check_arguments("w", {"size": 2}) == {"size": 2}
    with pytest.raises(ArgumentError, match="widget 'w': unknown argument 'colour'"):
        reg.check_arguments("w", {"size": 2, "colour": 1})
    with pytest.raises(KeyError, match="unknown widget 'v'"):
        reg.check_arguments("v", {})


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
