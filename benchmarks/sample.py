"""What the benchmark scripts share: the sample data's folder and its generator."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO / "sample_data"


def sample_generator() -> ModuleType:
    """``sample_data/generate.py`` as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("generate", SAMPLE_DIR / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
