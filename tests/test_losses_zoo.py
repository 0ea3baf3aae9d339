"""Focal, Jaccard, Tversky, focal Tversky, Lovász, MS-SSIM and hybrid losses; deep-supervision weighting.

Expected values come from explicit formulas written out here (sigmoid/softmax
by hand, set functions for Lovász, a loop-based SSIM in numpy), never from the
implementation under test.
"""
import math
from pathlib import Path
from typing import Callable, List, Sequence

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from tests.conftest import minimal_config
from utils.config import ConfigError, config_from_dict
from utils.constants import IGNORE_INDEX
from utils.losses import (MS_SSIM_WEIGHTS, BCELoss, CombinedLoss, DiceLoss, FocalLoss, FocalTverskyLoss,
                          HybridLoss, JaccardLoss, LovaszLoss, MSSSIMLoss, TverskyLoss, build_loss, ms_ssim_scales)
from utils.registry import LOSSES

I = IGNORE_INDEX
C1, C2 = 0.01 ** 2, 0.03 ** 2  # SSIM constants for a dynamic range of 1


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def softmax(column: Sequence[float]) -> List[float]:
    exps = [math.exp(v) for v in column]
    return [e / sum(exps) for e in exps]


def grid(values: list) -> torch.Tensor:
    """(1, 1, H, W) float logits from a nested list."""
    return torch.tensor(values, dtype=torch.float32)[None, None]


def close(value: torch.Tensor, expected: float, tol: float = 1e-5) -> bool:
    return abs(value.item() - expected) < tol


# float32 SSIM: variances come from E[x^2] - E[x]^2 and are divided by C2 ~ 1e-3, so ~1e-5 rounding noise
SSIM_TOL = 1e-4


def saturated(target: torch.Tensor, channels: int, scale: float = 50.0) -> torch.Tensor:
    """Logits that predict ``target`` with (numerically) certainty; ignored pixels get class 0."""
    labels = torch.where(target == I, 0, target)
    if channels == 1:
        return (labels[:, None].float() * 2 - 1) * scale
    return (F.one_hot(labels, channels).permute(0, 3, 1, 2).float() * 2 - 1) * scale


# --------------------------------------------------------------------- focal


def focal_term(p_true: float, gamma: float) -> float:
    """-(1 - p_t)^gamma log(p_t)."""
    return -((1 - p_true) ** gamma) * math.log(p_true)


def test_focal_binary_hand_computed_with_alpha() -> None:
    logits = grid([[0.0, 1.0], [-2.0, 3.0]])
    target = torch.tensor([[[1, 0], [I, 1]]])
    terms = [focal_term(sigmoid(0.0), 2), focal_term(1 - sigmoid(1.0), 2), focal_term(sigmoid(3.0), 2)]
    assert close(FocalLoss(gamma=2.0)(logits, target), sum(terms) / 3)
    # alpha weighs positives, 1 - alpha negatives; still divided by the 3 labelled pixels
    expected = (0.25 * terms[0] + 0.75 * terms[1] + 0.25 * terms[2]) / 3
    assert close(FocalLoss(gamma=2.0, alpha=0.25)(logits, target), expected)
    assert close(FocalLoss(gamma=2.0, class_weights=[0.75, 0.25])(logits, target), expected)


def test_focal_multiclass_hand_computed_with_class_weights() -> None:
    columns = [[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.5, 0.5, -1.0]]
    logits = torch.tensor(columns).T.reshape(1, 3, 1, 3)
    target = torch.tensor([[[0, 2, 1]]])
    terms = [focal_term(softmax(col)[cls], 1.5) for col, cls in zip(columns, [0, 2, 1])]
    assert close(FocalLoss(gamma=1.5)(logits, target), sum(terms) / 3)
    weighted = FocalLoss(gamma=1.5, class_weights=[2.0, 0.0, 0.5])(logits, target)
    assert close(weighted, (2.0 * terms[0] + 0.5 * terms[1] + 0.0 * terms[2]) / 3)


def test_focal_gamma_zero_is_cross_entropy() -> None:
    torch.manual_seed(0)
    binary, multi = torch.randn(2, 1, 4, 5), torch.randn(2, 4, 4, 5)
    target2, target4 = torch.randint(0, 2, (2, 4, 5)), torch.randint(0, 4, (2, 4, 5))
    ref = F.binary_cross_entropy_with_logits(binary[:, 0], target2.float())
    assert torch.allclose(FocalLoss(gamma=0.0)(binary, target2), ref, atol=1e-6)
    assert torch.allclose(FocalLoss(gamma=0.0)(multi, target4), F.cross_entropy(multi, target4), atol=1e-6)


def test_binary_focal_matches_torchvision_on_labelled_pixels() -> None:
    """The sigmoid case equals torchvision.ops.sigmoid_focal_loss averaged over the labelled pixels."""
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 8, 8) * 4
    target = torch.randint(0, 2, (2, 8, 8))
    target[:, 0] = I
    valid = (target != I).unsqueeze(1)
    labels = torch.where(target == I, 0, target).unsqueeze(1).float()
    for gamma, alpha in ((2.0, 0.25), (0.5, None), (0.0, None)):
        theirs = sigmoid_focal_loss(logits, labels, alpha=-1 if alpha is None else alpha, gamma=gamma)
        ours = FocalLoss(gamma=gamma, alpha=alpha)(logits, target)
        assert torch.allclose(ours, theirs[valid].mean(), atol=1e-6)


def test_focal_gradient_finite_for_small_gamma_at_saturated_logits() -> None:
    """Why ours and not torchvision's: its (1 - p_t) ** gamma has a NaN gradient there for gamma < 1."""
    logits = torch.tensor([[[[20.0, -20.0, 0.3]]]], requires_grad=True)
    FocalLoss(gamma=0.5)(logits, torch.tensor([[[1, 0, 1]]])).backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[0, 0, 0, 2] < 0 and logits.grad[0, 0, 0, :2].abs().max() < 1e-12


def test_focal_down_weights_easy_pixels() -> None:
    easy, hard = grid([[4.0]]), grid([[-1.0]])
    target = torch.ones(1, 1, 1, dtype=torch.long)
    ratio_ce = focal_term(sigmoid(4.0), 0) / focal_term(sigmoid(-1.0), 0)
    ratio_focal = FocalLoss(gamma=2.0)(easy, target) / FocalLoss(gamma=2.0)(hard, target)
    assert ratio_focal.item() < ratio_ce / 100  # (1 - p_t)^2: 3e-4 for the easy pixel, 0.53 for the hard one


def test_focal_errors() -> None:
    with pytest.raises(ValueError, match="alpha weighs the positives of a 1-channel.*give class_weights"):
        FocalLoss(alpha=0.25)(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="class_weights has 3 entries but a 1-channel .* has 2 classes"):
        FocalLoss(class_weights=[1.0, 2.0, 3.0])(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="alpha .* or class_weights, not both"):
        FocalLoss(alpha=0.5, class_weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="must be resolved to one number per class"):
        FocalLoss(class_weights="inverse")
    with pytest.raises(ValueError, match="gamma must be a finite number >= 0"):
        FocalLoss(gamma=-1.0)
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        FocalLoss(alpha=1.5)


# --------------------------------------------------------------------- jaccard, tversky, focal tversky


def test_jaccard_binary_hand_computed() -> None:
    logits = torch.zeros(1, 1, 2, 2)  # every probability 0.5
    target = torch.tensor([[[1, 0], [I, 1]]])
    # TP = 0.5 + 0.5, sum p = 1.5 (ignored pixel left out), sum t = 2 -> union 2.5
    assert close(JaccardLoss(smooth=1.0)(logits, target), 1 - (1 + 1) / (2.5 + 1))
    assert close(JaccardLoss(smooth=0.0)(logits, target), 1 - 1 / 2.5)


def test_jaccard_multiclass_hand_computed_absent_class_left_out() -> None:
    logits = torch.zeros(1, 3, 1, 3)  # every probability 1/3
    target = torch.tensor([[[0, 1, 1]]])  # class 2 absent
    iou0 = (1 / 3) / (1 + 1 - 1 / 3)
    iou1 = (2 / 3) / (1 + 2 - 2 / 3)
    assert close(JaccardLoss(smooth=0.0, include_background=True)(logits, target), 1 - (iou0 + iou1) / 2)
    assert close(JaccardLoss(smooth=0.0)(logits, target), 1 - iou1)


def test_jaccard_is_dice_over_two_minus_dice() -> None:
    torch.manual_seed(0)
    logits, target = torch.randn(2, 1, 5, 5), torch.randint(0, 2, (2, 5, 5))
    dice = 1 - DiceLoss(smooth=0.0)(logits, target).item()
    assert close(JaccardLoss(smooth=0.0)(logits, target), 1 - dice / (2 - dice))


def test_tversky_hand_computed_alpha_weighs_false_positives() -> None:
    logits = grid([[2.0, -1.0], [0.5, 0.0]])
    target = torch.tensor([[[1, 1], [0, 0]]])
    p = [sigmoid(2.0), sigmoid(-1.0), sigmoid(0.5), sigmoid(0.0)]
    tp, fn, fp = p[0] + p[1], (1 - p[0]) + (1 - p[1]), p[2] + p[3]
    for alpha, beta in [(0.3, 0.7), (0.9, 0.1)]:
        expected = 1 - tp / (tp + alpha * fp + beta * fn)
        assert close(TverskyLoss(alpha=alpha, beta=beta, smooth=0.0)(logits, target), expected)


def test_tversky_special_cases_are_dice_and_jaccard() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    target[0, 0] = I
    tversky_half = TverskyLoss(alpha=0.5, beta=0.5, smooth=0.0, include_background=True)(logits, target)
    assert torch.allclose(tversky_half, DiceLoss(smooth=0.0, include_background=True)(logits, target), atol=1e-6)
    assert torch.allclose(TverskyLoss(alpha=1.0, beta=1.0)(logits, target), JaccardLoss()(logits, target), atol=1e-6)


def test_focal_tversky_hand_computed_defaults_weigh_false_negatives() -> None:
    logits = grid([[2.0, -1.0, 0.5, 0.0]])
    target = torch.tensor([[[1, 1, 0, 0]]])
    p = [sigmoid(v) for v in (2.0, -1.0, 0.5, 0.0)]
    tp, fn, fp = p[0] + p[1], (1 - p[0]) + (1 - p[1]), p[2] + p[3]
    ti = (tp + 1.0) / (tp + 0.3 * fp + 0.7 * fn + 1.0)  # defaults: 0.7 on FN (Abraham & Khan), smooth 1
    assert close(FocalTverskyLoss()(logits, target), (1 - ti) ** 0.75)
    assert close(FocalTverskyLoss(gamma=2.0, smooth=0.0)(logits, target),
                 (1 - tp / (tp + 0.3 * fp + 0.7 * fn)) ** 2)
    # a missed foreground pixel (FN) costs more than a false alarm (FP) of the same size
    only_fn = FocalTverskyLoss(smooth=0.0)(grid([[9.0, -9.0]]), torch.tensor([[[1, 1]]]))
    only_fp = FocalTverskyLoss(smooth=0.0)(grid([[9.0, 9.0]]), torch.tensor([[[1, 0]]]))
    assert only_fn.item() > only_fp.item() + 0.05


def test_focal_tversky_gradient_finite_at_perfect_prediction() -> None:
    target = torch.tensor([[[1, 0], [0, 1]]])
    logits = saturated(target, 1).requires_grad_()
    loss = FocalTverskyLoss(gamma=0.5)(logits, target)
    loss.backward()
    assert loss.item() < 1e-6 and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("factory, message", [
    (lambda: JaccardLoss(smooth=-1.0), "jaccard: smooth must be >= 0"),
    (lambda: TverskyLoss(alpha=-0.1), "tversky: alpha must be a finite number >= 0"),
    (lambda: FocalTverskyLoss(beta=float("nan")), "focal_tversky: beta must be a finite number >= 0"),
    (lambda: FocalTverskyLoss(gamma=0.0), "focal_tversky: gamma must be a finite number > 0"),
    (lambda: LovaszLoss(classes="some"), "lovasz: classes must be 'present' or 'all'"),
    (lambda: MSSSIMLoss(window_size=10), "ms_ssim: window_size must be an odd number"),
    (lambda: MSSSIMLoss(sigma=0.0), "ms_ssim: sigma must be a positive number"),
])
def test_bad_arguments(factory: Callable, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        factory()


# --------------------------------------------------------------------- lovasz, against the set function


def jaccard_set_loss(mispredicted: set, positives: set) -> float:
    """Delta_J(M) = |M| / |positives ∪ M| (Berman et al. 2018, eq. 4)."""
    return len(mispredicted) / len(positives | mispredicted) if mispredicted else 0.0


def lovasz_brute_force(errors: Sequence[float], fg: Sequence[int]) -> float:
    """The Lovász extension as a sum over the level sets of ``errors``:
    ``sum_k (e_(k) - e_(k+1)) * Delta_J(first k pixels by decreasing error)``."""
    order = sorted(range(len(errors)), key=lambda i: -errors[i])
    positives = {i for i, f in enumerate(fg) if f}
    total = 0.0
    for k in range(1, len(order) + 1):
        following = errors[order[k]] if k < len(order) else 0.0
        total += (errors[order[k - 1]] - following) * jaccard_set_loss(set(order[:k]), positives)
    return total


def test_lovasz_hinge_four_pixels() -> None:
    x, labels = [1.5, -0.5, 0.3, -2.0], [1, 0, 0, 1]
    hinge = [max(0.0, 1 - xi * (2 * t - 1)) for xi, t in zip(x, labels)]  # [0, 0.5, 1.3, 3.0]
    # by hand: order 3, 2, 1, 0; Delta_J = 1/2, 2/3, 3/4, 1
    by_hand = (3.0 - 1.3) * 1 / 2 + (1.3 - 0.5) * 2 / 3 + (0.5 - 0.0) * 3 / 4
    assert abs(lovasz_brute_force(hinge, labels) - by_hand) < 1e-12
    loss = LovaszLoss()(grid([x[:2], x[2:]]), torch.tensor([[labels[:2], labels[2:]]]))
    assert close(loss, by_hand)


def test_lovasz_softmax_against_brute_force() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 2, 3)
    target = torch.tensor([[[0, 1, 1], [0, I, 1]]])  # class 2 absent
    columns = logits[0].reshape(3, -1).T.tolist()
    labels = target.flatten().tolist()
    kept = [(softmax(col), lab) for col, lab in zip(columns, labels) if lab != I]
    per_class = []
    for k in range(3):
        fg = [int(lab == k) for _, lab in kept]
        per_class.append(lovasz_brute_force([abs(f - p[k]) for f, (p, _) in zip(fg, kept)], fg))
    assert close(LovaszLoss(classes="present")(logits, target), (per_class[0] + per_class[1]) / 2)
    assert close(LovaszLoss(classes="all")(logits, target), sum(per_class) / 3)
    # an absent class costs its largest false probability
    assert abs(per_class[2] - max(p[2] for p, _ in kept)) < 1e-9


def test_lovasz_of_hard_prediction_is_jaccard_loss() -> None:
    target = torch.tensor([[[0, 0, 1, 1], [2, 2, 2, 1]]])
    predicted = torch.tensor([[[0, 1, 1, 1], [2, 0, 2, 2]]])
    loss = LovaszLoss()(saturated(predicted, 3, scale=60.0), target)
    ious = []
    for k in range(3):
        inter = ((predicted == k) & (target == k)).sum().item()
        ious.append(inter / ((predicted == k) | (target == k)).sum().item())
    assert close(loss, 1 - sum(ious) / 3)  # tight extension: equals 1 - mIoU at 0/1 errors


def test_lovasz_per_image_skips_unlabelled_images() -> None:
    x = torch.tensor([[[[1.5, -0.5], [0.3, -2.0]]], [[[0.2, 0.1], [-0.7, 2.5]]], [[[9.0, 9.0], [9.0, 9.0]]]])
    target = torch.tensor([[[1, 0], [0, 1]], [[0, 1], [1, 1]], [[I, I], [I, I]]])
    per_image = []
    for xi, ti in zip(x[:2], target[:2]):
        values, labels = xi.flatten().tolist(), ti.flatten().tolist()
        per_image.append(lovasz_brute_force([max(0.0, 1 - v * (2 * t - 1)) for v, t in zip(values, labels)],
                                            labels))
    assert close(LovaszLoss(per_image=True)(x, target), sum(per_image) / 2)
    values, labels = x[:2].flatten().tolist(), target[:2].flatten().tolist()
    batch = lovasz_brute_force([max(0.0, 1 - v * (2 * t - 1)) for v, t in zip(values, labels)], labels)
    assert close(LovaszLoss(per_image=False)(x, target), batch)


# --------------------------------------------------------------------- ms-ssim


def ms_ssim_reference(x: np.ndarray, y: np.ndarray, scales: int) -> float:
    """MS-SSIM of two 2-D maps, written out with explicit 11x11 windows (no padding) and 2x2 mean pooling."""
    taps = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5 ** 2))
    window = np.outer(taps, taps) / taps.sum() ** 2
    weights = np.array(MS_SSIM_WEIGHTS[:scales]) / sum(MS_SSIM_WEIGHTS[:scales])
    result = 1.0
    for j in range(scales):
        if j > 0:
            h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
            x = x[:h, :w].reshape(h // 2, 2, w // 2, 2).mean((1, 3))
            y = y[:h, :w].reshape(h // 2, 2, w // 2, 2).mean((1, 3))
        ssim, cs = [], []
        for r in range(x.shape[0] - 10):
            for c in range(x.shape[1] - 10):
                px, py = x[r:r + 11, c:c + 11], y[r:r + 11, c:c + 11]
                mx, my = (window * px).sum(), (window * py).sum()
                vx, vy = (window * px * px).sum() - mx ** 2, (window * py * py).sum() - my ** 2
                cov = (window * px * py).sum() - mx * my
                cs.append((2 * cov + C2) / (vx + vy + C2))
                ssim.append(cs[-1] * (2 * mx * my + C1) / (mx ** 2 + my ** 2 + C1))
        result *= (np.mean(ssim) if j == scales - 1 else np.mean(cs)) ** weights[j]
    return float(result)


@pytest.mark.parametrize("size, scales", [(13, 1), (24, 2)])
def test_ms_ssim_against_explicit_windows(size: int, scales: int) -> None:
    torch.manual_seed(0)
    target = (torch.rand(1, size, size) > 0.6).long()
    logits = (target[:, None].float() * 2 - 1) * 1.5 + torch.randn(1, 1, size, size)
    probs = torch.sigmoid(logits)[0, 0].double().numpy()
    expected = 1 - ms_ssim_reference(probs, target[0].double().numpy(), scales)
    assert close(MSSSIMLoss()(logits, target), expected, SSIM_TOL)


def test_ms_ssim_constant_maps_hand_computed() -> None:
    # constant maps: variances and covariance are 0, so cs = C2 / C2 = 1 and only luminance remains
    p = sigmoid(0.4)
    luminance = (2 * p * 1 + C1) / (p ** 2 + 1 + C1)
    ones = torch.ones(1, 11, 11, dtype=torch.long)
    assert close(MSSSIMLoss()(torch.full((1, 1, 11, 11), 0.4), ones), 1 - luminance, SSIM_TOL)  # one scale
    # 22x22: two scales, weights 0.0448 and 0.2856 renormalised; cs = 1 at the first
    w2 = MS_SSIM_WEIGHTS[1] / (MS_SSIM_WEIGHTS[0] + MS_SSIM_WEIGHTS[1])
    ones = torch.ones(1, 22, 22, dtype=torch.long)
    assert close(MSSSIMLoss()(torch.full((1, 1, 22, 22), 0.4), ones), 1 - luminance ** w2, SSIM_TOL)


def test_ms_ssim_number_of_scales() -> None:
    assert [ms_ssim_scales(s, s, 11) for s in (5, 11, 21, 22, 32, 64, 175, 176, 512)] == [1, 1, 1, 2, 2, 3, 4, 5, 5]
    assert ms_ssim_scales(64, 32, 11) == 2  # the smaller side decides


@pytest.mark.parametrize("size, channels", [(32, 1), (32, 3), (64, 1)])
def test_ms_ssim_zero_for_identical_maps_and_positive_otherwise(size: int, channels: int) -> None:
    torch.manual_seed(0)
    target = torch.randint(0, max(channels, 2), (1, size, size))
    assert MSSSIMLoss()(saturated(target, channels), target).item() < 1e-6
    logits = (saturated(target, channels, scale=1.0) + torch.randn(1, channels, size, size)).requires_grad_()
    loss = MSSSIMLoss()(logits, target)
    loss.backward()
    assert 0.05 < loss.item() <= 1.0
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_ms_ssim_input_smaller_than_window() -> None:
    target = torch.tensor([[[1, 0, 0], [0, 1, 0], [0, 0, 1]]])
    assert MSSSIMLoss()(saturated(target, 1), target).item() < 1e-6
    assert MSSSIMLoss()(-saturated(target, 1), target).item() > 0.5


# --------------------------------------------------------------------- hybrid


def test_hybrid_binary_hand_computed() -> None:
    z = 0.4
    p = sigmoid(z)
    logits, target = torch.full((1, 1, 11, 11), z), torch.ones(1, 11, 11, dtype=torch.long)
    focal = focal_term(p, 2.0)
    ms_ssim = 1 - (2 * p + C1) / (p ** 2 + 1 + C1)  # constant maps, one scale
    iou = (121 * p + 1.0) / (121 + 1.0)  # TP = sum p, union = sum t
    assert close(HybridLoss()(logits, target), focal + ms_ssim + (1 - iou), SSIM_TOL)


def test_hybrid_multiclass_is_sum_of_its_terms_with_arguments_passed_on() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 16, 16)
    target = torch.randint(0, 3, (2, 16, 16))
    target[1, :4] = I
    hybrid = HybridLoss(gamma=1.0, class_weights=[0.5, 1.0, 2.0], smooth=0.5, include_background=True)
    expected = (FocalLoss(gamma=1.0, class_weights=[0.5, 1.0, 2.0])(logits, target)
                + MSSSIMLoss()(logits, target) + JaccardLoss(smooth=0.5, include_background=True)(logits, target))
    assert torch.allclose(hybrid(logits, target), expected, atol=1e-6)


# --------------------------------------------------------------------- shared behaviour of every new loss

NEW_LOSSES = [
    ("focal-1ch", lambda: FocalLoss(alpha=0.25), 1),
    ("focal-3ch", lambda: FocalLoss(gamma=1.0, class_weights=[1.0, 2.0, 0.5]), 3),
    ("jaccard-1ch", lambda: JaccardLoss(smooth=1e-6), 1),
    ("jaccard-3ch", lambda: JaccardLoss(smooth=1e-6, include_background=True), 3),
    ("tversky-1ch", lambda: TverskyLoss(alpha=0.3, beta=0.7, smooth=1e-6), 1),
    ("tversky-3ch", lambda: TverskyLoss(smooth=1e-6), 3),
    ("focal_tversky-1ch", lambda: FocalTverskyLoss(smooth=1e-6), 1),
    ("focal_tversky-3ch", lambda: FocalTverskyLoss(smooth=1e-6, include_background=True), 3),
    ("lovasz-1ch", lambda: LovaszLoss(), 1),
    ("lovasz-3ch-per-image", lambda: LovaszLoss(per_image=True, classes="all"), 3),
    ("ms_ssim-1ch", lambda: MSSSIMLoss(), 1),
    ("ms_ssim-3ch", lambda: MSSSIMLoss(), 3),
    ("hybrid-1ch", lambda: HybridLoss(smooth=1e-6), 1),
    ("hybrid-3ch", lambda: HybridLoss(smooth=1e-6, class_weights=[1.0, 1.0, 3.0]), 3),
]
IDS = [case[0] for case in NEW_LOSSES]


@pytest.mark.parametrize("label, factory, channels", NEW_LOSSES, ids=IDS)
def test_perfect_prediction_near_zero_wrong_one_large(label: str, factory: Callable, channels: int) -> None:
    target = torch.tensor([[[0, 1, 1, 0], [1, 1, 0, 0]]])
    if channels == 3:
        target[0, 0, 0] = 2
    perfect = saturated(target, channels)
    assert factory()(perfect, target).item() < 1e-4
    assert factory()(-perfect, target).item() > 0.3


@pytest.mark.parametrize("label, factory, channels", NEW_LOSSES, ids=IDS)
def test_ignored_pixels_do_not_matter(label: str, factory: Callable, channels: int) -> None:
    torch.manual_seed(0)
    target = torch.randint(0, max(channels, 2), (2, 12, 12))
    ignored = torch.zeros_like(target, dtype=torch.bool)
    ignored[:, 3:7, 5:] = True
    target[ignored] = I
    logits = torch.randn(2, channels, 12, 12, requires_grad=True)
    loss = factory()(logits, target)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert torch.equal(logits.grad.permute(0, 2, 3, 1)[ignored], torch.zeros(int(ignored.sum()), channels))
    changed = logits.detach().clone()
    changed.permute(0, 2, 3, 1)[ignored] = 30.0
    assert torch.allclose(factory()(changed, target), loss.detach(), atol=1e-6)


@pytest.mark.parametrize("label, factory, channels", NEW_LOSSES, ids=IDS)
def test_all_ignored_batch_gives_zero_without_nan(label: str, factory: Callable, channels: int) -> None:
    logits = torch.randn(2, channels, 5, 5, requires_grad=True)
    loss = factory()(logits, torch.full((2, 5, 5), I))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("name", ["focal", "jaccard", "lovasz", "tversky", "focal_tversky", "ms_ssim", "hybrid"])
def test_labels_outside_the_classes_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match=rf"{name}: target contains \[3\], outside the classes 0..2"):
        LOSSES.build(name)(torch.zeros(1, 3, 2, 2), torch.tensor([[[0, 1], [2, 3]]]))


# --------------------------------------------------------------------- deep supervision


def combined_and_reference() -> tuple:
    criterion = CombinedLoss([("bce", 1.0, BCELoss()), ("dice", 0.5, DiceLoss())])
    return criterion, (lambda out, t: BCELoss()(out, t).item() + 0.5 * DiceLoss()(out, t).item())


def test_deep_supervision_equal_weights_by_default() -> None:
    torch.manual_seed(0)
    outputs = [torch.randn(2, 1, 6, 6, requires_grad=True) for _ in range(3)]
    target = torch.randint(0, 2, (2, 6, 6))
    criterion, reference = combined_and_reference()
    per_output = [reference(o, target) for o in outputs]
    total, loss_terms = criterion(outputs, target)
    assert total.item() == pytest.approx(sum(per_output) / 3, rel=1e-6)
    assert list(loss_terms) == ["bce", "dice", "ds_0", "ds_1", "ds_2"]
    assert loss_terms["bce"] == pytest.approx(BCELoss()(outputs[0], target).item())  # terms of the main output
    assert [loss_terms[f"ds_{k}"] for k in range(3)] == pytest.approx(per_output, rel=1e-6)
    total.backward()
    assert all(o.grad is not None and o.grad.abs().sum() > 0 for o in outputs)


def test_deep_supervision_given_weights_are_normalised() -> None:
    torch.manual_seed(1)
    outputs = tuple(torch.randn(2, 1, 6, 6) for _ in range(3))
    target = torch.randint(0, 2, (2, 6, 6))
    _, reference = combined_and_reference()
    criterion = build_loss([{"name": "bce"}, {"name": "dice", "weight": 0.5}], deep_supervision_weights=[4, 2, 2])
    assert criterion.deep_supervision_weights == [0.5, 0.25, 0.25]
    expected = 0.5 * reference(outputs[0], target) + 0.25 * (reference(outputs[1], target)
                                                              + reference(outputs[2], target))
    total, loss_terms = criterion(outputs, target)
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert total.item() == pytest.approx(sum(w * loss_terms[f"ds_{k}"] for k, w in enumerate([0.5, 0.25, 0.25])))
    # a single tensor (evaluation mode) ignores the deep-supervision weights
    single, single_terms = criterion(outputs[0], target)
    assert single.item() == pytest.approx(reference(outputs[0], target), rel=1e-6)
    assert list(single_terms) == ["bce", "dice"]


def test_deep_supervision_resizes_outputs_to_the_target() -> None:
    torch.manual_seed(2)
    target = torch.randint(0, 3, (2, 8, 8))
    outputs = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2, 2)]
    criterion = build_loss([{"name": "ce"}])
    total, loss_terms = criterion(outputs, target)
    for k, out in enumerate(outputs):
        up = F.interpolate(out, size=(8, 8), mode="bilinear", align_corners=False)
        assert loss_terms[f"ds_{k}"] == pytest.approx(F.cross_entropy(up, target).item(), rel=1e-6)
    # a constant 1x1 map upsamples to the same constant everywhere
    constant = build_loss([{"name": "bce"}])([torch.full((1, 1, 1, 1), 0.7)], torch.ones(1, 5, 5, dtype=torch.long))
    assert constant[0].item() == pytest.approx(math.log(1 + math.exp(-0.7)), rel=1e-6)
    with pytest.raises(ValueError, match="expected logits"):  # a single tensor is never resized
        criterion(outputs[1], target)


def test_deep_supervision_errors() -> None:
    criterion = build_loss([{"name": "bce"}], deep_supervision_weights=[1.0, 0.5])
    outputs = [torch.zeros(1, 1, 2, 2)] * 3
    with pytest.raises(ValueError, match="deep_supervision_weights has 2 entries but the model returned 3 outputs"):
        criterion(outputs, torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="empty list of outputs"):
        criterion([], torch.zeros(1, 2, 2, dtype=torch.long))
    for bad in ([], [1.0, -1.0], [0.0, 0.0], [float("inf")]):
        with pytest.raises(ValueError, match="deep_supervision_weights must be a non-empty list"):
            build_loss([{"name": "bce"}], deep_supervision_weights=bad)


# --------------------------------------------------------------------- registry and config


def test_new_losses_are_registered() -> None:
    assert {"focal", "jaccard", "lovasz", "tversky", "focal_tversky", "ms_ssim", "hybrid"} <= set(LOSSES.names())


def test_config_validates_new_loss_arguments(tmp_path: Path) -> None:
    loss = [{"name": "focal", "gamma": 2, "alpha": 0.25}, {"name": "lovasz", "classes": "all", "per_image": True},
            {"name": "focal_tversky", "beta": 0.8, "weight": 0.5}, {"name": "hybrid", "class_weights": "inverse"},
            {"name": "ms_ssim", "window_size": 7}]
    cfg = config_from_dict(minimal_config(tmp_path, loss=loss), check_paths=False)
    assert cfg.loss[0] == {"name": "focal", "gamma": 2.0, "alpha": 0.25}
    assert isinstance(cfg.loss[0]["gamma"], float)
    assert cfg.loss[2] == {"name": "focal_tversky", "weight": 0.5, "beta": 0.8}
    criterion = build_loss([spec for spec in cfg.loss if spec["name"] != "hybrid"])
    assert criterion.names == ["focal", "lovasz", "focal_tversky", "ms_ssim"]


@pytest.mark.parametrize("item, message", [
    ({"name": "focal", "gama": 2}, r"loss\[0\]: unknown key 'gama' \(did you mean 'gamma'\?\)"),
    ({"name": "lovaz"}, r"loss\[0\]\.name: unknown loss 'lovaz'.*did you mean 'lovasz'"),
    ({"name": "lovasz", "classes": "some"}, r"loss\[0\]\.classes: expected one of 'present', 'all'"),
    ({"name": "tversky", "alpha": "high"}, r"loss\[0\]\.alpha: expected float"),
])
def test_config_rejects_bad_loss_items(tmp_path: Path, item: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict(minimal_config(tmp_path, loss=[item]), check_paths=False)
