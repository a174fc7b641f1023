"""validator: input-space validation and model monitoring for machine learning in HEP.

The stages of a run are modules: :mod:`validator.sources` (read), :mod:`validator.plan`
(features and binning), :mod:`validator.fill` (mergeable accumulators),
:mod:`validator.stats` (pure statistical tests), :mod:`validator.compare` (tests over a plan),
:mod:`validator.summary` (multiple testing), :mod:`validator.store` (DuckDB) and
:mod:`validator.report` (terminal). :func:`run_validation` runs them all.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["RunConfig", "__version__", "run_validation"]


def __getattr__(name: str):  # lazy: `import validator` stays cheap for the CLI's --help
    if name in ("RunConfig", "run_validation"):
        from validator import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)
