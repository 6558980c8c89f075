"""Shared by the grow tests: where the agent's package lives (shipped by the grow_agent
role), real loop devices and what each pool backend needs."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import REPO

AGENT_FILES = REPO / "ansible/roles/grow_agent/files"  # on pytest's pythonpath (pyproject.toml)


def _loop_missing() -> str | None:
    if os.geteuid() != 0:
        return "loop devices need root"
    if not shutil.which("losetup"):
        return "loop devices need losetup (util-linux)"
    return None


def _btrfs_missing() -> str | None:
    return _loop_missing() or (None if shutil.which("mkfs.btrfs") else "btrfs-progs is not installed (make system-deps)")


requires_loop = pytest.mark.skipif(_loop_missing() is not None, reason=_loop_missing() or "")
requires_btrfs = pytest.mark.skipif(_btrfs_missing() is not None, reason=_btrfs_missing() or "")


@contextlib.contextmanager
def loop_device(directory: Path, name: str, size_mib: int) -> Iterator[str]:
    """A sparse file of `size_mib` on a loop device; detached and removed afterwards."""
    backing = directory / f"{name}.img"
    with open(backing, "wb") as f:
        f.truncate(size_mib * 1024 * 1024)
    dev = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True, check=True).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)
        backing.unlink(missing_ok=True)


@contextlib.contextmanager
def unmounting(mountpoint: Path) -> Iterator[Path]:
    """Unmount `mountpoint` (lazily, if busy) when the block ends."""
    try:
        yield mountpoint
    finally:
        if subprocess.run(["mountpoint", "-q", str(mountpoint)]).returncode == 0:
            if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)



@contextlib.contextmanager
def lvm_commands(directory: Path) -> Iterator[str | None]:
    """lvm2 as the pool finds it on PATH: real lvm2 where device-mapper works, else factory's
    LVM double (factory/local/instance/lvm_double) first on PATH. Yields the double's state folder,
    or None for real lvm2; afterwards the pool's volume group goes and nothing stays attached."""
    from factory.local.instance import lvm_double

    with lvm_double.exclusive():  # one pool named `factory` in this machine's /dev at a time
        if lvm_double.device_mapper_missing() is None:
            try:
                yield None
            finally:
                subprocess.run(["vgremove", "-ff", "-y", "factory"], capture_output=True)
            return
        state = directory / "lvm-double"
        saved = os.environ.get("PATH", "")
        os.environ.update(lvm_double.install(directory / "lvm-bin", state))
        try:
            yield str(state)
        finally:
            os.environ["PATH"] = saved
            lvm_double.release(state)


def _lvm_xfs_missing() -> str | None:
    if _loop_missing():
        return _loop_missing()
    if not (shutil.which("pvcreate") and shutil.which("mkfs.xfs") and shutil.which("xfs_growfs")):
        return "lvm2 and xfsprogs are not installed (make system-deps)"
    return None


requires_lvm_xfs = pytest.mark.skipif(_lvm_xfs_missing() is not None, reason=_lvm_xfs_missing() or "")
