"""Segmentation losses, registered in ``utils.registry.LOSSES``, and their weighted sum.

Every loss is an ``nn.Module`` called as ``loss(logits, target)``:

* ``logits``: float (N, C, H, W) raw model output; C == 1 means binary sigmoid,
  C > 1 softmax over the channels (the losses apply sigmoid/softmax themselves);
* ``target``: int64 (N, H, W) class indices; pixels equal to ``ignore_index``
  (``IGNORE_INDEX`` = 255 by default) are left out of every sum and mean, and a
  batch with no labelled pixel gives a loss of 0 (with a zero gradient, no NaN).

Registered names, one module per concern:

* :mod:`utils.losses.distribution` (pixel-wise): "bce" (:class:`BCELoss`),
  "ce" (:class:`CrossEntropyLoss`), "focal" (:class:`FocalLoss`);
* :mod:`utils.losses.region` (soft overlap per class): "dice"
  (:class:`DiceLoss`), "jaccard" (:class:`JaccardLoss`), "tversky"
  (:class:`TverskyLoss`), "focal_tversky" (:class:`FocalTverskyLoss`),
  "lovasz" (:class:`LovaszLoss`);
* :mod:`utils.losses.structural`: "ms_ssim" (:class:`MSSSIMLoss`) and the
  UNet 3+ hybrid focal + MS-SSIM + IoU, "hybrid" (:class:`HybridLoss`).

:mod:`utils.losses.border` computes the U-Net border weight maps that "bce"
and "ce" apply with ``border_w0``; :mod:`utils.losses.common` holds the input
checks the losses share and :mod:`utils.losses.combined` their weighted sum. Use a loss on its own::

    from utils.registry import LOSSES
    dice = LOSSES.build("dice", smooth=1.0)
    value = dice(logits, target)

or, as a config's ``loss:`` list does, as a weighted sum that also reports each
unweighted term for logging::

    criterion = build_loss([{"name": "bce", "weight": 1.0},
                            {"name": "dice", "weight": 0.5, "smooth": 1.0}])
    total, loss_terms = criterion(outputs, target)   # loss_terms == {"bce": 0.41, "dice": 0.73}

``outputs`` is whatever the model returns: one logits tensor, a
deep-supervision list (main output first; the outputs are weighted by
``deep_supervision_weights``, equal by default, and each output's combined
loss is reported as ``ds_0``, ``ds_1``, ...), a
:class:`utils.model_output.ClassGuidedOutput` whose class logits add the
"cls" term, or a :class:`utils.model_output.AuxiliaryOutput` whose auxiliary
logits add the "aux" term with its weight (PSPNet: 0.4). The criterion casts
them to float32 itself.
"""
from utils.losses.border import BorderWeights, border_weight_map
from utils.losses.combined import AUX_TERM, CLS_TERM, CombinedLoss, build_loss, presence_bce
from utils.losses.common import ClassWeights
from utils.losses.distribution import BCELoss, CrossEntropyLoss, FocalLoss
from utils.losses.region import DiceLoss, FocalTverskyLoss, JaccardLoss, LovaszLoss, TverskyLoss
from utils.losses.structural import MS_SSIM_WEIGHTS, HybridLoss, MSSSIMLoss, ms_ssim, ms_ssim_scales

__all__ = ["AUX_TERM", "BCELoss", "BorderWeights", "CLS_TERM", "ClassWeights", "CombinedLoss", "CrossEntropyLoss",
           "DiceLoss", "FocalLoss", "FocalTverskyLoss", "HybridLoss", "JaccardLoss", "LovaszLoss", "MSSSIMLoss",
           "MS_SSIM_WEIGHTS", "TverskyLoss", "border_weight_map", "build_loss", "ms_ssim", "ms_ssim_scales",
           "presence_bce"]
