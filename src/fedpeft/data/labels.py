"""Class labels read from people's files: one spelling per class, numbers in numeric order.

A label may arrive as a JSON number (``1``, ``1.0``), a string (``"1"``, ``" 1.0 "``) or a
word (``"positive"``). Numbers are canonicalised so that ``1``, ``1.0``, ``"1.0"`` and
``"01"`` are one class (``"1"``); NaN or infinite labels and non-scalar ones (lists,
objects) are refused with the row that holds them. The class order is numeric when every
label is a number (``"2"`` before ``"10"``) and lexicographic otherwise, so class ids do not
depend on the row order of the file.
"""

from __future__ import annotations

import math
import re

from fedpeft.errors import FedpeftError

_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_NOT_FINITE = {"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}
_EXACT = 2**53  # floats are exact integers up to here


def _number(x: float) -> str:
    """The canonical spelling of a finite number: an integer without ``.0``, else ``repr``."""
    if x.is_integer() and abs(x) < _EXACT:
        return str(int(x))
    return repr(x)


def normalize_label(value: object, where: str) -> str | None:
    """The canonical class name of one raw label (``None``: the label is missing).

    ``where`` names the file and row for the error a person reads."""
    if value is None:
        return None
    if isinstance(value, bool):  # before int: True is an int in Python
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FedpeftError(
                f"{where}: the label is {value!r}, not a class; drop the row or give it a class."
            )
        return _number(value)
    if not isinstance(value, str):
        raise FedpeftError(
            f"{where}: the label is a {type(value).__name__}, expected a string or a number."
        )
    text = value.strip()
    if not text:
        return None
    if text.lower() in _NOT_FINITE:
        raise FedpeftError(
            f"{where}: the label is {text!r}, not a class; drop the row or give it a class."
        )
    if _NUMBER.fullmatch(text):
        if not math.isfinite(number := float(text)):  # e.g. "1e400"
            raise FedpeftError(
                f"{where}: the label {text!r} is too large a number to name a class; "
                "give it a class."
            )
        return _number(number)
    return text


def is_number(name: str) -> bool:
    return _NUMBER.fullmatch(name) is not None


def label_order(names: set[str] | list[str]) -> list[str]:
    """Distinct class names in a stable order: numeric when all are numbers, else sorted."""
    distinct = set(names)
    if distinct and all(is_number(n) for n in distinct):
        return sorted(distinct, key=lambda n: (float(n), n))
    return sorted(distinct)
