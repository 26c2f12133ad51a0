"""k8s/: the kind cluster, namespaces, add-on values and examples agree with the chart."""

from __future__ import annotations

import re
import warnings

import jsonschema
import kubernetes_validate
import yaml

from tests.chart.manifests import CHART_DIR, KUBERNETES_VERSION, REPO, load_yaml, render_set

K8S = REPO / "k8s"


def test_kind_maps_the_ingress_node_ports_to_localhost() -> None:
    kind = load_yaml(K8S / "kind.yaml")
    traefik = load_yaml(K8S / "addons" / "traefik-kind.yaml")
    (control_plane,) = [n for n in kind["nodes"] if n["role"] == "control-plane"]
    mapped = {m["containerPort"]: m["hostPort"] for m in control_plane["extraPortMappings"]}
    assert mapped[traefik["ports"]["web"]["nodePort"]] == 80
    assert mapped[traefik["ports"]["websecure"]["nodePort"]] == 443
    assert control_plane["labels"].items() >= traefik["nodeSelector"].items()
    assert traefik["service"]["type"] == "NodePort"


def test_the_namespaces_are_valid_and_restricted_where_regatta_runs() -> None:
    namespaces = list(yaml.safe_load_all((K8S / "namespaces.yaml").read_text(encoding="utf-8")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for namespace in namespaces:
            kubernetes_validate.validate(namespace, KUBERNETES_VERSION, strict=True)
    by_name = {n["metadata"]["name"]: n for n in namespaces}
    labels = by_name["regatta"]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    # The chart's default NetworkPolicies let in exactly these namespaces.
    default = render_set("default").get("NetworkPolicy", "regatta-api")
    allowed = {
        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for rule in default["spec"]["ingress"]
        for peer in rule["from"]
        if "namespaceSelector" in peer
    }
    assert allowed == {"traefik", "monitoring"} <= set(by_name)


def test_the_ingress_closes_idle_connections_before_uvicorn() -> None:
    traefik = load_yaml(K8S / "addons" / "traefik.yaml")
    (argument,) = [a for a in traefik["additionalArguments"] if "idleConnTimeout" in a]
    idle = int(re.findall(r"=(\d+)s$", argument)[0])
    keepalive = load_yaml(CHART_DIR / "values.yaml")["config"]["keepaliveSeconds"]
    assert keepalive > idle
    ingress = load_yaml(CHART_DIR / "values.yaml")["ingress"]
    assert ingress["className"] == traefik["ingressClass"]["name"]


def test_monitoring_finds_the_charts_objects_and_grafana_has_data() -> None:
    stack = load_yaml(K8S / "addons" / "kube-prometheus-stack.yaml")
    spec = stack["prometheus"]["prometheusSpec"]
    for selector in ("serviceMonitor", "podMonitor", "rule"):
        assert spec[f"{selector}SelectorNilUsesHelmValues"] is False
    assert "volumeClaimTemplate" in spec["storageSpec"]
    dashboards = stack["grafana"]["sidecar"]["dashboards"]
    values = load_yaml(CHART_DIR / "values.yaml")["metrics"]["dashboards"]
    assert dashboards["label"] == values["label"]
    assert dashboards["labelValue"] == values["labelValue"]
    assert dashboards["searchNamespace"] == "ALL"
    (loki,) = [s for s in stack["grafana"]["additionalDataSources"] if s["type"] == "loki"]
    alloy = load_yaml(K8S / "addons" / "alloy.yaml")["alloy"]["configMap"]["content"]
    assert loki["url"] in alloy
    # The cluster parses logs exactly as observability/alloy/config.alloy does.
    checked = (K8S.parent / "observability" / "alloy" / "config.alloy").read_text(encoding="utf-8")
    assert _pipeline(alloy) == _pipeline(checked)


def _pipeline(config: str) -> str:
    return config[config.index('loki.process "regatta"') : config.index('loki.write "default"')]


def test_every_add_on_chart_version_is_pinned() -> None:
    script = (K8S / "addons" / "install.sh").read_text(encoding="utf-8")
    pins = dict(re.findall(r"^(\w+_CHART_VERSION)=(\S+)", script, re.MULTILINE))
    assert set(pins) == {
        "TRAEFIK_CHART_VERSION",
        "KUBE_PROMETHEUS_STACK_CHART_VERSION",
        "METRICS_SERVER_CHART_VERSION",
        "LOKI_CHART_VERSION",
        "ALLOY_CHART_VERSION",
        "OTEL_COLLECTOR_CHART_VERSION",
        "TEMPO_CHART_VERSION",
    }
    for version in pins.values():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    installs = re.findall(
        r"helm upgrade --install \S+ \S+ \\\n\s+--version \"\$\{(\w+)\}\"", script
    )
    assert sorted(installs) == sorted(pins)
    for values in re.findall(r"--values (\S+)", script):
        for profile in ("kind", "cloud"):
            path = values.strip('"').replace("${profile}", profile)
            assert (K8S / "addons" / path).is_file()


def test_the_example_api_service_matches_the_crd() -> None:
    crd = load_yaml(CHART_DIR / "files" / "crds" / "apiservices.regatta.dev.yaml")
    (version,) = crd["spec"]["versions"]
    example = load_yaml(K8S / "examples" / "apiservice.yaml")
    assert example["apiVersion"] == f"{crd['spec']['group']}/{version['name']}"
    assert example["kind"] == crd["spec"]["names"]["kind"]
    jsonschema.Draft7Validator(version["schema"]["openAPIV3Schema"]).validate(example)
