"""The rules file of the CI gate: which stored results an analysis must meet to go on.

A rules file is YAML (``rules/default.yaml``, ``rules/unblinding.yaml``), validated here with
pydantic: an unknown key or a wrong type is an :class:`~validator.errors.InputError` (CLI exit
2) whose one line names the file, the key path and its line. :func:`rules_json_schema` gives
the JSON schema editors complete the file with (shipped as ``rules/rules.schema.json``).

Each rule is a model with a ``kind`` (the discriminator), a ``name`` and an optional
``description``; :mod:`validator.gate.judge` judges a stored run against them. docs/rules.md
describes every kind with examples.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from validator.config.yamlfile import parse_yaml_model, read_text

#: The version of the rules format this release reads (``rules_version`` in the file).
RULES_VERSION = 1

#: What a selection matches when it names nothing: everything.
ALL = ("*",)

#: The test kinds of the ``tests`` table (docs/schema.md).
TEST_KINDS = ("1d", "2d", "corr", "output", "taylor", "multivariate")

PValue = Literal["raw", "holm", "bh"]
Severity = Literal["error", "warning"]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class _Strict(BaseModel):
    """Unknown keys are errors: a misspelt key must not silently loosen a gate."""

    model_config = ConfigDict(extra="forbid")


class _Rule(_Strict):
    """Fields every rule has."""

    name: str = Field(min_length=1, description="unique name, shown in the verdict and JUnit")
    description: str | None = Field(None, description="why the rule is there, for a reader")
    severity: Severity = Field(
        "error", description="'error': a failure fails the gate; 'warning': it is reported "
                             "and stored but the gate still passes")


class Selection(_Strict):
    """Which tests a rule looks at: fnmatch globs on the columns of the ``tests`` table.

    A pair test is selected when either of its features matches ``features`` and neither
    matches ``exclude_features``.
    """

    kinds: list[str] = Field(list(ALL), description="test kinds: 1d, 2d, corr, output (globs)")
    methods: list[str] = Field(list(ALL), description="methods, e.g. chi2_uw, ks, corr_* (globs)")
    features: list[str] = Field(list(ALL), description="feature globs (either feature of a pair)")
    exclude_features: list[str] = Field(
        [], description="feature globs whose tests are left out (either feature of a pair)")
    categories: list[str] = Field(list(ALL), description="category globs ('all' is inclusive)")


class Override(_Strict):
    """Per-feature thresholds: the first override whose globs match a test's feature (either
    feature of a pair) replaces the rule's ``threshold`` and/or adds to its effect floors."""

    features: list[str] = Field(min_length=1, description="feature globs")
    threshold: Probability | None = Field(None, description="p-value threshold for these")
    effect_floors: dict[str, Annotated[float, Field(ge=0.0)]] = Field(
        {}, description="effect_name -> floor for these (merged over the rule's floors)")


class PerTestRule(_Rule):
    """Fail a test when its p-value is below ``threshold`` AND |effect size| reaches the floor
    of its ``effect_name``: a difference too small to matter never fails, however many events.

    Tests that are not reliable or did not run never fail it; ``require_run`` makes a test that
    did not run fail for the features it names.
    """

    kind: Literal["per_test"]
    select: Selection = Field(default_factory=Selection)
    p_value: PValue = Field("holm", description="raw, holm or bh (adjusted over the run)")
    threshold: Probability = Field(0.05, description="a test fails when p < threshold ...")
    effect_floors: dict[str, Annotated[float, Field(ge=0.0)]] = Field(
        {}, description="... and |effect_size| >= the floor of its effect_name, e.g. "
                        "max_abs_ratio_dev: 0.05, ks_distance: 0.02, delta_pearson: 0.05")
    default_effect_floor: Annotated[float, Field(ge=0.0)] = Field(
        0.0, description="floor of an effect_name not in effect_floors")
    overrides: list[Override] = Field([], description="per-feature thresholds and floors")
    require_run: list[str] = Field(
        [], description="feature globs whose selected tests must have run (not_run_reason NULL)")
    allow_empty: bool = Field(
        False, description="pass when the selection matches no test (default: that fails, "
                           "so a misspelt glob cannot pass a gate)")


class FailureCountRule(_Rule):
    """The number of failures at ``alpha`` against its expectation under the null.

    ``source: binomial``: P(X >= n_failed) for X ~ Binomial(n_reliable, alpha) (independent
    tests; an indicator); ``global``: the run-level randomization test ``runs.p_global_nfail``
    (keeps the correlations between tests); ``global_min``: ``runs.p_global_min`` (the smallest
    p-value); ``auto``: ``global`` when the run has it at this alpha, else ``binomial``.
    """

    kind: Literal["failure_count"]
    source: Literal["auto", "binomial", "global", "global_min"] = "auto"
    alpha: Annotated[float, Field(gt=0.0, lt=1.0)] | None = Field(
        None, description="test size defining a failure (default: the run's alpha)")
    threshold: Probability = Field(0.01, description="fail when the p-value < threshold")


class UniformityRule(_Rule):
    """The reliable raw p-values against U(0, 1) (Kolmogorov-Smirnov): ``stored`` reads
    ``runs.p_uniformity``, ``recompute`` tests the selected tests, ``auto`` recomputes when the
    selection is narrower than all tests and reads the stored value otherwise."""

    kind: Literal["uniformity"]
    source: Literal["auto", "stored", "recompute"] = "auto"
    select: Selection = Field(default_factory=Selection)
    threshold: Probability = Field(0.001, description="fail when the KS p-value < threshold")


class CoverageRule(_Rule):
    """Every input tested in 1D and in every pair; invalid-value fractions; nothing unrun.

    ``inputs``: ``model`` (the audited model's inputs; fails when no model was audited),
    ``features`` (every feature the run tested) or ``auto`` (the model's inputs when a model
    was audited, else the run's features).
    """

    kind: Literal["coverage"]
    inputs: Literal["auto", "model", "features"] = "auto"
    require_1d: bool = Field(True, description="each input has a 1D test that ran")
    require_pairs: bool = Field(True, description="each pair of inputs has a 2D test that ran")
    max_nan_fraction: Probability | None = Field(
        None, description="most NaN/inf events per input, in simulation or data")
    max_sentinel_fraction: Probability | None = Field(
        None, description="most sentinel (-999, ...) events per input, in simulation or data")
    no_unrun: bool = Field(True, description="no test of an input left unrun (not_run_reason)")
    categories: list[str] = Field(
        ["all"], description="category globs checked (default: the inclusive selection)")


class ImportanceRule(_Rule):
    """The inputs and pairs the audited network relies on most must pass (table
    ``criticality``): the ``top_k`` inputs by importance rank and the pairs flagged
    ``important`` (plus the ``top_k_pairs`` first pairs), per output node and parameter.

    An item fails when ``mismodelled`` is TRUE (``threshold`` unset), or when its worst Holm
    p-value is below ``threshold`` and |worst effect| reaches its floor; an item never tested
    fails. Without an audited model it fails when ``required``, else passes.
    """

    kind: Literal["importance"]
    top_k: Annotated[int, Field(ge=0)] = Field(5, description="inputs by importance rank")
    important_pairs: bool = Field(True, description="pairs flagged important must pass")
    top_k_pairs: Annotated[int, Field(ge=0)] = Field(0, description="pairs by importance rank")
    threshold: Probability | None = Field(
        None, description="worst Holm p below which an item fails (default: the stored "
                          "'mismodelled' flag)")
    effect_floors: dict[str, Annotated[float, Field(ge=0.0)]] = Field(
        {}, description="effect_name -> floor, with threshold")
    required: bool = Field(False, description="fail when the run audited no model")


class RunConfigRule(_Rule):
    """What an unblinding run must have been configured with."""

    kind: Literal["run_config"]
    require_systematics: bool = Field(
        False, description="systematic uncertainties given (config 'systematics' not empty)")
    require_toys: bool = Field(False, description="some tests used toy p-values")
    require_model: bool = Field(False, description="a model was audited (--model)")
    require_blinding: bool = Field(False, description="a blinded region was set (--blind)")


class ClosureRule(_Rule):
    """A run that applies a correction (``validator run --apply``) uses it only once the
    correction has closed: a closure run on the events it was not derived from passed its
    gate (``validator correct``; the ``corrections`` table links them)."""

    kind: Literal["closure"]
    half: Literal["held-out", "training"] = Field(
        "held-out", description="the half a closure run must have kept (held-out: events "
                                "the correction was not derived from)")


Rule = Annotated[
    PerTestRule | FailureCountRule | UniformityRule | CoverageRule | ImportanceRule
    | RunConfigRule | ClosureRule,
    Field(discriminator="kind"),
]


class RulesFile(_Strict):
    """A rules file: its version, a name for the verdict, and the rules."""

    rules_version: Literal[1] = Field(description="version of the rules format (1)")
    name: str | None = Field(None, description="name stored with the verdict (default: the "
                                               "file's stem)")
    description: str | None = None
    rules: list[Rule] = Field(min_length=1)
    _sha256: str = PrivateAttr("")
    _source: str = PrivateAttr("")

    @model_validator(mode="after")
    def _unique_names(self) -> RulesFile:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:
                raise ValueError(f"two rules are named '{rule.name}'")
            seen.add(rule.name)
        return self

    @property
    def sha256(self) -> str:
        """sha256 of the file's bytes (empty for rules built in Python)."""
        return self._sha256

    @property
    def source(self) -> str:
        """The file the rules were read from (empty for rules built in Python)."""
        return self._source


def rules_json_schema() -> dict[str, Any]:
    """The JSON schema of a rules file (``validator rules-schema``; rules/rules.schema.json)."""
    schema = RulesFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "validator gate rules"
    return schema


# ------------------------------------------------------------------ loading with line numbers


def parse_rules(text: str, source: str = "<rules>") -> RulesFile:
    """Validate the YAML text of a rules file; a problem is an :class:`InputError` naming
    ``source``, the key path and its line."""
    rules = parse_yaml_model(text, RulesFile, source, "rules file",
                             "a rules file is a mapping (rules_version, rules)")
    rules._source = source
    return rules


def load_rules(path: str | Path) -> RulesFile:
    """Read and validate a rules file; its ``name`` defaults to the file's stem."""
    path = Path(path)
    raw, text = read_text(path, "--rules", "rules file")
    rules = parse_rules(text, str(path))
    rules._sha256 = hashlib.sha256(raw).hexdigest()
    if rules.name is None:
        rules.name = path.stem
    return rules


def schema_text() -> str:
    """The JSON schema as the text shipped in rules/rules.schema.json."""
    return json.dumps(rules_json_schema(), indent=2, sort_keys=True) + "\n"
