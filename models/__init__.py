"""Segmentation models, registered in ``utils.registry.MODELS``.

Importing this package registers "unet" (plain, or on a torchvision encoder
with ``encoder: resnet34`` etc.), "unetpp" (UNet++), "unet3p" (UNet 3+),
"deeplabv3", "deeplabv3plus", "fcn" and "pspnet". Build one by name::

    model = build_model("unet", in_channels=3, out_channels=1, base_channels=32)
"""
from typing import Any

from torch import nn

from models.deeplab import FCN, DeepLabV3, DeepLabV3Plus
from models.encoders import ENCODERS, build_encoder
from models.pspnet import PSPNet
from models.unet import UNet
from models.unet3p import UNet3Plus
from models.unetpp import UNetPlusPlus
from utils.registry import MODELS


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """The model registered as ``name``, built with ``kwargs``; unknown names raise KeyError listing the valid ones."""
    return MODELS.build(name, **kwargs)


__all__ = ["ENCODERS", "FCN", "DeepLabV3", "DeepLabV3Plus", "PSPNet", "UNet", "UNet3Plus", "UNetPlusPlus",
           "build_encoder", "build_model"]
