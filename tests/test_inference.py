"""Logits -> probabilities -> labels, and the configured threshold reaching evaluation."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import train
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


def test_evaluate_uses_the_configured_threshold() -> None:
    images = torch.zeros(4, 3, 6, 6)
    masks = torch.zeros(4, 6, 6, dtype=torch.long)
    masks[:, :3] = 1  # half foreground
    loader = [(images[:2], masks[:2]), (images[2:], masks[2:])]
    model = Constant(0.3)  # sigmoid(0.3) = 0.574: foreground at threshold 0.5, background at 0.6
    at_05, _ = train.evaluate(model, loader, torch.device("cpu"), num_classes=2, threshold=0.5)
    at_06, _ = train.evaluate(model, loader, torch.device("cpu"), num_classes=2, threshold=0.6)
    assert at_05["dice_foreground"] == pytest.approx(2 * 72 / (72 + 144))  # all predicted foreground
    assert at_05["pixel_accuracy"] == pytest.approx(0.5)
    assert at_06["dice_foreground"] == pytest.approx(0.0)  # nothing predicted foreground
    assert at_06["iou_per_class"]["background"] == pytest.approx(0.5)
