"""What counts as a number in the JSON records and benchmark results the scaling tools read.

JSON's ``true`` loads as a Python bool, which is an int: a field that says ``true`` where a count or a time
belongs is a mistake to name, not the number 1.
"""

from __future__ import annotations

import math
from typing import Any


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_positive(v: Any) -> bool:
    return is_number(v) and v > 0


def is_whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
