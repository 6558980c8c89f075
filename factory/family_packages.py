"""Which packages each ECS-optimized AMI family ships, and which package gives each command
the bake's roles, the grow agent and its boot units run on the instance.

The data is `schemas/family-packages.yaml` (each family's list with its sources); this
module reads it once. The local build host (factory.local.builder.buildhost) uses it to look like
the family's AMI (a command whose package the AMI lacks is not there until a role installs
the package), and tests/test_family_packages.py checks every role against it.

    packages = family_packages("al2023")
    packages.has("lvm2")                 # False: the role must install it
    command_packages()["lvcreate"]       # Command(name="lvcreate", packages=("lvm2",), debian="lvm2")
    hidden_debian_packages("al2023")     # Debian packages whose commands the local host hides
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from factory.errors import FactoryError
from factory.resources import data_dir

DATA_FILE = "family-packages.yaml"


@dataclass(frozen=True)
class FamilyPackages:
    family: str
    package_manager: str  # dnf | yum: what installs a package the AMI lacks
    packages: frozenset[str]  # the AMI's packages that provide a command factory uses
    pins: dict[str, str]  # package -> the version the family's repository offers (roles pin it)
    sources: tuple[str, ...]

    def has(self, package: str) -> bool:
        return package in self.packages


@dataclass(frozen=True)
class Command:
    name: str
    packages: tuple[str, ...]  # any one of them provides the command
    debian: str | None  # the Debian package with the same command, on the local build host


@functools.lru_cache(maxsize=1)
def _data() -> dict:
    import yaml

    path = data_dir("schemas") / DATA_FILE
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise FactoryError(f"{path}: cannot read the family package lists ({exc}); reinstall factory") from None


def family_packages(family: str) -> FamilyPackages:
    entry = _data()["families"].get(family)
    if entry is None:
        raise FactoryError(f"{data_dir('schemas') / DATA_FILE}: families: no entry for {family!r}; add its package list")
    return FamilyPackages(
        family=family,
        package_manager=entry["package_manager"],
        packages=frozenset(entry["packages"]),
        pins={k: str(v) for k, v in (entry.get("pins") or {}).items()},
        sources=tuple(entry["sources"]),
    )


def command_packages() -> dict[str, Command]:
    return {
        name: Command(name=name, packages=tuple(row["packages"]), debian=row.get("debian"))
        for name, row in _data()["commands"].items()
    }


def provided(command: str, family: str, installed: frozenset[str] | set[str] = frozenset()) -> bool:
    """The family's AMI has `command`, or one of the `installed` packages (a role's) gives it."""
    row = command_packages()[command]
    have = family_packages(family).packages | set(installed)
    return any(p in have for p in row.packages)


def hidden_debian_packages(family: str) -> dict[str, str]:
    """Debian package -> the family's package for it, for every command the family's AMI
    lacks: the local build host hides that Debian package's commands until the role
    installs the family's package."""
    out: dict[str, str] = {}
    for row in command_packages().values():
        if row.debian and not provided(row.name, family):
            out[row.debian] = row.packages[0]
    return out
