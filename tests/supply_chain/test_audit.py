"""The dependency audit ``make test`` runs: which findings fail it (infra/audit.py)."""

from __future__ import annotations

from audit import classify


def test_only_vulnerabilities_with_a_fix_fail_and_unaudited_packages_are_named() -> None:
    fixable, unfixed, unaudited = classify(
        [
            {
                "name": "jinja2",
                "version": "2.4.1",
                "vulns": [
                    {"id": "PYSEC-2019-217", "fix_versions": ["2.10.1"]},
                    {"id": "GHSA-0000-0000-0000", "fix_versions": []},
                ],
            },
            {"name": "anyio", "version": "4.16.0", "vulns": []},
            {"name": "private-wheel", "skip_reason": "Dependency not found on PyPI"},
        ]
    )
    assert fixable == ["jinja2 2.4.1: PYSEC-2019-217 (fixed in 2.10.1)"]
    assert unfixed == ["jinja2 2.4.1: GHSA-0000-0000-0000 (no fix released yet)"]
    assert unaudited == ["private-wheel"]
