"""Checking a YAML value against a typing annotation, and naming both in messages.

The config layer checks every key against its dataclass field's annotation,
and the registries check the keyword arguments of a registered class against
its constructor's. Supported: builtins, ``Optional``, ``Union``, ``Literal``,
``List``, ``Tuple``, ``Dict`` and ``Any``; ints become floats where a float is
expected, lists become tuples.
"""
from __future__ import annotations

import inspect
import re
import typing
from typing import Any, Dict, List, Literal, Sequence, Tuple, Union



def describe_type(tp: Any) -> str:
    """A short human name for a typing annotation."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return "any value"
    if tp is type(None):
        return "null"
    if origin is Union:
        return " or ".join(describe_type(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, List, Sequence, typing.get_origin(Sequence[int])):
        return f"list of {describe_type(args[0])}" if args else "list"
    if origin in (tuple, Tuple):
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {describe_type(args[0])}"
        return f"list of {len(args)} ({', '.join(describe_type(a) for a in args)})"
    if origin in (dict, Dict):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def describe_value(value: Any) -> str:
    """"int 3", "string 'abc'": the YAML kind of a value and its (shortened) text."""
    kind = {bool: "bool", int: "int", float: "float", str: "string", list: "list",
            dict: "mapping", type(None): "null"}.get(type(value), type(value).__name__)
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{kind} {text}"


_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class TypeMismatch(Exception):
    """``value`` at ``subpath`` is not of the ``expected`` type (the caller names the key)."""

    def __init__(self, subpath: str, expected: str, value: Any) -> None:
        super().__init__(subpath)
        self.subpath, self.expected, self.value = subpath, expected, value


def check_type(value: Any, tp: Any, subpath: str = "") -> Any:
    """Return ``value`` converted to ``tp`` (int -> float, list -> tuple) or raise.

    Supports the annotations used in this project: builtins, ``Optional``,
    ``Union``, ``Literal``, ``List``, ``Tuple``, ``Dict`` and ``Any``.
    """
    if tp is Any or tp is inspect.Parameter.empty:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is type(None):
        if value is None:
            return None
        raise TypeMismatch(subpath, "null", value)
    if origin is Union:
        for option in args:
            try:
                return check_type(value, option, subpath)
            except TypeMismatch:
                continue
        raise TypeMismatch(subpath, describe_type(tp), value)
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise TypeMismatch(subpath, describe_type(tp), value)
    if origin in (list, tuple, dict) or tp in (list, tuple, dict):
        return _check_container(value, tp, origin or tp, args, subpath)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            return float(value)  # PyYAML reads 1e-4 (no dot) as a string
        raise TypeMismatch(subpath, "float", value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeMismatch(subpath, "int", value)
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise TypeMismatch(subpath, describe_type(tp), value)
    return value  # an annotation we do not model: accept as is


def _check_container(value: Any, tp: Any, origin: Any, args: Tuple[Any, ...], subpath: str) -> Any:
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeMismatch(subpath, describe_type(tp), value)
        if not args:
            return dict(value)
        return {check_type(k, args[0], f"{subpath}.{k}"): check_type(v, args[1], f"{subpath}.{k}")
                for k, v in value.items()}
    if not isinstance(value, (list, tuple)):
        raise TypeMismatch(subpath, describe_type(tp), value)
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if len(value) != len(args):
            raise TypeMismatch(subpath, describe_type(tp), value)
        return tuple(check_type(v, a, f"{subpath}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    item_tp = args[0] if args else Any
    items = [check_type(v, item_tp, f"{subpath}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items
