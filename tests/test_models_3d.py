"""UNet over dimensions: 3D volumes, norm/activation options, per-axis strides, deep supervision, the 2D default kept."""
import hashlib
from typing import Any, List

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models import UNet
from utils.errors import ConfigError, ModelInputError
from utils.losses import build_loss

ANISOTROPIC = [[1, 2, 2], [2, 2, 2], [2, 2, 2]]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build(**kwargs: Any) -> UNet:
    torch.manual_seed(0)
    return UNet(**{"in_channels": 1, "out_channels": 3, "base_channels": 4, "depth": 2, "dims": 3, **kwargs})


def signature(model: nn.Module) -> str:
    text = ";".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# Computed once with the UNet before it took dims/norm/activation/strides/deep_supervision
# (commit 4a5fc06): state_dict names+shapes hash, entry count, output sum and the logits at (0, :, 5, 7).
REFERENCE = {
    True: ("e401187ecd3cd2cb", 86, 48.82086384593276, [0.004167433828115463, 0.0033820646349340677]),
    False: ("37d96f600cfacf96", 92, 2491.6841880483553, [-0.4110053777694702, 2.80562162399292]),
}


@pytest.mark.parametrize("bilinear", [True, False])
def test_2d_default_matches_the_unet_before_dims(bilinear: bool) -> None:
    torch.manual_seed(0)
    model = UNet(in_channels=3, out_channels=2, base_channels=4, depth=3, bilinear=bilinear).eval()
    torch.manual_seed(0)
    explicit = UNet(in_channels=3, out_channels=2, base_channels=4, depth=3, bilinear=bilinear, dims=2,
                    norm="batch", activation="relu", strides=[2, [2, 2], 2], deep_supervision=False).eval()
    digest, entries, total, pixel = REFERENCE[bilinear]
    assert signature(model) == digest and len(model.state_dict()) == entries
    torch.manual_seed(1)
    x = torch.randn(1, 3, 37, 29)
    with torch.no_grad():
        out = model(x)
        assert torch.equal(out, explicit(x))
    assert out.double().sum().item() == pytest.approx(total, rel=1e-5)
    assert out[0, :, 5, 7].tolist() == pytest.approx(pixel, rel=1e-4, abs=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), explicit.state_dict().values()))


@pytest.mark.parametrize("bilinear", [True, False])
@pytest.mark.parametrize("shape", [(2, 1, 9, 13, 11), (1, 1, 4, 5, 7)])
def test_3d_output_has_input_size(bilinear: bool, shape: Any) -> None:
    model = build(bilinear=bilinear).eval()
    with torch.no_grad():
        out = model(torch.randn(shape))
    assert out.shape == (shape[0], 3, *shape[2:])
    assert (out < 0).any() and (out > 0).any()


@pytest.mark.parametrize("bilinear", [True, False])
def test_3d_gradients_reach_every_parameter(bilinear: bool) -> None:
    model = build(bilinear=bilinear, depth=3, norm="instance", activation="leaky_relu",
                  deep_supervision=True).train()
    torch.manual_seed(1)
    outputs = model(torch.randn(2, 1, 10, 17, 12))
    target = torch.randint(0, 3, (2, 10, 17, 12))
    loss = F.cross_entropy(outputs[0], target) + sum(o.square().mean() for o in outputs[1:])
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


def module_types(model: nn.Module) -> set:
    return {type(m) for m in model.modules()}


def test_instance_norm_and_leaky_relu_options() -> None:
    model = build(norm="instance", activation="leaky_relu", bilinear=False)
    types = module_types(model)
    assert {nn.Conv3d, nn.InstanceNorm3d, nn.LeakyReLU, nn.MaxPool3d, nn.ConvTranspose3d} <= types
    assert not types & {nn.BatchNorm3d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d}
    norms = [m for m in model.modules() if isinstance(m, nn.InstanceNorm3d)]
    assert all(m.affine and m.weight.shape == (m.num_features,) for m in norms)
    assert all(m.negative_slope == 0.01 for m in model.modules() if isinstance(m, nn.LeakyReLU))
    ups = [m for m in build().modules() if isinstance(m, nn.Upsample)]
    assert ups and all(m.mode == "trilinear" for m in ups)
    flat = UNet(base_channels=4, depth=2, norm="instance")
    assert nn.InstanceNorm2d in module_types(flat) and nn.BatchNorm2d not in module_types(flat)
    assert all(m.mode == "bilinear" for m in flat.modules() if isinstance(m, nn.Upsample))


def feature_shapes(model: UNet, x: torch.Tensor) -> List[tuple]:
    shapes: List[tuple] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape[2:])))
             for m in [model.inc, *model.downs, *model.ups]]
    with torch.no_grad():
        out = model(x)
    for h in hooks:
        h.remove()
    return shapes + [tuple(out.shape[2:])]


@pytest.mark.parametrize("bilinear", [True, False])
def test_anisotropic_strides_feature_maps(bilinear: bool) -> None:
    model = build(depth=3, strides=ANISOTROPIC, bilinear=bilinear).eval()
    assert model.min_size == (4, 8, 8)
    assert feature_shapes(model, torch.randn(1, 1, 8, 32, 32)) == [
        (8, 32, 32), (8, 16, 16), (4, 8, 8), (2, 4, 4),  # encoder: z kept at level 1
        (4, 8, 8), (8, 16, 16), (8, 32, 32), (8, 32, 32)]  # decoder back up, then the logits
    if not bilinear:
        kernels = [m.kernel_size for m in model.modules() if isinstance(m, nn.ConvTranspose3d)]
        assert kernels == [(2, 2, 2), (2, 2, 2), (1, 2, 2)]
    with torch.no_grad():  # the smallest input: the stride products per axis, odd sides above them
        assert model(torch.randn(1, 1, 4, 9, 11)).shape == (1, 3, 4, 9, 11)


def test_input_too_short_along_z_names_the_axis() -> None:
    model = build(depth=3, strides=ANISOTROPIC).eval()
    with pytest.raises(ModelInputError, match=r"at least 4x8x8 \(ZxYxX; .*got 3x32x32: axis Z has 3 < 4; "
                                              r"resize or pad the inputs to at least 4 along Z or lower the Z "
                                              r"strides in model.strides"):
        model(torch.randn(1, 1, 3, 32, 32))
    with pytest.raises(ModelInputError, match=r"got 8x32x7: axis X has 7 < 8"):
        model(torch.randn(1, 1, 8, 32, 7))
    with pytest.raises(ModelInputError, match=r"expects input \(N, 1, Z, Y, X\), got \(1, 1, 32, 32\)"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ModelInputError, match=r"at least 4x4x4 \(each of its 2 2x poolings.*got 4x3x9"):
        build().eval()(torch.randn(1, 1, 4, 3, 9))


def test_deep_supervision_2d_list_in_training_tensor_in_eval() -> None:
    model = UNet(in_channels=3, out_channels=2, base_channels=4, depth=4, deep_supervision=True)
    x = torch.randn(2, 3, 48, 40)
    outputs = model.train()(x)
    assert isinstance(outputs, list)
    assert [tuple(o.shape) for o in outputs] == [(2, 2, 48, 40), (2, 2, 24, 20), (2, 2, 12, 10)]
    with torch.no_grad():
        single = model.eval()(x)
    assert isinstance(single, torch.Tensor) and single.shape == (2, 2, 48, 40)
    # 1x1 heads on the decoder outputs at 1/2 (4 channels, bilinear halves them) and 1/4 (8 channels)
    plain = UNet(in_channels=3, out_channels=2, base_channels=4, depth=4)
    assert n_params(model) == n_params(plain) + (4 * 2 + 2) + (8 * 2 + 2)


def test_deep_supervision_trains_through_combined_loss() -> None:
    model = UNet(in_channels=3, out_channels=2, base_channels=4, depth=3, deep_supervision=True).train()
    loss_fn = build_loss([{"name": "ce"}, {"name": "dice"}], deep_supervision_weights=[1.0, 0.5])
    torch.manual_seed(2)
    x, target = torch.randn(2, 3, 32, 24), torch.randint(0, 2, (2, 32, 24))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        total, terms = loss_fn(model(x), target)
        total.backward()
        assert model.ds_heads[0].conv.weight.grad.abs().sum() > 0
        optimizer.step()
        losses.append(total.item())
    assert set(terms) >= {"ce", "dice", "ds_0", "ds_1"}
    assert losses[-1] < losses[0]


def test_deep_supervision_3d_follows_the_strides() -> None:
    model = build(depth=4, strides=[[1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2]], deep_supervision=True)
    outputs = model.train()(torch.randn(1, 1, 8, 32, 32))
    assert [tuple(o.shape[2:]) for o in outputs] == [(8, 32, 32), (8, 16, 16), (8, 8, 8)]
    assert len(build(depth=2, deep_supervision=True).train()(torch.randn(1, 1, 8, 8, 8))) == 1


@pytest.mark.parametrize("kwargs, key", [
    ({"dims": 4}, "model.dims"),
    ({"dims": 1}, "model.dims"),
    ({"norm": "group"}, "model.norm"),
    ({"activation": "gelu"}, "model.activation"),
    ({"strides": [[1, 2, 2], [2, 2, 2]]}, "model.strides must list 3 levels"),
    ({"strides": [[1, 2], [2, 2, 2], 2]}, "model.strides entry \\[1, 2\\]"),
    ({"strides": [0, 2, 2]}, "model.strides entry 0"),
    ({"strides": 2}, "model.strides must list 3 levels"),
])
def test_bad_options_raise_config_error(kwargs: Any, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        build(depth=3, **kwargs)


def test_plain_options_with_a_backbone_raise() -> None:
    with pytest.raises(ConfigError, match="model.dims, model.norm.*do not apply with encoder='resnet18'"):
        UNet(encoder="resnet18", dims=3)
    with pytest.raises(ConfigError, match="model.deep_supervision"):
        UNet(encoder="resnet18", deep_supervision=True)


def double_conv(in_ch: int, out_ch: int, mid_ch: int, kernel: int = 27) -> int:
    """Two bias-free 3x3x3 convolutions, each followed by a norm with weight and bias per channel."""
    return kernel * in_ch * mid_ch + 2 * mid_ch + kernel * mid_ch * out_ch + 2 * out_ch


def test_3d_parameter_count_by_hand() -> None:
    # widths 8, 16, 32 and a bottleneck halved to 32 (bilinear); in 1, out 2 channels
    expected = (double_conv(1, 8, 8) + double_conv(8, 16, 16) + double_conv(16, 32, 32) + double_conv(32, 32, 32)
                + double_conv(64, 16, 32) + double_conv(32, 8, 16) + double_conv(16, 8, 8) + 8 * 2 + 2)
    assert expected == 201_210
    kwargs = {"in_channels": 1, "out_channels": 2, "base_channels": 8, "depth": 3, "dims": 3}
    assert n_params(UNet(**kwargs)) == 201_210
    assert n_params(UNet(**kwargs, norm="instance", activation="leaky_relu")) == 201_210
    assert n_params(UNet(**kwargs, deep_supervision=True)) == 201_210 + 8 * 2 + 2  # one head, at 1/2
