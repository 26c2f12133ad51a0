"""What the shipped images hold: a non-root process and nothing to build or install with.

``tests/chart/test_dockerfiles.py`` reads the Dockerfiles (a numeric non-root ``USER``, only the
virtual environment copied into the runtime stage); this looks inside the built images, where
the base image's contents show too.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.images.test_images import APIS, _complete, _container, _require

# Building the images (buildah, debootstrap) takes minutes on a cold cache.
pytestmark = [pytest.mark.images, pytest.mark.timeout(1800)]

# Anything that compiles, fetches or installs code: none may be reachable in a running image.
BUILD_AND_INSTALL_TOOLS = (
    "gcc",
    "cc",
    "c++",
    "g++",
    "clang",
    "make",
    "ld",
    "as",
    "pip",
    "pip3",
    "uv",
    "curl",
    "wget",
    "git",
)

PROBE = """
import json, os, shutil, sys
tools = sys.argv[1].split(",")
paths = ["/app/.venv", "/app/.venv/lib", "/usr", "/etc", "/usr/local/bin"]
venv = "/app/.venv/bin"
print(json.dumps({
    "uid": os.getuid(),
    "gid": os.getgid(),
    "found": {t: shutil.which(t) for t in tools if shutil.which(t)},
    "venv_pip": [n for n in os.listdir(venv) if n.startswith("pip") or n in ("uv", "uvx")],
    "writable": [p for p in paths if os.access(p, os.W_OK)],
}))
"""


@pytest.mark.parametrize("service", APIS)
def test_the_runtime_image_runs_unprivileged_with_no_build_or_install_tools(
    build_image: Callable[[str], str], service: str
) -> None:
    _require(service)
    with _container(build_image(service)) as container:
        output = _complete(container, {}, "python", "-c", PROBE, ",".join(BUILD_AND_INSTALL_TOOLS))
        facts = json.loads(output.strip().splitlines()[-1])
        assert facts["uid"] == 10001
        assert facts["gid"] == 0
        assert facts["found"] == {}
        assert facts["venv_pip"] == []
        assert facts["writable"] == []  # the code and the system are read-only to the service
        # Debian's dpkg and apt come with the base image; as this user they change nothing.
        installed = _complete(
            container,
            {},
            "sh",
            "-c",
            "apt-get install -y --no-download curl >/dev/null 2>&1 && echo INSTALLED || true",
        )
        assert "INSTALLED" not in installed
