"""Plain UNet options (upsample modes, dropout, DoubleConv stride) and the VGG-16-BN encoder (TernausNet style)."""
from pathlib import Path
from typing import Any, Dict

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from models import UNet
from models.common import DoubleConv
from models.encoders import build_encoder
from tests.test_models import double_conv, n_params
from tests.test_models_3d import REFERENCE, signature
from tests.conftest import minimal_config
from tests.test_models_encoders import torch_home, write_weights  # noqa: F401 - fixture
from utils.builders import build_model
from utils.config import config_from_dict
from utils.errors import ConfigError

VGG16_BN_FEATURES_PARAMS = 14_723_136  # torchvision's vgg16_bn without its classifier
VGG16_BN_FILE = "vgg16_bn-6c64b313.pth"


def build(**kwargs: Any) -> UNet:
    torch.manual_seed(0)
    return UNet(**{"base_channels": 4, "depth": 3, **kwargs})


# ------------------------------------------------------------- upsample


@pytest.mark.parametrize("upsample, module, mode", [
    ("bilinear", nn.Upsample, "bilinear"), ("nearest", nn.Upsample, "nearest"),
    ("transposed", nn.ConvTranspose2d, None),
])
def test_upsample_modes_2d(upsample: str, module: type, mode: Any) -> None:
    model = build(upsample=upsample, out_channels=2).eval()
    ups = [m for m in model.modules() if isinstance(m, (nn.Upsample, nn.ConvTranspose2d))]
    assert len(ups) == 3 and all(type(m) is module for m in ups)
    assert mode is None or all(m.mode == mode for m in ups)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 37, 29)).shape == (2, 2, 37, 29)


@pytest.mark.parametrize("upsample, module, mode", [
    ("trilinear", nn.Upsample, "trilinear"), ("bilinear", nn.Upsample, "trilinear"),
    ("nearest", nn.Upsample, "nearest"), ("transposed", nn.ConvTranspose3d, None),
])
def test_upsample_modes_3d(upsample: str, module: type, mode: Any) -> None:
    model = build(upsample=upsample, dims=3, in_channels=1, depth=2, strides=[[1, 2, 2], 2]).eval()
    ups = [m for m in model.modules() if isinstance(m, (nn.Upsample, nn.ConvTranspose3d))]
    assert len(ups) == 2 and all(type(m) is module for m in ups)
    assert mode is None or all(m.mode == mode for m in ups)
    with torch.no_grad():
        assert model(torch.randn(1, 1, 5, 13, 11)).shape == (1, 1, 5, 13, 11)


def test_nearest_upsampling_copies_each_pixel() -> None:
    model = build(upsample="nearest")
    up = model.ups[0].up
    x = torch.arange(4.0).view(1, 1, 2, 2)
    assert torch.equal(up(x)[0, 0], torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]))
    assert n_params(model) == n_params(build(upsample="bilinear"))  # same widths, no weights in the upsampling


@pytest.mark.parametrize("bilinear, upsample", [(True, "bilinear"), (False, "transposed")])
def test_upsample_and_the_bilinear_alias_build_the_unet_of_before(bilinear: bool, upsample: str) -> None:
    """model.bilinear keeps working; both spellings give the seeded UNet recorded before these options."""
    digest, entries, total, _ = REFERENCE[bilinear]
    x = torch.randn(1, 3, 37, 29, generator=torch.Generator().manual_seed(1))
    outputs = []
    for kwargs in ({"bilinear": bilinear}, {"upsample": upsample}, {"upsample": upsample, "bilinear": bilinear},
                   {"upsample": upsample, "dropout": 0.0}):
        model = build(out_channels=2, **kwargs).eval()
        assert signature(model) == digest and len(model.state_dict()) == entries
        with torch.no_grad():
            outputs.append(model(x))
    assert outputs[0].double().sum().item() == pytest.approx(total, rel=1e-5)
    assert all(torch.equal(outputs[0], out) for out in outputs[1:])


@pytest.mark.parametrize("kwargs, message", [
    ({"upsample": "bicubic"}, "model.upsample must be one of \\['bilinear', 'trilinear', 'nearest', 'transposed'\\], "
                              "got 'bicubic'"),
    ({"upsample": "trilinear"}, "trilinear is for volumes \\(model.dims: 3\\); set model.upsample: bilinear"),
    ({"upsample": "nearest", "bilinear": False}, "model.bilinear=False contradicts model.upsample='nearest'; "
                                                 "remove model.bilinear"),
    ({"upsample": "transposed", "bilinear": True}, "model.bilinear=True contradicts"),
    ({"dropout": 1.0}, "UNet: model.dropout must be a probability in \\[0, 1\\), got 1.0"),
    ({"dropout": -0.1}, "model.dropout must be a probability"),
])
def test_bad_options_raise(kwargs: Dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build(**kwargs)


def test_upsample_needs_the_plain_encoder() -> None:
    with pytest.raises(ConfigError, match="model.upsample \\(model.bilinear\\) describe the plain encoder and do "
                                          "not apply with encoder='resnet18'"):
        UNet(encoder="resnet18", upsample="nearest")
    assert isinstance(UNet(encoder="resnet18", upsample="bilinear", bilinear=True).encoder, nn.Module)


# ------------------------------------------------------------- dropout


@pytest.mark.parametrize("dims, layer", [(2, nn.Dropout2d), (3, nn.Dropout3d)])
def test_dropout_layer_only_when_positive(dims: int, layer: type) -> None:
    kwargs = {"dims": dims, "in_channels": 1, "depth": 2}
    assert not any(isinstance(m, (nn.Dropout2d, nn.Dropout3d)) for m in build(**kwargs).modules())
    model = build(dropout=0.3, **kwargs)
    doubles = [m for m in model.modules() if isinstance(m, DoubleConv)]
    dropouts = [m for m in model.modules() if isinstance(m, (nn.Dropout2d, nn.Dropout3d))]
    assert len(doubles) == 5 and [type(m) for m in dropouts] == [layer] * 5
    assert all(m.p == 0.3 for m in dropouts)


def test_dropout_acts_in_training_only_between_the_convolutions() -> None:
    model = build(dropout=0.5)
    plain = build()
    plain.load_state_dict(model.state_dict())  # dropout holds no weights: the same state dict
    x = torch.randn(2, 3, 24, 24)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), plain.eval()(x))
    seen = []
    hook = model.inc.dropout.register_forward_hook(lambda _m, inputs, out: seen.append((inputs[0], out)))
    torch.manual_seed(0)
    with torch.no_grad():
        model.train()(x)
    hook.remove()
    before, after = seen[0]
    assert before.shape[1] == 4  # after the first conv-BN-ReLU of the first DoubleConv
    dropped = after.flatten(2).abs().sum(dim=2) == 0  # whole channels, per image
    assert dropped.any() and not dropped.all()
    kept = ~dropped
    assert torch.allclose(after[kept], before[kept] * 2.0)  # survivors scaled by 1 / (1 - p)


def test_encoder_unet_takes_dropout_in_its_decoder() -> None:
    model = UNet(encoder="vgg16_bn", dropout=0.2)
    assert [type(b.conv.dropout) for b in model.blocks] == [nn.Dropout2d] * 5
    assert not any(isinstance(m, nn.Dropout2d) for m in model.encoder.modules())


# ------------------------------------------------------------- DoubleConv stride


@pytest.mark.parametrize("dims, stride, size, expected", [
    (2, 1, (9, 8), (9, 8)), (2, 2, (9, 8), (5, 4)), (2, (1, 2), (9, 8), (9, 4)),
    (3, 2, (5, 9, 8), (3, 5, 4)), (3, (1, 2, 2), (5, 9, 8), (5, 5, 4)), (3, [2, 1, 1], (5, 9, 8), (3, 9, 8)),
])
def test_double_conv_stride(dims: int, stride: Any, size: Any, expected: Any) -> None:
    block = DoubleConv(2, 3, dims=dims, stride=stride).eval()
    with torch.no_grad():
        assert block(torch.randn(1, 2, *size)).shape == (1, 3, *expected)
    first = block.block[0]
    assert first.stride == ((stride,) * dims if isinstance(stride, int) else tuple(stride))
    assert block.block[3].stride == (1,) * dims  # only the first convolution strides


@pytest.mark.parametrize("dims, stride", [(2, 3), (2, 0), (2, (1, 3)), (3, (2, 2)), (2, True), (2, 2.0)])
def test_double_conv_rejects_other_strides(dims: int, stride: Any) -> None:
    with pytest.raises(ValueError, match="DoubleConv: stride must be 1 or 2, as one integer or one per axis "
                                         f"\\({', '.join(['H', 'W'] if dims == 2 else ['Z', 'Y', 'X'])}\\), "
                                         "got .*; downsample by more with pooling"):
        DoubleConv(2, 3, dims=dims, stride=stride)


# ------------------------------------------------------------- VGG-16-BN encoder


def test_vgg16_bn_encoder_stages_before_each_pooling() -> None:
    encoder = build_encoder("vgg16_bn").eval()
    assert encoder.out_channels == [64, 128, 256, 512, 512] and encoder.strides == [1, 2, 4, 8, 16]
    with torch.no_grad():
        features = encoder(torch.randn(1, 3, 32, 48))
    assert [tuple(f.shape[1:]) for f in features] == [(64, 32, 48), (128, 16, 24), (256, 8, 12), (512, 4, 6),
                                                       (512, 2, 3)]
    assert sum(isinstance(m, nn.MaxPool2d) for m in encoder.modules()) == 4  # the fifth pooling is dropped
    assert isinstance(encoder.stages[1][0], nn.MaxPool2d) and not isinstance(encoder.stages[0][0], nn.MaxPool2d)
    assert n_params(encoder) == VGG16_BN_FEATURES_PARAMS
    reference = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"], batch_norm=True)
    assert [tuple(p.shape) for p in encoder.parameters()] == [tuple(p.shape) for p in reference.parameters()]


def test_unet_vgg16_bn_shape_count_and_one_training_step() -> None:
    torch.manual_seed(0)
    model = UNet(encoder="vgg16_bn", out_channels=2)
    blocks = [(512, 512, 256), (256, 256, 128), (128, 128, 64), (64, 64, 32), (32, 0, 16)]
    assert n_params(model) == (VGG16_BN_FEATURES_PARAMS + sum(double_conv(i + s, o, o) for i, s, o in blocks)
                               + 16 * 2 + 2)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 21, 19)).shape == (1, 2, 21, 19)
    model.train()
    x, target = torch.randn(2, 3, 16, 16), torch.randint(0, 2, (2, 16, 16))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    first = model.encoder.stages[0][0].weight.detach().clone()
    loss = F.cross_entropy(model(x), target)
    loss.backward()
    assert torch.isfinite(loss) and model.encoder.stages[0][0].weight.grad.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(model.encoder.stages[0][0].weight, first)


def test_vgg16_bn_pretrained_loads_the_features_from_the_local_file(torch_home: Path) -> None:  # noqa: F811
    torch.manual_seed(7)
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"], batch_norm=True)
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # the classifier is skipped, whatever its shape
    write_weights(torch_home, state, VGG16_BN_FILE)
    encoder = build_encoder("vgg16_bn", in_channels=1, pretrained=True)
    assert torch.equal(encoder.stages[4][-3].weight, state["features.40.weight"])
    assert torch.allclose(encoder.stages[0][0].weight, state["features.0.weight"].sum(dim=1, keepdim=True))


def test_vgg16_bn_missing_pretrained_file_names_its_url(torch_home: Path) -> None:  # noqa: F811
    with pytest.raises(RuntimeError, match=f"pretrained weights for vgg16_bn not found at .*{VGG16_BN_FILE}; .*"
                                           f"download https://download.pytorch.org/models/{VGG16_BN_FILE}"):
        UNet(encoder="vgg16_bn", pretrained=True)


# ------------------------------------------------------------- from YAML


def test_yaml_keys_are_validated_and_reach_the_model(binary_folder: Path) -> None:
    cfg = config_from_dict(minimal_config(binary_folder, model={"upsample": "nearest", "dropout": 0.1}))
    assert cfg.model.options == {"base_channels": 4, "depth": 2, "upsample": "nearest", "dropout": 0.1}
    model = build_model(cfg)
    assert model.upsample == "nearest" and model.inc.dropout.p == 0.1
    with pytest.raises(ConfigError, match="model.dropout"):
        config_from_dict(minimal_config(binary_folder, model={"dropout": "high"}))
