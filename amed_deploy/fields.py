"""Strict readers of record fields. Records come from files anyone can edit, so every field is read
strictly: `int(1.7)`, `int(True)` or a 300-digit int from `1e300` would otherwise be trusted downstream.
Shared by every record reader (graph metadata, sampler configurations, manifests)."""

from __future__ import annotations

import json
import math

from .errors import AmedError, short_repr

MAX_NESTING = 32  # JSON depth of a record: real ones are 3 deep; deeper ones hit recursion limits


class FieldError(AmedError, ValueError):
    """One field of a record has the wrong type or is out of bounds (the caller names the record)."""


def strict_int(value: object, name: str, lo: int, hi: int) -> int:
    """An int, or an integral float such as 4.0, within lo..hi; never a bool, string or 1.7."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and lo <= value <= hi:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi:
        return value
    raise FieldError(f"{name} must be an integer in {lo}..{hi}, got {short_repr(value)}")


def strict_float(value: object, name: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    """A finite number within [lo, hi] (ints allowed, bools and strings not; 1e400 parses to inf: refused)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            v = float(value)
        except OverflowError:  # a huge int
            v = math.inf
        if math.isfinite(v) and lo <= v <= hi:
            return v
    bounds = "" if (lo, hi) == (-math.inf, math.inf) else f" in [{lo:g}, {hi:g}]"
    raise FieldError(f"{name} must be a finite number{bounds}, got {short_repr(value)}")


def strict_str(value: object, name: str) -> str:
    """A string, not something str() would turn into one."""
    if isinstance(value, str):
        return value
    raise FieldError(f"{name} must be a string, got {short_repr(value)}")


def strict_bool(value: object, name: str) -> bool:
    """true or false, not 'false' (which bool() makes True) or 0/1."""
    if isinstance(value, bool):
        return value
    raise FieldError(f"{name} must be true or false, got {short_repr(value)}")


def strict_list(value: object, name: str, length: int | None = None) -> list:
    """A JSON array (of the given length), not a string or object that would iterate."""
    if isinstance(value, (list, tuple)) and (length is None or len(value) == length):
        return list(value)
    what = "a list" if length is None else f"a list of {length}"
    raise FieldError(f"{name} must be {what}, got {short_repr(value)}")


def check_nesting(value: object, what: str, limit: int = MAX_NESTING) -> None:
    """Refuse JSON nested deeper than `limit` (checked without recursion, so it cannot overflow the stack):
    asdict/json.dumps of a deep record later would raise RecursionError."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list, tuple)):
            if depth > limit:
                raise AmedError(f"{what} is nested too deeply (more than {limit} levels)")
            items = v.values() if isinstance(v, dict) else v
            stack.extend((item, depth + 1) for item in items if isinstance(item, (dict, list, tuple)))


def loads_json(text: str | bytes, what: str) -> object:
    """json.loads with one AmedError for bad syntax, numbers too long for an int, or deep nesting."""
    try:
        return json.loads(text)
    except RecursionError:
        raise AmedError(f"{what} is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, and ints over Python's 4300-digit limit
        raise AmedError(f"{what} is not valid JSON: {e}") from None
