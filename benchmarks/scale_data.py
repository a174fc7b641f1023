"""Synthetic samples for the scale benchmark: N weighted simulated + N data events x F features.

Written once per (N, F) as several float32 parquet files under a cache folder outside the
repository (default ``/tmp/validator-bench``) and reused by every later run. The simulation has
signed weights (about 8% negative, like an NLO generator's); the data differ from it by a small
shift in a few features so that some tests fail, as in a real comparison. Features mix smooth
(Gaussian, exponential, log-normal) and integer-valued (multiplicity-like) shapes and are
correlated in pairs, so the 2D tests have structure to find.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: Rows per parquet file: several files per sample at every size, the way analyses store them.
ROWS_PER_FILE = 1_000_000
#: Fewest files per sample (a 1M sample is still split, so partitioning is exercised).
MIN_FILES = 4
#: Rows per parquet row group (the unit a Dask worker or a job may read on its own).
ROW_GROUP_ROWS = 250_000
#: Default cache folder: outside the repository, reused across runs.
DEFAULT_CACHE = Path("/tmp/validator-bench")
#: Fraction of simulated events with a negative weight.
NEGATIVE_FRACTION = 0.08


def feature_names(n_features: int) -> list[str]:
    return [f"f{k:02d}" for k in range(n_features)]


def _block(rng: np.random.Generator, n: int, n_features: int, data: bool) -> dict[str, np.ndarray]:
    """``n`` events: correlated latent Gaussians, each feature a different shape of one."""
    z = rng.standard_normal((n, n_features), dtype=np.float32)
    z[:, 1::2] = 0.6 * z[:, 0::2][:, : z[:, 1::2].shape[1]] + 0.8 * z[:, 1::2]  # pairs correlate
    cols: dict[str, np.ndarray] = {}
    for k, name in enumerate(feature_names(n_features)):
        v = z[:, k]
        shift = np.float32(0.03 if data and k % 7 == 3 else 0.0)  # mismodelled features
        kind = k % 5
        if kind == 0:
            x = 50.0 + 10.0 * (v + shift)
        elif kind == 1:
            x = np.exp(0.5 * (v + shift)) * 20.0
        elif kind == 2:
            x = np.abs(v + shift) * 3.0
        elif kind == 3:
            x = np.floor(np.clip(2.0 + 1.5 * (v + shift), 0.0, 12.0))  # a multiplicity
        else:
            x = np.tanh(v + shift)
        cols[name] = x.astype(np.float32)
    return cols


def _write(path: Path, cols: dict[str, np.ndarray]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(cols)
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS)
    tmp.replace(path)  # a half-written file is never mistaken for a cached one


#: The simulation's weight systematics (NAME -> up, down columns): two smooth reweightings,
#: each a few percent, as ``--syst NAME=UP:DOWN`` (the audited configuration of bench_scale.py).
SYSTEMATICS = {"scale": ("w_scale_up", "w_scale_dn"), "pdf": ("w_pdf_up", "w_pdf_dn")}


def systematic_weights(w: np.ndarray, cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The up/down weight columns of :data:`SYSTEMATICS` for nominal weights ``w``: a 4% shape
    change along the first feature and a 2% one along the second (signs kept)."""
    a = 0.04 * np.tanh((cols["f00"] - 50.0) / 10.0)
    b = 0.02 * np.tanh(cols["f01"] / 20.0 - 1.0)
    (au, ad), (bu, bd) = SYSTEMATICS.values()
    return {au: (w * (1 + a)).astype(np.float32), ad: (w * (1 - a)).astype(np.float32),
            bu: (w * (1 + b)).astype(np.float32), bd: (w * (1 - b)).astype(np.float32)}


def samples(n: int, n_features: int = 30, cache: Path = DEFAULT_CACHE, seed: int = 1,
            ) -> tuple[list[str], list[str]]:
    """Paths of the simulated and data files for ``n`` events each (made if not cached)."""
    folder = cache / f"n{n}_f{n_features}_s{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    n_files = max(MIN_FILES, -(-n // ROWS_PER_FILE))
    sizes = [n // n_files + (1 if k < n % n_files else 0) for k in range(n_files)]
    paths: dict[str, list[str]] = {"sim": [], "data": []}
    for s, sample in enumerate(("sim", "data")):
        for k, size in enumerate(sizes):
            path = folder / f"{sample}_{k:03d}.parquet"
            paths[sample].append(str(path))
            if path.exists():
                continue
            rng = np.random.default_rng([seed, s, k])
            cols = _block(rng, size, n_features, data=sample == "data")
            if sample == "sim":
                w = rng.gamma(4.0, 0.25, size).astype(np.float32)
                w[rng.random(size) < NEGATIVE_FRACTION] *= -1.0
                cols["weight"] = w
                cols.update(systematic_weights(w, cols))
            _write(path, cols)
    return paths["sim"], paths["data"]
