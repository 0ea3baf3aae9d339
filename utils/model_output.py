"""What a model returns when it has more than segmentation logits: the contract between models and losses.

A model returns raw logits: one ``(N, C, H, W)`` tensor, or with deep
supervision in training mode a list of them (main output first). A model with
a classification-guided module (UNet 3+ with ``classification_guided=True``)
returns, in training mode only, a :class:`ClassGuidedOutput` holding those
segmentation logits and its image-level class logits;
:class:`utils.losses.CombinedLoss` takes all three forms and adds the
classification term ("cls") when the class logits are there. In evaluation
mode every model returns one plain logits tensor.
"""
from dataclasses import dataclass
from typing import List, Union

import torch
import torch.export

#: Segmentation logits: one tensor, or the deep-supervision list (main output first).
SegmentationLogits = Union[torch.Tensor, List[torch.Tensor]]


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


# A pytree node, so that DDP, torch.compile and torch.export find the tensors inside it.
torch.export.register_dataclass(ClassGuidedOutput)
