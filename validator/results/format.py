"""The one way a p-value is written, in every face of a run (terminal, reports, JUnit, the
dashboard, the gate's reasons).

- three decimals down to 10⁻³ (``0.042``), two significant digits in scientific notation
  below (``3.1e-07``);
- a bound as a bound: ``< 1.0e-04`` for a toy p-value no toy reached, or a randomization
  p-value at its floor 1/(1 + replicas);
- zero never as 0: a p-value that underflowed (scipy's survival functions return 0 past
  ~1e-308) is ``< 1e-300``;
- no p-value (a test that did not run): ``–``.
"""

from __future__ import annotations

import math
from typing import Any

#: Below this a double-precision p-value is an underflow, shown as a bound.
UNDERFLOW = 1e-300
#: Shown for a missing p-value (a test that did not run).
MISSING = "–"


def _number(p: Any) -> float | None:
    try:
        value = float(p)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def format_p(p: Any, *, bound: bool = False, floor: float | None = None) -> str:
    """``p`` as every face writes it (see the module docstring).

    ``bound``: ``p`` is an upper bound (no toy reached the statistic). ``floor``: the
    smallest value the method resolves (e.g. 1/(1 + replicas)); a ``p`` at it is a bound.
    """
    value = _number(p)
    if value is None:
        return MISSING
    if floor is not None and value <= floor * (1 + 1e-4):
        return f"< {floor * (1 + 1e-4):.1e}"
    if value < UNDERFLOW:
        return f"< {UNDERFLOW:.0e}"
    text = f"{value:.1e}" if value < 1e-3 else f"{value:.3f}"
    return f"< {text}" if bound else text


def neg_log10(p: Any) -> float | None:
    """-log10 p for plots; an underflowed p-value at the cap -log10(1e-300) = 300 (drawn as a
    bound by the caller), None without a p-value."""
    value = _number(p)
    if value is None:
        return None
    return abs(-math.log10(max(value, UNDERFLOW)))  # abs: p = 1 is 0, never -0
