"""Shared fixtures: small synthetic samples written to a temporary folder."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import polars as pl
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"
SAMPLE_DIR = REPO / "sample_data"


def load_sample_generator() -> ModuleType:
    """``sample_data/generate.py`` as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("generate", SAMPLE_DIR / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_frames(n_sim: int = 20_000, n_data: int = 10_000, seed: int = 7, shift: float = 0.0,
                ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A weighted simulation and unweighted data drawn from one law (plus an optional shift
    of feature ``a``). Simulation weights: two processes with different weights and a few
    per cent of negative weights, normalised so that Σw is about the data count."""
    rng = np.random.default_rng(seed)

    def draw(n: int, a_scale: float) -> dict[str, np.ndarray]:
        a = rng.normal(0.0, 1.0, n)
        b = 0.5 * a + rng.normal(0.0, 1.0, n)
        return {
            "a": (a * a_scale).astype(np.float64),
            "b": b,
            "c": rng.exponential(2.0, n),
            "nj": rng.poisson(2.0, n).astype(np.int32),
        }

    sim = draw(n_sim, 1.0)
    proc = rng.random(n_sim) < 0.6
    w = np.where(proc, 0.4, 1.6)
    neg = rng.random(n_sim) < 0.04
    w = np.where(neg, -w, w)
    w *= n_data / w.sum()
    sim_frame = pl.DataFrame({**sim, "weight": w, "event": np.arange(n_sim)})
    data = draw(n_data, 1.0 + shift)
    data_frame = pl.DataFrame({**data, "event": np.arange(n_data)})
    return sim_frame, data_frame


@pytest.fixture
def samples(tmp_path: Path) -> tuple[Path, Path]:
    sim, data = make_frames()
    sim_path, data_path = tmp_path / "sim.parquet", tmp_path / "data.parquet"
    sim.write_parquet(sim_path)
    data.write_parquet(data_path)
    return sim_path, data_path


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _keep_main_module():
    """Restore ``__main__`` after each test: Streamlit's AppTest runs the app as ``__main__``,
    and worker processes started later by spawn (a Dask LocalCluster) would re-run it."""
    import sys

    main = sys.modules.get("__main__")
    state = {k: getattr(main, k) for k in ("__file__", "__spec__") if hasattr(main, k)}
    yield
    sys.modules["__main__"] = main
    for key in ("__file__", "__spec__"):
        if key in state:
            setattr(main, key, state[key])
        elif hasattr(main, key) and main is not None:
            delattr(main, key)
