"""Losses on volumes: (N, C, Z, Y, X) logits give what the same voxels give as an image, and a 3D UNet trains."""
from __future__ import annotations

import pytest
import torch

from utils.losses import build_loss
from utils.registry import LOSSES, MODELS

VOXEL_LOSSES = ["bce", "ce", "dice", "jaccard", "tversky", "focal_tversky", "focal", "lovasz"]


@pytest.mark.parametrize("name, channels", [(name, c) for name in VOXEL_LOSSES for c in (1, 3)
                                            if not (name == "bce" and c > 1 or name == "ce" and c == 1)])
def test_a_volume_loss_equals_the_loss_of_its_voxels_laid_out_as_an_image(name: str, channels: int) -> None:
    """Every voxel loss sums or averages over all labelled voxels, so folding Z into H changes nothing."""
    torch.manual_seed(0)
    logits = torch.randn(2, channels, 3, 4, 5)
    target = torch.randint(0, max(channels, 2), (2, 3, 4, 5))
    target[0, 1, 2, :2] = 255  # ignored voxels
    loss = LOSSES.build(name)
    volume = loss(logits, target)
    image = loss(logits.reshape(2, channels, 12, 5), target.reshape(2, 12, 5))
    assert torch.isfinite(volume) and torch.allclose(volume, image, atol=1e-6)


def test_two_dimensional_only_losses_say_so() -> None:
    with pytest.raises(ValueError, match=r"ms_ssim: .*\(this loss is 2D only\)"):
        LOSSES.build("ms_ssim")(torch.randn(1, 1, 4, 8, 8), torch.zeros(1, 4, 8, 8, dtype=torch.long))


def test_a_3d_unet_with_deep_supervision_trains_through_the_combined_loss() -> None:
    torch.manual_seed(0)
    model = MODELS.build("unet", in_channels=1, out_channels=2, dims=3, base_channels=4, depth=3,
                         norm="instance", activation="leaky_relu", deep_supervision=True)
    criterion = build_loss([{"name": "ce", "weight": 1.0}, {"name": "dice", "weight": 1.0}])
    volume = torch.randn(2, 1, 8, 16, 16)
    target = (volume[:, 0] > 0.5).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        outputs = model(volume)
        assert isinstance(outputs, list) and outputs[0].shape == (2, 2, 8, 16, 16)
        loss, terms = criterion(outputs, target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    model.eval()
    with torch.no_grad():
        assert model(volume).shape == (2, 2, 8, 16, 16)


def test_halving_weights_and_downsampled_targets_by_hand() -> None:
    """nnU-Net's deep supervision: weights 1, 1/2, 1/4 scaled to sum to 1, each output scored against the
    mask resized (nearest) to its own size."""
    torch.manual_seed(0)
    target = torch.randint(0, 2, (2, 8, 8))
    target[0, 0, 0] = 255
    outputs = [torch.randn(2, 2, 8, 8), torch.randn(2, 2, 4, 4), torch.randn(2, 2, 2, 2)]
    loss = build_loss([{"name": "ce"}], "halving", "downsample_targets")
    total, terms = loss(outputs, target)
    ce = LOSSES.build("ce")
    expected = [ce(outputs[0], target), ce(outputs[1], target[:, ::2, ::2]), ce(outputs[2], target[:, ::4, ::4])]
    weights = [4 / 7, 2 / 7, 1 / 7]
    assert torch.allclose(total, sum(w * e for w, e in zip(weights, expected)), atol=1e-6)
    assert [terms[f"ds_{k}"] for k in range(3)] == pytest.approx([e.item() for e in expected], abs=1e-6)
    volume = build_loss([{"name": "ce"}], "halving", "downsample_targets")
    v_target = torch.randint(0, 2, (1, 4, 8, 8))
    v_total, _ = volume([torch.randn(1, 2, 4, 8, 8), torch.randn(1, 2, 2, 4, 4)], v_target)
    assert torch.isfinite(v_total)
    with pytest.raises(ValueError, match="deep_supervision_targets"):
        build_loss([{"name": "ce"}], None, "sideways")


def test_the_config_takes_halving_and_refuses_other_words() -> None:
    from tests.conftest import minimal_config
    from utils.config import ConfigError, config_from_dict

    cfg = config_from_dict(minimal_config("unused", train={"deep_supervision_weights": "halving",
                                                           "deep_supervision_targets": "downsample_targets"}),
                           check_paths=False)
    assert cfg.train.deep_supervision_weights == "halving"
    with pytest.raises(ConfigError, match=r"train\.deep_supervision_weights"):
        config_from_dict(minimal_config("unused", train={"deep_supervision_weights": "doubling"}), check_paths=False)
