"""The GitHub workflows, checked offline: schema, zizmor, shellcheck, pins, and what they run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.chart.manifests import REPO, load_yaml, pod_spec, render
from tests.cluster.kind_run import dry_run, option_values

WORKFLOWS = REPO / ".github" / "workflows"
BIN = Path(sys.executable).parent
PIN = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+\.\d+\.\d+$")
IMAGES = ["items", "heroes", "notifications", "operator"]


def _files() -> list[Path]:
    return sorted(WORKFLOWS.glob("*.yml"))


def _load(path: Path) -> dict[Any, Any]:
    # PyYAML reads the key `on` as True (YAML 1.1); it is `on` here.
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    if True in data:
        data["on"] = data.pop(True)
    return data


def _tool(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / name), *args], capture_output=True, text=True, check=False, cwd=REPO
    )


def _steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def _scripts(workflow: dict[str, Any]) -> str:
    return "\n".join(step["run"] for step in _steps(workflow) if "run" in step)


def _schema_errors(*paths: Path) -> subprocess.CompletedProcess[str]:
    names = [str(p) for p in paths]
    return _tool("check-jsonschema", "--builtin-schema", "vendor.github-workflows", *names)


def _high_findings(directory: Path) -> list[str]:
    result = _tool("zizmor", "--offline", "--format", "json", str(directory))
    assert result.stdout, result.stderr
    findings = json.loads(result.stdout)
    return [f["ident"] for f in findings if f["determinations"]["severity"] == "High"]


def test_there_are_a_release_and_a_kind_workflow() -> None:
    assert {p.name for p in _files()} >= {"release.yml", "kind.yml"}


def test_every_workflow_matches_the_github_workflow_schema() -> None:
    result = _schema_errors(*_files())
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_catches_a_misspelt_key(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    text = (WORKFLOWS / "release.yml").read_text(encoding="utf-8")
    broken.write_text(text.replace("runs-on:", "runs_on:", 1), encoding="utf-8")
    assert _schema_errors(broken).returncode != 0


def test_zizmor_finds_nothing_high() -> None:
    assert _high_findings(WORKFLOWS) == []


def test_zizmor_would_catch_an_unpinned_action_and_an_injection(tmp_path: Path) -> None:
    workflows = tmp_path / ".github" / "workflows"
    workflows.mkdir(parents=True)
    text = (WORKFLOWS / "kind.yml").read_text(encoding="utf-8")
    text = re.sub(r"actions/checkout@[0-9a-f]{40}", "actions/checkout@v4", text)
    text = text.replace("run: make kind", 'run: echo "${{ github.event.head_commit.message }}"')
    (workflows / "kind.yml").write_text(text, encoding="utf-8")
    assert {"unpinned-uses", "template-injection"} <= set(_high_findings(workflows))


def test_every_action_is_pinned_to_a_commit_with_its_version_beside_it() -> None:
    for path in _files():
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        uses = [line.removeprefix("- ").removeprefix("uses: ") for line in lines if "uses:" in line]
        assert uses, path
        for use in uses:
            assert PIN.match(use), f"{path.name}: {use}"


def test_permissions_are_least_privilege() -> None:
    for path in _files():
        workflow = _load(path)
        top = workflow["permissions"]
        assert all(level == "read" for level in top.values()), path.name
        for name, job in workflow["jobs"].items():
            permissions = job.get("permissions", {})
            script = "\n".join(s.get("run", "") for s in job["steps"])
            # Only jobs that sign hold an OIDC token; only jobs that push may write packages.
            signs = "cosign sign" in script
            assert (permissions.get("id-token") == "write") == signs, f"{path.name}:{name}"
            pushes = signs or any("build-push-action" in s.get("uses", "") for s in job["steps"])
            assert (permissions.get("packages") == "write") == pushes, f"{path.name}:{name}"


def test_no_expression_is_expanded_inside_a_script() -> None:
    for path in _files():
        assert "${{" not in _scripts(_load(path)), path.name


def _shell_scripts() -> list[Path]:
    tracked = subprocess.run(
        ["git", "ls-files"], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout.split()
    scripts = []
    for name in tracked:
        path = REPO / name
        if path.suffix == ".sh" or (path.is_file() and _has_shell_shebang(path)):
            scripts.append(path)
    # New scripts count before they are committed too.
    scripts += [p for p in (REPO / "k8s").rglob("*.sh") if p not in scripts]
    return sorted(scripts)


def _has_shell_shebang(path: Path) -> bool:
    with path.open("rb") as file:
        first = file.readline()
    return first.startswith(b"#!") and (b"bash" in first or first.rstrip().endswith(b"/sh"))


def test_shellcheck_passes_every_script_and_every_workflow_step(tmp_path: Path) -> None:
    scripts = _shell_scripts()
    names = {str(p.relative_to(REPO)) for p in scripts}
    assert {".ci/run", "k8s/kind-up.sh", "k8s/addons/install.sh"} <= names
    for path in _files():
        workflow = _load(path)
        for job in workflow["jobs"].values():
            for index, step in enumerate(job["steps"]):
                if "run" not in step:
                    continue
                # The step's environment, as the runner sets it.
                env = {**workflow.get("env", {}), **job.get("env", {}), **step.get("env", {})}
                header = "".join(f'{name}="${{{name}:?}}"\n' for name in sorted(env))
                script = tmp_path / f"{path.stem}-{len(scripts)}-{index}.sh"
                script.write_text(f"#!/usr/bin/env bash\nset -eo pipefail\n{header}{step['run']}")
                scripts.append(script)
    result = _tool("shellcheck", "--severity=style", *map(str, scripts))
    assert result.returncode == 0, result.stdout


def test_shellcheck_can_fail(tmp_path: Path) -> None:
    script = tmp_path / "bad.sh"
    script.write_text("#!/usr/bin/env bash\nrm -rf $1/*\n", encoding="utf-8")
    assert _tool("shellcheck", str(script)).returncode != 0


# The release.


def _release() -> dict[str, Any]:
    return _load(WORKFLOWS / "release.yml")


def test_a_release_runs_on_version_tags_only() -> None:
    on = _release()["on"]
    assert set(on) == {"push"}
    assert set(on["push"]) == {"tags"}
    assert all(tag.startswith("v") for tag in on["push"]["tags"])


def test_the_release_builds_the_four_images_for_amd64_and_arm64_pushed_by_digest() -> None:
    build = _release()["jobs"]["build"]
    assert build["strategy"]["matrix"]["image"] == IMAGES
    assert build["strategy"]["matrix"]["arch"] == ["amd64", "arm64"]
    skaffold = load_yaml(REPO / "skaffold.yaml")
    artifacts = {a["image"]: a["docker"]["dockerfile"] for a in skaffold["build"]["artifacts"]}
    assert artifacts == {f"regatta-{i}": f"services/{i}/Dockerfile" for i in IMAGES}
    (step,) = [s for s in build["steps"] if "build-push-action" in s.get("uses", "")]
    assert step["with"]["file"] == "services/${{ matrix.image }}/Dockerfile"
    assert step["with"]["context"] == "."
    assert step["with"]["platforms"] == "linux/${{ matrix.arch }}"
    assert "push-by-digest=true" in step["with"]["outputs"]
    assert "push=true" in step["with"]["outputs"]
    names = _scripts({"jobs": {"build": build}})
    assert "ghcr.io/${OWNER,,}/regatta-${IMAGE}" in names


def test_each_image_is_tagged_with_the_release_from_both_digests_and_signed() -> None:
    images = _release()["jobs"]["images"]
    assert images["needs"] == "build"
    assert images["strategy"]["matrix"]["image"] == IMAGES
    script = _scripts({"jobs": {"images": images}})
    assert 'version="${TAG#v}"' in script
    assert "docker buildx imagetools create" in script
    assert 'cosign sign --yes "${repository}@${digest}"' in script  # by digest, keyless


def test_the_chart_is_published_as_an_oci_artifact_and_signed() -> None:
    chart = _release()["jobs"]["chart"]
    assert chart["needs"] == "images"
    script = _scripts({"jobs": {"chart": chart}})
    assert 'k8s/release-chart.sh "${TAG#v}" "${OWNER}" dist' in script
    assert 'helm push "dist/regatta-${version}.tgz" "oci://ghcr.io/${owner}/charts"' in script
    assert 'cosign sign --yes "ghcr.io/${owner}/charts/regatta@${digest}"' in script


def _regatta_images(chart_dir: Path) -> set[str]:
    rendered = render({"operator": {"enabled": True}}, chart_dir=chart_dir)
    images = set()
    for obj in rendered.workloads():
        spec = pod_spec(obj)
        for container in spec.get("initContainers", []) + spec["containers"]:
            if "/regatta-" in container["image"]:
                images.add(container["image"])
    return images


def test_the_released_chart_defaults_to_the_releases_images(tmp_path: Path) -> None:
    script = REPO / "k8s" / "release-chart.sh"
    env = {"PATH": "/usr/bin:/bin", "PACKAGE": "0"}
    subprocess.run([str(script), "2.4.0", "Some-Org", str(tmp_path)], check=True, env=env)
    chart = load_yaml(tmp_path / "regatta" / "Chart.yaml")
    assert chart["version"] == chart["appVersion"] == "2.4.0"
    expected = {f"ghcr.io/some-org/regatta-{image}:2.4.0" for image in IMAGES}
    assert _regatta_images(tmp_path / "regatta") == expected
    # The chart in the repository is untouched.
    assert load_yaml(REPO / "charts" / "regatta" / "Chart.yaml")["version"] != "2.4.0"


def test_the_release_script_refuses_a_version_that_is_not_semantic(tmp_path: Path) -> None:
    script = REPO / "k8s" / "release-chart.sh"
    env = {"PATH": "/usr/bin:/bin", "PACKAGE": "0"}
    result = subprocess.run(
        [str(script), "v2.4", "org", str(tmp_path)], check=False, env=env, capture_output=True
    )
    assert result.returncode == 2


# The kind workflow.


def _kind() -> dict[str, Any]:
    return _load(WORKFLOWS / "kind.yml")


def test_the_kind_workflow_runs_on_every_push() -> None:
    on = _kind()["on"]
    assert "push" in on
    assert not on["push"]  # no branch or path filter


def _step(name: str) -> dict[str, Any]:
    (step,) = [s for s in _steps(_kind()) if s.get("name", "").startswith(name)]
    return step


def test_the_kind_workflow_makes_kind_tests_upgrades_and_runs_skaffold() -> None:
    steps = [s.get("name", "") for s in _steps(_kind())]
    runs = [s.get("run", "") for s in _steps(_kind())]
    assert "make kind" in runs
    assert "helm test regatta --namespace regatta --logs" in runs

    def index(prefix: str) -> int:
        return next(i for i, name in enumerate(steps) if name.startswith(prefix))

    # The previous release is installed, traffic starts, make kind upgrades it, traffic stops.
    previous = _step("Install the previous release")
    assert "k8s/traffic.sh start" in previous["run"]
    assert 'helm install regatta "oci://ghcr.io/${OWNER,,}/charts/regatta"' in previous["run"]
    assert index("Install the previous release") < index("make kind") < index("Zero failed")
    assert _step("Zero failed")["run"] == "k8s/traffic.sh stop"
    rolling = _step("A rolling upgrade")["run"]
    assert rolling.index("k8s/traffic.sh start") < rolling.index("helm upgrade")
    assert rolling.strip().endswith("k8s/traffic.sh stop")
    apiservice = _step("An ApiService")["run"]
    for verb in ("apply", "wait apiservice/ci-check --for=condition=Ready", "delete apiservice"):
        assert verb in apiservice
    assert _step("skaffold run")["run"].startswith("skaffold run")
    assert index("skaffold run") > index("An ApiService")


def test_the_kind_workflow_upgrades_exactly_the_images_make_kind_loaded() -> None:
    workflow = _kind()
    tag = workflow["env"]["TAG"]
    run = dry_run(ENGINE="docker", TAG=tag)
    (install,) = run.named("helm", "upgrade", "--install", "regatta")
    keys = {a.split("=")[0] for a in option_values(install, "--set-string")}
    rolling = _step("A rolling upgrade")["run"]
    for key in re.findall(r"for key in ([^;]+);", rolling)[0].split():
        assert f"{key}.image.tag" in keys
    loaded = {c[3] for c in run.named("kind", "load", "docker-image")}
    assert "localhost/regatta-heroes:${TAG}".replace("${TAG}", tag) in loaded
    assert "image: localhost/regatta-heroes:${TAG}" in _step("An ApiService")["run"]
