"""Backbone models: the shared model tester on UNet/DeepLab/FCN with torchvision encoders, plus
encoder splitting, output stride, pretrained loading from a local file, input-channel adaptation
and encoder freezing."""
import copy
import inspect
from pathlib import Path
from typing import Any, Dict, Tuple

import pytest
import torch
import torchvision
from torch import nn

from models import FCN, DeepLabV3, DeepLabV3Plus, UNet
from models.encoders import ENCODERS, build_encoder
from tests.test_models import ModelTester, bn, conv, double_conv, n_params
from utils.errors import ConfigError
from utils.registry import MODELS

RESNET18_FILE = "resnet18-f37072fd.pth"
RESNET18_URL = "https://download.pytorch.org/models/" + RESNET18_FILE
RESNET18_ENCODER_PARAMS = 11_176_512  # torchvision's 11,689,512 minus the 512 -> 1000 classifier

_BUILT: Dict[Tuple[Any, ...], Tuple[nn.Module, Dict[str, torch.Tensor]]] = {}


def cached_build(name: str, **kwargs: Any) -> nn.Module:
    """The seeded build of ``name`` with ``kwargs``, made once and reset to its initial state on each call.

    Initialising a ResNet-18 (11M random draws) takes ~0.2 s, restoring its state dict ~0.01 s.
    Tests that freeze the encoder build their own model.
    """
    arguments = inspect.signature(MODELS.get(name)).bind(**kwargs)
    arguments.apply_defaults()
    key = (name, tuple(sorted(arguments.arguments.items())))
    if key not in _BUILT:
        torch.manual_seed(0)
        model = MODELS.build(name, **kwargs)
        _BUILT[key] = (model, copy.deepcopy(model.state_dict()))
    model, state = _BUILT[key]
    model.load_state_dict(state)
    model.zero_grad(set_to_none=True)
    return model.train()


class BackboneModelTester(ModelTester):
    """The shared tester for models with a torchvision encoder: cached builds, no minimum input size."""

    def build(self, **overrides: Any) -> nn.Module:
        return cached_build(self.name, **{**self.kwargs, **overrides})

    def test_output_is_unbounded_logits(self) -> None:
        # replaces the shared check: untrained, these heads give logits of one sign (a constant
        # dominates after ReLU features), so check instead that the final 1x1 convolution's output
        # comes out unsquashed: shifting its bias by +-100 shifts every logit by exactly that
        model = self.build(out_channels=2).eval()
        classifier = [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1]
        assert classifier.kernel_size == (1, 1) and classifier.out_channels == 2
        x = torch.randn(2, 3, 32, 40)
        with torch.no_grad():
            base = model(x)
            for shift in (100.0, -100.0):
                classifier.bias += shift
                assert torch.allclose(model(x) - base, torch.full_like(base, shift), atol=1e-3)
                classifier.bias -= shift

    def test_smallest_input_works_and_smaller_raises(self) -> None:
        # replaces the shared check: strided convolutions pad, so even 1x1 inputs give 1x1 logits
        model = self.build().eval()
        with torch.no_grad():
            assert model(torch.randn(1, 3, 1, 1)).shape == (1, 1, 1, 1)
            assert model(torch.randn(1, 3, 7, 5)).shape == (1, 1, 7, 5)


class TestUNetResNet18(BackboneModelTester):
    kwargs = {"encoder": "resnet18"}


class TestUNetMobileNetV3(BackboneModelTester):
    kwargs = {"encoder": "mobilenet_v3_large"}


class TestUNetEfficientNetB0(BackboneModelTester):
    kwargs = {"encoder": "efficientnet_b0"}


class TestDeepLabV3ResNet18(BackboneModelTester):
    name = "deeplabv3"
    kwargs = {"encoder": "resnet18"}


class TestDeepLabV3PlusResNet18(BackboneModelTester):
    name = "deeplabv3plus"
    kwargs = {"encoder": "resnet18"}


class TestFCNResNet18(BackboneModelTester):
    name = "fcn"
    kwargs = {"encoder": "resnet18"}


# ------------------------------------------------------------- encoders


@pytest.mark.parametrize("name, channels", [
    ("resnet18", [64, 64, 128, 256, 512]),
    ("mobilenet_v3_large", [16, 24, 40, 112, 960]),
    ("mobilenet_v3_small", [16, 16, 24, 48, 576]),
    ("efficientnet_b0", [16, 24, 40, 112, 1280]),
])
def test_encoder_features_have_the_declared_channels_and_strides(name: str, channels: Any) -> None:
    encoder = build_encoder(name).eval()
    assert encoder.out_channels == channels and encoder.strides == [2, 4, 8, 16, 32]
    with torch.no_grad():
        features = encoder(torch.randn(1, 3, 64, 96))
    assert [f.shape[1] for f in features] == channels
    assert [(64 // f.shape[2], 96 // f.shape[3]) for f in features] == [(s, s) for s in encoder.strides]


def test_supported_encoder_names() -> None:
    assert ENCODERS == sorted(["resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v3_large",
                               "mobilenet_v3_small", "efficientnet_b0", "efficientnet_b1",
                               "efficientnet_b2", "efficientnet_b3", "vgg16_bn"])


@pytest.mark.parametrize("output_stride, strides, last_size", [
    (32, [2, 4, 8, 16, 32], 2), (16, [2, 4, 8, 16, 16], 4), (8, [2, 4, 8, 8, 8], 8),
])
def test_output_stride_dilates_the_last_resnet_stages(output_stride: int, strides: Any,
                                                      last_size: int) -> None:
    encoder = build_encoder("resnet18", output_stride=output_stride).eval()
    assert encoder.strides == strides
    with torch.no_grad():
        features = encoder(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in features] == [64 // s for s in strides]
    assert features[-1].shape[-2:] == (last_size, last_size)
    assert n_params(encoder) == RESNET18_ENCODER_PARAMS  # dilation adds no weights


def test_models_default_output_strides() -> None:
    assert cached_build("deeplabv3", encoder="resnet18").encoder.strides[-1] == 16
    assert cached_build("deeplabv3plus", encoder="resnet18").encoder.strides[-1] == 16
    assert cached_build("fcn", encoder="resnet18").encoder.strides[-1] == 8
    assert cached_build("fcn", encoder="resnet18", output_stride=32).encoder.strides[-1] == 32
    assert cached_build("deeplabv3", encoder="mobilenet_v3_small").encoder.strides[-1] == 32
    assert cached_build("unet", encoder="resnet18").encoder.strides[-1] == 32


def test_deeplab_output_stride_reaches_the_encoder() -> None:
    model = DeepLabV3(encoder="resnet18", output_stride=8).eval()
    assert model.encoder.strides == [2, 4, 8, 8, 8]
    with torch.no_grad():
        assert model(torch.randn(1, 3, 67, 75)).shape == (1, 1, 67, 75)


@pytest.mark.parametrize("call", [
    lambda: build_encoder("resnet43"),
    lambda: UNet(encoder="resnet43"),
    lambda: DeepLabV3(encoder="resnet43"),
])
def test_unknown_encoder_lists_valid_names(call: Any) -> None:
    with pytest.raises(ConfigError, match=r"unknown encoder 'resnet43'; valid encoders: efficientnet_b0, .*"
                                         r"mobilenet_v3_large, .*resnet18, .*\(did you mean 'resnet34'\?\)"):
        call()


@pytest.mark.parametrize("call, message", [
    (lambda: build_encoder("mobilenet_v3_large", output_stride=16),
     "supports output_stride \\(32,\\), got 16"),
    (lambda: build_encoder("resnet18", output_stride=4), "supports output_stride \\(8, 16, 32\\), got 4"),
    (lambda: build_encoder("resnet18", in_channels=0), "in_channels must be at least 1"),
    (lambda: UNet(encoder="resnet18", depth=3), "do not apply with encoder='resnet18'"),
    (lambda: UNet(pretrained=True), "need a backbone; set model.encoder"),
    (lambda: UNet(encoder="resnet18", decoder_channels=(64, 32)),
     "needs 5 positive widths.*got \\[64, 32\\]"),
    (lambda: DeepLabV3Plus(encoder="resnet18", aspp_rates=()), "aspp_rates needs at least one"),
    (lambda: FCN(encoder="resnet18", out_channels=0), "must be at least 1"),
])
def test_bad_arguments_raise(call: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        call()


def test_plain_unet_has_no_encoder_to_freeze() -> None:
    with pytest.raises(ConfigError, match="without model.encoder"):
        UNet(base_channels=4, depth=2).set_encoder_frozen(True)


# ------------------------------------------------------------- pretrained weights (local files only)


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TORCH_HOME; any download attempt fails the test."""
    def no_download(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a download was attempted")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    return tmp_path


def random_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    """``model``'s state dict with non-trivial BatchNorm statistics too."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return model.state_dict()


def write_weights(torch_home: Path, state: Dict[str, torch.Tensor], filename: str) -> None:
    """Save ``state`` where torch.hub keeps downloaded weights."""
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / filename)


@pytest.fixture(scope="module")
def resnet18_state() -> Dict[str, torch.Tensor]:
    torch.manual_seed(123)
    return random_state(torchvision.models.resnet18())


@pytest.fixture
def fake_resnet18(torch_home: Path, resnet18_state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A random ResNet-18 checkpoint under the file name of torchvision's ImageNet weights."""
    write_weights(torch_home, resnet18_state, RESNET18_FILE)
    return resnet18_state


@pytest.mark.parametrize("call", [
    lambda: build_encoder("resnet18", pretrained=True),
    lambda: UNet(encoder="resnet18", pretrained=True),
    lambda: DeepLabV3Plus(encoder="resnet18", pretrained=True),
])
def test_missing_pretrained_file_names_the_path_and_the_fix(torch_home: Path, call: Any) -> None:
    expected = torch_home / "hub" / "checkpoints" / RESNET18_FILE
    with pytest.raises(RuntimeError) as info:
        call()
    message = str(info.value)
    assert message.startswith(f"pretrained weights for resnet18 not found at {expected}; "
                              "this machine cannot download them")
    assert f"download {RESNET18_URL} on a connected machine" in message
    assert "set TORCH_HOME" in message and "set model.pretrained: false" in message


def test_pretrained_weights_are_loaded_from_the_local_file(fake_resnet18: Dict[str, torch.Tensor]) -> None:
    encoder = build_encoder("resnet18", pretrained=True)
    loaded = list(encoder.state_dict().values())
    expected = [v for k, v in fake_resnet18.items() if not k.startswith("fc.")]  # same order, no classifier
    assert len(loaded) == len(expected)
    assert all(torch.equal(a, b) for a, b in zip(loaded, expected))


def test_pretrained_file_of_another_network_is_rejected(torch_home: Path) -> None:
    write_weights(torch_home, torchvision.models.mobilenet_v3_small().state_dict(), RESNET18_FILE)
    pattern = (f"{RESNET18_FILE}: not a resnet18 checkpoint \\(102 entries missing, "
               r"e.g. \['conv1.weight', .*; 244 unexpected, .*delete it and copy https://")
    with pytest.raises(RuntimeError, match=pattern):
        build_encoder("resnet18", pretrained=True)


def test_unreadable_pretrained_file_is_rejected(torch_home: Path) -> None:
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / RESNET18_FILE).write_bytes(b"<html>not found</html>")
    with pytest.raises(RuntimeError, match=f"{RESNET18_FILE}: cannot be read as a checkpoint"):
        build_encoder("resnet18", pretrained=True)


def test_pretrained_first_conv_is_the_scaled_rgb_mean(fake_resnet18: Dict[str, torch.Tensor]) -> None:
    rgb = build_encoder("resnet18", pretrained=True).eval()
    grey = torch.rand(1, 1, 40, 40)
    with torch.no_grad():
        out_rgb = rgb(grey.repeat(1, 3, 1, 1))[-1]
    kernel = fake_resnet18["conv1.weight"]
    for in_channels in (1, 4):
        adapted = build_encoder("resnet18", in_channels=in_channels, pretrained=True).eval()
        expected = kernel.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) * 3 / in_channels
        assert adapted.stages[0][0].weight.shape == (64, in_channels, 7, 7)
        assert torch.allclose(adapted.stages[0][0].weight, expected)
        assert torch.equal(adapted.stages[4][1].conv2.weight, fake_resnet18["layer4.1.conv2.weight"])
        # a grey image in every channel gives what the RGB network gives on that grey image
        with torch.no_grad():
            out_adapted = adapted(grey.repeat(1, in_channels, 1, 1))[-1]
        assert torch.allclose(out_adapted, out_rgb, atol=1e-4)


def test_pretrained_mobilenet_first_conv_is_adapted(torch_home: Path) -> None:
    torch.manual_seed(5)
    state = random_state(torchvision.models.mobilenet_v3_small())
    write_weights(torch_home, state, "mobilenet_v3_small-047dcff4.pth")
    encoder = build_encoder("mobilenet_v3_small", in_channels=1, pretrained=True)
    first = encoder.stages[0][0][0]
    assert first.weight.shape == (16, 1, 3, 3)
    assert torch.allclose(first.weight, state["features.0.0.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(encoder.stages[4][-1][0].weight, state["features.12.0.weight"])


# ------------------------------------------------------------- freezing


@pytest.mark.parametrize("name", ["unet", "deeplabv3plus"])
def test_set_encoder_frozen_freezes_exactly_the_encoder(name: str) -> None:
    model = MODELS.build(name, encoder="resnet18", out_channels=2)
    encoder_params = {id(p) for p in model.encoder.parameters()}
    model.set_encoder_frozen(True)
    model.train()
    for p in model.parameters():
        assert p.requires_grad == (id(p) not in encoder_params)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    encoder_norms = {id(m) for m in model.encoder.modules()}
    assert all(m.training == (id(m) not in encoder_norms) for m in norms)

    stats_before = model.encoder.stages[1][1][0].bn1.running_mean.clone()
    logits = model(torch.randn(2, 3, 48, 40))
    nn.functional.cross_entropy(logits, torch.randint(0, 2, (2, 48, 40))).backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.head.parameters())
    assert torch.equal(model.encoder.stages[1][1][0].bn1.running_mean, stats_before)

    model.eval()
    model.set_encoder_frozen(False)
    assert all(p.requires_grad for p in model.parameters())
    assert not model.encoder.training  # unfreezing keeps the mode the model was put in
    model.train()
    assert all(m.training for m in norms)


# ------------------------------------------------------------- parameter counts


def aspp(cin: int, rates: int = 3, width: int = 256) -> int:
    branches = conv(cin, width, 1, False) + bn(width) + rates * (conv(cin, width, 3, False) + bn(width))
    pooling = conv(cin, width, 1, True)
    return branches + pooling + conv((rates + 2) * width, width, 1, False) + bn(width)


def test_param_count_unet_resnet18() -> None:
    # decoder blocks (in, skip, out) from the 512-channel stride-32 features up to the input size
    blocks = [(512, 256, 256), (256, 128, 128), (128, 64, 64), (64, 64, 32), (32, 0, 16)]
    decoder = sum(double_conv(i + s, o, o) for i, s, o in blocks)
    expected = RESNET18_ENCODER_PARAMS + decoder + conv(16, 1, 1, True)
    assert expected == 14_328_081
    assert n_params(cached_build("unet", encoder="resnet18")) == expected


def test_param_count_deeplab_and_fcn_resnet18() -> None:
    head = aspp(512) + conv(256, 256, 3, False) + bn(256) + conv(256, 1, 1, True)
    plus = (aspp(512) + conv(64, 48, 1, False) + bn(48) + conv(256 + 48, 256, 3, False) + bn(256)
            + conv(256, 256, 3, False) + bn(256) + conv(256, 1, 1, True))
    fcn = conv(512, 128, 3, False) + bn(128) + conv(128, 1, 1, True)
    assert n_params(cached_build("deeplabv3", encoder="resnet18")) == RESNET18_ENCODER_PARAMS + head
    assert n_params(cached_build("deeplabv3plus", encoder="resnet18")) == RESNET18_ENCODER_PARAMS + plus
    assert n_params(cached_build("fcn", encoder="resnet18")) == RESNET18_ENCODER_PARAMS + fcn == 11_766_721


def test_encoder_batchnorm_momentum_is_pytorchs_default() -> None:
    """torchvision's MobileNetV3 ships momentum 0.01; its running statistics would trail short runs."""
    assert {m.momentum for m in torchvision.models.mobilenet_v3_small().modules()
            if isinstance(m, nn.BatchNorm2d)} == {0.01}
    encoder = build_encoder("mobilenet_v3_small")
    momenta = {m.momentum for m in encoder.modules() if isinstance(m, nn.BatchNorm2d)}
    assert momenta == {0.1}
