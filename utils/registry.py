"""Name -> class registries, one per kind, filled by a decorator on import.

Each registry imports its plugin package (``models``, ``datasets``,
``utils.losses``, ``utils.transforms``) on its first lookup, so code that
only looks names up (the config layer, the builders) imports no plugin itself.

Example::

    from utils.registry import MODELS

    @MODELS.register("unet")
    class UNet(nn.Module): ...

    model = MODELS.build("unet", in_channels=3, out_channels=1)

:func:`check_arguments` checks keyword arguments against a registered class's
constructor (unknown, framework-set or missing keys); the config layer and
``build_transforms`` both use it.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import typing
from typing import Any, Callable, Collection, Dict, List, Optional, TypeVar

from utils.errors import ConfigError

T = TypeVar("T")

#: ``check_value(key, value, annotation) -> value``: checks (and may convert) one argument.
ValueCheck = Callable[[str, Any, Any], Any]


class ArgumentError(ConfigError):
    """A keyword argument a constructor does not take, or a required one missing.

    ``problem`` is ``"unknown"``, ``"provided"`` (set by the framework, not the
    user) or ``"missing"``; ``key`` is the argument, ``accepted`` the names
    the user may give and ``annotation`` the missing argument's type. Callers
    with more context (the config file, the key path) re-word it from these.
    """

    def __init__(self, message: str, problem: str, key: str, accepted: List[str], annotation: Any = None) -> None:
        super().__init__(message)
        self.problem, self.key, self.accepted, self.annotation = problem, key, accepted, annotation


def suggestion(name: str, valid: Collection[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``valid``, or an empty string."""
    close = difflib.get_close_matches(str(name), list(valid), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def signature_params(obj: Any, provided: Collection[str] = ()) -> Dict[str, inspect.Parameter]:
    """Keyword parameters of ``obj``'s constructor (or of a factory function), annotations resolved.

    ``self``, ``*args``, ``**kwargs`` and the names in ``provided`` (set by
    the framework) are left out.
    """
    target = obj.__init__ if inspect.isclass(obj) else obj
    params = dict(inspect.signature(target).parameters)
    params.pop("self", None)
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - an annotation that does not resolve: keep the raw ones
        hints = {}
    return {name: p.replace(annotation=hints.get(name, p.annotation)) for name, p in params.items()
            if name not in provided and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def check_arguments(obj: Any, kwargs: Dict[str, Any], what: str, provided: Collection[str] = (),
                    check_value: Optional[ValueCheck] = None) -> Dict[str, Any]:
    """``kwargs`` checked against ``obj``'s constructor; ``what`` names it in messages (``transform 'resize'``).

    Keys are checked in order: one the constructor does not take, or one in
    ``provided``, raises :class:`ArgumentError`; the others go through
    ``check_value`` when given. Then a required argument not given raises.
    Returns the (checked) arguments.
    """
    params = signature_params(obj, provided)
    out: Dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in provided:
            raise ArgumentError(f"{what}: {key!r} is set by the framework; remove it", "provided", key, list(params))
        if key not in params:
            raise ArgumentError(f"{what}: unknown argument {key!r}{suggestion(key, params)}; "
                                f"accepted: {', '.join(params) or '(none)'}", "unknown", key, list(params))
        out[key] = value if check_value is None else check_value(key, value, params[key].annotation)
    for name, param in params.items():
        if param.default is inspect.Parameter.empty and name not in out:
            raise ArgumentError(f"{what}: needs the argument {name!r}", "missing", name, list(params),
                                param.annotation)
    return out


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
        return f"unknown {self.kind} {name!r}; valid {self.kind} names: {valid}{suggestion(name, self.names())}"

    def check_arguments(self, name: str, kwargs: Dict[str, Any], provided: Collection[str] = (),
                        check_value: Optional[ValueCheck] = None) -> Dict[str, Any]:
        """:func:`check_arguments` for entry ``name`` (an unknown name raises as :meth:`get` does)."""
        return check_arguments(self.get(name), kwargs, f"{self.kind} {name!r}", provided, check_value)

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
