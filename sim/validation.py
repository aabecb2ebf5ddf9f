"""The shared checks of single config values: numbers, integers, booleans and choices.

Every config group checks its values with these, so that one rule holds everywhere: a float option
is a finite number (``v > 0`` alone lets ``inf`` through, and ``lr=inf`` would run for minutes and
end in NaN), booleans are not numbers, and a misspelt choice gets a "did you mean" suggestion.
Each raises :class:`~sim.errors.ConfigError` naming the field.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from typing import Any, TypeGuard

from .errors import ConfigError


def is_number(value: Any) -> TypeGuard[float]:
    """A finite int or float (booleans, strings, ``inf`` and ``nan`` are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def did_you_mean(word: Any, options: Iterable[str]) -> str:
    """``" Did you mean X?"`` for the closest option, or ``""`` when none is close."""
    matches = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" Did you mean {matches[0]}?" if matches else ""


def describe_range(lo: float | None, hi: float | None, lo_open: bool = False, hi_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f"a number in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"a finite number {'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f"a finite number {'<' if hi_open else '<='} {hi}"
    return "a finite number"


def in_range(value: float, lo: float | None, hi: float | None, lo_open: bool = False, hi_open: bool = False) -> bool:
    above = lo is None or (value > lo if lo_open else value >= lo)
    below = hi is None or (value < hi if hi_open else value <= hi)
    return above and below


def number(
    field: str,
    value: Any,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    allowed: str | None = None,
    detail: str = "",
) -> float:
    """``value`` as a float when it is a finite number in the range; ConfigError otherwise."""
    if not (is_number(value) and in_range(value, lo, hi, lo_open, hi_open)):
        raise ConfigError(field, value, allowed or describe_range(lo, hi, lo_open, hi_open), detail)
    return float(value)


def integer(
    field: str,
    value: Any,
    lo: int | None = None,
    hi: int | None = None,
    *,
    allowed: str | None = None,
    detail: str = "",
) -> int:
    """``value`` when it is an integer in ``[lo, hi]`` (a float such as 2.0 is refused: a typo, not a count)."""
    if not (is_int(value) and in_range(value, lo, hi)):
        if allowed is None:
            allowed = (
                f"an integer in [{lo}, {hi}]"
                if lo is not None and hi is not None
                else f"an integer >= {lo}"
                if lo is not None
                else "an integer"
            )
        raise ConfigError(field, value, allowed, detail)
    return value


def optional_integer(field: str, value: Any, lo: int, meaning: str) -> int | None:
    """None, or an integer >= ``lo``; ``meaning`` says what null means."""
    if value is None:
        return None
    return integer(field, value, lo, allowed=f"null ({meaning}) or an integer >= {lo}")


def boolean(field: str, value: Any, meaning: str = "") -> bool:
    """A real boolean: ``"yes"`` or 1 is refused rather than read as truthy."""
    if not isinstance(value, bool):
        raise ConfigError(field, value, f"true or false{' ' + meaning if meaning else ''}")
    return value


def choice(field: str, value: Any, options: Iterable[str], detail: str = "") -> str:
    """One of ``options``, with the closest one suggested when ``value`` is a typo."""
    options = tuple(options)
    if value not in options:
        raise ConfigError(field, value, f"one of {', '.join(options)}", (detail + did_you_mean(value, options)).strip())
    return value
