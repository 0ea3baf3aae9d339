"""U-Net border weight maps (Ronneberger et al. 2015), for the "bce" and "ce" losses' ``border_w0`` option.

``w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))``, where d1 and
d2 are the distances (in pixels, or voxels for volumes) from x to the
nearest and the second nearest object. Objects are the connected components
(``scipy.ndimage.label``, faces touching) of each foreground class, labels
above 0; touching objects of one class must be separated by background, as
the thin lines between cells in the paper's masks, and the weight peaks on
such lines. With fewer than two objects d2 is infinite and the border term 0.
``w_c`` is 1, or with ``class_balance`` ``n / (K n_c)`` for the n labelled
pixels, K classes present and n_c pixels of x's class: each class present
then weighs the same in total and the mean over the labelled pixels stays 1.
``ignore_index`` pixels get 0.

Instance masks read with ``mask_mapping: nonzero`` (nuclei, cells) arrive
here as 0/1: the instance ids are gone, so the objects are the components of
the binary mask and touching instances count as one unless a background line
separates them.

A map is computed once per mask content (the key is a hash of the mask's
bytes) and kept in a bounded LRU cache, so fixed masks (no random transforms,
deep-supervision outputs, repeated epochs without augmentation) are not
recomputed.
"""
from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from typing import Optional, Tuple

import numpy as np
import torch
from scipy import ndimage

from utils.constants import IGNORE_INDEX
from utils.errors import ConfigError

#: A border term below ``w0`` times this is dropped (it spares the distance transforms far from objects).
NEGLIGIBLE = 1e-6


def border_weight_map(mask: np.ndarray, w0: float = 10.0, sigma: float = 5.0, class_balance: bool = False,
                      ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """The U-Net weight map of one integer ``mask`` of any rank, float32 of its shape (0 at ``ignore_index``).

    Distances are exact wherever the border term is at least ``w0 * NEGLIGIBLE``;
    each object's distance transform only covers its bounding box widened by
    the distance at which the term falls below that.
    """
    labelled = mask != ignore_index
    weights = _class_balance(mask, labelled) if class_balance else labelled.astype(np.float64)
    if w0 > 0:
        margin = math.ceil(sigma * math.sqrt(2.0 * math.log(1.0 / NEGLIGIBLE)))
        d1, d2 = two_nearest_distances(np.where(labelled, mask, 0), margin)
        weights += w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * sigma ** 2))  # inf distances give 0
    return np.where(labelled, weights, 0.0).astype(np.float32)


def two_nearest_distances(mask: np.ndarray, margin: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(d1, d2): per pixel, the distances to the nearest and second nearest object of ``mask`` (inf if none).

    Objects are the connected components of each label above 0; inside an
    object d1 is 0. With ``margin`` an object's distances are computed only
    within ``margin`` of its bounding box (inf beyond).
    """
    d1 = np.full(mask.shape, np.inf)
    d2 = np.full(mask.shape, np.inf)
    for value in np.unique(mask[mask > 0]):
        components, _ = ndimage.label(mask == value)
        for index, box in enumerate(ndimage.find_objects(components), start=1):
            if margin is not None:
                box = tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(box, mask.shape))
            else:
                box = tuple(slice(0, n) for n in mask.shape)
            distance = ndimage.distance_transform_edt(components[box] != index)
            nearest, second = d1[box], d2[box]  # views: updated in place
            np.minimum(second, np.maximum(nearest, distance), out=second)
            np.minimum(nearest, distance, out=nearest)
    return d1, d2


def _class_balance(mask: np.ndarray, labelled: np.ndarray) -> np.ndarray:
    """``n / (K n_c)`` at each labelled pixel of class c (n labelled pixels, K classes present), 0 elsewhere."""
    values, counts = np.unique(mask[labelled], return_counts=True)
    weights = np.zeros(mask.shape)
    for value, count in zip(values, counts):
        weights[mask == value] = labelled.sum() / (len(values) * count)
    return weights


class BorderWeights:
    """Border weight maps of a batch of targets, each computed once per mask content (bounded LRU cache).

    Args:
        w0: weight of the border term, >= 0.
        sigma: width of the border term in pixels, > 0.
        class_balance: add the per-mask class-balancing weight ``w_c``
            (otherwise ``w_c`` = 1).
        ignore_index: target value that gets weight 0.
        cache_bytes: memory the cached maps may take; the least recently
            used goes first. Masks that keep changing (random crops) miss
            anyway; fixed ones hit while they fit, and a target shared by
            deep-supervision outputs is computed once.
        loss_name: names the loss in errors.
    """

    def __init__(self, w0: float, sigma: float, class_balance: bool = False, ignore_index: int = IGNORE_INDEX,
                 cache_bytes: int = 256 * 2**20, loss_name: str = "loss") -> None:
        if not (w0 >= 0 and math.isfinite(w0)):
            raise ConfigError(f"{loss_name}: border_w0 must be a number >= 0 (10 in the U-Net paper; 0 = off), "
                              f"got {w0}")
        if not (sigma > 0 and math.isfinite(sigma)):
            raise ConfigError(f"{loss_name}: border_sigma must be a number > 0 in pixels (5 in the U-Net paper), "
                              f"got {sigma}")
        self.w0, self.sigma, self.class_balance = float(w0), float(sigma), class_balance
        self.ignore_index, self.cache_bytes = ignore_index, cache_bytes
        self.computed = 0  #: maps computed so far (cache misses)
        self._cache: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()
        self._cached_bytes = 0

    def map(self, mask: torch.Tensor) -> torch.Tensor:
        """The float32 CPU weight map of one mask (any rank); the cached tensor itself: do not modify it."""
        array = np.ascontiguousarray(mask.detach().cpu().numpy())
        key = (array.shape, array.dtype.str, hashlib.blake2b(array.tobytes(), digest_size=16).digest())
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        weights = torch.from_numpy(border_weight_map(array, self.w0, self.sigma, self.class_balance,
                                                     self.ignore_index))
        self.computed += 1
        self._cache[key] = weights
        self._cached_bytes += weights.nbytes
        while self._cached_bytes > self.cache_bytes and len(self._cache) > 1:
            self._cached_bytes -= self._cache.popitem(last=False)[1].nbytes
        return weights

    def __call__(self, target: torch.Tensor) -> torch.Tensor:
        """Weights of a (N, *spatial) target, float32 on its device."""
        return torch.stack([self.map(mask) for mask in target]).to(target.device)

    def __repr__(self) -> str:
        return f"BorderWeights(w0={self.w0}, sigma={self.sigma}, class_balance={self.class_balance})"


def border_weights(loss_name: str, w0: float, sigma: float, class_balance: bool,
                   ignore_index: int) -> Optional[BorderWeights]:
    """The loss's :class:`BorderWeights`, or None when neither the border term nor class balancing is on."""
    weights = BorderWeights(w0, sigma, class_balance, ignore_index, loss_name=loss_name)
    return weights if (w0 > 0 or class_balance) else None
