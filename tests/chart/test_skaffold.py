"""skaffold.yaml: valid for skaffold/v4beta14 and consistent with the Dockerfiles and the chart."""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

import jsonschema
import pytest

from tests.chart.manifests import (
    REPO,
    Rendered,
    load_yaml,
    pod_spec,
    render,
    render_set,
    schema_dir,
    value_sets,
)

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


def _dev_artifacts() -> list[dict[str, Any]]:
    (dev,) = [p for p in SKAFFOLD["profiles"] if p["name"] == "dev"]
    artifacts: list[dict[str, Any]] = dev["build"]["artifacts"]
    return artifacts


def _dev_release() -> Rendered:
    """The dev profile as skaffold installs it, with the images it built (named as built)."""
    values = value_sets()["skaffold-dev"]
    (release,) = SKAFFOLD["deploy"]["helm"]["releases"]
    for path, template in release["setValueTemplates"].items():
        if path.endswith(".repository"):
            image = re.fullmatch(r"\{\{\.IMAGE_REPO_(\w+)\}\}", template).group(1)  # type: ignore[union-attr]
            node = values
            *parents, leaf = path.split(".")
            for parent in parents:
                node = node.setdefault(parent, {})
            node[leaf] = image.replace("_", "-")
    return render(values)


def _dockerfile_dev_owner(dockerfile: str) -> int:
    """The UID that owns the virtual environment in a Dockerfile's `dev` stage."""
    text = (REPO / dockerfile).read_text(encoding="utf-8")
    stage = text.split("AS dev", 1)[1].split("\nFROM ", 1)[0]
    (owner,) = re.findall(r"COPY --from=builder --chown=(\d+):\d+ /app/\.venv /app/\.venv", stage)
    return int(owner)


def _watched(args: list[str], dest: str) -> bool:
    """Whether the process reloads or restarts itself on a change under `dest`."""
    if "--reload" in args:
        dirs = [args[i + 1] for i, a in enumerate(args) if a == "--reload-dir"]
        return any(d.startswith(dest) for d in dirs)
    if args[:1] == ["watchfiles"]:
        return any(a.startswith(dest) for a in args[1:])
    return False


def test_every_pod_file_sync_reaches_can_take_the_files_and_reloads() -> None:
    rendered = _dev_release()
    checked = set()
    for artifact in _dev_artifacts():
        rules = artifact.get("sync", {}).get("manual", [])
        # No sync rules (the operator): skaffold rebuilds the image and redeploys, restarting it.
        for deployment in rendered.kind("Deployment"):
            spec = pod_spec(deployment)
            for container in spec["containers"]:
                if container["image"].split(":")[0] != artifact["image"] or not rules:
                    continue
                name = deployment["metadata"]["name"]
                checked.add(name)
                context = {**spec["securityContext"], **container["securityContext"]}
                assert context["readOnlyRootFilesystem"] is False, f"{name}: sync cannot write"
                owner = _dockerfile_dev_owner(artifact["docker"]["dockerfile"])
                assert context["runAsUser"] == owner, f"{name}: the code belongs to {owner}"
                for rule in rules:
                    assert _watched(container["args"], rule["dest"]), f"{name}: never reloads"
    # The worker runs the notifications image: file sync reaches it as it reaches the API.
    assert checked == {
        "regatta-items",
        "regatta-heroes",
        "regatta-notifications",
        "regatta-notifications-worker",
    }


def test_the_dev_images_have_watchfiles() -> None:
    # uvicorn[standard], which every service has through regatta-common, brings it.
    lock = tomllib.loads((REPO / "uv.lock").read_text(encoding="utf-8"))
    uvicorn = next(p for p in lock["package"] if p["name"] == "uvicorn")
    assert "watchfiles" in {d["name"] for d in uvicorn["optional-dependencies"]["standard"]}
    common = tomllib.loads(
        (REPO / "services" / "common" / "pyproject.toml").read_text(encoding="utf-8")
    )
    assert any(d.startswith("uvicorn[standard]") for d in common["project"]["dependencies"])
