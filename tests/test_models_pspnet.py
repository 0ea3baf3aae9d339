"""PSPNet: the shared backbone tester, the auxiliary head (training only, weight 0.4 in the loss), the dilated
ResNet, the pyramid pooling by hand, parameter counts against mmsegmentation's, bad options."""
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

from bench.models import MMSEG_PSPNET_R50_D8_PARAMS, SPECS_BY_KEY, reference_cells
from models import PSPNet
from models.pspnet import PyramidPooling
from tests.conftest import minimal_config
from tests.test_models import bn, conv, n_params
from tests.test_models_encoders import RESNET18_ENCODER_PARAMS, BackboneModelTester, cached_build
from utils.builders import build_model
from utils.config import config_from_dict
from utils.errors import ConfigError
from utils.losses import build_loss
from utils.model_output import AuxiliaryOutput

RESNET50_ENCODER_PARAMS = 23_508_032  # torchvision's 25,557,032 minus the 2048 -> 1000 classifier


class TestPSPNetResNet18(BackboneModelTester):
    name = "pspnet"
    kwargs = {"encoder": "resnet18"}

    def test_output_is_unbounded_logits(self) -> None:
        # the shared check shifts the last Conv2d's bias; here that is the auxiliary classifier, not run in eval
        model = self.build(out_channels=2).eval()
        classifier = model.head.classifier
        x = torch.randn(2, 3, 32, 40)
        with torch.no_grad():
            base = model(x)
            classifier.bias += 100.0
            assert torch.allclose(model(x) - base, torch.full_like(base, 100.0), atol=1e-3)
            classifier.bias -= 100.0

    def test_gradients_reach_every_parameter(self) -> None:
        model = self.build(out_channels=2).train()
        torch.manual_seed(1)
        outputs = model(torch.randn(2, 3, 35, 33))
        total, _ = build_loss([{"name": "ce"}])(outputs, torch.randint(0, 2, (2, 35, 33)))
        total.backward()
        for name, p in model.named_parameters():
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


def test_training_returns_main_and_aux_logits_and_eval_runs_no_aux_head() -> None:
    model = cached_build("pspnet", encoder="resnet18", out_channels=3)
    x = torch.randn(2, 3, 37, 45)
    outputs = model.train()(x)
    assert isinstance(outputs, AuxiliaryOutput) and outputs.aux_weight == 0.4
    assert outputs.logits.shape == outputs.aux_logits.shape == (2, 3, 37, 45)
    assert not torch.allclose(outputs.logits, outputs.aux_logits)

    calls = []
    hook = model.aux_head.register_forward_hook(lambda *args: calls.append(1))
    try:
        out = model.eval()(x)
    finally:
        hook.remove()
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, 37, 45) and not calls
    out.sum().backward()
    assert all(p.grad is None for p in model.aux_head.parameters())
    assert model.encoder.stages[0][0].weight.grad.abs().sum() > 0


def test_without_aux_training_returns_one_tensor() -> None:
    model = cached_build("pspnet", encoder="resnet18", aux=False)
    assert model.aux_head is None
    assert isinstance(model.train()(torch.randn(2, 3, 32, 32)), torch.Tensor)
    with_aux = cached_build("pspnet", encoder="resnet18")
    assert n_params(with_aux) - n_params(model) == conv(256, 256, 3, False) + bn(256) + conv(256, 1, 1, True)


def test_loss_adds_the_aux_term_weighted_by_0_4_and_reaches_the_encoder() -> None:
    model = cached_build("pspnet", encoder="resnet18", out_channels=2).train()
    torch.manual_seed(3)
    x, target = torch.randn(2, 3, 40, 32), torch.randint(0, 2, (2, 40, 32))
    criterion = build_loss([{"name": "ce"}, {"name": "dice", "weight": 0.5}])
    outputs = model(x)
    main, main_terms = criterion(outputs.logits, target)
    aux, _ = criterion(outputs.aux_logits, target)
    total, terms = criterion(outputs, target)
    assert list(terms) == ["ce", "dice", "aux"]
    assert terms["ce"] == main_terms["ce"] and terms["aux"] == pytest.approx(aux.item(), rel=1e-6)
    assert total.item() == pytest.approx(main.item() + 0.4 * aux.item(), rel=1e-6)
    total.backward()
    assert model.aux_head.block[-1].weight.grad.abs().sum() > 0
    assert model.encoder.stages[0][0].weight.grad.abs().sum() > 0  # through layer3 and layer4 to the stem


def test_aux_weight_option_reaches_the_loss() -> None:
    torch.manual_seed(0)
    model = PSPNet(encoder="resnet18", aux_weight=1.5).train()
    target = torch.randint(0, 2, (1, 24, 24))
    outputs = model(torch.randn(1, 3, 24, 24))
    criterion = build_loss([{"name": "bce"}])
    total, terms = criterion(outputs, target)
    assert outputs.aux_weight == 1.5
    assert total.item() == pytest.approx(criterion(outputs.logits, target)[0].item() + 1.5 * terms["aux"], rel=1e-6)


def test_backbone_is_torchvisions_resnet_dilated_at_output_stride_8() -> None:
    model = PSPNet(encoder="resnet50")
    assert model.encoder.strides == [2, 4, 8, 8, 8]
    reference = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True])
    ours = [(m.stride, m.dilation, m.padding) for m in model.encoder.modules() if isinstance(m, nn.Conv2d)]
    theirs = [(m.stride, m.dilation, m.padding) for m in reference.modules() if isinstance(m, nn.Conv2d)]
    assert ours == theirs
    # layer3 (1024 channels) feeds the auxiliary head, layer4 (2048) the pyramid pooling (4 x 512 branches)
    assert model.aux_head.block[0][0].in_channels == 1024
    assert [b[0].out_channels for b in model.head.ppm.branches] == [512] * 4
    assert model.head.bottleneck[0].in_channels == 4096

    # mmsegmentation's pspnet_r50-d8 (bench/models.py) differs by its deep stem (+19,232) and the
    # BatchNorm of its global-pooling branch (+1,024 - a 512 bias)
    torch.manual_seed(0)
    counted = n_params(PSPNet(encoder="resnet50", out_channels=19))
    head = (4 * conv(2048, 512, 1, False) + 3 * bn(512) + 512 + conv(4096, 512, 3, False) + bn(512)
            + conv(512, 19, 1, True))
    aux = conv(1024, 256, 3, False) + bn(256) + conv(256, 19, 1, True)
    assert counted == RESNET50_ENCODER_PARAMS + head + aux == 48_955_750
    assert MMSEG_PSPNET_R50_D8_PARAMS - counted == 19_232 + 512
    assert reference_cells(SPECS_BY_KEY["pspnet"], counted) == ["48.98", "-0.04%"]


def test_param_count_resnet18() -> None:
    head = (4 * conv(512, 128, 1, False) + 3 * bn(128) + 128 + conv(1024, 512, 3, False) + bn(512)
            + conv(512, 1, 1, True))
    aux = conv(256, 256, 3, False) + bn(256) + conv(256, 1, 1, True)
    assert n_params(cached_build("pspnet", encoder="resnet18")) == RESNET18_ENCODER_PARAMS + head + aux


def test_pyramid_pooling_by_hand() -> None:
    torch.manual_seed(0)
    ppm = PyramidPooling(4, (1, 2), branch_ch=2).eval()
    x = torch.randn(1, 4, 4, 6)
    with torch.no_grad():
        out = ppm(x)
    assert out.shape == (1, 4 + 2 * 2, 4, 6)
    assert torch.equal(out[:, :4], x)  # the input itself comes first
    # 1 bin: relu(W mean(x) + b), the same at every pixel (a 1x1 map upsampled)
    conv1 = ppm.branches[0][0]
    expected = torch.relu(conv1.weight[:, :, 0, 0] @ x.mean(dim=(2, 3))[0] + conv1.bias)
    assert torch.allclose(out[0, 4:6], expected[:, None, None].expand(2, 4, 6), atol=1e-6)
    # 2 bins: the 2x3 quadrant means, 1x1 conv + BN (eval: running mean 0, var 1) + ReLU, then bilinear
    conv2, norm = ppm.branches[1][0], ppm.branches[1][1]
    quadrants = x.reshape(1, 4, 2, 2, 2, 3).mean(dim=(3, 5))  # (1, 4, 2, 2)
    pooled = torch.einsum("oc,nchw->nohw", conv2.weight[:, :, 0, 0], quadrants)
    pooled = torch.relu(pooled / (1 + norm.eps) ** 0.5)
    assert torch.allclose(out[0, 6:8, 0, 0], pooled[0, :, 0, 0], atol=1e-6)  # corners keep their cell's value
    assert torch.allclose(out[0, 6:8, 3, 5], pooled[0, :, 1, 1], atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"encoder": "mobilenet_v3_large"}, "model.encoder must be a ResNet .* got 'mobilenet_v3_large'"),
    ({"encoder": "vgg16_bn"}, "model.encoder must be a ResNet"),
    ({"encoder": "resnet43"}, "unknown encoder 'resnet43'"),
    ({"bins": ()}, "model.bins needs at least one positive grid side"),
    ({"bins": (1, 0)}, "model.bins needs at least one positive grid side, got \\[1, 0\\]"),
    ({"dropout": 1.0}, "model.dropout must be a probability in \\[0, 1\\), got 1.0"),
    ({"aux_weight": -0.4}, "model.aux_weight must be a finite number >= 0"),
    ({"out_channels": 0}, "model.out_channels must be at least 1"),
])
def test_bad_options_raise(kwargs: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PSPNet(**kwargs)


def test_yaml_keys_are_validated_and_reach_the_model(binary_folder: Path) -> None:
    raw = minimal_config(binary_folder, model={"name": "pspnet", "encoder": "resnet18", "bins": [1, 3],
                                               "aux_weight": 0.25, "dropout": 0.2})
    del raw["model"]["base_channels"], raw["model"]["depth"]
    model = build_model(config_from_dict(raw))
    assert isinstance(model, PSPNet) and model.head.ppm.bins == (1, 3) and model.aux_weight == 0.25
    assert model.head.dropout.p == 0.2 and model.aux_head.block[1].p == 0.2
    raw["model"]["bins"] = "1, 2"
    with pytest.raises(ConfigError, match="model.bins"):
        config_from_dict(raw)
