"""`make kind` (k8s/kind-up.sh): its dry run builds, loads and installs the chart's images."""

from __future__ import annotations

import subprocess

import pytest

from tests.chart.manifests import REPO, Manifest, load_yaml, pod_spec, render
from tests.cluster.kind_run import DryRun, dry_run, helm_values, option_values

_VALUES = load_yaml(REPO / "charts" / "regatta" / "values.yaml")
# Images the cluster pulls from their publishers: the stores and their exporters.
THIRD_PARTY = (
    _VALUES["database"]["builtin"]["image"]["repository"],
    _VALUES["redis"]["builtin"]["image"]["repository"],
    *(
        _VALUES["metrics"]["exporters"][kind]["image"]["repository"]
        for kind in ("postgres", "redis")
    ),
)


def _images(objects: list[Manifest]) -> set[str]:
    workloads = {"Deployment", "StatefulSet", "Job", "Pod", "DaemonSet"}
    found: set[str] = set()
    for obj in objects:
        if obj["kind"] not in workloads:
            continue
        spec = pod_spec(obj)
        for container in spec.get("initContainers", []) + spec["containers"]:
            found.add(container["image"])
    return found


def _install(run: DryRun) -> list[str]:
    (install,) = run.named("helm", "upgrade", "--install")[-1:]
    assert install[3:5] == ["regatta", "charts/regatta"]
    return install


def _built(run: DryRun, engine: str) -> set[str]:
    builds = run.named(engine, "build")
    for build in builds:
        (dockerfile,) = option_values(build, "--file")
        assert (REPO / dockerfile).is_file()
        assert build[-1] == "."  # the uv workspace is the context
    return {tag for build in builds for tag in option_values(build, "--tag")}


def _loaded(run: DryRun, engine: str) -> set[str]:
    if engine == "docker":
        return {c[3] for c in run.named("kind", "load", "docker-image")}
    archives = {c[3] for c in run.named("kind", "load", "image-archive")}
    saved = {option_values(c, "--output")[0]: c[-1] for c in run.named("podman", "save")}
    assert set(saved) == archives
    return set(saved.values())


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_the_images_built_and_loaded_are_exactly_those_the_chart_runs(engine: str) -> None:
    run = dry_run(ENGINE=engine, TAG="kind-test")
    install = _install(run)
    rendered = render(helm_values(install))
    regatta_images = {
        image for image in _images(rendered.objects) if not image.startswith(THIRD_PARTY)
    }
    built = _built(run, engine)
    assert len(built) == 4
    assert built == _loaded(run, engine) == regatta_images
    assert all(image.endswith(":kind-test") for image in built)
    # Helm's own test pods run one of them too, and the operator is among them.
    tests = [
        obj for obj in rendered.kind("Pod") if "helm.sh/hook" in obj["metadata"]["annotations"]
    ]
    assert tests
    assert _images(tests) <= built
    assert any("regatta-operator" in image for image in regatta_images)


def test_the_default_tag_is_the_commit_and_always_a_string() -> None:
    run = dry_run(ENGINE="docker")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout.strip()
    install = _install(run)
    tags = [a for a in option_values(install, "--set-string") if a.split("=")[0].endswith(".tag")]
    assert len(tags) == 4
    assert len({a.split("=")[1] for a in tags}) == 1
    assert all(a.split("=")[1].startswith(f"kind-{commit}") for a in tags)
    assert not option_values(install, "--set")  # `--set tag=1.0` would make a number


def test_every_step_in_order_on_the_kind_cluster() -> None:
    run = dry_run(ENGINE="docker", TAG="t")

    def position(*prefix: str) -> int:
        return next(i for i, c in enumerate(run.commands) if c[: len(prefix)] == list(prefix))

    create = run.named("kind", "create", "cluster")
    expected = "kind create cluster --config k8s/kind.yaml --name regatta --wait 5m"
    assert create == [expected.split()]
    cluster = load_yaml(REPO / "k8s" / "kind.yaml")
    assert cluster["name"] == "regatta"
    positions = [
        position("kind", "create"),
        position("k8s/addons/install.sh", "--kind"),
        position("docker", "build"),
        position("kind", "load"),
        position("helm", "upgrade", "--install", "regatta"),
        position("helm", "test"),
    ]
    assert positions == sorted(positions)
    install = _install(run)
    assert "--wait" in install
    assert option_values(install, "--namespace") == ["regatta"]
    assert run.named("helm", "test", "regatta")
    # The add-ons of a kind cluster, printed too: metrics-server with the flag kind needs.
    (metrics,) = run.named("helm", "upgrade", "--install", "metrics-server")
    assert "metrics-server-kind.yaml" in option_values(metrics, "--values")
    (traefik,) = run.named("helm", "upgrade", "--install", "traefik")
    assert "traefik-kind.yaml" in option_values(traefik, "--values")


def test_an_unknown_engine_is_refused() -> None:
    with pytest.raises(subprocess.CalledProcessError):
        dry_run(ENGINE="nerdctl")
