"""checkov over every rendered value set and every Dockerfile: no failed check.

checkov pins dozens of libraries that conflict with the services' own (it would downgrade
cachetools, a runtime dependency), so it runs isolated through `uvx` at a pinned version rather
than from the project's lock. A skip is allowed only with its reason, written beside the object
in the chart (`checkov.io/skipN` annotations) or the Dockerfile (`# checkov:skip=`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.manifests import NAMESPACE, REPO, render_set, value_sets

CHECKOV = "checkov==3.3.30"
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


def _write_manifests(directory: Path) -> None:
    for value_set in value_sets():
        if value_set.startswith("skaffold-dev"):
            # skaffold's dev profile makes the services' code writable for file sync on purpose.
            continue
        objects = []
        for obj in render_set(value_set).objects:
            copy: dict[str, Any] = json.loads(json.dumps(obj))
            if copy["kind"] not in CLUSTER_SCOPED:
                # Where `helm install -n regatta` puts them; the chart itself sets no namespace.
                copy["metadata"]["namespace"] = NAMESPACE
            objects.append(copy)
        text = yaml.safe_dump_all(objects, sort_keys=False)
        (directory / f"{value_set}.yaml").write_text(text, encoding="utf-8")


def _write_dockerfiles(directory: Path) -> int:
    dockerfiles = sorted(REPO.glob("services/*/Dockerfile"))
    for path in dockerfiles:
        target = directory / "dockerfiles" / path.parent.name / "Dockerfile"
        target.parent.mkdir(parents=True)
        shutil.copy(path, target)
    return len(dockerfiles)


def test_checkov_finds_nothing(tmp_path: Path) -> None:
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH: checkov runs through `uvx` (run `make sync`)")
    _write_manifests(tmp_path)
    assert _write_dockerfiles(tmp_path) >= 2
    completed = subprocess.run(
        [
            uv,
            "tool",
            "run",
            "--from",
            CHECKOV,
            "checkov",
            "--directory",
            str(tmp_path),
            "--framework",
            "kubernetes",
            "dockerfile",
            "--skip-download",
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.stdout, completed.stderr[-2000:]
    reports = json.loads(completed.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    by_framework = {report["check_type"]: report for report in reports}
    assert set(by_framework) == {"kubernetes", "dockerfile"}, completed.stderr[-2000:]
    for framework, report in by_framework.items():
        summary = report["summary"]
        failed = [
            f"{c['check_id']} {c['resource']} ({c['file_path']})"
            for c in report["results"]["failed_checks"]
        ]
        assert not failed, f"{framework}: " + "\n".join(failed)
        assert summary["parsing_errors"] == 0, framework
        assert summary["passed"] > 0, framework
        for skipped in report["results"]["skipped_checks"]:
            reason = skipped.get("check_result", {}).get("suppress_comment", "")
            assert len(reason) > 20, f"{skipped['check_id']} skipped without a reason"
