"""UNet++ and UNet 3+: the shared model tester per configuration, then pruning, CGM and parameter counts."""
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from models import UNet3Plus, UNetPlusPlus, build_model
from models.common import DoubleConv
from models.unet3p import MASKED_LOGIT, mask_absent
from tests.conftest import minimal_config
from tests.test_models import ModelTester, bn, conv, double_conv, n_params
from utils.config import ConfigError, config_from_dict
from utils.losses import build_loss
from utils.model_output import ClassGuidedOutput


def as_list(outputs: Any) -> List[torch.Tensor]:
    """The segmentation logits of a training-mode output, as a list (main first)."""
    if isinstance(outputs, ClassGuidedOutput):
        outputs = outputs.logits
    return outputs if isinstance(outputs, list) else [outputs]


def training_loss(outputs: Any, target: torch.Tensor) -> torch.Tensor:
    """What train.py backpropagates: cross-entropy over every output, plus the "cls" BCE of CGM outputs."""
    total, _ = build_loss([{"name": "ce"}])(outputs, target)
    return total


class ZooTester(ModelTester):
    """The shared tester; its training loss also covers deep-supervision lists and CGM logits."""

    train_outputs = 1  # how many logits training mode returns
    class_guided = False  # training mode returns a ClassGuidedOutput

    def build_for_training(self, **overrides: Any) -> nn.Module:
        return self.build(**overrides)

    def test_gradients_reach_every_parameter(self) -> None:
        model = self.build_for_training(out_channels=2).train()
        torch.manual_seed(1)
        target = torch.randint(0, 2, (2, 35, 33))
        training_loss(model(torch.randn(2, 3, 35, 33)), target).backward()
        for name, p in model.named_parameters():
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"

    def test_train_mode_outputs_and_eval_mode_tensor(self) -> None:
        model = self.build(out_channels=2).train()
        x = torch.randn(2, 3, 37, 45)
        outputs = model(x)
        assert isinstance(outputs, ClassGuidedOutput) == self.class_guided
        if self.class_guided:
            assert outputs.cls_logits.shape == (2, 2)
            outputs = outputs.logits
        assert isinstance(outputs, list) == (self.train_outputs > 1)
        assert [o.shape for o in as_list(outputs)] == [(2, 2, 37, 45)] * self.train_outputs
        for side in as_list(outputs)[1:]:
            assert not torch.allclose(side, as_list(outputs)[0])  # distinct heads
        with torch.no_grad():
            out = model.eval()(x)
        assert isinstance(out, torch.Tensor) and out.shape == (2, 2, 37, 45)


class TestUNetPlusPlus(ZooTester):
    name = "unetpp"
    kwargs = {"base_channels": 8}


class TestUNetPlusPlusDeepSupervision(ZooTester):
    name = "unetpp"
    kwargs = {"base_channels": 8, "deep_supervision": True}
    train_outputs = 4


class TestUNet3Plus(ZooTester):
    name = "unet3p"
    kwargs = {"base_channels": 8}


class TestUNet3PlusDeepSupervisionCGM(ZooTester):
    """Evaluation checks run with the classifier forced to say "present", so they see the segmentation logits."""

    name = "unet3p"
    kwargs = {"base_channels": 8, "deep_supervision": True, "classification_guided": True}
    train_outputs = 5
    class_guided = True

    def build(self, **overrides: Any) -> nn.Module:
        model = super().build(**overrides)
        force_classifier(model, present=True)
        return model

    def build_for_training(self, **overrides: Any) -> nn.Module:
        return super().build(**overrides)  # a forced (saturated) classifier would get no gradient


def force_classifier(model: UNet3Plus, present: bool) -> None:
    """Make the CGM logits (absent, present) a constant (-100, 100) or (100, -100)."""
    cls_conv = model.classifier[1]
    with torch.no_grad():
        cls_conv.weight.zero_()
        cls_conv.bias.copy_(torch.tensor([-100.0, 100.0] if present else [100.0, -100.0]))


# ------------------------------------------------------------- UNet++ pruning


def count_block_calls(model: nn.Module, x: torch.Tensor) -> int:
    """How many DoubleConv blocks (encoder and nested nodes) one forward runs."""
    calls = []
    handles = [m.register_forward_hook(lambda *_: calls.append(1))
               for m in model.modules() if isinstance(m, DoubleConv)]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return len(calls)


def flops(model: nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops()


def pruned(level: int) -> UNetPlusPlus:
    torch.manual_seed(0)
    return UNetPlusPlus(base_channels=8, deep_supervision=True, prune_level=level).eval()


def test_pruning_runs_only_the_nodes_up_to_its_level() -> None:
    x = torch.randn(1, 3, 32, 32)
    # nodes X^{i,j} with i + j <= L: (L + 1)(L + 2) / 2
    assert [count_block_calls(pruned(level), x) for level in (1, 2, 3, 4)] == [3, 6, 10, 15]
    assert count_block_calls(pruned(1).train(), x) == 15  # training always runs the full network


def test_pruning_level_1_flops_hand_computed() -> None:
    x = torch.randn(1, 3, 32, 32)
    # conv FLOPs = 2 * Cin * Cout * k * k * H * W: X^{0,0} (3->8->8 at 32x32), X^{1,0} (8->16->16 at 16x16),
    # X^{0,1} ((8+16)->8->8 at 32x32), 1x1 head 8->1 at 32x32; pooling and interpolation are not counted
    expected = (2 * 32 * 32 * (3 * 8 * 9 + 8 * 8 * 9) + 2 * 16 * 16 * (8 * 16 * 9 + 16 * 16 * 9)
                + 2 * 32 * 32 * (24 * 8 * 9 + 8 * 8 * 9) + 2 * 32 * 32 * 8)
    assert flops(pruned(1), x) == expected == 8_126_464
    by_level = [flops(pruned(level), x) for level in (1, 2, 3, 4)]
    assert by_level == sorted(set(by_level))
    assert 8 * by_level[0] < by_level[3]


def test_pruned_output_is_the_full_network_head_on_that_node() -> None:
    x = torch.randn(2, 3, 40, 36)
    full = pruned(4)
    with torch.no_grad():
        top = full.grid(x, depth=4)[0]
        for level in (1, 2, 3, 4):
            out = pruned(level)(x)
            assert out.shape == (2, 1, 40, 36)
            torch.testing.assert_close(out, full.heads[4 - level](top[level]))


def test_deep_supervision_order_is_main_first() -> None:
    model = pruned(4).train()
    x = torch.randn(2, 3, 32, 32)
    outputs = model(x)
    top = model.grid(x, depth=4)[0]  # same batch statistics in training mode
    for k, out in enumerate(outputs):
        torch.testing.assert_close(out, model.heads[k](top[4 - k]))


def test_unetpp_transposed_upsampling_odd_size_and_gradients() -> None:
    torch.manual_seed(0)
    model = UNetPlusPlus(base_channels=4, out_channels=2, deep_supervision=True, bilinear=False)
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in model.modules()) == 10  # one per nested node
    outputs = model(torch.randn(2, 3, 37, 19))
    assert [o.shape for o in outputs] == [(2, 2, 37, 19)] * 4
    training_loss(outputs, torch.randint(0, 2, (2, 37, 19))).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


# ------------------------------------------------------------- UNet 3+ classification-guided module


def test_mask_absent_hand_values() -> None:
    logits = torch.tensor([[[[1.5, -2.0]]], [[[3.0, 0.5]]]])  # (2, 1, 1, 2)
    out = mask_absent(logits, torch.tensor([True, False]))
    torch.testing.assert_close(out[0], logits[0])
    assert torch.equal(out[1], torch.full((1, 1, 2), -MASKED_LOGIT))
    assert torch.sigmoid(out[1]).max() < 1e-12

    multi = torch.randn(2, 3, 2, 2)
    out = mask_absent(multi, torch.tensor([False, True]))
    assert torch.equal(out[0, 0], torch.zeros(2, 2))
    assert torch.equal(out[0, 1:], torch.full((2, 2, 2), -MASKED_LOGIT))
    assert out[0].softmax(dim=0)[1:].max() < 1e-12
    torch.testing.assert_close(out[1], multi[1])


def cgm_and_plain(present: bool, out_channels: int = 1) -> List[nn.Module]:
    """A CGM model with its decision forced, and the same network without the CGM."""
    torch.manual_seed(0)
    cgm = UNet3Plus(base_channels=8, out_channels=out_channels, classification_guided=True)
    force_classifier(cgm, present)
    plain = UNet3Plus(base_channels=8, out_channels=out_channels)
    missing, unexpected = plain.load_state_dict(cgm.state_dict(), strict=False)
    assert not missing and unexpected == ["classifier.1.weight", "classifier.1.bias"]
    return [cgm, plain]


@pytest.mark.parametrize("out_channels", [1, 3])
def test_cgm_absent_masks_the_foreground_in_eval(out_channels: int) -> None:
    cgm, _ = cgm_and_plain(present=False, out_channels=out_channels)
    x = torch.randn(2, 3, 33, 40)
    with torch.no_grad():
        out = cgm.eval()(x)
        assert torch.equal(cgm.classifier(cgm.features(x)[-1]), torch.tensor([[100.0, -100.0]] * 2))
    assert isinstance(out, torch.Tensor) and out.shape == (2, out_channels, 33, 40)
    foreground = out if out_channels == 1 else out[:, 1:]
    assert (foreground == -MASKED_LOGIT).all()
    if out_channels > 1:
        assert (out[:, 0] == 0).all()


def test_cgm_present_keeps_the_logits_in_eval() -> None:
    cgm, plain = cgm_and_plain(present=True)
    x = torch.randn(2, 3, 33, 40)
    with torch.no_grad():
        torch.testing.assert_close(cgm.eval()(x), plain.eval()(x))


def test_cgm_never_masks_in_training_and_returns_cls_logits() -> None:
    cgm, plain = cgm_and_plain(present=False)
    x = torch.randn(2, 3, 33, 40)
    out = cgm.train()(x)
    assert isinstance(out, ClassGuidedOutput)
    torch.testing.assert_close(out.logits, plain.train()(x))
    torch.testing.assert_close(out.cls_logits, torch.tensor([[100.0, -100.0]] * 2))
    assert out.cls_logits.requires_grad
    assert isinstance(plain(x), torch.Tensor)


def test_cgm_output_trains_the_classifier_through_the_combined_loss() -> None:
    torch.manual_seed(0)
    model = UNet3Plus(base_channels=4, out_channels=2, deep_supervision=True, classification_guided=True).train()
    target = torch.zeros(2, 32, 32, dtype=torch.long)
    target[0, 3:9, 4:7] = 1  # image 0 holds foreground, image 1 none
    outputs = model(torch.randn(2, 3, 32, 32))
    total, loss_terms = build_loss([{"name": "ce"}])(outputs, target)
    cls = F.binary_cross_entropy_with_logits(outputs.cls_logits, torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    assert list(loss_terms) == ["ce", "ds_0", "ds_1", "ds_2", "ds_3", "ds_4", "cls"]
    assert loss_terms["cls"] == pytest.approx(cls.item())
    total.backward()
    assert model.classifier[1].weight.grad.abs().sum() > 0


# ------------------------------------------------------------- parameter counts vs the papers


def unetpp_params(widths: List[int], in_ch: int, out_ch: int) -> int:
    """Bilinear UNet++: encoder DoubleConvs, nodes X^{i,j} reading j * w_i + w_{i+1} channels, one 1x1 head."""
    encoder = sum(double_conv(([in_ch] + widths)[i], w, w) for i, w in enumerate(widths))
    nodes = sum(double_conv(j * widths[i] + widths[i + 1], widths[i], widths[i])
                for i in range(4) for j in range(1, 5 - i))
    return encoder + nodes + conv(widths[0], out_ch, 1, True)


def unet3p_params(widths: List[int], in_ch: int, out_ch: int, cat: int) -> int:
    """UNet 3+: encoder DoubleConvs, per stage five 3x3 conv-BN branches to ``cat`` and a fusing conv-BN, 3x3 head."""
    encoder = sum(double_conv(([in_ch] + widths)[i], w, w) for i, w in enumerate(widths))
    stage = 5 * cat
    decoder = 0
    for level in range(4):
        sources = widths[:level + 1] + [stage] * (3 - level) + widths[-1:]
        decoder += sum(conv(c, cat, 3, False) + bn(cat) for c in sources) + conv(stage, stage, 3, False) + bn(stage)
    return encoder + decoder + conv(stage, out_ch, 3, True)


def test_unetpp_param_count_matches_the_paper() -> None:
    with torch.device("meta"):
        default = UNetPlusPlus()
        supervised = UNetPlusPlus(deep_supervision=True)
        transposed = UNetPlusPlus(bilinear=False)
    assert n_params(default) == unetpp_params([32, 64, 128, 256, 512], 3, 1) == 9_159_681
    assert abs(n_params(default) / 9.04e6 - 1) < 0.05  # UNet++ in Zhou et al. 2018, Table 1: 9.04M
    assert n_params(supervised) - n_params(default) == 3 * conv(32, 1, 1, True)
    assert n_params(transposed) == 9_045_825


def test_unet3p_param_count_matches_the_paper() -> None:
    with torch.device("meta"):
        default = UNet3Plus()
        full = UNet3Plus(deep_supervision=True, classification_guided=True)
    assert n_params(default) == unet3p_params([64, 128, 256, 512, 1024], 3, 1, 64) == 26_965_249
    assert abs(n_params(default) / 26.97e6 - 1) < 0.05  # UNet 3+ in Huang et al. 2020, Table 1: 26.97M
    side_heads = 3 * conv(320, 1, 3, True) + conv(1024, 1, 3, True)
    assert n_params(full) - n_params(default) == side_heads + conv(1024, 2, 1, True) == 17_860 + 2_050


# ------------------------------------------------------------- arguments, registry, config


@pytest.mark.parametrize("cls, kwargs, message", [
    (UNetPlusPlus, {"prune_level": 0}, r"model.prune_level must be in 1..4, got 0"),
    (UNetPlusPlus, {"prune_level": 5, "deep_supervision": True}, r"model.prune_level must be in 1..4, got 5"),
    (UNetPlusPlus, {"prune_level": 2}, r"prune_level=2 needs deep_supervision=True"),
    (UNetPlusPlus, {"base_channels": 0}, r"UNetPlusPlus: model.base_channels must be at least 1, got 0"),
    (UNet3Plus, {"out_channels": 0}, r"UNet3Plus: model.out_channels must be at least 1, got 0"),
    (UNet3Plus, {"in_channels": -1}, r"UNet3Plus: model.in_channels must be at least 1, got -1"),
])
def test_bad_arguments_raise(cls: type, kwargs: Dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        cls(**kwargs)


def test_registry_builds_both() -> None:
    assert isinstance(build_model("unetpp", base_channels=4), UNetPlusPlus)
    assert isinstance(build_model("unet3p", base_channels=4), UNet3Plus)


def test_config_validates_the_model_options(tmp_path: Path) -> None:
    model = {"name": "unetpp", "base_channels": 8, "deep_supervision": True, "prune_level": 2}
    raw = minimal_config(tmp_path)
    raw["model"] = model
    cfg = config_from_dict(raw, check_paths=False)
    assert cfg.model.options == {"base_channels": 8, "deep_supervision": True, "prune_level": 2}
    bad = {"name": "unet3p", "classification_guided": "yes please"}
    raw["model"] = bad
    with pytest.raises(ConfigError, match="model.classification_guided"):
        config_from_dict(raw, check_paths=False)
