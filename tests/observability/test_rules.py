"""Prometheus rules: valid for promtool, unit-tested, and every alert proven to fire."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.observability.conftest import OBSERVABILITY, binary

RULES = sorted((OBSERVABILITY / "prometheus" / "rules").glob("*"))
TESTS = sorted((OBSERVABILITY / "prometheus" / "tests").glob("*"))


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("promtool"), *args], capture_output=True, text=True, timeout=120, check=False
    )


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def test_rule_files_are_yaml_named_yaml() -> None:
    # The chart ships the directory as it is; one naming rule means no file is left behind.
    assert RULES, "no rule files"
    assert all(path.suffix == ".yaml" for path in RULES + TESTS)


@pytest.mark.parametrize("path", RULES, ids=lambda path: path.name)
def test_promtool_checks_the_rule_file(path: Path) -> None:
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", TESTS, ids=lambda path: path.name)
def test_promtool_unit_tests_pass(path: Path) -> None:
    result = promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_file_is_tested_and_every_alert_fires_in_a_test() -> None:
    tested = {
        (path.parent / rule_file).resolve()
        for path in TESTS
        for rule_file in load(path)["rule_files"]
    }
    assert set(RULES) == tested
    firing = {
        case["alertname"]
        for path in TESTS
        for test in load(path)["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    alerts = {
        rule["alert"]
        for path in RULES
        for group in load(path)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    assert alerts <= firing, f"alerts no test shows firing: {sorted(alerts - firing)}"


def test_group_names_are_unique_across_files() -> None:
    # The chart merges every file's groups into one PrometheusRule.
    names = [group["name"] for path in RULES for group in load(path)["groups"]]
    assert len(names) == len(set(names))
