"""Weighted means of |value|, with their uncertainty, as sums that merge with ``+``: what the
network audit accumulates for its Taylor coefficients (Wunsch et al., arXiv:1803.08782) and
the multivariate tests for their attribution, chunk by chunk and worker by worker.

The mean of |v| with weights w is Σw|v| / Σw; its variance, linearised in the weights (the
ratio estimator's, e.g. Cochran, *Sampling Techniques*, Wiley 1977, §6.3),
(Σw²v² − 2m Σw²|v| + m² Σw²) / (Σw)².
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class AbsMeanSums:
    """Sums for weighted means of |value| per (group, quantity), mergeable with ``+``.

    ``n``, ``sw``, ``sww``: events, Σw, Σw² per group ``(G,)``; ``a``, ``b``, ``c``: Σw|v|,
    Σw²|v|, Σw²v² per group and quantity ``(G, K)``.
    """

    n: np.ndarray
    sw: np.ndarray
    sww: np.ndarray
    a: np.ndarray
    b: np.ndarray
    c: np.ndarray

    @classmethod
    def zeros(cls, groups: int, size: int) -> AbsMeanSums:
        return cls(n=np.zeros(groups, np.int64), sw=np.zeros(groups), sww=np.zeros(groups),
                   a=np.zeros((groups, size)), b=np.zeros((groups, size)),
                   c=np.zeros((groups, size)))

    def add(self, group: int, w: np.ndarray, values: np.ndarray) -> None:
        """Add events with weights ``w`` ``(n,)`` and values ``(n, K)`` to ``group``."""
        if len(w) == 0:
            return
        v = np.abs(values)  # a new array: squared in place below
        w2 = w * w
        self.n[group] += len(w)
        self.sw[group] += w.sum()
        self.sww[group] += w2.sum()
        self.a[group] += w @ v
        self.b[group] += w2 @ v
        self.c[group] += w2 @ np.multiply(v, v, out=v)

    def __add__(self, other: AbsMeanSums) -> AbsMeanSums:
        if self.a.shape != other.a.shape:
            raise ValueError(f"cannot merge sums of shape {self.a.shape} and {other.a.shape}")
        return AbsMeanSums(*(getattr(self, f) + getattr(other, f)
                             for f in ("n", "sw", "sww", "a", "b", "c")))

    def means(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, uncertainty)`` of |v| per group and quantity (NaN where Σw ≤ 0)."""
        sw = self.sw[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            m = np.where(sw > 0, self.a / sw, np.nan)
            var = (self.c - 2 * m * self.b + m * m * self.sww[:, None]) / (sw * sw)
        return m, np.sqrt(np.maximum(var, 0.0))
