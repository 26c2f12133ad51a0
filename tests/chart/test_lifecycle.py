"""Install and upgrade never wait on themselves: Helm's order, walked offline (lifecycle.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helm_python.errors import HelmError

from tests.chart.lifecycle import Release, Walk, argo_step, argo_sync, install, upgrade
from tests.chart.manifests import (
    NAMESPACE,
    RELEASE,
    REPO,
    Manifest,
    copy_chart,
    load_yaml,
    render,
    value_sets,
)

SETS = list(value_sets())

# The upgrades a user makes from the defaults: a feature turned on, databases moved out, routing
# moved to the Gateway API.
UPGRADES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "notifications-off-to-on": ({"services": {"notifications": {"enabled": False}}}, {}),
    "builtin-to-external-databases": ({}, value_sets()["external-databases"]),
    "ingress-to-gateway-api": ({}, value_sets()["gateway-api"]),
}


def _assert_clean(walk: Walk) -> None:
    assert not walk.problems, "\n".join([*walk.problems, "", "order:", *walk.steps])


@pytest.mark.parametrize("value_set", SETS)
def test_an_install_never_waits_on_itself(value_set: str) -> None:
    walk, _ = install(value_sets()[value_set])
    _assert_clean(walk)


@pytest.mark.parametrize("value_set", SETS)
def test_a_plain_upgrade_never_waits_on_itself(value_set: str) -> None:
    values = value_sets()[value_set]
    _assert_clean(upgrade(values, values))


@pytest.mark.parametrize("name", list(UPGRADES))
def test_the_upgrades_users_make_never_wait_on_themselves(name: str) -> None:
    before, after = UPGRADES[name]
    _assert_clean(upgrade(before, after))


def test_the_walk_catches_a_hook_that_needs_what_the_release_creates_later() -> None:
    # A pre-upgrade Job reading a Secret that only the upgrade's ordinary objects create.
    release = Release(
        values={},
        objects=[
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {"name": "migrate", "annotations": {"helm.sh/hook": "pre-upgrade"}},
                "spec": {
                    "template": {
                        "spec": {
                            "containers": [
                                {
                                    "name": "m",
                                    "envFrom": [{"secretRef": {"name": "made-later"}}],
                                }
                            ]
                        }
                    }
                },
            },
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "made-later"}},
        ],
    )
    walk = Walk(existing={("ServiceAccount", "default")})
    walk.run_hooks(release, "pre-upgrade")
    assert walk.problems == ["pre-upgrade: Job migrate waits for Secret made-later"]
    walk.apply(release, None, "upgrade")
    assert len(walk.problems) == 1


def test_hooks_run_by_weight_then_name_then_kind() -> None:
    def hook(kind: str, name: str, weight: str) -> dict[str, Any]:
        meta = {"helm.sh/hook": "pre-install", "helm.sh/hook-weight": weight}
        return {"kind": kind, "metadata": {"name": name, "annotations": meta}}

    release = Release(
        values={},
        objects=[
            hook("Job", "a", "0"),
            hook("Secret", "z", "0"),
            hook("Job", "b", "-1"),
            hook("ConfigMap", "c", "0"),
            hook("Secret", "y", "0"),
            hook("Job", "c", "0"),
        ],
    )
    order = [(h["kind"], h["metadata"]["name"]) for h in release.hooks("pre-install")]
    assert order == [
        ("Job", "b"),
        ("Job", "a"),
        ("ConfigMap", "c"),
        ("Job", "c"),
        ("Secret", "y"),
        ("Secret", "z"),
    ]


def _migrations(values: dict[str, Any]) -> list[Manifest]:
    return [o for o in render(values).objects if o["kind"] == "Job"]


def test_argo_cd_would_migrate_before_postgres_exists_without_its_mode() -> None:
    # What the Argo CD mode is for: post-install,pre-upgrade maps to PreSync there.
    rendered = render({})
    postgres = argo_step(rendered.get("StatefulSet", "regatta-postgresql"))
    assert postgres is not None
    for job in _migrations({}):
        step = argo_step(job)
        assert step is not None
        assert step < postgres


def test_under_argo_cd_migrations_run_between_the_databases_and_the_services() -> None:
    values = value_sets()["argocd"]
    rendered = render(values)
    assert not rendered.kind("Secret"), "nothing generated: lookup sees nothing under Argo CD"
    data = [
        argo_step(o)
        for o in rendered.objects
        if o["kind"] in {"StatefulSet", "Cluster"} or o["kind"] == "Service"
    ]
    services = [argo_step(d) for d in rendered.kind("Deployment")]
    jobs = _migrations(values)
    assert jobs
    for job in jobs:
        step = argo_step(job)
        assert step is not None
        assert all(s is not None and s < step for s in data), job["metadata"]["name"]
        assert all(s is not None and step < s for s in services), job["metadata"]["name"]
    for pod in rendered.kind("Pod"):
        assert argo_step(pod) is None, "helm test pods are Helm's alone"
    _assert_clean(argo_sync(values))


def test_argo_cd_mode_refuses_generated_credentials() -> None:
    values = {**value_sets()["argocd"], "apiKeys": {"existingSecret": ""}}
    with pytest.raises(HelmError, match=r"argocd.enabled needs .*apiKeys.existingSecret"):
        render(values)
    with pytest.raises(HelmError, match=r"notifications.webhookSigningSecret.existingSecret"):
        render({"argocd": {"enabled": True}})


def _crds(values: dict[str, Any]) -> list[Manifest]:
    return [o for o in render(values).objects if o["kind"] == "CustomResourceDefinition"]


def test_the_api_service_crd_comes_with_the_operator_only_and_is_kept() -> None:
    assert not _crds({})
    assert not _crds(value_sets()["skaffold-dev-core"])
    (crd,) = _crds(value_sets()["production"])
    assert crd["metadata"]["name"] == "apiservices.regatta.dev"
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["spec"]["names"]["kind"] == "ApiService"
    assert not _crds({"operator": {"enabled": True, "crd": {"install": False}}})
    # Turning the operator off in an upgrade keeps the CRD, and with it every ApiService.
    walk = upgrade(value_sets()["production"], {**value_sets()["production"], "operator": {}})
    assert ("CustomResourceDefinition", "apiservices.regatta.dev") in walk.existing


# The CRD as lookup could find it: from the previous chart's crds/ (no ownership), or a release's.
_OWNED = {
    "labels": {"app.kubernetes.io/managed-by": "Helm"},
    "annotations": {
        "meta.helm.sh/release-name": RELEASE,
        "meta.helm.sh/release-namespace": NAMESPACE,
    },
}
_LIVE_CRDS: dict[str, tuple[dict[str, Any], bool]] = {
    "none": ({}, False),
    "from-crds-dir": ({"metadata": {"name": "apiservices.regatta.dev"}}, True),
    "this-release": ({"metadata": {"name": "apiservices.regatta.dev", **_OWNED}}, False),
    "other-release": (
        {
            "metadata": {
                "name": "apiservices.regatta.dev",
                **_OWNED,
                "annotations": {**_OWNED["annotations"], "meta.helm.sh/release-name": "other"},
            }
        },
        True,
    ),
    "no-managed-by-label": (
        {"metadata": {"name": "apiservices.regatta.dev", "annotations": _OWNED["annotations"]}},
        True,
    ),
}


def test_a_crd_this_release_does_not_own_is_left_alone(tmp_path: Path) -> None:
    """Upgrading from the chart that installed it from crds/ must not fail on ownership.

    Offline, lookup finds nothing; a probe template feeds the decision what it could find.
    """
    chart = copy_chart(tmp_path)
    probe = "".join(
        f'{name}: {{{{ include "regatta.crdHeldElsewhere" '
        f'(dict "root" $ "live" ({json.dumps(json.dumps(live))} | fromJson)) '
        f'| default "false" | quote }}}}\n'
        for name, (live, _) in _LIVE_CRDS.items()
    )
    (chart / "templates" / "probe.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: probe\ndata:\n"
        + "".join(f"  {line}\n" for line in probe.splitlines()),
        encoding="utf-8",
    )
    (configmap,) = [
        c for c in render({}, chart_dir=chart).kind("ConfigMap") if c["metadata"]["name"] == "probe"
    ]
    assert configmap["data"] == {
        name: "true" if held else "false" for name, (_, held) in _LIVE_CRDS.items()
    }
    template = (REPO / "charts/regatta/templates/crd.yaml").read_text(encoding="utf-8")
    assert 'lookup "apiextensions.k8s.io/v1" "CustomResourceDefinition"' in template
    assert '{{- if not (include "regatta.crdHeldElsewhere"' in template
    # Looked up only when the chart installs the CRD: a user who may not read CRDs turns it off.
    gate = "{{- if and .Values.operator.enabled .Values.operator.crd.install }}"
    assert template.index(gate) < template.index("$live := lookup")


def test_the_core_profile_skips_crds() -> None:
    skaffold = load_yaml(REPO / "skaffold.yaml")
    (core,) = [p for p in skaffold["profiles"] if p["name"] == "core"]
    (flags,) = [p["value"] for p in core["patches"] if p["path"] == "/deploy/helm/flags"]
    assert "--skip-crds" in flags["install"]
    assert "--skip-crds" in flags["upgrade"]
