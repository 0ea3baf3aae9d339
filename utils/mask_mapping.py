"""Mask mappings: how the decoded pixels of a mask file become int64 class indices.

The value of ``data.mask_mapping`` in a config; :func:`parse_mask_mapping`
turns it into a :class:`MaskMapping` (invalid forms raise ValueError):

- ``"identity"``: pixel values are class indices (8/16-bit grey, or the
  indices of a palette PNG);
- ``"binary"``: grey value > 127 is class 1, else 0 (0/255 and JPEG masks);
- ``"nonzero"``: any non-zero value is class 1 (instance-label masks);
- ``{value: class}``: an explicit value table, e.g. ``{0: 0, 128: 1, 255: 2}``;
- ``{"R,G,B": class}``: a colour table for colour-coded RGB masks; keys may
  also be written ``"[R, G, B]"`` or ``"#rrggbb"``.

Pure numpy, no file access: the config layer validates a mapping with it and
the datasets apply it.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Tuple

import numpy as np

from utils.constants import IGNORE_INDEX

MASK_MAPPING_NAMES = ("identity", "binary", "nonzero")


class MaskMapping:
    """Turns the decoded pixels of a mask file into int64 class indices.

    ``decode`` says how the file is read before ``__call__`` (a ``load_array``
    mode): "index" (values or palette indices), "grey" (8-bit luminance) or
    "colour" (RGB triples).
    """

    decode = "index"

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def classes(self) -> List[int]:
        """The classes this mapping can produce; empty when that depends on the file."""
        return []


class IdentityMapping(MaskMapping):
    """Pixel values are the class indices."""

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return pixels.astype(np.int64)

    def __repr__(self) -> str:
        return "MaskMapping('identity')"


class BinaryMapping(MaskMapping):
    """Grey value above 127 is class 1, the rest class 0."""

    decode = "grey"

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return (pixels > 127).astype(np.int64)

    def classes(self) -> List[int]:
        return [0, 1]

    def __repr__(self) -> str:
        return "MaskMapping('binary')"


class NonzeroMapping(MaskMapping):
    """Any non-zero value (e.g. an instance label) is class 1."""

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return (pixels != 0).astype(np.int64)

    def classes(self) -> List[int]:
        return [0, 1]

    def __repr__(self) -> str:
        return "MaskMapping('nonzero')"


class ValueMapping(MaskMapping):
    """An explicit ``{pixel value: class}`` table; other values (but ``IGNORE_INDEX``) are errors."""

    def __init__(self, table: Mapping[int, int]) -> None:
        self.table = dict(sorted(table.items()))

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        values, inverse = np.unique(pixels, return_inverse=True)
        table = {**{IGNORE_INDEX: IGNORE_INDEX}, **self.table}
        unmapped = [int(v) for v in values if int(v) not in table]
        if unmapped:
            raise ValueError(
                f"holds values {format_values(unmapped)} missing from data.mask_mapping "
                f"{self.table}; add them to the mapping"
            )
        lookup = np.array([table[int(v)] for v in values], dtype=np.int64)
        return lookup[inverse].reshape(pixels.shape)

    def classes(self) -> List[int]:
        return sorted(set(self.table.values()))

    def __repr__(self) -> str:
        return f"MaskMapping({self.table})"


class ColourMapping(MaskMapping):
    """A ``{(r, g, b): class}`` table for colour-coded RGB masks; other colours are errors."""

    decode = "colour"

    def __init__(self, table: Mapping[Tuple[int, int, int], int]) -> None:
        self.table = dict(sorted(table.items()))
        self._packed = {int(pack_rgb(np.array(rgb))): cls for rgb, cls in self.table.items()}

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        colours, inverse, counts = np.unique(pack_rgb(pixels), return_inverse=True, return_counts=True)
        unmapped = [(int(c), int(n)) for c, n in zip(colours, counts) if int(c) not in self._packed]
        if unmapped:
            raise ValueError(
                f"holds {len(unmapped)} colour(s) missing from data.mask_mapping: "
                f"{format_colour_counts(unmapped)}; add them to the mapping as \"R,G,B\": class"
            )
        lookup = np.array([self._packed[int(c)] for c in colours], dtype=np.int64)
        return lookup[inverse].reshape(pixels.shape[:2])

    def classes(self) -> List[int]:
        return sorted(set(self.table.values()))

    def __repr__(self) -> str:
        keys = {",".join(map(str, rgb)): cls for rgb, cls in self.table.items()}
        return f"MaskMapping({keys})"


def pack_rgb(pixels: np.ndarray) -> np.ndarray:
    """``(..., 3)`` uint8 colours -> one int64 per colour (0xRRGGBB)."""
    rgb = pixels.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def format_colour_counts(colour_counts: List[Tuple[int, int]], limit: int = 5) -> str:
    """``"255,0,0" (1200 px), ...`` for the ``limit`` most frequent packed colours."""
    top = sorted(colour_counts, key=lambda item: -item[1])[:limit]
    text = ", ".join(f'"{c >> 16},{(c >> 8) & 255},{c & 255}" ({n} px)' for c, n in top)
    if len(colour_counts) > limit:
        text += f" and {len(colour_counts) - limit} more"
    return text


_COLOUR_LIST = re.compile(r"^[\[(]?\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*[\])]?$")
_COLOUR_HEX = re.compile(r"^#([0-9a-fA-F]{6})$")


def parse_colour(key: Any) -> Tuple[int, int, int]:
    """Parse a colour key: "255,0,0", "[255, 0, 0]", "#ff0000" or a 3-sequence of ints."""
    if isinstance(key, (tuple, list)) and len(key) == 3 and all(_is_int(v) for v in key):
        rgb = tuple(int(v) for v in key)
    elif isinstance(key, str) and _COLOUR_HEX.match(key.strip()):
        hex_digits = key.strip()[1:]
        rgb = tuple(int(hex_digits[i : i + 2], 16) for i in (0, 2, 4))
    elif isinstance(key, str) and _COLOUR_LIST.match(key.strip()):
        rgb = tuple(int(v) for v in _COLOUR_LIST.match(key.strip()).groups())
    else:
        rgb = ()
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise ValueError(
            f"bad colour key {key!r} in data.mask_mapping: write colours as "
            f'"255,0,0", "[255, 0, 0]" or "#ff0000" (each channel 0..255)'
        )
    return rgb  # type: ignore[return-value]


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_value_key(key: Any) -> bool:
    """Whether a mapping key names a pixel value (an int, or a string of digits)."""
    return _is_int(key) or (isinstance(key, str) and key.strip().isdigit())


def parse_mask_mapping(value: Any) -> MaskMapping:
    """Turn a ``data.mask_mapping`` value into a ``MaskMapping``; invalid forms raise ValueError."""
    if isinstance(value, MaskMapping):
        return value
    if isinstance(value, str):
        named = {"identity": IdentityMapping, "binary": BinaryMapping, "nonzero": NonzeroMapping}
        key = value.strip().lower()
        if key not in named:
            raise ValueError(
                f"unknown data.mask_mapping {value!r}; valid names: {', '.join(MASK_MAPPING_NAMES)}, "
                f'or a {{value: class}} / {{"R,G,B": class}} mapping'
            )
        return named[key]()
    if not isinstance(value, dict) or not value:
        raise ValueError(
            f"data.mask_mapping must be one of {', '.join(MASK_MAPPING_NAMES)} or a non-empty "
            f"{{value: class}} / {{\"R,G,B\": class}} mapping, got {value!r}"
        )
    classes = {key: _parse_class(key, cls) for key, cls in value.items()}
    if all(_is_value_key(key) for key in classes):
        return ValueMapping({int(key): cls for key, cls in classes.items()})
    if any(_is_value_key(key) for key in classes):
        raise ValueError(
            f"data.mask_mapping mixes pixel values and colours: {value!r}; "
            "use only values (grey masks) or only colours (RGB masks)"
        )
    return ColourMapping(_colour_table(classes))


def _parse_class(key: Any, cls: Any) -> int:
    """Check that the class a mapping key maps to is a non-negative int."""
    if not _is_int(cls) or cls < 0:
        raise ValueError(
            f"data.mask_mapping maps {key!r} to {cls!r}; classes must be integers "
            f"0..num_classes-1 (or {IGNORE_INDEX} = ignore)"
        )
    return int(cls)


def _colour_table(classes: Dict[Any, int]) -> Dict[Tuple[int, int, int], int]:
    """Parse colour keys, rejecting two keys that name the same colour."""
    table: Dict[Tuple[int, int, int], int] = {}
    for key, cls in classes.items():
        rgb = parse_colour(key)
        if rgb in table:
            raise ValueError(f"data.mask_mapping lists colour {key!r} twice (as {rgb})")
        table[rgb] = cls
    return table


def format_values(values: List[int], limit: int = 10) -> str:
    """``{0, 3, 7}``, sorted, with at most ``limit`` values shown."""
    values = sorted(values)
    text = ", ".join(str(v) for v in values[:limit])
    if len(values) > limit:
        text += f", ... ({len(values) - limit} more)"
    return "{" + text + "}"
