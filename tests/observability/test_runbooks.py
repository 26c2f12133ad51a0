"""Every alert links a runbook that exists and the dashboard panel that shows it."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from tests.observability.conftest import OBSERVABILITY

RUNBOOKS = OBSERVABILITY / "runbooks"
RUNBOOK_BASE = "https://github.com/regatta/regatta/blob/main/observability/runbooks/"
SECTIONS = ("## Meaning", "## First queries", "## Usual causes and fixes")
DASHBOARDS = {
    document["uid"]: document
    for document in (
        json.loads(path.read_text())
        for path in (OBSERVABILITY / "grafana" / "dashboards").glob("*.json")
    )
}


def alerts() -> dict[str, dict[str, Any]]:
    return {
        rule["alert"]: rule
        for path in sorted((OBSERVABILITY / "prometheus" / "rules").glob("*.yaml"))
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


@pytest.mark.parametrize("name", sorted(alerts()))
def test_the_alert_links_a_runbook_with_every_section(name: str) -> None:
    url = alerts()[name].get("annotations", {}).get("runbook_url")
    assert url, f"{name} has no runbook_url"
    assert url.startswith(RUNBOOK_BASE), url
    page = RUNBOOKS / url.removeprefix(RUNBOOK_BASE)
    assert page.is_file(), f"{name}: {url} points nowhere"
    text = page.read_text()
    assert text.startswith(f"# {name}\n")
    for section in SECTIONS:
        assert f"\n{section}\n" in text, f"{page.name} lacks {section}"
    queries = text.split("## First queries", 1)[1].split("\n## ", 1)[0]
    assert len(re.findall(r"^\d\. ", queries, flags=re.MULTILINE)) >= 3, page.name


@pytest.mark.parametrize("name", sorted(alerts()))
def test_the_alert_links_a_dashboard_panel_that_exists(name: str) -> None:
    url = alerts()[name].get("annotations", {}).get("dashboard_url")
    assert url, f"{name} has no dashboard_url"
    parts = urlsplit(url)
    match = re.fullmatch(r"/d/([\w-]+)", parts.path)
    assert match, url
    dashboard = DASHBOARDS.get(match.group(1))
    assert dashboard is not None, f"{name}: no dashboard {match.group(1)}"
    [panel_id] = parse_qs(parts.query)["viewPanel"]
    panels = {panel["id"]: panel for panel in dashboard["panels"]}
    assert int(panel_id) in panels, f"{name}: {url} points nowhere"
    assert panels[int(panel_id)]["type"] != "row"


def test_every_runbook_belongs_to_an_alert_and_the_index_lists_them_all() -> None:
    pages = {path.stem for path in RUNBOOKS.glob("*.md")} - {"README"}
    assert pages == set(alerts())
    index = (RUNBOOKS / "README.md").read_text()
    assert all(f"[{name}.md]({name}.md)" in index for name in alerts())
