"""Dashboards and rules come from charts/regatta/files/: a glob that matches nothing must fail.

The files are copies of observability/ (Helm cannot read outside the chart): a test keeps them
identical, so the chart never ships a dashboard or rule the observability suite did not check.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helm_python.errors import HelmError

from tests.chart.manifests import CHART_DIR, copy_chart, render

OBSERVABILITY = Path(__file__).parents[2] / "observability"
SOURCES = {
    "dashboards": OBSERVABILITY / "grafana" / "dashboards",
    "rules": OBSERVABILITY / "prometheus" / "rules",
}
A_RULE_FILE = "regatta-slo.yaml"

FORCED = {"metrics": {"prometheusRule": {"force": True}, "serviceMonitor": {"force": True}}}


def _rule_groups(chart: Path) -> list[str]:
    (rule,) = render(FORCED, chart_dir=chart).kind("PrometheusRule")
    return [group["name"] for group in rule["spec"]["groups"]]


def test_the_shipped_files_are_real() -> None:
    dashboards = sorted((CHART_DIR / "files" / "dashboards").glob("*.json"))
    rules = sorted((CHART_DIR / "files" / "rules").glob("*.yaml"))
    assert dashboards
    assert rules
    for path in dashboards:
        assert json.loads(path.read_text(encoding="utf-8"))["panels"]
    for path in rules:
        groups = yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
        assert all(group["rules"] for group in groups)
    assert _rule_groups(CHART_DIR) == _source_groups()


def _source_groups() -> list[str]:
    return [
        group["name"]
        for path in sorted(SOURCES["rules"].glob("*.yaml"))
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
    ]


@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_the_chart_ships_exactly_the_checked_observability_files(kind: str) -> None:
    shipped = {p.name: p.read_bytes() for p in (CHART_DIR / "files" / kind).iterdir()}
    checked = {p.name: p.read_bytes() for p in SOURCES[kind].iterdir()}
    assert shipped == checked, f"copy observability/ files into charts/regatta/files/{kind}/"


def test_no_rule_file_means_no_release(tmp_path: Path) -> None:
    chart = copy_chart(tmp_path)
    for path in (chart / "files" / "rules").iterdir():
        path.unlink()
    with pytest.raises(HelmError, match="no rule groups"):
        render(FORCED, chart_dir=chart)


def test_rule_files_may_end_in_yml_too(tmp_path: Path) -> None:
    chart = copy_chart(tmp_path)
    rules = chart / "files" / "rules"
    (rules / A_RULE_FILE).rename(rules / A_RULE_FILE.replace(".yaml", ".yml"))
    assert sorted(_rule_groups(chart)) == sorted(_source_groups())


def test_a_rule_file_with_another_extension_is_refused(tmp_path: Path) -> None:
    chart = copy_chart(tmp_path)
    rules = chart / "files" / "rules"
    (rules / A_RULE_FILE).rename(rules / A_RULE_FILE.replace(".yaml", ".rules"))
    with pytest.raises(HelmError, match=r"must end in \.yaml or \.yml"):
        render(FORCED, chart_dir=chart)


def test_a_rule_file_without_groups_is_refused(tmp_path: Path) -> None:
    chart = copy_chart(tmp_path)
    (chart / "files" / "rules" / "empty.yaml").write_text("groups: []\n", encoding="utf-8")
    with pytest.raises(HelmError, match="not a Prometheus rule file"):
        render(FORCED, chart_dir=chart)


def test_no_dashboard_means_no_release(tmp_path: Path) -> None:
    chart = copy_chart(tmp_path)
    for path in (chart / "files" / "dashboards").iterdir():
        path.unlink()
    with pytest.raises(HelmError, match="no dashboards"):
        render({}, chart_dir=chart)


def test_a_broken_dashboard_is_refused(tmp_path: Path) -> None:
    chart = copy_chart(tmp_path)
    (chart / "files" / "dashboards" / "broken.json").write_text("{", encoding="utf-8")
    with pytest.raises(HelmError, match="not valid JSON"):
        render({}, chart_dir=chart)
