"""numba, where it can be imported: the compiled kernels of the statistics and of the fill use
it, and fall back to their numpy formulation (the same results to rounding) where it cannot
(a Python it has no wheel for yet)."""

from __future__ import annotations

from typing import Any

numba: Any
try:  # pragma: no cover - the import itself
    import numba

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    numba = None
    HAVE_NUMBA = False
