"""Reading a step's parameters (a JSON object from the workspace's settings)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def get(params: Mapping[str, Any], key: str, kind: type[T], default: T) -> T:
    """``params[key]`` checked to be a ``kind`` (ints are accepted for floats)."""
    value = params.get(key, default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ValueError(f"parameter {key!r} must be a {kind.__name__}")
    return value


def strings(params: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = params.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"parameter {key!r} must be a list of strings")
    return tuple(value)


def only(params: Mapping[str, Any], *allowed: str) -> Mapping[str, Any]:
    """``params`` if it has no other keys than ``allowed``; ValueError otherwise."""
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        known = ", ".join(allowed) if allowed else "none"
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)} (known: {known})")
    return params
