"""The weighted sum of named losses over whatever a model returns, and :func:`build_loss` from config specs.

A model returns one logits tensor, a deep-supervision list of them (main
output first), or, for a classification-guided model in training mode, a
:class:`utils.model_output.ClassGuidedOutput` holding either of those and its
(N, 2) class logits, or, for a model with an auxiliary head in training mode,
a :class:`utils.model_output.AuxiliaryOutput`. :class:`CombinedLoss` takes all
four, casts them to float32 itself (they may come from autocast), and adds the
image-level classification term "cls" (:func:`presence_bce`) when class logits
are there, the weighted auxiliary term "aux" when auxiliary logits are.
"""
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from utils.constants import IGNORE_INDEX
from utils.errors import ConfigError
from utils.model_output import AuxiliaryOutput, ClassGuidedOutput, SegmentationLogits
from utils.registry import LOSSES

#: Name of the classification-guidance term in the loss terms.
CLS_TERM = "cls"
#: Name of the auxiliary-head term in the loss terms.
AUX_TERM = "aux"


def presence_bce(cls_logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """BCE-with-logits of [absent, present] class logits against one-hot "the image has a foreground pixel".

    A pixel is foreground when its label is above 0 (the background) and not
    ``ignore_index``; the mean runs over the N images and the 2 logits.

    Shape:
        cls_logits (N, 2) float; target (N, H, W) int64; output: scalar.
    """
    if cls_logits.shape != (target.shape[0], 2):
        raise ValueError(f"{CLS_TERM}: expected class logits (N, 2) for a target of {target.shape[0]} images, "
                         f"got {tuple(cls_logits.shape)}")
    present = ((target > 0) & (target != ignore_index)).flatten(1).any(dim=1).long()
    return F.binary_cross_entropy_with_logits(cls_logits, F.one_hot(present, 2).to(cls_logits.dtype))


def _resize_to(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(Bi/tri)linear resize of (N, C, *spatial) logits to ``size`` when they differ; else passed through."""
    modes = {4: "bilinear", 5: "trilinear"}
    if logits.ndim in modes and tuple(logits.shape[2:]) != tuple(size):
        return F.interpolate(logits, size=tuple(size), mode=modes[logits.ndim], align_corners=False)
    return logits


def _downsample_target(target: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The (N, *spatial) labels resized to ``size`` by nearest neighbour (labels are never interpolated)."""
    if tuple(target.shape[1:]) == tuple(size):
        return target
    return F.interpolate(target[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()


def halving_weights(count: int) -> List[float]:
    """nnU-Net's deep-supervision weights 1, 1/2, 1/4, ... scaled to sum to 1 (the models here already leave
    out their lowest-resolution level, which nnU-Net weights 0)."""
    raw = [0.5 ** k for k in range(count)]
    return [w / sum(raw) for w in raw]


def _normalised_ds_weights(weights: Optional[List[float]]) -> Optional[List[float]]:
    """Deep-supervision weights scaled to sum to 1, after checking them."""
    if weights is None or weights == "halving":
        return weights
    if not weights or any(not (w >= 0 and math.isfinite(w)) for w in weights) or sum(weights) <= 0:
        raise ValueError(f"deep_supervision_weights must be a non-empty list of finite weights >= 0 with a "
                         f"positive sum, got {weights}")
    return [float(w) / sum(weights) for w in weights]


class CombinedLoss(nn.Module):
    """Weighted sum of named losses over a model's outputs; also reports each term.

    One logits tensor: ``total = sum_i weight_i * loss_i(logits, target)``.

    A list or tuple of K logits tensors (deep supervision, main output first):
    each output is resized (bi/trilinear) to the target's size if it differs,
    or with ``deep_supervision_targets="downsample_targets"`` the target is
    resized (nearest) to each output, as nnU-Net does; then
    ``total = sum_k w_k * combined_k`` where ``combined_k`` is the weighted sum
    above for output k and ``w`` the ``deep_supervision_weights`` scaled to
    sum to 1 (None: 1/K each; "halving": 1, 1/2, 1/4, ... as nnU-Net).

    A :class:`ClassGuidedOutput` (either of the above plus (N, 2) class
    logits): the total above plus :func:`presence_bce` of the class logits,
    with weight 1, reported as "cls".

    An :class:`AuxiliaryOutput`: the weighted sum above on the main logits plus
    ``aux_weight`` times the same weighted sum on the auxiliary logits (resized
    to the target if they differ), that sum reported (before ``aux_weight``)
    as "aux"; ``deep_supervision_weights`` do not apply to it.

    Every output is cast to float32 first, so the losses run in float32 under
    autocast.

    Args:
        terms: ``(name, weight, loss_module)`` triples; weights must be >= 0.
            A repeated name gets a suffix in the reported terms (dice, dice_1).
        deep_supervision_weights: one weight >= 0 per output (main first),
            normalised to sum to 1; None weights the outputs equally. A list
            of outputs whose length differs raises ConfigError.

    Shape:
        outputs: (N, C, H, W) logits, a list of them (any H, W for the list), a
        ClassGuidedOutput or an AuxiliaryOutput; target (N, H, W) -> ``(total, loss_terms)``: a
        scalar tensor to backpropagate and a dict name -> float of detached
        values: each unweighted term (of the main output for a list); for a
        list, ``ds_k``: the weighted sum of the terms on output k (before
        ``w_k``), so that ``total == sum_k w_k * loss_terms["ds_k"]``;
        "cls" when there are class logits; "aux" when there are auxiliary logits.
    """

    def __init__(self, terms: List[Tuple[str, float, nn.Module]],
                 deep_supervision_weights: Optional[Union[List[float], str]] = None,
                 deep_supervision_targets: str = "upsample_logits") -> None:
        super().__init__()
        if deep_supervision_targets not in ("upsample_logits", "downsample_targets"):
            raise ValueError(f"deep_supervision_targets must be upsample_logits or downsample_targets, "
                             f"got {deep_supervision_targets!r}")
        self.downsample_targets = deep_supervision_targets == "downsample_targets"
        if not terms:
            raise ValueError("CombinedLoss needs at least one (name, weight, loss) term")
        self.names: List[str] = []
        for name, weight, _ in terms:
            if not (weight >= 0 and math.isfinite(weight)):
                raise ValueError(f"loss {name!r}: weight must be a finite number >= 0, got {weight}")
            unique, i = name, 0
            while unique in self.names:
                i += 1
                unique = f"{name}_{i}"
            self.names.append(unique)
        self.weights = [float(weight) for _, weight, _ in terms]
        self.losses = nn.ModuleList(module for _, _, module in terms)
        self.deep_supervision_weights = _normalised_ds_weights(deep_supervision_weights)

    def _output_weights(self, count: int) -> List[float]:
        if count == 0:
            raise ValueError("CombinedLoss: got an empty list of outputs")
        if self.deep_supervision_weights is None:
            return [1.0 / count] * count
        if self.deep_supervision_weights == "halving":
            return halving_weights(count)
        if len(self.deep_supervision_weights) != count:
            raise ConfigError(
                f"train.deep_supervision_weights has {len(self.deep_supervision_weights)} entries but the model returned "
                f"{count} outputs; give one weight per output (main first), or leave "
                "train.deep_supervision_weights unset for equal weights")
        return self.deep_supervision_weights

    def _terms(self, logits: torch.Tensor, target: torch.Tensor) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """(unweighted values, weighted sum) of the terms on one output."""
        values = [loss(logits, target) for loss in self.losses]
        return values, sum(w * v for w, v in zip(self.weights, values))

    def _deep_supervision(self, outputs: List[torch.Tensor], target: torch.Tensor,
                          ) -> Tuple[torch.Tensor, List[str], List[torch.Tensor]]:
        """(total, names, unweighted values) over a list of outputs, main first."""
        weights = self._output_weights(len(outputs))
        if self.downsample_targets:
            per_output = [self._terms(out.float(), _downsample_target(target, out.shape[2:])) for out in outputs]
        else:
            per_output = [self._terms(_resize_to(out.float(), target.shape[1:]), target) for out in outputs]
        combined = [summed for _, summed in per_output]
        total = sum(w * c for w, c in zip(weights, combined))
        names = self.names + [f"ds_{k}" for k in range(len(outputs))]
        return total, names, per_output[0][0] + combined

    def forward(self, outputs: Union[SegmentationLogits, Tuple[torch.Tensor, ...], ClassGuidedOutput,
                                     AuxiliaryOutput],
                target: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, float]]:
        cls_logits, auxiliary = None, None
        if isinstance(outputs, AuxiliaryOutput):
            outputs, auxiliary = outputs.logits, outputs
        if isinstance(outputs, ClassGuidedOutput):
            outputs, cls_logits = outputs.logits, outputs.cls_logits
        if isinstance(outputs, torch.Tensor):
            values, total = self._terms(outputs.float(), target)
            names = list(self.names)
        elif isinstance(outputs, (list, tuple)):
            total, names, values = self._deep_supervision(list(outputs), target)
        else:
            raise TypeError(f"CombinedLoss: expected a logits tensor, a list of them, a ClassGuidedOutput or an "
                            f"AuxiliaryOutput, got {type(outputs).__name__}")
        if cls_logits is not None:
            cls = presence_bce(cls_logits.float(), target)
            total = total + cls
            names, values = names + [CLS_TERM], values + [cls]
        if auxiliary is not None:
            _, aux = self._terms(_resize_to(auxiliary.aux_logits.float(), target.shape[1:]), target)
            total = total + auxiliary.aux_weight * aux
            names, values = names + [AUX_TERM], values + [aux]
        detached = torch.stack([v.detach().float() for v in values]).tolist()  # one device sync for all
        return total, dict(zip(names, detached))

    def extra_repr(self) -> str:
        text = ", ".join(f"{n}*{w:g}" for n, w in zip(self.names, self.weights))
        if isinstance(self.deep_supervision_weights, list):
            text += ", deep_supervision_weights=[" + ", ".join(f"{w:.4g}" for w in self.deep_supervision_weights) + "]"
        elif self.deep_supervision_weights is not None:
            text += f", deep_supervision_weights={self.deep_supervision_weights}"
        if self.downsample_targets:
            text += ", deep_supervision_targets=downsample_targets"
        return text


def build_loss(specs: List[Dict[str, Any]], deep_supervision_weights: Optional[Union[List[float], str]] = None,
               deep_supervision_targets: str = "upsample_logits") -> CombinedLoss:
    """A :class:`CombinedLoss` from specs ``{"name": ..., "weight": 1.0, **kwargs}``.

    ``name`` is a name registered in ``LOSSES`` (unknown names raise KeyError
    listing the valid ones); the other keys are the loss class's arguments.
    ``deep_supervision_weights`` (e.g. ``train.deep_supervision_weights``)
    weights a model's list of outputs; see :class:`CombinedLoss`.
    """
    if not specs:
        raise ValueError("build_loss: needs at least one loss spec, e.g. [{'name': 'bce'}]")
    terms: List[Tuple[str, float, nn.Module]] = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or "name" not in spec:
            raise ValueError(f"build_loss: spec {i} must be a dict with a 'name' key, got {spec!r}")
        kwargs = {k: v for k, v in spec.items() if k not in ("name", "weight")}
        terms.append((spec["name"], float(spec.get("weight", 1.0)), LOSSES.build(spec["name"], **kwargs)))
    return CombinedLoss(terms, deep_supervision_weights, deep_supervision_targets)
