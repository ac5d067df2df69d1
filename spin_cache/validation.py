"""Declarative checks for numeric and list parameters, shared by the command line and the Python API.

Each parameter is described once by a :class:`Constraint`; the command line turns it into an argparse ``type``
(:func:`arg_type`), the Python API calls :func:`check` (or :func:`check_all` on a settings object). The message is
the same either way: the parameter, the rule and the value given.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InputError


@dataclass(frozen=True)
class Constraint:
    """A rule for one value: a number within bounds, or a non-empty list of such numbers or of names.

    Parameters
    ----------
    kind
        ``"int"``, ``"float"``, ``"ints"``/``"floats"`` (a non-empty list of numbers), ``"names"`` (a non-empty
        list of names, optionally from `choices`) or ``"name"`` (one name from `choices`).
    low, high
        Bounds for numbers (None: unbounded). NaN and infinities are always refused.
    low_open, high_open
        Whether each bound is excluded.
    choices
        For ``"names"`` and ``"name"``: the allowed names (None: any non-empty name).
    """

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | None = None

    def describe(self) -> str:
        """The rule in words, e.g. "an integer >= 1" or "numbers in (0, 1]"."""
        noun = {"int": "an integer", "float": "a number", "ints": "integers", "floats": "numbers"}.get(self.kind)
        if self.kind == "names":
            return "a comma-separated list of " + ("/".join(self.choices) if self.choices else "names")
        if self.kind == "name":
            return ("one of " + ", ".join(self.choices)) if self.choices else "a name"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{noun} in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            return f"{noun} {'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{noun} {'<' if self.high_open else '<='} {self.high:g}"
        return f"finite {noun}"

    def _number_ok(self, v: float) -> bool:
        if not math.isfinite(v):
            return False
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            return False
        return not (self.high is not None and (v >= self.high if self.high_open else v > self.high))

    def validate(self, value: Any) -> Any:
        """The value, converted (strings are parsed), or ValueError with the rule in words."""
        if self.kind in ("int", "float"):
            return self._one(value)
        if self.kind == "name":
            if not isinstance(value, str) or not value.strip() or (self.choices and value not in self.choices):
                raise ValueError(f"expected {self.describe()}, got {value!r}")
            return value
        items = value.split(",") if isinstance(value, str) else list(value) if value is not None else []
        items = [v.strip() if isinstance(v, str) else v for v in items]
        if not items or any(v == "" for v in items):
            raise ValueError(f"expected {self.describe()}, got {value!r} (an empty entry)")
        if self.kind == "names":
            bad = [v for v in items if self.choices and v not in self.choices]
            if bad:
                raise ValueError(f"expected {self.describe()}, got {bad[0]!r}")
            return list(items)
        one = Constraint(self.kind[:-1], self.low, self.high, self.low_open, self.high_open)
        return tuple(one._one(v) for v in items)

    def _one(self, value: Any) -> Any:
        try:
            if self.kind == "int":
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError
                number: float = int(value)
            else:
                number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected {self.describe()}, got {value!r}") from None
        if not self._number_ok(number):
            raise ValueError(f"expected {self.describe()}, got {value!r}")
        return number


POSITIVE_INT = Constraint("int", low=1)
NON_NEGATIVE_INT = Constraint("int", low=0)
POSITIVE_FLOAT = Constraint("float", low=0, low_open=True)
POSITIVE_FLOATS = Constraint("floats", low=0, low_open=True)
FRACTIONS = Constraint("floats", low=0, high=1, low_open=True)  # eta: a share of a layer's saliency
PERCENTS = Constraint("floats", low=0, high=100, low_open=True)
POSITIVE_INTS = Constraint("ints", low=1)
NAMES = Constraint("names")
FOLD_COUNT = Constraint("int", low=2)  # cross-validation folds: two at the least


def check(name: str, value: Any, constraint: Constraint) -> Any:
    """Validate one value for the Python API: the converted value, or InputError naming the parameter."""
    try:
        return constraint.validate(value)
    except ValueError as exc:
        raise InputError(f"{name}: {exc}") from None


def check_all(values: Mapping[str, Any], constraints: Mapping[str, Constraint]) -> dict[str, Any]:
    """Validate every named value that has a constraint (None means "use the default" and is skipped)."""
    return {
        name: check(name, values[name], rule) if values.get(name) is not None else values.get(name)
        for name, rule in constraints.items()
        if name in values
    }


def arg_type(constraint: Constraint) -> Callable[[str], Any]:
    """An argparse ``type`` for `constraint`: argparse reports the option name with the message."""

    def parse(text: str) -> Any:
        try:
            return constraint.validate(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = constraint.describe()
    return parse


def choices_type(choices: Iterable[str]) -> Callable[[str], list[str]]:
    """An argparse ``type`` for a non-empty comma-separated list drawn from `choices`."""
    return arg_type(Constraint("names", choices=tuple(choices)))
