"""Name -> class registries, one per kind, filled by a decorator on import.

Each registry imports its plugin package (``models``, ``datasets``,
``utils.losses``, ``utils.transforms``) on its first lookup, so code that
only looks names up (the config layer, the builders) imports no plugin itself.

Example::

    from utils.registry import MODELS

    @MODELS.register("unet")
    class UNet(nn.Module): ...

    model = MODELS.build("unet", in_channels=3, out_channels=1)
"""
from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable, Dict, List, Optional, TypeVar

T = TypeVar("T")


class Registry:
    """A mapping from names to classes (or factories) of one kind."""

    def __init__(self, kind: str, package: Optional[str] = None) -> None:
        self.kind, self.package = kind, package
        self._entries: Dict[str, Callable[..., Any]] = {}
        self._loaded = False

    def _load(self) -> None:
        """Import the package whose modules register this kind, on the first lookup."""
        if not self._loaded:
            self._loaded = True
            if self.package is not None:
                importlib.import_module(self.package)

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding the decorated class under ``name``; duplicates raise."""

        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered "
                    f"(by {self._entries[name].__module__}.{self._entries[name].__qualname__})"
                )
            self._entries[name] = obj  # type: ignore[assignment]
            return obj

        return decorator

    def get(self, name: str) -> Callable[..., Any]:
        """The entry called ``name``; an unknown name raises listing the valid ones."""
        self._load()
        if name not in self._entries:
            raise KeyError(self.unknown_message(name))
        return self._entries[name]

    def unknown_message(self, name: str) -> str:
        valid = ", ".join(self.names()) or "(none registered)"
        msg = f"unknown {self.kind} {name!r}; valid {self.kind} names: {valid}"
        close = difflib.get_close_matches(str(name), self.names(), n=1)
        if close:
            msg += f" (did you mean {close[0]!r}?)"
        return msg

    def build(self, name: str, **kwargs: Any) -> Any:
        """Instantiate entry ``name`` with keyword arguments."""
        return self.get(name)(**kwargs)

    def names(self) -> List[str]:
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


MODELS = Registry("model", "models")
DATASETS = Registry("dataset", "datasets")
LOSSES = Registry("loss", "utils.losses")
TRANSFORMS = Registry("transform", "utils.transforms")
