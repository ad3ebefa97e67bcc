"""One declaration per request field: its API path, default and allowed values.

Each service's module of the API layer (`mic2e_services.api`) declares its fields here
once. Everything else reads them: the model's input checks (every bad field at once,
before a request is costed or queued), the servicers' conversions (what an unset field
becomes), the servers' profile settings (their ranges), the orchestrator (its own field
names in errors) and the docs (a test holds the proto comments to them). No torch, no
protobuf.

Why a typed module and not protovalidate rules in the protos: the ranges here are checked
in the servers either way, and defaults are server-side (a profile changes them), which
protovalidate cannot express; the protos document them in words, checked against these.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mic2e_services.errors import FieldViolation, InvalidArgument

__all__ = ["MASKS", "Field", "Request", "raise_if"]


@dataclass(frozen=True)
class Field:
    """A request field. `path` is its name in the API (``options.steps``); `kind` one of
    int, float, bool, str, list (a repeated field). Numbers lie in [lo, hi] (and on a
    multiple of `multiple_of`); strings are at most `max_chars` long and, when `required`,
    not blank; lists hold at most `max_items` (every repeated field has a cap: its length
    is checked before any item is decoded or costed) and, when `required`, at least one.
    `default`: what an unset field becomes (None: the field has no value unless the caller
    gives one)."""

    path: str
    kind: type
    default: Any = None
    lo: float | None = None
    hi: float | None = None
    #: `lo` itself is not allowed (e.g. strength in (0, 1]).
    lo_exclusive: bool = False
    multiple_of: int | None = None
    max_chars: int | None = None
    max_items: int | None = None
    required: bool = False
    #: The values a text field may take (an API enum, by name), None: any.
    choices: tuple[str, ...] | None = None

    def problem(self, value: Any) -> str | None:
        """Why `value` is not allowed here, or None."""
        if value is None:
            return "is required" if self.required else None
        if self.kind is str:
            if not isinstance(value, str):
                return f"must be text, got {type(value).__name__}"
            if self.required and not value.strip():
                return "must not be empty"
            if self.max_chars is not None and len(value) > self.max_chars:
                return f"at most {self.max_chars} characters, got {len(value)}"
            if self.choices is not None and value not in self.choices:
                return f"must be {self.range()}, got {value!r}"
            return None
        if self.kind is list:
            try:
                count = len(value)
            except TypeError:
                return f"must be a list, got {type(value).__name__}"
            if self.required and count == 0:
                return "at least one is required"
            if self.max_items is not None and count > self.max_items:
                return f"at most {self.max_items} items, got {count}"
            return None
        if self.kind is bool:
            return None if isinstance(value, bool) else "must be true or false"
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or (
                self.kind is int and not isinstance(value, numbers.Integral)):
            return f"must be {'an integer' if self.kind is int else 'a number'}, got {value!r}"
        if not math.isfinite(value):
            return f"must be a finite number, got {value}"
        below = self.lo is not None and (value <= self.lo if self.lo_exclusive
                                          else value < self.lo)
        if below or (self.hi is not None and value > self.hi):
            return f"must be {self.range()}, got {value}"
        if self.multiple_of and value % self.multiple_of:
            return f"must be a multiple of {self.multiple_of}, got {value}"
        return None

    def violations(self, value: Any) -> list[FieldViolation]:
        """[the violation] if `value` is not allowed here, else []."""
        problem = self.problem(value)
        return [] if problem is None else [FieldViolation(self.path, problem)]

    def documented(self) -> list[str]:
        """What the field's API documentation must say of it (a test holds the proto
        comments to this): its range, and its default where it has one."""
        said = [self.range()] if self.kind is not bool else []
        if self.kind is bool and self.default is not None:
            said.append(f"Default {'on' if self.default else 'off'}")
        elif self.default not in (None, ""):
            value = self.default if self.kind is str else _number(self.default)
            said.append(f"Default {value}")
        return said

    def range(self) -> str:
        """The allowed values in words, as the docs state them ("1 to 100")."""
        if self.kind is list:
            return f"1 to {self.max_items}" if self.required else f"at most {self.max_items}"
        if self.choices is not None:
            return "one of " + ", ".join(self.choices)
        if self.kind is str:
            chars = f"at most {self.max_chars} characters" if self.max_chars else "any text"
            return f"1 to {self.max_chars} characters" if self.required else chars
        lo, hi = _number(self.lo), _number(self.hi)
        if self.lo_exclusive:
            return f"above {lo}" + (f" and at most {hi}" if self.hi is not None else "")
        if self.lo is not None and self.hi is not None:
            return f"{lo} to {hi}"
        return f"at least {lo}" if self.lo is not None else f"at most {hi}"


#: Masks at the image's size (ClearRequest, InpaintRequest), merged into one: a few per
#: object, a handful of objects.
MASKS = Field("masks", list, required=True, max_items=32)


def _number(value: float | None) -> str:
    if isinstance(value, int) and value >= 2**32 and (value + 1) & value == 0:
        return f"2^{value.bit_length()}-1"
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Request:
    """The declared fields of one API request message: `message` is its proto name
    (``ClearRequest``), `fields` maps the plain query's attribute names to their `Field`."""

    message: str
    fields: Mapping[str, Field]

    def check(self, values: Any) -> list[FieldViolation]:
        """Every violation among the attributes of `values` (a query object)."""
        return [v for name, field in self.fields.items()
                for v in field.violations(getattr(values, name, None))]

    def defaults(self) -> dict[str, Any]:
        """Attribute name -> default, for the fields that have one."""
        return {name: f.default for name, f in self.fields.items() if f.default is not None}


def raise_if(violations: Iterable[FieldViolation]) -> None:
    """Raise one `InvalidArgument` naming every violation, if there is any."""
    violations = list(violations)
    if violations:
        first, *rest = violations
        raise InvalidArgument(first.field, first.description, *rest)
