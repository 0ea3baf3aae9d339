"""Paired image + mask augmentations, registered in ``TRANSFORMS`` by name.

Every transform is called as ``image, mask = t(image, mask)``:

* ``image`` is a float ``tv_tensors.Image`` of shape (C, H, W), C = 1 or 3,
  or for the ``nnunet_*`` transforms also a volume (C, Z, Y, X);
* ``mask`` is an int64 ``tv_tensors.Mask`` of the image's spatial shape, or
  ``None`` when there is no label (then ``(image, None)`` comes back).

Geometric transforms make one random draw and apply it to both; the mask is
only resampled by nearest neighbour, so no new class values appear except
``IGNORE_INDEX`` where padding, rotation or warping uncovers pixels (the
image gets 0 there). Photometric transforms and ``normalize`` touch the image
only. A pipeline is built from the flat specs a config lists::

    pipeline = build_transforms([{"name": "random_resized_crop", "size": 256}, {"name": "hflip"},
                                 {"name": "normalize"}])
    image, mask = pipeline(image, mask)

Where things are (importing this package registers every transform):

* ``base.py``        the call contract, input and argument checks, random draws,
                     ``TorchvisionAdapter`` (a v2 transform as a paired one);
* ``geometry.py``    resize, crops, pad, flips, rotation, affine;
* ``elastic.py``     elastic deformation;
* ``photometric.py`` colour jitter, blur, noise, photometric distortion, normalize;
* ``mosaic.py``      mosaic (four samples in one; the dataset binds the source);
* ``nnunet.py``      nnU-Net's augmentations for images and volumes: rotation and
                     scaling, mirroring, noise, blur, brightness, contrast, low
                     resolution, gamma (its docstring lists the default pipeline);
* ``compose.py``     ``Compose``, the pipeline;
* ``preview.py``     ``preview_grid``, the sheet ``train.py --preview-augmentations`` writes.
"""
from __future__ import annotations

from typing import Any, Dict, List

from utils.errors import ConfigError
from utils.registry import TRANSFORMS
from utils.transforms.base import (IMAGENET_MEAN, IMAGENET_STD, Pair, PairedTransform, TorchvisionAdapter,
                                   as_tv_tensors)
from utils.transforms.compose import Compose
from utils.transforms.elastic import Elastic, elastic_displacement, warp_pair
from utils.transforms.geometry import (Affine, HorizontalFlip, Pad, RandomCrop, RandomResize, RandomResizedCrop,
                                       RandomScaleCrop, Resize, Rotate, VerticalFlip)
from utils.transforms.mosaic import Mosaic
from utils.transforms.nnunet import Blur, Brightness, Contrast, Gamma, LowResolution, Mirror, Noise, Spatial
from utils.transforms.photometric import (ColorJitter, GaussianBlur, GaussianNoise, Normalize, PhotometricDistortion,
                                          adjust_saturation_hue)
from utils.transforms.preview import preview_grid

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "Pair", "PairedTransform", "TorchvisionAdapter", "as_tv_tensors", "Compose",
    "build_transforms", "preview_grid",
    "Resize", "RandomResizedCrop", "RandomCrop", "RandomResize", "RandomScaleCrop", "Pad", "HorizontalFlip",
    "VerticalFlip",
    "Rotate", "Affine", "Elastic", "elastic_displacement", "warp_pair",
    "ColorJitter", "GaussianBlur", "GaussianNoise", "PhotometricDistortion", "Normalize", "adjust_saturation_hue",
    "Mosaic",
    "Spatial", "Mirror", "Noise", "Blur", "Brightness", "Contrast", "LowResolution", "Gamma",
]


def build_transforms(specs: List[Dict[str, Any]]) -> Compose:
    """A pipeline from flat specs like ``{"name": "resize", "size": [128, 128]}``, in order.

    An empty list gives the identity pipeline. An unknown name raises the
    registry's ``KeyError`` listing the valid ones; an unknown or missing
    argument, or a value out of range, raises ``ConfigError`` naming the
    transform and the argument.
    """
    transforms = []
    for index, spec in enumerate(specs):
        if not isinstance(spec, dict) or "name" not in spec:
            raise ConfigError(f"transform #{index}: expected a mapping with a 'name' key, got {spec!r}")
        kwargs = {key: value for key, value in spec.items() if key != "name"}
        kwargs = TRANSFORMS.check_arguments(spec["name"], kwargs)
        transforms.append(TRANSFORMS.build(spec["name"], **kwargs))
    return Compose(transforms)
