"""Pipelines: :class:`Compose` runs paired transforms in order.

``build_transforms`` (in ``utils/transforms/__init__.py``) makes one from a
config list. :meth:`Compose.bind_source` lets multi-sample transforms
(``mosaic``) draw more samples, each through the transforms before them.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from utils.transforms.base import Pair, as_tv_tensors


class _PrefixSource:
    """Draws a sample from ``source`` and runs it through ``transforms`` (those before a multi-sample transform)."""

    def __init__(self, source: Callable[[], Pair], transforms: Sequence[Callable[..., Pair]]) -> None:
        self.source = source
        self.transforms = list(transforms)

    def __call__(self) -> Pair:
        image, mask = as_tv_tensors(*self.source())
        for transform in self.transforms:
            image, mask = transform(image, mask)
        return image, mask


class Compose:
    """Apply paired transforms in order; plain tensors are wrapped as tv_tensors."""

    def __init__(self, transforms: Sequence[Callable[..., Pair]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, mask: Optional[torch.Tensor] = None) -> Pair:
        image, mask = as_tv_tensors(image, mask)
        for transform in self.transforms:
            image, mask = transform(image, mask)
        return image, mask

    def bind_source(self, source: Callable[[], Pair]) -> None:
        """Let multi-sample transforms (``mosaic``) draw more samples.

        ``source()`` returns a raw ``(image, mask)`` sample, e.g.
        ``dataset.random_sample``. Every transform with a ``bind_source``
        method gets a source whose samples have been through the transforms
        before it in this pipeline, so all the pieces it combines are alike.
        """
        for index, transform in enumerate(self.transforms):
            if hasattr(transform, "bind_source"):
                transform.bind_source(_PrefixSource(source, self.transforms[:index]))

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n])"
