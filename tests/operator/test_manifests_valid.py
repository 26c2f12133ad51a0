"""The CRD, the examples and every object the operator builds are valid Kubernetes."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from regatta.operator.builders import Target, build_children, build_secret
from regatta.operator.settings import PlatformSettings
from regatta.operator.spec import GROUP, KIND, PLURAL, VERSION, ApiServiceSpec, parse_spec
from tests.chart.manifests import CHART_DIR, KUBERNETES_VERSION, REPO, load_yaml, schema_dir

CRD_PATH = CHART_DIR / "files" / "crds" / "apiservices.regatta.dev.yaml"
EXAMPLES = sorted((REPO / "k8s" / "examples").glob("*.yaml"))
CUSTOM_SCHEMAS = {
    "ServiceMonitor": "monitoring.coreos.com/servicemonitor_v1.json",
    "HTTPRoute": "gateway.networking.k8s.io/httproute_v1.json",
}


def validate_core(obj: dict[str, Any]) -> None:
    with warnings.catch_warnings():
        # kubernetes-validate still resolves $refs through jsonschema's deprecated RefResolver.
        warnings.simplefilter("ignore", DeprecationWarning)
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def crd_schema() -> dict[str, Any]:
    crd = load_yaml(CRD_PATH)
    (version,) = crd["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def schema_validator() -> jsonschema.Draft7Validator:
    # The structural schema is OpenAPI v3; its keywords here are all JSON Schema draft 7 too.
    return jsonschema.Draft7Validator(crd_schema())


def example_api_services() -> list[dict[str, Any]]:
    documents = [
        document
        for path in EXAMPLES
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8"))
    ]
    return [document for document in documents if document and document.get("kind") == KIND]


def test_the_crd_is_a_valid_custom_resource_definition() -> None:
    crd = load_yaml(CRD_PATH)
    validate_core(crd)
    assert crd["metadata"]["name"] == f"{PLURAL}.{GROUP}"
    assert crd["spec"]["scope"] == "Namespaced"
    (version,) = crd["spec"]["versions"]
    assert version["name"] == VERSION
    assert version["subresources"] == {"status": {}}
    columns = {column["name"]: column["jsonPath"] for column in version["additionalPrinterColumns"]}
    assert columns["Ready"] == '.status.conditions[?(@.type=="Ready")].status'
    # Every printed field exists in the schema.
    for path in (".spec.pathPrefix", ".spec.image", ".status.url"):
        assert path in columns.values()
        node = crd_schema()
        for part in path.strip(".").split("."):
            node = node["properties"][part]


def test_the_crd_is_structural() -> None:
    """Every node has a type (or int-or-string), and `not` carries only validation."""

    def walk(node: dict[str, Any], where: str) -> None:
        assert "type" in node or node.get("x-kubernetes-int-or-string"), where
        for name, child in node.get("properties", {}).items():
            walk(child, f"{where}.{name}")
        if "items" in node:
            walk(node["items"], f"{where}[]")
        if "not" in node:
            assert set(node["not"]) <= {"required"}, where

    walk(crd_schema(), "")


def test_the_examples_match_the_crd_and_the_operator() -> None:
    examples = example_api_services()
    assert examples
    for example in examples:
        assert example["apiVersion"] == f"{GROUP}/{VERSION}"
        schema_validator().validate(example)
        parse_spec(example["spec"])


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"replicas": 2, "autoscaling": {"maxReplicas": 4}}, ""),
        ({"pathPrefix": "orders"}, "pathPrefix"),
        ({"pathPrefix": "/Orders"}, "pathPrefix"),
        ({"port": 70000}, "port"),
        ({"replicas": 0}, "replicas"),
        ({"image": ""}, "image"),
        ({"env": [{"name": "BAD-NAME", "value": "1"}]}, "name"),
        ({"databaseDeletionPolicy": "Drop"}, "databaseDeletionPolicy"),
        ({"autoscaling": {"targetCPUUtilizationPercentage": 150}}, "targetCPU"),
        ({"resources": {"limits": {"memory": "lots"}}}, "memory"),
    ],
)
def test_the_schema_rejects_bad_specs(change: dict[str, Any], field: str) -> None:
    (example,) = example_api_services()[:1]
    good = copy.deepcopy(example)
    del good["spec"]["autoscaling"]
    assert not list(schema_validator().iter_errors(good))
    bad = copy.deepcopy(good)
    bad["spec"].update(change)
    paths = [
        "/".join(map(str, error.absolute_path)) for error in schema_validator().iter_errors(bad)
    ]
    assert paths
    # "" stands for the spec as a whole (replicas and autoscaling together).
    assert any(field in path if field else path == "spec" for path in paths), paths


def test_the_crd_defaults_are_the_operator_defaults() -> None:
    spec = crd_schema()["properties"]["spec"]["properties"]
    model = ApiServiceSpec.model_validate({"image": "x", "pathPrefix": "/x", "autoscaling": {}})
    assert spec["port"]["default"] == model.port
    assert spec["database"]["default"] is model.database
    assert spec["redis"]["default"] is model.redis
    assert spec["databaseDeletionPolicy"]["default"] == model.database_deletion_policy
    scaling = spec["autoscaling"]["properties"]
    assert model.autoscaling is not None
    assert scaling["minReplicas"]["default"] == model.autoscaling.min_replicas
    assert scaling["maxReplicas"]["default"] == model.autoscaling.max_replicas
    assert (
        scaling["targetCPUUtilizationPercentage"]["default"]
        == model.autoscaling.target_cpu_utilization_percentage
    )


def _everything(platform: PlatformSettings) -> list[dict[str, Any]]:
    (example,) = example_api_services()[:1]
    target = Target(name="orders", namespace="shop", spec=parse_spec(example["spec"]))
    present, _ = build_children(target, platform)
    gateway = platform.model_copy(
        update={"http_route": platform.http_route.model_copy(update={"enabled": True})}
    )
    present += [m for m in build_children(target, gateway)[0] if m["kind"] == "HTTPRoute"]
    present.append(build_secret(target, platform, suffix="-redis", data={"REDIS_URL": "redis://"}))
    return present


def test_every_built_object_is_valid(platform: PlatformSettings) -> None:
    built = _everything(platform)
    assert {m["kind"] for m in built} >= {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Ingress",
        "HTTPRoute",
        "ServiceMonitor",
        "Secret",
    }
    for manifest in built:
        if manifest["kind"] not in CUSTOM_SCHEMAS:
            validate_core(manifest)


def test_every_built_custom_resource_matches_its_crd(platform: PlatformSettings) -> None:
    schemas = schema_dir()
    if schemas is None:
        pytest.skip("../shared/schemas not found (set REGATTA_SCHEMA_DIR): CRD checks skipped")
    for manifest in _everything(platform):
        if manifest["kind"] in CUSTOM_SCHEMAS:
            path: Path = schemas / "crds" / CUSTOM_SCHEMAS[manifest["kind"]]
            schema = json.loads(path.read_text(encoding="utf-8"))
            jsonschema.validators.validator_for(schema)(schema).validate(manifest)
