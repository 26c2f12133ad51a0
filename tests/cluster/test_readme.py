"""The README's Kubernetes section: its commands are the ones `make kind` and the add-ons run."""

from __future__ import annotations

import os
import re
import subprocess

import yaml

from tests.chart.manifests import REPO, render
from tests.cluster.kind_run import dry_run

README = (REPO / "README.md").read_text(encoding="utf-8")
SECTION = README[README.index("## Kubernetes") : README.index("## Observability")]


def _block_after(marker: str) -> str:
    rest = SECTION[SECTION.index(marker) :]
    match = re.search(r"```(?:sh|yaml)\n(.*?)```", rest, re.DOTALL)
    assert match, marker
    return match.group(1)


def _commands(block: str) -> list[str]:
    lines = []
    for line in block.replace("\\\n", " ").splitlines():
        command = re.sub(r"\s+# .*$", "", line).strip()
        if command:
            lines.append(" ".join(command.split()))
    return lines


def test_make_kind_is_the_script_with_its_dry_run() -> None:
    (command,) = _commands(_block_after("From nothing to a running platform"))
    assert command == "make kind"
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^kind: .*\n\tk8s/kind-up\.sh$", makefile, re.MULTILINE)


def test_the_newcomers_commands_are_exactly_what_make_kind_prints() -> None:
    block = _commands(_block_after("It ends by printing the commands below"))
    printed = {" ".join(line.split()) for line in dry_run(ENGINE="docker").output.splitlines()}
    assert block
    missing = [command for command in block if command not in printed]
    assert not missing
    # Ingress, a write, the HPAs on real CPU, Grafana: the whole tour.
    joined = "\n".join(block)
    for needle in ("curl -i http://localhost/items", "get hpa", "top pods", "port-forward svc/"):
        assert needle in joined


def test_any_other_cluster_installs_the_cloud_add_ons_and_the_published_chart() -> None:
    block = _commands(_block_after("### Any other cluster"))
    assert block[0] == "k8s/addons/install.sh"
    result = subprocess.run(
        [str(REPO / "k8s" / "addons" / "install.sh")],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": os.environ["PATH"], "DRY_RUN": "1"},
    )
    assert "--values traefik-cloud.yaml" in result.stdout
    assert "--values metrics-server-cloud.yaml" in result.stdout
    (install,) = [c for c in block if c.startswith("helm install")]
    release = (REPO / ".github" / "workflows" / "release.yml").read_text(encoding="utf-8")
    assert '"oci://ghcr.io/${owner}/charts"' in release
    assert install.startswith("helm install regatta oci://ghcr.io/<owner>/charts/regatta ")


def test_another_ingress_controller_takes_the_two_values_the_readme_names() -> None:
    values = yaml.safe_load(_block_after("**Another ingress controller**"))
    rendered = render(values)
    (ingress,) = rendered.kind("Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    policy = rendered.get("NetworkPolicy", "regatta-api")
    peers = [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]
    namespaces = {
        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for peer in peers
        if "namespaceSelector" in peer
    }
    assert "ingress-nginx" in namespaces
    assert "traefik" not in namespaces
