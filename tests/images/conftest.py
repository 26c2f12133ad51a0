"""Build the images for real with buildah, from a Debian base made locally with debootstrap.

No registry is reachable and no Docker engine runs here, so the base image is bootstrapped from
the configured Debian mirror (cached per day) and every Dockerfile is built with
`--build-arg BASE_IMAGE=` pointing at it. Needs root, buildah and debootstrap; without them the
suite skips and says what to install.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILDAH = ["buildah", "--storage-driver", "vfs"]
BASE_REPOSITORY = "localhost/regatta-base"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
INSTALL_HINT = "install them with: apt-get install buildah debootstrap (as root)"
DEFAULT_MIRROR = "http://deb.debian.org/debian"


@dataclass
class ImageReport:
    """What the suite measured, printed at the end of the session."""

    lines: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        """Record one line of the report."""
        self.lines.append(line)


def buildah(*args: str, timeout: float = 600) -> str:
    """Run buildah (vfs storage: no kernel overlay needed) and return its output."""
    completed = subprocess.run(
        [*BUILDAH, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if completed.returncode != 0:
        msg = f"buildah {' '.join(args)} failed:\n{completed.stderr[-3000:]}"
        raise AssertionError(msg)
    return completed.stdout.strip()


def image_size(image: str) -> str:
    """The image's size as buildah reports it (e.g. "223 MB")."""
    (entry,) = json.loads(buildah("images", "--json", image))
    return str(entry["size"])


def _tool(name: str) -> str | None:
    """A system tool, also from /usr/sbin when PATH lacks it (debootstrap lives there)."""
    found = shutil.which(name)
    if found is None and Path("/usr/sbin", name).is_file():
        found = str(Path("/usr/sbin", name))
    return found


def _debian_mirror() -> str:
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        text = path.read_text(encoding="utf-8")
        for stanza in text.split("\n\n"):
            if re.search(r"^Suites:.*\bbookworm\b(?!-)", stanza, re.MULTILINE):
                match = re.search(r"^URIs:\s*(\S+)", stanza, re.MULTILINE)
                if match:
                    return match.group(1)
    return DEFAULT_MIRROR


def _bootstrap(rootfs: Path) -> None:
    """A minimal Debian bookworm with Python 3.11 and venv, without docs or package caches."""
    partial = rootfs.with_name(rootfs.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    subprocess.run(
        [
            _tool("debootstrap") or "debootstrap",
            "--variant=minbase",
            "--include=python3,python3-venv,ca-certificates",
            "bookworm",
            str(partial),
            _debian_mirror(),
        ],
        check=True,
        capture_output=True,
        timeout=900,
    )
    for junk in (
        "var/cache/apt",
        "var/lib/apt/lists",
        "usr/share/doc",
        "usr/share/man",
        "usr/share/locale",
        "usr/share/info",
    ):
        shutil.rmtree(partial / junk, ignore_errors=True)
    partial.rename(rootfs)


_REPORT = ImageReport()


@pytest.fixture(scope="session")
def image_report() -> ImageReport:
    """Collects sizes and timings, printed in the terminal summary."""
    return _REPORT


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the images' sizes and timings after the tests."""
    if _REPORT.lines:
        terminalreporter.write_sep("-", "container images")
        for line in _REPORT.lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def base_image(image_report: ImageReport) -> str:
    """localhost/regatta-base:<today>, made once a day and reused while buildah has it."""
    missing = [tool for tool in ("buildah", "debootstrap") if _tool(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not found: {INSTALL_HINT}")
    if os.geteuid() != 0:
        pytest.skip("building images with buildah and debootstrap needs root")
    tag = f"{BASE_REPOSITORY}:{dt.datetime.now(tz=dt.UTC).date().isoformat()}"
    if buildah("images", "--quiet", "--noheading", "--filter", f"reference={tag}"):
        image_report.add(f"base {tag}: reused, {image_size(tag)}")
        return tag
    started = time.monotonic()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "regatta"
    rootfs = cache / f"debootstrap-bookworm-{tag.rsplit(':', 1)[1]}"
    if not rootfs.is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        for stale in cache.glob("debootstrap-bookworm-*"):
            shutil.rmtree(stale, ignore_errors=True)
        _bootstrap(rootfs)
    container = buildah("from", "scratch")
    try:
        mountpoint = Path(buildah("mount", container))
        subprocess.run(["cp", "-a", f"{rootfs}/.", f"{mountpoint}/"], check=True, timeout=300)
        buildah("umount", container)
        buildah(
            "config",
            "--env",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--env",
            "LANG=C.UTF-8",
            "--cmd",
            "/usr/bin/python3",
            container,
        )
        buildah("commit", "--quiet", container, tag)
    finally:
        subprocess.run([*BUILDAH, "rm", container], capture_output=True, check=False)
    elapsed = time.monotonic() - started
    image_report.add(f"base {tag}: made in {elapsed:.0f} s, {image_size(tag)}")
    return tag


_BUILT: dict[str, str] = {}


@pytest.fixture(scope="session")
def build_image(base_image: str, image_report: ImageReport) -> Iterator[Callable[[str], str]]:
    """Build services/<name>/Dockerfile (once per session) and return the image name."""

    def build(service: str) -> str:
        if service in _BUILT:
            return _BUILT[service]
        image = f"localhost/regatta-{service}:test"
        command = [
            *BUILDAH,
            "bud",
            "--isolation",
            "chroot",
            "--network",
            "host",
            "--format",
            "docker",
            "--build-arg",
            f"BASE_IMAGE={base_image}",
            "--file",
            str(REPO / "services" / service / "Dockerfile"),
            "--tag",
            image,
        ]
        if CA_BUNDLE.exists():
            # Where TLS to PyPI is intercepted by a local CA: trusted for the build, never baked in.
            command += ["--volume", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"]
        started = time.monotonic()
        completed = subprocess.run(
            [*command, str(REPO)], capture_output=True, text=True, timeout=900, check=False
        )
        assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
        elapsed = time.monotonic() - started
        image_report.add(f"{image}: built in {elapsed:.0f} s, {image_size(image)}")
        _BUILT[service] = image
        return image

    yield build
    for image in _BUILT.values():
        subprocess.run([*BUILDAH, "rmi", image], capture_output=True, check=False)
    _BUILT.clear()
