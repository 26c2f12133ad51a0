"""Known vulnerabilities in the locked dependencies: ``make audit`` (part of ``make test``).

Every package pinned in ``uv.lock`` (all members, all groups) is checked with pip-audit against
PyPI's vulnerability data. The audit fails on a vulnerability that has a fixed release: upgrade
it (``uv lock --upgrade-package NAME``). One with no fix yet is reported and does not fail; to
accept one that has a fix, add its id to ``ACCEPTED`` with the reason.

A package the service has no data for cannot be audited; those are counted and named. Set
``AUDIT_STRICT=1`` to fail on them too (where the vulnerability service is complete).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# Vulnerability id -> why it is accepted although a fix exists. Empty: nothing is accepted.
ACCEPTED: dict[str, str] = {}


def locked_requirements() -> str:
    """The lock as a requirements file: every third-party pin, no workspace members."""
    return subprocess.run(
        [
            "uv",
            "export",
            "--frozen",
            "--quiet",
            "--no-hashes",
            "--no-emit-workspace",
            "--all-packages",
            "--all-groups",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def pip_audit(requirements: Path) -> dict[str, object]:
    """pip-audit's JSON report over ``requirements`` (exact pins, so no resolution)."""
    command = [sys.executable, "-m", "pip_audit", "--disable-pip", "--no-deps"]
    command += ["--progress-spinner", "off", "--format", "json", "-r", str(requirements)]
    for vulnerability in ACCEPTED:
        command += ["--ignore-vuln", vulnerability]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if not completed.stdout.strip():
        sys.exit(f"pip-audit failed:\n{completed.stderr[-3000:]}")
    report: dict[str, object] = json.loads(completed.stdout)
    return report


def classify(dependencies: list[dict[str, Any]]) -> tuple[list[str], list[str], list[str]]:
    """pip-audit's dependencies as (vulnerable with a fix, vulnerable without, not audited)."""
    fixable, unfixed, unaudited = [], [], []
    for dependency in dependencies:
        pin = f"{dependency['name']} {dependency.get('version', '')}".strip()
        if "skip_reason" in dependency:
            unaudited.append(pin)
        for vulnerability in dependency.get("vulns", []):
            line = f"{pin}: {vulnerability['id']}"
            if vulnerability.get("fix_versions"):
                fixable.append(f"{line} (fixed in {', '.join(vulnerability['fix_versions'])})")
            else:
                unfixed.append(f"{line} (no fix released yet)")
    return fixable, unfixed, unaudited


def main() -> int:
    """Audit; 1 when a vulnerability with a fix is present (or, strict, a package unaudited)."""
    with tempfile.TemporaryDirectory() as directory:
        requirements = Path(directory) / "requirements.txt"
        requirements.write_text(locked_requirements(), encoding="utf-8")
        report = pip_audit(requirements)
    dependencies = report.get("dependencies", [])
    assert isinstance(dependencies, list)  # noqa: S101 -- pip-audit's documented shape
    fixable, unfixed, unaudited = classify(dependencies)
    audited = len(dependencies) - len(unaudited)
    print(f"audited {audited} of {len(dependencies)} locked packages")  # noqa: T201
    for line in unfixed:
        print(f"  known, unfixed: {line}")  # noqa: T201
    if unaudited:
        shown = ", ".join(unaudited[:20]) + (" ..." if len(unaudited) > 20 else "")  # noqa: PLR2004
        print(f"  no vulnerability data, not audited ({len(unaudited)}): {shown}")  # noqa: T201
    for line in fixable:
        print(f"VULNERABLE, upgrade: {line}")  # noqa: T201
    strict = os.environ.get("AUDIT_STRICT", "") not in {"", "0"}
    return 1 if fixable or (strict and unaudited) else 0


if __name__ == "__main__":
    sys.exit(main())
