"""Input handling shared by the losses: label checks, masked means, probabilities and one-hot targets, class weights.

Every loss takes ``(logits, target)``: float (N, C, H, W) logits (C == 1 sigmoid,
C > 1 softmax) and int64 (N, H, W) class indices with ``ignore_index`` where
there is no label, or the same with (Z, Y, X) volumes (all but ms_ssim and
hybrid); :func:`valid_pixels` checks them and names the loss.
"""
import math
from typing import List, Literal, Optional, Tuple, Union

import torch

#: What a config may give as ``class_weights``: numbers, or a method that
#: train.py resolves from the training masks before the loss is built.
ClassWeights = Optional[Union[List[float], Literal["inverse", "median_frequency"]]]


def valid_pixels(logits: torch.Tensor, target: torch.Tensor, ignore_index: int,
                 loss_name: str, volumes: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Check shapes and label values; return (mask of labelled pixels, target with ignored pixels set to 0).

    Images (N, C, H, W) with targets (N, H, W), and with ``volumes`` also
    (N, C, Z, Y, X) with (N, Z, Y, X). Label values must lie in
    ``[0, num_classes)`` where ``num_classes`` is C, or 2 for a one-channel
    (sigmoid) output.
    """
    ranks = (4, 5) if volumes else (4,)
    if logits.ndim not in ranks or logits.shape[:1] + logits.shape[2:] != target.shape:
        expected = "(N, C, H, W) and target (N, H, W)" + (", or (N, C, Z, Y, X) and (N, Z, Y, X)" if volumes
                                                          else " (this loss is 2D only)")
        raise ValueError(f"{loss_name}: expected logits {expected}, "
                         f"got {tuple(logits.shape)} and {tuple(target.shape)}")
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise ValueError(f"{loss_name}: target must hold integer class indices, got dtype {target.dtype}")
    num_classes = max(logits.shape[1], 2)
    valid = target != ignore_index
    bad = valid & ((target < 0) | (target >= num_classes))
    if bad.any():
        values = sorted(torch.unique(target[bad]).tolist())
        raise ValueError(
            f"{loss_name}: target contains {values}, outside the classes 0..{num_classes - 1} of "
            f"{logits.shape[1]}-channel logits (ignore_index={ignore_index}); check data.num_classes, "
            "model.out_channels and the dataset's mask mapping"
        )
    return valid, torch.where(valid, target, 0).long()


def masked_mean(values: torch.Tensor, mask: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """Sum of ``values`` where ``mask`` is set, over ``denominator`` (0 when that is 0)."""
    total = torch.where(mask, values, 0.0).sum()
    return total / denominator.to(values.dtype).clamp_min(torch.finfo(values.dtype).tiny)


def target_like(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The target as probabilities of logits' shape: 0/1 for C == 1, one-hot for C > 1."""
    if logits.shape[1] == 1:
        return labels.unsqueeze(1).to(logits.dtype)
    return torch.zeros_like(logits).scatter_(1, labels.unsqueeze(1), 1.0)


def probs_and_onehot(logits: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, target) of logits' shape: sigmoid and 0/1 for C == 1, softmax and one-hot otherwise."""
    probs = torch.sigmoid(logits) if logits.shape[1] == 1 else logits.softmax(dim=1)
    return probs, target_like(logits, labels)


def check_class_weights(loss_name: str, class_weights: ClassWeights) -> Optional[List[float]]:
    """Reject unresolved ("inverse", ...) or negative class weights; return them as floats."""
    if isinstance(class_weights, str):
        raise ValueError(
            f"{loss_name}: class_weights={class_weights!r} must be resolved to one number per class before the "
            "loss is built; train.py does this from the training masks (resolve_class_weights), elsewhere use "
            "utils.class_stats.class_weights(utils.class_stats.class_pixel_counts(dataset), method)")
    if class_weights is None:
        return None
    if not class_weights or any(not (w >= 0 and math.isfinite(w)) for w in class_weights):
        raise ValueError(f"{loss_name}: class_weights must be a non-empty list of weights >= 0, got {class_weights}")
    return [float(w) for w in class_weights]


def class_weight_tensor(class_weights: List[float], logits: torch.Tensor, loss_name: str) -> torch.Tensor:
    """``class_weights`` as a tensor after checking there is one per class (2 for a sigmoid output)."""
    channels = logits.shape[1]
    if len(class_weights) != max(channels, 2):
        have = (f"the logits have {channels} channels" if channels > 1
                else "a 1-channel (sigmoid) output has 2 classes (background, foreground)")
        raise ValueError(f"{loss_name}: class_weights has {len(class_weights)} entries but {have}; "
                         "give one weight per class")
    return logits.new_tensor(class_weights)


def check_smooth(loss_name: str, smooth: float) -> None:
    if not (smooth >= 0 and math.isfinite(smooth)):
        raise ValueError(f"{loss_name}: smooth must be >= 0, got {smooth}")
