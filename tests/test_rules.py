"""Rules files: the shipped ones load, the schema is exported, and every malformed file is one
line naming the file, the key path and its line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from validator.errors import InputError
from validator.gate.rules import (
    FailureCountRule,
    PerTestRule,
    RunConfigRule,
    load_rules,
    parse_rules,
    rules_json_schema,
    schema_text,
)

RULES = Path(__file__).resolve().parents[1] / "rules"

HEAD = "rules_version: 1\nrules:\n"


def test_the_shipped_rules_load():
    default = load_rules(RULES / "default.yaml")
    assert default.name == "default" and len(default.sha256) == 64
    kinds = [r.kind for r in default.rules]
    assert kinds == ["per_test", "failure_count", "uniformity", "coverage"]
    per_test = default.rules[0]
    assert isinstance(per_test, PerTestRule) and per_test.p_value == "holm"
    assert per_test.effect_floors["max_abs_ratio_dev"] == 0.05
    assert per_test.effect_floors["ks_distance"] == 0.02
    assert per_test.effect_floors["delta_pearson"] == 0.05
    unblinding = load_rules(RULES / "unblinding.yaml")
    kinds = {r.kind for r in unblinding.rules}
    assert kinds == {"per_test", "failure_count", "uniformity", "coverage", "importance", "closure",
                     "run_config"}
    config = next(r for r in unblinding.rules if isinstance(r, RunConfigRule))
    assert config.require_systematics and config.require_toys and config.require_model \
        and config.require_blinding


def test_the_shipped_schema_is_the_models_schema():
    shipped = json.loads((RULES / "rules.schema.json").read_text())
    assert shipped == rules_json_schema()
    assert (RULES / "rules.schema.json").read_text() == schema_text()
    assert shipped["properties"]["rules_version"]["const"] == 1
    kinds = set(shipped["$defs"])
    assert {"PerTestRule", "FailureCountRule", "UniformityRule", "CoverageRule",
            "ImportanceRule", "RunConfigRule"} <= kinds


def test_defaults_name_and_hash(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(HEAD + "  - kind: failure_count\n    name: count\n")
    rules = load_rules(path)
    assert rules.name == "mine"
    rule = rules.rules[0]
    assert isinstance(rule, FailureCountRule)
    assert (rule.source, rule.threshold, rule.alpha, rule.severity) == ("auto", 0.01, None,
                                                                         "error")
    import hashlib

    assert rules.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(("body", "expected"), [
    ("  - kind: per_test\n    name: a\n    treshold: 0.05\n",
     "line 5: rules[0].treshold: unknown key"),
    ("  - kind: per_test\n    name: a\n    threshold: abc\n",
     "line 5: rules[0].threshold: Input should be a valid number"),
    ("  - kind: per_test\n    name: a\n    threshold: 2\n",
     "line 5: rules[0].threshold: Input should be less than or equal to 1"),
    ("  - kind: per_test\n    name: a\n    select:\n      kinds: 1d\n",
     "line 6: rules[0].select.kinds: Input should be a valid list"),
    ("  - kind: per_test\n    name: a\n    select:\n      feature: [met]\n",
     "line 6: rules[0].select.feature: unknown key"),
    ("  - kind: per_test\n    name: a\n    overrides:\n      - features: [met]\n"
     "        thresold: 0.01\n", "line 7: rules[0].overrides[0].thresold: unknown key"),
    ("  - kind: per_test\n    name: a\n  - kind: coverage\n    name: b\n    max_nan: 0.1\n",
     "line 7: rules[1].max_nan: unknown key"),
    ("  - kind: coverage\n    require_1d: true\n",
     "line 3: rules[0].name: Field required"),
    ("  - name: a\n", "line 3: rules[0]: the rule has no 'kind'"),
    ("  - kind: bogus\n    name: a\n", "line 3: rules[0]: unknown rule kind 'bogus'"),
    ("  - kind: per_test\n    name: a\n    name: b\n", "line 5: rules[0].name: key given twice"),
    ("  - kind: per_test\n    name: a\n  - kind: uniformity\n    name: a\n",
     "line 1: (top level): Value error, two rules are named 'a'"),
    ("  - kind: importance\n    name: a\n    top_k: many\n",
     "line 5: rules[0].top_k: Input should be a valid integer"),
    ("  - kind: run_config\n    name: a\n    require_toys: maybe\n",
     "line 5: rules[0].require_toys: Input should be a valid boolean"),
])
def test_malformed_rules_name_the_key_and_its_line(body, expected):
    with pytest.raises(InputError) as err:
        parse_rules(HEAD + body, "r.yaml")
    message = str(err.value)
    assert message.startswith("r.yaml: ") and "\n" not in message
    assert expected in message, message


def test_version_yaml_and_file_problems(tmp_path):
    with pytest.raises(InputError, match=r"line 1: rules_version: Input should be 1"):
        parse_rules("rules_version: 2\nrules:\n  - kind: uniformity\n    name: u\n", "r.yaml")
    with pytest.raises(InputError, match=r"line 1: rules_version: Field required"):
        parse_rules("rules:\n  - kind: uniformity\n    name: u\n", "r.yaml")
    with pytest.raises(InputError, match=r"r.yaml: line 4: not valid YAML \(found character"):
        parse_rules(HEAD + "  - kind: per_test\n\tname: a\n", "r.yaml")
    with pytest.raises(InputError, match="the rules file is empty"):
        parse_rules("# nothing\n", "r.yaml")
    with pytest.raises(InputError, match="a rules file is a mapping"):
        parse_rules("- a\n- b\n", "r.yaml")
    with pytest.raises(InputError, match="rules file not found"):
        load_rules(tmp_path / "missing.yaml")
    with pytest.raises(InputError, match="is a folder"):
        load_rules(tmp_path)
