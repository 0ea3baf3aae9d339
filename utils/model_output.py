"""What a model returns when it has more than segmentation logits: the contract between models and losses.

A model returns raw logits: one ``(N, C, H, W)`` tensor, or with deep
supervision in training mode a list of them (main output first). A model with
a classification-guided module (UNet 3+ with ``classification_guided=True``)
returns, in training mode only, a :class:`ClassGuidedOutput` holding those
segmentation logits and its image-level class logits. A model with an
auxiliary head (PSPNet) returns, in training mode only, an
:class:`AuxiliaryOutput`: its main logits, the auxiliary head's and the
auxiliary loss weight. :class:`utils.losses.CombinedLoss` takes all four forms
and adds the classification term ("cls") or the auxiliary term ("aux") when
they are there. In evaluation mode every model returns one plain logits tensor.
"""
from dataclasses import dataclass
from typing import List, Union

import torch
import torch.export

#: Segmentation logits: one tensor, or the deep-supervision list (main output first).
SegmentationLogits = Union[torch.Tensor, List[torch.Tensor]]

#: Loss weight of an auxiliary head (PSPNet's paper and mmsegmentation: 0.4).
AUX_WEIGHT = 0.4


@dataclass
class ClassGuidedOutput:
    """Training-mode output of a classification-guided model.

    Attributes:
        logits: segmentation logits (N, C, H, W), or the deep-supervision list of
            them with the main output first.
        cls_logits: (N, 2) image-level logits, [foreground absent, foreground present].
    """

    logits: SegmentationLogits
    cls_logits: torch.Tensor

    def float(self) -> "ClassGuidedOutput":
        """The same output in float32, as ``Tensor.float()`` (losses run in float32 under autocast)."""
        logits = ([out.float() for out in self.logits] if isinstance(self.logits, list)
                  else self.logits.float())
        return ClassGuidedOutput(logits, self.cls_logits.float())


@dataclass
class AuxiliaryOutput:
    """Training-mode output of a model with an auxiliary head.

    The loss is ``combined(logits) + aux_weight * combined(aux_logits)``, where
    ``combined`` is the weighted sum of the configured losses (PSPNet: the
    auxiliary FCN head on ResNet's third stage, weight 0.4).

    Attributes:
        logits: main segmentation logits (N, C, H, W).
        aux_logits: the auxiliary head's logits (N, C, H, W), at the input size too.
        aux_weight: weight of the auxiliary loss relative to the main one.
    """

    logits: torch.Tensor
    aux_logits: torch.Tensor
    aux_weight: float = AUX_WEIGHT

    def float(self) -> "AuxiliaryOutput":
        """The same output in float32, as ``Tensor.float()``."""
        return AuxiliaryOutput(self.logits.float(), self.aux_logits.float(), self.aux_weight)


# Pytree nodes, so that DDP, torch.compile and torch.export find the tensors inside them.
torch.export.register_dataclass(ClassGuidedOutput)
torch.export.register_dataclass(AuxiliaryOutput)
