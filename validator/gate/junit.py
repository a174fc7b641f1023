"""JUnit XML of a gate verdict, for the test-report views of GitLab and GitHub.

Two test suites: ``rules``, one test case per rule (a ``failure`` element carrying the reason
when the rule fails the gate; a failing ``warning`` rule is ``skipped`` with the warning as
its message, so the test-report views show it apart from both passes and failures), and
``failing tests``, one test case per test a per-test rule failed (its category, kind, method
and features in the name; p-value, Holm p-value and effect size in the failure message).
Written with the standard library; ``junitparser`` reads it back in the tests.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from validator.errors import InputError, output_file_problem
from validator.gate.judge import Verdict
from validator.results.format import format_p


def _num(value: Any, spec: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(float(value), spec)


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def case_name(t: Mapping[str, Any]) -> str:
    """``[category] kind method feature_x × feature_y``: unique within a run."""
    feats = t["feature_x"] + (f" × {t['feature_y']}" if _present(t.get("feature_y")) else "")
    return f"[{t['category']}] {t['kind']} {t['method']} {feats}"


def _test_message(t: Mapping[str, Any]) -> str:
    if not _present(t.get("pvalue")):
        return f"did not run: {t.get('not_run_reason')} (rule {t['rule']})"
    # a toy p-value no toy reached is an upper bound, and so is its Holm adjustment
    bound = _present(t.get("pvalue_is_bound")) and bool(t["pvalue_is_bound"])
    rel = "<" if bound else "="
    effect = (f", {t['effect_name']} = {_num(t['effect_size'])}"
              if _present(t.get("effect_size")) else "")
    return (f"p {rel} {format_p(t['pvalue'])}, Holm p {'≤' if bound else '='} "
            f"{format_p(t.get('p_holm'))}"
            f"{effect} (rule {t['rule']}: {t['why']})")


def _suite(parent: ET.Element, name: str, n_tests: int, n_failures: int, stamp: str,
           n_skipped: int = 0) -> ET.Element:
    return ET.SubElement(parent, "testsuite", name=name, tests=str(n_tests),
                         failures=str(n_failures), errors="0", skipped=str(n_skipped),
                         time="0", timestamp=stamp)


def junit_xml(verdict: Verdict) -> str:
    """The verdict as a JUnit XML document (text)."""
    stamp = (verdict.judged_at.isoformat(timespec="seconds") if verdict.judged_at
             else "1970-01-01T00:00:00")
    n_rules_failed = len(verdict.failed_rules)
    n_warnings = sum(not r.passed and not r.blocking for r in verdict.rules)
    n_tests = len(verdict.rules) + len(verdict.failing_tests)
    n_failures = n_rules_failed + len(verdict.failing_tests)
    root = ET.Element("testsuites", name=f"validator gate {verdict.rules_name}",
                      tests=str(n_tests), failures=str(n_failures), errors="0",
                      skipped=str(n_warnings), time="0")
    rules = _suite(root, "rules", len(verdict.rules), n_rules_failed, stamp, n_warnings)
    props = ET.SubElement(rules, "properties")
    for key, value in (("run_id", verdict.run_id), ("rules_name", verdict.rules_name),
                       ("rules_sha256", verdict.rules_sha256),
                       ("verdict_id", verdict.verdict_id or "")):
        ET.SubElement(props, "property", name=key, value=value)
    for r in verdict.rules:
        case = ET.SubElement(rules, "testcase", classname=f"validator.rules.{r.kind}",
                             name=r.name, time="0")
        if r.blocking:
            failure = ET.SubElement(case, "failure", message=r.reason, type=r.kind)
            failure.text = r.reason
        elif not r.passed:  # a warning: neither a failure nor a silent pass
            ET.SubElement(case, "skipped", message=f"warning (does not fail the gate): "
                                                   f"{r.reason}")
            ET.SubElement(case, "system-out").text = f"warning: {r.reason}"
        else:
            ET.SubElement(case, "system-out").text = r.reason
    tests = _suite(root, "failing tests", len(verdict.failing_tests),
                   len(verdict.failing_tests), stamp)
    for t in verdict.failing_tests:
        case = ET.SubElement(tests, "testcase", classname=f"validator.tests.{t['category']}",
                             name=case_name(t), time="0")
        message = _test_message(t)
        failure = ET.SubElement(case, "failure", message=message, type=str(t["method"]))
        failure.text = (f"test_id {t['test_id']}: {message}; statistic "
                        f"{_num(t.get('statistic'))}, ndf {_num(t.get('ndf'), 'g')}, "
                        f"p-value method {t.get('pvalue_method')}")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def check_output_path(path: str | Path) -> Path:
    """Refuse, before any work, a JUnit path that cannot be written (a folder, a file on the
    way); a missing folder is made when the file is written."""
    problem = output_file_problem(path, "gate.xml")
    if problem:
        raise InputError(f"{path}: {problem} (--junit)")
    return Path(path)


def write_junit(verdict: Verdict, path: str | Path) -> Path:
    """Write the verdict's JUnit XML to ``path``."""
    path = check_output_path(path)
    path.resolve().parent.mkdir(parents=True, exist_ok=True)
    path.write_text(junit_xml(verdict), encoding="utf-8")
    return path
