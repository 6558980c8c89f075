"""The grow agent's pool on real loop devices: btrfs for real; LVM + XFS (the backend AWS
instances get) with real XFS, and real lvm2 where device-mapper exists, else factory's LVM
double (factory/local/instance/lvm_double) standing in for lvm2's commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.grow_fixtures import AGENT_FILES, loop_device, lvm_commands, requires_btrfs, requires_lvm_xfs, unmounting

GIB = 1024**3


def total_bytes(path) -> int:
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize


def write_mib(path, mib: int) -> None:
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1024 * 1024))
        f.flush()
        os.fsync(f.fileno())


def check_pool_grows(pool, tmp_path, fs: str) -> None:
    from factory_grow.pool import mounted_source

    mnt = tmp_path / "data-root"
    with loop_device(tmp_path, "a", 1024) as a, loop_device(tmp_path, "b", 1024) as b, unmounting(mnt):
        assert pool.ensure(a, str(mnt)) is True
        assert mounted_source(str(mnt)) is not None
        assert open("/proc/self/mounts").read().count(f" {mnt} {fs} ") == 1
        before = total_bytes(mnt)
        write_mib(mnt / "data.bin", 64)
        pool.add(b, str(mnt))
        after = total_bytes(mnt)
        assert after > before + 0.8 * GIB, (before, after)  # the second GiB is usable at once, online
        assert pool.devices(str(mnt)) == sorted(os.path.realpath(d) for d in (a, b))
        pool.add(b, str(mnt))  # adding a device already in the pool (a restart) changes nothing
        assert total_bytes(mnt) == after
        # data written before the add is still there; more than the first device fits now
        assert (mnt / "data.bin").stat().st_size == 64 * 1024 * 1024
        write_mib(mnt / "more.bin", 1100)
        # a second ensure (the boot unit run again) mounts nothing twice and formats nothing
        assert pool.ensure(a, str(mnt)) is False


@requires_btrfs
def test_btrfs_pool_grows_online(tmp_path):
    from factory_grow.pool import BtrfsPool

    check_pool_grows(BtrfsPool(), tmp_path, "btrfs")


@requires_btrfs
def test_btrfs_pool_reports_free_space_within_a_second(tmp_path):
    """Mounted with commit=1: statfs follows writes within about a second, not a data
    chunk later (the agent's free-space signal)."""
    from factory_grow.pool import BtrfsPool

    mnt = tmp_path / "data-root"
    with loop_device(tmp_path, "a", 2048) as a, unmounting(mnt):
        BtrfsPool().ensure(a, str(mnt))
        line = next(ln for ln in open("/proc/self/mounts") if f" {mnt} " in ln)
        assert "commit=1" in line.split()[3]


@requires_btrfs
def test_btrfs_pool_remounts_after_a_restart(tmp_path):
    """At the next boot the pool is mounted again, with both devices, not re-made."""
    from factory_grow.pool import BtrfsPool

    pool, mnt = BtrfsPool(), tmp_path / "data-root"
    with loop_device(tmp_path, "a", 512) as a, loop_device(tmp_path, "b", 512) as b, unmounting(mnt):
        pool.ensure(a, str(mnt))
        (mnt / "kept").write_text("yes")
        pool.add(b, str(mnt))
        size = total_bytes(mnt)
        subprocess.run(["umount", str(mnt)], check=True)
        assert pool.ensure(a, str(mnt)) is False
        assert (mnt / "kept").read_text() == "yes" and total_bytes(mnt) == size


@requires_btrfs
def test_a_device_holding_something_else_is_never_formatted(tmp_path):
    from factory_grow.pool import BtrfsPool, PoolError

    with loop_device(tmp_path, "a", 512) as a:
        subprocess.run(["mkfs.ext4", "-q", "-F", a], check=True, capture_output=True)
        with pytest.raises(PoolError, match="holds ext4"):
            BtrfsPool().ensure(a, str(tmp_path / "mnt"))


@requires_btrfs
def test_the_boot_command_prints_one_json_line(tmp_path):
    mnt = tmp_path / "data-root"
    with loop_device(tmp_path, "a", 512) as a, unmounting(mnt):
        env = dict(os.environ, PYTHONPATH=str(AGENT_FILES))
        p = subprocess.run([sys.executable, "-m", "factory_grow.pool", "ensure", a, str(mnt), "--backend", "btrfs"],
                           capture_output=True, text=True, env=env)
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout) == {"event": "pool-ready", "backend": "btrfs", "device": a, "made": True}
        p = subprocess.run([sys.executable, "-m", "factory_grow.pool", "devices", str(mnt), "--backend", "btrfs"],
                           capture_output=True, text=True, env=env)
        assert json.loads(p.stdout) == [os.path.realpath(a)]


@requires_lvm_xfs
def test_lvm_xfs_pool_grows_online(tmp_path):
    """The pool AWS instances run: mkfs.xfs with the pool's options and label on the logical
    volume (an XFS label holds at most 12 characters), grown online by xfs_growfs."""
    from factory_grow.pool import LABEL, LvmXfsPool

    with lvm_commands(tmp_path):
        check_pool_grows(LvmXfsPool(), tmp_path, "xfs")
        label = subprocess.run(["blkid", "-p", "-o", "value", "-s", "LABEL", LvmXfsPool.lv_path], capture_output=True, text=True)
        assert label.stdout.strip() == LABEL


@requires_lvm_xfs
def test_lvm_xfs_pool_remounts_after_a_restart(tmp_path):
    """At the next boot the volume group is activated and the XFS mounted again, not re-made."""
    from factory_grow.pool import LvmXfsPool

    pool, mnt = LvmXfsPool(), tmp_path / "data-root"
    with lvm_commands(tmp_path), loop_device(tmp_path, "a", 512) as a, loop_device(tmp_path, "b", 512) as b, unmounting(mnt):
        pool.ensure(a, str(mnt))
        (mnt / "kept").write_text("yes")
        pool.add(b, str(mnt))
        size = total_bytes(mnt)
        subprocess.run(["umount", str(mnt)], check=True)
        subprocess.run(["vgchange", "-an", "factory"], check=True, capture_output=True)
        assert pool.ensure(a, str(mnt)) is False
        assert (mnt / "kept").read_text() == "yes" and total_bytes(mnt) == size
        subprocess.run(["umount", str(mnt)], check=True)


@requires_lvm_xfs
def test_the_lvm_boot_command_prints_one_json_line(tmp_path):
    mnt = tmp_path / "data-root"
    with lvm_commands(tmp_path), loop_device(tmp_path, "a", 512) as a, unmounting(mnt):
        env = dict(os.environ, PYTHONPATH=str(AGENT_FILES))
        p = subprocess.run([sys.executable, "-m", "factory_grow.pool", "ensure", a, str(mnt), "--backend", "lvm-xfs"],
                           capture_output=True, text=True, env=env)
        assert p.returncode == 0, p.stdout + p.stderr
        assert json.loads(p.stdout) == {"event": "pool-ready", "backend": "lvm-xfs", "device": a, "made": True}
        assert open("/proc/self/mounts").read().count(f" {mnt} xfs ") == 1
        subprocess.run(["umount", str(mnt)], check=True)


def test_auto_prefers_btrfs_where_it_exists():
    from factory_grow.pool import BtrfsPool, LvmXfsPool, PoolError, choose

    expected = "btrfs" if BtrfsPool.available() else ("lvm-xfs" if LvmXfsPool.available() else None)
    if expected is None:
        with pytest.raises(PoolError):
            choose()
    else:
        assert choose().name == expected
    with pytest.raises(PoolError, match="unknown pool backend"):
        choose("zfs")
