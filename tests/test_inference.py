"""Logits -> probabilities -> labels, and the configured threshold reaching evaluation."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import train
from utils.builders import build_datasets, build_model
from utils.sampling import collate
from utils.inference import labels_from_logits, labels_from_probabilities, predict_probabilities, probabilities


def test_one_channel_threshold() -> None:
    logits = torch.tensor([-1.0, 0.1, 0.3, 2.0]).view(1, 1, 1, 4)
    assert labels_from_logits(logits, 0.5).tolist() == [[[0, 1, 1, 1]]]
    # logit(0.6) = 0.405: 0.1 and 0.3 fall below it.
    assert labels_from_logits(logits, 0.6).tolist() == [[[0, 0, 0, 1]]]
    probs = probabilities(logits)
    assert probs.flatten().tolist() == pytest.approx([1 / (1 + math.exp(1.0)), 1 / (1 + math.exp(-0.1)),
                                                      1 / (1 + math.exp(-0.3)), 1 / (1 + math.exp(-2.0))])
    for t in (0.3, 0.5, 0.6, 0.9):
        assert torch.equal(labels_from_probabilities(probs, t), labels_from_logits(logits, t))


def test_multi_channel_softmax_argmax() -> None:
    # Channel c at pixel p is row c, column p: pixel 0 scores [1, 0, 0.5], pixel 1 [0, 3, 0.1].
    logits = torch.tensor([[1.0, 0.0], [0.0, 3.0], [0.5, 0.1]]).reshape(1, 3, 1, 2)
    probs = probabilities(logits)
    assert torch.allclose(probs.sum(dim=1), torch.ones(1, 1, 2))
    assert labels_from_logits(logits).tolist() == [[[0, 1]]]
    assert torch.equal(labels_from_probabilities(probs), labels_from_logits(logits))


class Constant(nn.Module):
    """A 'model' whose logits are one constant value everywhere."""

    def __init__(self, value: float, channels: int = 1) -> None:
        super().__init__()
        self.value, self.channels = value, channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], self.channels, *x.shape[-2:]), self.value)


def test_predict_probabilities_restores_size() -> None:
    probs = predict_probabilities(Constant(0.0, channels=3), torch.zeros(2, 3, 8, 8), out_size=(13, 17))
    assert probs.shape == (2, 3, 13, 17)
    assert torch.allclose(probs, torch.full_like(probs, 1 / 3))


def _config(threshold: float):
    from tests.conftest import minimal_config
    from utils.config import config_from_dict

    return config_from_dict(minimal_config("unused", model={"threshold": threshold}), check_paths=False)


def test_evaluate_uses_the_configured_threshold() -> None:
    images = torch.zeros(4, 3, 6, 6)
    masks = torch.zeros(4, 6, 6, dtype=torch.long)
    masks[:, :3] = 1  # half foreground
    loader = [(images[:2], masks[:2]), (images[2:], masks[2:])]
    model = Constant(0.3)  # sigmoid(0.3) = 0.574: foreground at threshold 0.5, background at 0.6
    at_05, _ = train.evaluate(model, loader, _config(threshold=0.5), torch.device("cpu"))
    at_06, _ = train.evaluate(model, loader, _config(threshold=0.6), torch.device("cpu"))
    assert at_05["dice_foreground"] == pytest.approx(2 * 72 / (72 + 144))  # all predicted foreground
    assert at_05["pixel_accuracy"] == pytest.approx(0.5)
    assert at_06["dice_foreground"] == pytest.approx(0.0)  # nothing predicted foreground
    assert at_06["iou_per_class"]["background"] == pytest.approx(0.5)


def test_validation_metrics_do_not_depend_on_batch_size(binary_folder) -> None:
    """The same model and split give identical figures with batch 1 and batch 8."""
    from tests.conftest import minimal_config
    from utils.config import config_from_dict

    cfg = config_from_dict(minimal_config(binary_folder, data={"val_fraction": 0.7}))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    _, val_ds = build_datasets(cfg)
    assert len(val_ds) >= 8
    results = []
    for batch_size in (1, 8):
        loader = torch.utils.data.DataLoader(val_ds, batch_size=batch_size, collate_fn=collate)
        metrics, _ = train.evaluate(model, loader, cfg, torch.device("cpu"))
        results.append(metrics)
    assert results[0]["confusion_matrix"] == results[1]["confusion_matrix"]
    assert results[0]["dice_foreground"] == results[1]["dice_foreground"]
    assert results[0]["miou"] == results[1]["miou"]
