"""The local build host as the family's ECS-optimized AMI: only the family's commands.

The build host's root is this machine's Debian root, which has every command Debian has.
An instance of the family's AMI has only its packages (factory.family_packages): for each
command the AMI lacks, the Debian package giving the same command (`dpkg -L`) has its
commands removed inside the root (overlayfs records whiteouts in the upper directory, so
the bake's AMI tree lacks them too), after a copy of each is put aside under `/run` (a
tmpfs: never part of the AMI). The family's package manager (`dnf` for AL2023, `yum` for
AL2 and AL1) is a stand-in that "installs" a package of the family's repository
(its `pins`, at that version) by putting its commands back, and answers what dnf or yum
answers for a package the repository does not have.

So on a build host made to look like AL2023, `lvcreate` is "bash: lvcreate: command not
found" (status 127) until a role runs `dnf install -y lvm2-<pin>`.

    look_like(host, "al2023")
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from factory.errors import LocalCloudError
from factory.family_packages import family_packages, hidden_debian_packages

STASH = "/run/factory-packages"  # inside the root: the hidden commands, put aside
REPOSITORY = "/etc/factory-buildhost/repository.json"  # inside the root: what the stand-in offers
INSTALLED = "/var/lib/factory-buildhost/installed"  # inside the root: a file per package installed
STAND_IN = "/usr/local/sbin"  # ahead of /usr/bin in PATH, as the family's package manager
_COMMAND_DIRS = ("/usr/bin", "/usr/sbin", "/bin", "/sbin")
# What a local bake's builder keeps although no family's AMI has it: a local instance
# cannot make the LVM + XFS pool (no device-mapper here), so the grow pool it boots is
# btrfs, from Debian's btrfs-progs. The grow_agent role still requires lvm2 and xfsprogs.
LOCAL_POOL = ("btrfs-progs",)


def debian_commands(package: str) -> list[str]:
    """The commands (files in bin/sbin folders) Debian's `package` installs on this machine,
    as paths with their folders' links resolved (/sbin/x -> /usr/sbin/x); [] when this
    machine does not have the package."""
    done = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True)
    if done.returncode != 0:
        return []
    out = []
    for line in done.stdout.splitlines():
        if os.path.dirname(line) not in _COMMAND_DIRS:
            continue
        path = os.path.join(os.path.realpath(os.path.dirname(line)), os.path.basename(line))
        if os.path.lexists(path) and not os.path.isdir(path) and path not in out:
            out.append(path)
    return sorted(out)


def look_like(host: Any, family: str, keep: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Make the running build host's root look like `family`'s AMI (see the module
    docstring). `keep`: family packages whose commands stay anyway (a test that makes a
    btrfs pool on purpose). Returns family package -> the commands hidden for it."""
    fam = family_packages(family)
    hidden: dict[str, list[str]] = {}
    for debian, package in hidden_debian_packages(family).items():
        if package in keep:
            continue
        hidden.setdefault(package, [])
        hidden[package] += [p for p in debian_commands(debian) if p not in hidden[package]]
    repository = {
        "family": family,
        "manager": fam.package_manager,
        "installed": sorted(fam.packages | set(keep)),
        "offers": fam.pins,
        "hidden": hidden,
        "stash": STASH,
        "installed_dir": INSTALLED,
    }
    script = ["set -e", f"mkdir -p {STASH} {os.path.dirname(REPOSITORY)} {STAND_IN}"]
    for package, paths in hidden.items():
        if paths:
            quoted = " ".join(_q(p) for p in paths)
            script.append(f"mkdir -p {STASH}/{package} && cp -a --parents {quoted} {STASH}/{package}/")
            script.append(f"rm -f {quoted}")
    host.run("sh", "-c", "\n".join(script))
    host.run("sh", "-c", f"cat > {REPOSITORY}", input=json.dumps(repository, indent=2) + "\n")
    managers = ["dnf", "yum"] if fam.package_manager == "dnf" else ["yum"]  # AL2023's yum is dnf
    for name in managers:
        host.run("sh", "-c", f"cat > {STAND_IN}/{name} && chmod 0755 {STAND_IN}/{name}", input=_STAND_IN)
    every = " ".join(_q(p) for paths in hidden.values() for p in paths)
    left = host.run("sh", "-c", f'for p in {every}; do if [ -e "$p" ] || [ -L "$p" ]; then echo "$p"; fi; done').stdout.split()
    if left:
        raise LocalCloudError(f"the build host still has {', '.join(left)} after hiding what {family}'s AMI lacks")
    return hidden


def _q(path: str) -> str:
    return "'" + path.replace("'", "'\\''") + "'"


# The family's package manager on the local build host: only `install` of the
# repository's packages, answering as dnf 4 (AL2023) or yum 3 (AL2, AL1) do. Runs with the
# root's (Debian's) python3.
_STAND_IN = r'''#!/usr/bin/python3
"""Stand-in for the family's package manager on factory's local build host
(factory/local/builder/family_root.py): installs only the packages its repository offers."""
import json, os, shutil, subprocess, sys

repo = json.load(open("/etc/factory-buildhost/repository.json"))
me = os.path.basename(sys.argv[0])
dnf = repo["manager"] == "dnf"
args = [a for a in sys.argv[1:] if not a.startswith("-")]
VERSIONLOCK = "/usr/local/sbin/factory-versionlock"  # a GPU base's plugin (factory/local/builder/gpu_base.py)
if args and args[0] == "versionlock" and os.path.exists(VERSIONLOCK):
    os.execv(VERSIONLOCK, [VERSIONLOCK] + sys.argv[1:])
if not args or args[0] != "install":
    print(f"{me}: the local build host's stand-in only runs `{me} install`", file=sys.stderr)
    sys.exit(1)
specs = args[1:]


def match(spec):
    """(package, version) the repository offers for a name or name-version[-release], or None."""
    for name, version in repo["offers"].items():
        if spec == name:
            return name, version
        if spec.startswith(name + "-"):
            rest = spec[len(name) + 1:]
            if rest == version or rest.startswith(version + "-") or rest.startswith(version + "."):
                return name, version
    for name in repo["installed"]:
        if spec == name:
            return name, None
    return None


found, unknown = [], []
for spec in specs:
    m = match(spec)
    (found if m else unknown).append(m or spec)
if unknown:
    if dnf:
        for spec in unknown:
            print(f"No match for argument: {spec}")
        print(f"Error: Unable to find a match: {' '.join(unknown)}", file=sys.stderr)
    else:
        for spec in unknown:
            print(f"No package {spec} available.")
        print("Error: Nothing to do", file=sys.stderr)
    sys.exit(1)
os.makedirs(repo["installed_dir"], exist_ok=True)
done = []
for name, version in found:
    marker = os.path.join(repo["installed_dir"], name)
    if version is None or os.path.exists(marker):
        print(f"Package {name} is already installed.")
        continue
    stash = os.path.join(repo["stash"], name)
    for path in repo["hidden"].get(name, []):
        subprocess.run(["cp", "-a", stash + path, path], check=True)
    with open(marker, "w") as f:
        f.write(version + "\n")
    done.append(f"{name}-{version}")
if done:
    print("Dependencies resolved.")
    print("Installed:\n  " + "\n  ".join(done))
    print("\nComplete!")
else:
    print("Dependencies resolved.\nNothing to do.\nComplete!")
'''
