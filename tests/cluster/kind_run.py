"""Run `k8s/kind-up.sh --dry-run` and read back the commands it prints."""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass
from typing import Any

from tests.chart.manifests import REPO, load_yaml, merge

SCRIPT = REPO / "k8s" / "kind-up.sh"


@dataclass(frozen=True)
class DryRun:
    """What `make kind` would do: its commands (argv lists, nested add-on ones too), its text."""

    commands: list[list[str]]
    output: str

    def named(self, *prefix: str) -> list[list[str]]:
        """Every command starting with these words."""
        return [c for c in self.commands if c[: len(prefix)] == list(prefix)]


def dry_run(**environment: str) -> DryRun:
    """The dry run, with a clean environment besides PATH, HOME and what the caller sets."""
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}  # noqa: S108
    env.update(environment)
    result = subprocess.run(
        [str(SCRIPT), "--dry-run"], capture_output=True, text=True, check=True, cwd=REPO, env=env
    )
    commands = [
        shlex.split(line.strip().removeprefix("$ "))
        for line in result.stdout.splitlines()
        if line.strip().startswith("$ ")
    ]
    return DryRun(commands=commands, output=result.stdout)


def option_values(command: list[str], option: str) -> list[str]:
    """Every value given to `option` (`--option value`) in one command."""
    return [command[i + 1] for i, word in enumerate(command[:-1]) if word == option]


def helm_values(command: list[str]) -> dict[str, Any]:
    """The values a `helm upgrade` command passes: its --values files, then its --set(-string)."""
    values: dict[str, Any] = {}
    for path in option_values(command, "--values") + option_values(command, "-f"):
        values = merge(values, load_yaml(REPO / path))
    for option in ("--set", "--set-string"):
        for assignment in option_values(command, option):
            key, _, value = assignment.partition("=")
            node = values
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    return values
