"""skaffold.yaml: valid for skaffold/v4beta14 and consistent with the Dockerfiles and the chart."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest

from tests.chart.manifests import REPO, load_yaml, render_set, schema_dir

SKAFFOLD = load_yaml(REPO / "skaffold.yaml")


def _validator() -> Any:
    schemas = schema_dir()
    if schemas is None:
        pytest.skip(
            "../shared/schemas not found (set REGATTA_SCHEMA_DIR): skaffold schema check skipped"
        )
    schema = json.loads((schemas / "skaffold-v4beta14.json").read_text(encoding="utf-8"))
    return jsonschema.validators.validator_for(schema)(schema)


def test_skaffold_yaml_matches_the_v4beta14_schema() -> None:
    assert SKAFFOLD["apiVersion"] == "skaffold/v4beta14"
    errors = [e.message for e in _validator().iter_errors(SKAFFOLD)]
    assert not errors, errors


def test_the_schema_check_catches_a_misspelt_key() -> None:
    broken = json.loads(json.dumps(SKAFFOLD))
    broken["deploy"]["helm"]["releases"][0]["chartPth"] = "charts/regatta"
    assert list(_validator().iter_errors(broken))


def test_the_four_images_are_built_from_their_dockerfiles_and_injected() -> None:
    artifacts = SKAFFOLD["build"]["artifacts"]
    assert [a["image"] for a in artifacts] == [
        "regatta-items",
        "regatta-heroes",
        "regatta-notifications",
        "regatta-operator",
    ]
    (release,) = SKAFFOLD["deploy"]["helm"]["releases"]
    assert release["chartPath"] == "charts/regatta"
    templates = release["setValueTemplates"]
    for artifact in artifacts:
        assert artifact["context"] == "."
        assert (REPO / artifact["docker"]["dockerfile"]).is_file()
        key = artifact["image"].replace("-", "_")
        assert f"{{{{.IMAGE_REPO_{key}}}}}" in templates.values()
        assert f"{{{{.IMAGE_TAG_{key}}}}}" in templates.values()
    for path in templates:
        assert re.fullmatch(r"(services\.\w+|operator)\.image\.(repository|tag)", path)
    for values_file in release["valuesFiles"]:
        assert (REPO / values_file).is_file()


def test_profiles_dev_and_prod() -> None:
    profiles = {p["name"]: p for p in SKAFFOLD["profiles"]}
    assert {"dev", "prod", "core"} <= set(profiles)
    dev = profiles["dev"]
    for artifact in dev["build"]["artifacts"]:
        service = artifact["image"].removeprefix("regatta-")
        if service == "operator":
            continue
        assert artifact["docker"]["target"] == "dev"
        dockerfile = (REPO / artifact["docker"]["dockerfile"]).read_text(encoding="utf-8")
        assert "AS dev" in dockerfile
        for rule in artifact["sync"]["manual"]:
            assert rule["dest"] == "/app/.venv/lib/python3.11/site-packages"
            assert rule["src"].startswith(rule["strip"])
    added = [p["value"] for p in dev["patches"] if p["path"].endswith("valuesFiles/-")]
    assert added == ["k8s/skaffold/dev.yaml"]


@pytest.mark.parametrize("value_set", ["skaffold-dev", "skaffold-dev-core"])
def test_the_dev_profile_installs_one_replica_without_autoscaling(value_set: str) -> None:
    rendered = render_set(value_set)
    assert not rendered.kind("HorizontalPodAutoscaler")
    assert not rendered.kind("PodDisruptionBudget")
    for deployment in rendered.kind("Deployment"):
        assert deployment["spec"]["replicas"] == 1
    items = rendered.get("Deployment", "regatta-items")
    args = items["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--reload" in args
    assert "regatta.items.main:create_app" in args


def test_port_forwards_name_services_the_chart_creates() -> None:
    services = {s["metadata"]["name"] for s in render_set("skaffold-dev").kind("Service")}
    forwards = SKAFFOLD["portForward"]
    ours = [f for f in forwards if f["namespace"] == "regatta"]
    assert {f["resourceName"] for f in ours} <= services
    assert any(f["resourceName"].endswith("grafana") for f in forwards)
    assert len({f["localPort"] for f in forwards}) == len(forwards)
