"""The operator's rendered RBAC: what it uses, nothing cluster-wide on Secrets.

The requests the operator makes against kmock (a reconciliation with every child, drift, a
deletion) are each checked against the rules the chart renders, in both modes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import kmock
import pytest

from regatta.operator.kube import Cluster
from regatta.operator.reconcile import finalize, reconcile
from regatta.operator.settings import CONFIG_VARIABLE, load_settings
from tests.chart.manifests import Rendered, env_of, pod_spec, render
from tests.operator.support import api_service

Rule = dict[str, Any]
SERVICE_ACCOUNT = "regatta-operator"


def _rendered(*, cluster_wide: bool) -> Rendered:
    return render({"operator": {"enabled": True, "clusterWide": cluster_wide}})


def _bound_to_operator(binding: dict[str, Any]) -> bool:
    return any(
        s["kind"] == "ServiceAccount" and s["name"] == SERVICE_ACCOUNT
        for s in binding.get("subjects") or []
    )


def _rules(rendered: Rendered, role_kind: str, name: str) -> list[Rule]:
    rules: list[Rule] = rendered.get(role_kind, name)["rules"]
    return rules


def cluster_wide_rules(rendered: Rendered) -> list[Rule]:
    """The rules granted in every namespace (ClusterRoleBindings to the operator)."""
    rules: list[Rule] = []
    for binding in rendered.kind("ClusterRoleBinding"):
        if _bound_to_operator(binding):
            rules += _rules(rendered, "ClusterRole", binding["roleRef"]["name"])
    return rules


def namespace_rules(rendered: Rendered) -> list[Rule]:
    """The rules granted by RoleBindings (to a Role, or to a ClusterRole in one namespace)."""
    rules: list[Rule] = []
    for binding in rendered.kind("RoleBinding"):
        if _bound_to_operator(binding):
            rules += _rules(rendered, binding["roleRef"]["kind"], binding["roleRef"]["name"])
    return rules


def allows(rules: Iterable[Rule], group: str, resource: str, verb: str) -> bool:
    return any(
        group in rule.get("apiGroups", [])
        and resource in rule.get("resources", [])
        and verb in rule["verbs"]
        and not rule.get("resourceNames")
        for rule in rules
    )


def test_cluster_wide_grants_no_secret_access_and_the_finalizers() -> None:
    rendered = _rendered(cluster_wide=True)
    everywhere = cluster_wide_rules(rendered)
    assert everywhere
    assert not [rule for rule in everywhere if "secrets" in rule["resources"]]
    assert allows(everywhere, "regatta.dev", "apiservices/finalizers", "update")
    # It may bind one ClusterRole, by name, and that role holds only the Secret rights.
    (bind,) = [rule for rule in everywhere if "bind" in rule["verbs"]]
    assert bind["resources"] == ["clusterroles"]
    assert bind["resourceNames"] == ["regatta-operator-secrets"]
    secrets_role = rendered.get("ClusterRole", "regatta-operator-secrets")
    assert [rule["resources"] for rule in secrets_role["rules"]] == [["secrets"]]
    assert not {"list", "watch"} & set(secrets_role["rules"][0]["verbs"])
    # Nothing binds it cluster-wide; the chart binds it in the release's own namespace only.
    assert "regatta-operator-secrets" not in {
        b["roleRef"]["name"] for b in rendered.kind("ClusterRoleBinding")
    }
    (binding,) = [
        b
        for b in rendered.kind("RoleBinding")
        if b["roleRef"]["name"] == secrets_role["metadata"]["name"]
    ]
    assert "namespace" not in binding["metadata"] or binding["metadata"]["namespace"] == "regatta"
    for rule in everywhere:
        assert "*" not in rule["verbs"]
        assert "*" not in rule["resources"]


def test_namespaced_mode_keeps_every_right_in_its_namespace() -> None:
    rendered = _rendered(cluster_wide=False)
    assert not rendered.kind("ClusterRole")
    assert not rendered.kind("ClusterRoleBinding")
    rules = namespace_rules(rendered)
    assert allows(rules, "regatta.dev", "apiservices/finalizers", "update")
    assert allows(rules, "", "secrets", "patch")
    assert not allows(rules, "rbac.authorization.k8s.io", "rolebindings", "create")


def _verb(request: Any) -> str:
    method = request.method.value
    if method == "GET":
        if request.name:
            return "get"
        return "watch" if request.params.get("watch") in {"true", "1"} else "list"
    return {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}[str(method)]


@pytest.mark.parametrize("cluster_wide", [True, False])
async def test_every_request_the_operator_makes_is_granted(
    kmock: kmock.KubernetesEmulator, cluster: Cluster, *, cluster_wide: bool
) -> None:
    rendered = _rendered(cluster_wide=cluster_wide)
    operator = rendered.get("Deployment", "regatta-operator")
    env = env_of(pod_spec(operator)["containers"][0])
    settings = load_settings(
        {
            CONFIG_VARIABLE: env[CONFIG_VARIABLE]["value"],
            "REDIS_URL": "redis://:pw@regatta-redis:6379/0",
        }
    ).model_copy(update={"redis_users": False})
    namespace = "shop" if cluster_wide else "regatta"
    body = api_service(
        namespace=namespace, redis=True, autoscaling={"minReplicas": 2, "maxReplicas": 4}
    )
    await reconcile(body=body, settings=settings, cluster=cluster)
    await reconcile(body=api_service(namespace=namespace), settings=settings, cluster=cluster)
    await finalize(body=body, settings=settings, cluster=cluster)

    everywhere = cluster_wide_rules(rendered)
    in_namespace = namespace_rules(rendered)
    # In cluster-wide mode the operator binds the Secrets role in the tenant's namespace.
    bindings = [
        obj
        for (resource, ns, _), obj in kmock.objects.items()
        if resource.plural == "rolebindings" and ns == namespace and not obj.deleted
    ]
    tenant_rules: list[Rule] = []
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "ClusterRole"
        tenant_rules += _rules(rendered, "ClusterRole", binding["roleRef"]["name"])
        (subject,) = binding["subjects"]
        assert (subject["name"], subject["namespace"]) == (SERVICE_ACCOUNT, "regatta")
    assert bool(bindings) == cluster_wide
    used: set[tuple[str, str, str]] = set()
    for request in kmock:
        if request.resource is None:
            continue
        group, plural = request.resource.group or "", request.resource.plural or ""
        used.add((group, plural, _verb(request)))
    assert ("", "secrets", "patch") in used
    assert ("", "pods", "list") in used
    for group, plural, verb in sorted(used):
        granted = allows(everywhere, group, plural, verb) or allows(
            in_namespace + tenant_rules, group, plural, verb
        )
        assert granted, f"{verb} {plural}.{group} is not granted"
