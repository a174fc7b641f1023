"""validator: input-space validation and model monitoring for machine learning in HEP.

The folders follow the data's way: ``inputs`` (read, select, derive, blind), ``stages``
(plan, fill, compare, the run-level test, systematics, the network audit, multivariate tests,
corrections),
``engine`` (where the work runs), ``stats`` (pure statistics), ``model`` (the audited
network), ``results`` (the store and the one reading of a run), ``gate`` (rules, judge,
JUnit), ``output`` (terminal, documents, figures), ``dashboard``, ``config`` (the options).
:func:`run_validation` (:mod:`validator.pipeline`) runs them all.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["RunConfig", "__version__", "correct", "run_validation"]


def __getattr__(name: str):  # lazy: `import validator` stays cheap for the CLI's --help
    # validator.correct: validator correct from a notebook (validator.stages.correct)
    if name in ("RunConfig", "run_validation", "correct"):
        from validator import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)
