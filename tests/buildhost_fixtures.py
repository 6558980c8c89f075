"""Shared by the build-host and role tests: one throwaway build host (and mirror) per
test module, and a way to run real `ansible-playbook` against it."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import REPO

ANSIBLE = REPO / "ansible"
VENV_BIN = Path(sys.executable).parent


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "the build host needs root"
    for tool in ("unshare", "nsenter", "/usr/sbin/sshd", "/usr/sbin/dockerd", "ssh"):
        if not shutil.which(tool):
            return f"the build host needs {tool}"
    return None


requires_buildhost = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


def start_host(state_dir: Path, docker: bool = True):
    from factory.local.builder.buildhost import BuildHost

    return BuildHost.start(state_dir, docker=docker)


def run_playbook(host, playbook: Path, extra_vars: dict, tmp: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    inv = tmp / "inventory.ini"
    inv.write_text("[all]\n" + host.inventory())
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(ANSIBLE / "ansible.cfg"),
        ANSIBLE_ROLES_PATH=str(ANSIBLE / "roles"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_LOCAL_TEMP=str(tmp / "ansible-local"),
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
    )
    return subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-i", str(inv), str(playbook), "-e", json.dumps(extra_vars)],
        capture_output=True, text=True, env=env, timeout=timeout,
    )


def role_playbook(tmp: Path, *roles: str) -> Path:
    path = tmp / f"play-{'-'.join(roles)}.yml"
    listed = "\n".join(f"    - role: {r}" for r in roles)
    path.write_text(
        "---\n- name: Run roles on the throwaway build host\n  hosts: all\n  gather_facts: true\n"
        f"  become: false\n  roles:\n{listed}\n"
    )
    return path


def changed(proc: subprocess.CompletedProcess) -> int:
    m = re.search(r"changed=(\d+)", proc.stdout)
    assert m, proc.stdout[-2000:] + proc.stderr[-2000:]
    return int(m.group(1))


def show(proc: subprocess.CompletedProcess) -> str:
    return f"rc={proc.returncode}\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"


def tar_of(files: dict[str, bytes]) -> bytes:
    """A tar archive holding `files` (name -> bytes): layers and `docker save` archives for
    the registry tests."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()
