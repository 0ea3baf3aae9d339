"""Models: one shared tester (shapes, logits, gradients, determinism, errors) subclassed per variant."""
from typing import Any, Dict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models
from models import UNet, build_model
from models.common import check_input, pad_to
from utils.errors import ConfigError, ModelInputError
from utils.registry import MODELS


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class ModelTester:
    """Shared checks; a subclass sets ``kwargs`` (or overrides ``build``) for one architecture."""

    name = "unet"
    kwargs: Dict[str, Any] = {}
    min_size = 16  # smallest input side the default build accepts

    def build(self, **overrides: Any) -> nn.Module:
        torch.manual_seed(0)
        return MODELS.build(self.name, **{**self.kwargs, **overrides})

    @pytest.mark.parametrize("shape", [(1, 3, 97, 131), (2, 3, 64, 64)])
    def test_output_has_input_size(self, shape: Any) -> None:
        model = self.build(in_channels=3, out_channels=2).eval()
        with torch.no_grad():
            out = model(torch.randn(shape))
        assert out.shape == (shape[0], 2, shape[2], shape[3])

    def test_output_is_unbounded_logits(self) -> None:
        model = self.build().eval()
        torch.manual_seed(1)
        with torch.no_grad():
            out = model(torch.randn(2, 3, 32, 32))
        assert out.dtype == torch.float32
        assert (out < 0).any() and (out > 1).any()

    def test_gradients_reach_every_parameter(self) -> None:
        model = self.build(out_channels=2).train()
        torch.manual_seed(1)
        logits = model(torch.randn(2, 3, 35, 33))
        target = torch.randint(0, 2, (2, 35, 33))
        F.cross_entropy(logits, target).backward()
        for name, p in model.named_parameters():
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"

    def test_eval_mode_is_deterministic(self) -> None:
        model = self.build().eval()
        x = torch.randn(2, 3, 40, 48)
        with torch.no_grad():
            assert torch.equal(model(x), model(x))

    @pytest.mark.parametrize("in_channels", [1, 4])
    def test_input_channels(self, in_channels: int) -> None:
        model = self.build(in_channels=in_channels).eval()
        with torch.no_grad():
            assert model(torch.randn(1, in_channels, 33, 20)).shape == (1, 1, 33, 20)

    @pytest.mark.parametrize("out_channels", [1, 2, 5])
    def test_output_channels(self, out_channels: int) -> None:
        model = self.build(out_channels=out_channels).eval()
        with torch.no_grad():
            assert model(torch.randn(1, 3, 24, 24)).shape == (1, out_channels, 24, 24)

    def test_smallest_input_works_and_smaller_raises(self) -> None:
        model = self.build().eval()
        m = self.min_size
        with torch.no_grad():
            assert model(torch.randn(1, 3, m, m + 3)).shape == (1, 1, m, m + 3)
        with pytest.raises(ModelInputError, match=f"at least {m}x{m}.*got {m - 1}x{m + 3}; resize or pad"):
            model(torch.randn(1, 3, m - 1, m + 3))

    def test_wrong_input_channels_raise(self) -> None:
        with pytest.raises(ModelInputError, match=r"expects input \(N, 3, H, W\), got \(1, 4, 32, 32\); "
                                                  r"check model.in_channels"):
            self.build()(torch.randn(1, 4, 32, 32))

    def test_wrong_rank_raises(self) -> None:
        with pytest.raises(ModelInputError, match=r"expects input \(N, 3, H, W\), got \(3, 32, 32\)"):
            self.build()(torch.randn(3, 32, 32))


class TestUNetBilinear(ModelTester):
    kwargs = {"base_channels": 8, "depth": 4, "bilinear": True}

    def test_no_transposed_convolutions(self) -> None:
        assert not any(isinstance(m, nn.ConvTranspose2d) for m in self.build().modules())


class TestUNetTransposed(ModelTester):
    kwargs = {"base_channels": 8, "depth": 4, "bilinear": False}

    def test_uses_transposed_convolutions(self) -> None:
        assert sum(isinstance(m, nn.ConvTranspose2d) for m in self.build().modules()) == 4


class TestUNetShallow(ModelTester):
    kwargs = {"base_channels": 4, "depth": 2, "bilinear": True}
    min_size = 4


# ------------------------------------------------------------- parameter counts


def conv(cin: int, cout: int, k: int, bias: bool) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def bn(c: int) -> int:
    return 2 * c  # weight and bias (running stats are buffers)


def double_conv(cin: int, cout: int, mid: int) -> int:
    return conv(cin, mid, 3, False) + bn(mid) + conv(mid, cout, 3, False) + bn(cout)


def test_param_count_tiny_transposed() -> None:
    # widths [2, 4]: inc 1->2, down 2->4, convT 4->2 (k=2, bias), up DoubleConv(2+2 -> 2), 1x1 2->1
    expected = (double_conv(1, 2, 2) + double_conv(2, 4, 4)
                + (4 * 2 * 2 * 2 + 2) + double_conv(4, 2, 2) + conv(2, 1, 1, True))
    assert expected == 447
    assert n_params(UNet(in_channels=1, out_channels=1, base_channels=2, depth=1, bilinear=False)) == expected


def test_param_count_tiny_bilinear() -> None:
    # bottleneck halved to 2: inc 1->2, down 2->2, up DoubleConv(2+2 -> 2, mid 2), 1x1 2->1
    expected = double_conv(1, 2, 2) + double_conv(2, 2, 2) + double_conv(4, 2, 2) + conv(2, 1, 1, True)
    assert expected == 261
    assert n_params(UNet(in_channels=1, out_channels=1, base_channels=2, depth=1, bilinear=True)) == expected


def test_param_count_classic_widths() -> None:
    # the published figures of the classic U-Net (3 -> 1 channel, widths 64..1024)
    assert n_params(UNet(bilinear=False)) == 31_037_633
    assert n_params(UNet(bilinear=True)) == 17_262_977


def test_convolutions_are_kaiming_initialised() -> None:
    torch.manual_seed(0)
    model = UNet(base_channels=32, depth=2)
    weight = model.inc.block[3].weight  # 3x3 conv 32 -> 32; fan_out = 32 * 9
    expected_std = (2.0 / (32 * 9)) ** 0.5
    assert abs(weight.std().item() - expected_std) / expected_std < 0.05


# ------------------------------------------------------------- arguments and registry


@pytest.mark.parametrize("kwargs, message", [
    ({"depth": 0}, "UNet: model.depth must be at least 1, got 0; set model.depth to a positive integer"),
    ({"base_channels": 0}, "model.base_channels must be at least 1"),
    ({"in_channels": 0}, "model.in_channels must be at least 1"),
    ({"out_channels": 0}, "model.out_channels must be at least 1"),
])
def test_bad_arguments_raise(kwargs: Dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        UNet(**kwargs)


# ------------------------------------------------------------- the shared input check and padding


def test_unet_size_error_offers_a_lower_depth() -> None:
    model = UNet(base_channels=4, depth=3).eval()
    with pytest.raises(ModelInputError, match=r"UNet needs inputs of at least 8x8 \(each of its 3 2x poolings "
                                              r"halves the size\), got 8x7; .* or lower model.depth"):
        model(torch.randn(1, 3, 8, 7))


def test_check_input_without_poolings_takes_any_size() -> None:
    check_input(torch.randn(2, 5, 1, 1), 5, "M")
    with pytest.raises(ModelInputError, match=r"M needs inputs of at least 4x4 .*got 3x9; resize or pad the "
                                              r"images to at least 4 px per side$"):
        check_input(torch.randn(2, 5, 3, 9), 5, "M", poolings=2)


def test_pad_to_centres_pads_and_crops() -> None:
    x = torch.arange(6.0).view(1, 1, 2, 3)
    padded = pad_to(x, (3, 4))  # one row below, one column right (the odd pixel goes after)
    assert torch.equal(padded[0, 0], torch.tensor([[0.0, 1, 2, 0], [3, 4, 5, 0], [0, 0, 0, 0]]))
    assert torch.equal(pad_to(x, (2, 1))[0, 0], torch.tensor([[1.0], [4.0]]))  # negative: crops centred


def test_registry_builds_unet() -> None:
    model = MODELS.build("unet", in_channels=1, out_channels=3, base_channels=4, depth=2)
    assert isinstance(model, UNet)
    assert isinstance(build_model("unet", base_channels=4, depth=2), UNet)
    assert "unet" in MODELS.names() and models.UNet is UNet


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(KeyError, match=r"unknown model 'unett'.*unet.*did you mean 'unet'"):
        build_model("unett")
