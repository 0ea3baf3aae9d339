"""Segmentation models, registered in ``utils.registry.MODELS``.

Importing this package registers "unet". Build one by name::

    model = build_model("unet", in_channels=3, out_channels=1, base_channels=32)
"""
from typing import Any

from torch import nn

from models.unet import UNet
from utils.registry import MODELS


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """The model registered as ``name``, built with ``kwargs``; unknown names raise KeyError listing the valid ones."""
    return MODELS.build(name, **kwargs)


__all__ = ["UNet", "build_model"]
