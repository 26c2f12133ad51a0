"""Install and upgrade never wait on themselves: Helm's order, walked offline (lifecycle.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.lifecycle import Release, Walk, install, upgrade
from tests.chart.manifests import _deep_merge, value_sets

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


def test_value_sets_merge_like_helm() -> None:
    assert _deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}
