"""Which pool a local instance runs (factory/local/instance/instance_pool.py), and what the rehearsal
reports as held (factory/local/instance/rehearsal.py `held_bytes`), on real mounts."""

from __future__ import annotations

import json
import os
import subprocess

from tests.grow_fixtures import loop_device, requires_loop, requires_lvm_xfs, unmounting

GIB = 1024**3


def in_instance_root(upper, tmp_path, script: str) -> str:
    """`script` run by sh in an overlay of this machine's / with `upper` on top, as the
    local instance's init mounts its root (in a mount namespace of its own)."""
    root, work = tmp_path / "root", tmp_path / "work"
    root.mkdir()
    work.mkdir()
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           f"mount -t overlay overlay -o lowerdir=/,upperdir={upper},workdir={work} {root} && "
                           f"mount -t proc proc {root}/proc && chroot {root} sh -c '{script}'"],
                          capture_output=True, text=True, env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"})
    assert done.returncode == 0, done.stderr
    return done.stdout


@requires_loop
def test_the_lvm_xfs_instance_has_no_btrfs_progs_and_its_auto_picks_lvm_xfs(tmp_path):
    """As on Amazon Linux 2023: the image's `auto` finds no btrfs-progs, so the pool is LVM +
    XFS; where device-mapper is missing, lvm2's commands on the units' PATH are the double's."""
    from factory.local.instance import instance_pool, lvm_double

    upper = tmp_path / "upper"
    upper.mkdir()
    state = instance_pool.arrange("lvm-xfs", upper, tmp_path / "lvm-double")
    agent = instance_pool.__file__.replace("factory/local/instance/instance_pool.py", "ansible/roles/grow_agent/files")
    out = in_instance_root(upper, tmp_path, "command -v mkfs.btrfs btrfs; command -v lvcreate; "
                           f"PYTHONPATH={agent} python3 -c \"from factory_grow.pool import choose; print(choose().name)\"")
    lines = out.split()
    assert not any("btrfs" in line for line in lines[:-1]), out
    assert lines[-1] == "lvm-xfs"
    if lvm_double.device_mapper_missing():
        assert state == tmp_path / "lvm-double" and lines[0] == "/usr/local/sbin/lvcreate"
        assert "factory.local.instance.lvm_double.lvm lvcreate" in (upper / "usr/local/sbin/lvcreate").read_text()
    else:
        assert state is None and lines[0] != "/usr/local/sbin/lvcreate"


@requires_loop
def test_the_btrfs_instance_keeps_btrfs_progs(tmp_path):
    from factory.local.instance import instance_pool

    upper = tmp_path / "upper"
    upper.mkdir()
    assert instance_pool.arrange("btrfs", upper, tmp_path / "lvm-double") is None
    assert "mkfs.btrfs" in in_instance_root(upper, tmp_path, "command -v mkfs.btrfs")


def test_the_backend_that_ran_is_the_pool_units_own_word():
    from factory.local.instance.instance_pool import backend_that_ran

    journal = "starting\n" + json.dumps({"event": "pool-ready", "backend": "lvm-xfs", "device": "/dev/xvdb", "made": True}) + "\n"
    assert backend_that_ran(journal) == "lvm-xfs"
    assert backend_that_ran(json.dumps({"event": "pool-error", "backend": "lvm-xfs", "error": "x"})) is None
    assert backend_that_ran("") is None


@requires_lvm_xfs
def test_held_bytes_are_the_files_not_the_filesystems_own_blocks(tmp_path):
    """A 1 GiB file on a fresh XFS reads 1 GiB held, though the filesystem's used blocks
    count its log and metadata too; a filesystem mounted inside is not walked."""
    from factory.local.instance.rehearsal import held_bytes

    mnt, inner = tmp_path / "mnt", tmp_path / "mnt" / "inner"
    with loop_device(tmp_path, "xfs", 8192) as dev, unmounting(mnt), unmounting(inner):
        subprocess.run(["mkfs.xfs", "-q", "-f", dev], check=True)
        mnt.mkdir()
        subprocess.run(["mount", dev, str(mnt)], check=True)
        (mnt / "docker").mkdir()
        subprocess.run(["fallocate", "-l", str(GIB), str(mnt / "docker" / "layer.bin")], check=True)
        inner.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(inner)], check=True)
        subprocess.run(["fallocate", "-l", str(32 * 1024**2), str(inner / "merged.bin")], check=True)
        st = os.statvfs(mnt)
        fs_used = (st.f_blocks - st.f_bfree) * st.f_frsize
        assert fs_used - GIB > 0.02 * GIB  # what the old report counted: XFS's own blocks too
        assert GIB <= held_bytes(str(mnt)) < GIB + 1024**2
        subprocess.run(["umount", str(inner)], check=True)
        subprocess.run(["umount", str(mnt)], check=True)


@requires_lvm_xfs
def test_held_bytes_leave_out_xfs_preallocation_past_a_file_being_written(tmp_path):
    """XFS reserves as much again past the end of a file being written (freed at close, and
    given back before a write would fail): a 300 MiB file still open reads 300 MiB held."""
    from factory.local.instance.rehearsal import held_bytes

    mnt = tmp_path / "mnt"
    with loop_device(tmp_path, "xfs", 8192) as dev, unmounting(mnt):
        subprocess.run(["mkfs.xfs", "-q", "-f", dev], check=True)
        mnt.mkdir()
        subprocess.run(["mount", dev, str(mnt)], check=True)
        (mnt / "docker").mkdir()
        with open(mnt / "docker" / "out.bin", "wb") as f:
            for i in range(300):
                f.write(b"x" * 1024**2)
                if i % 32 == 31:
                    f.flush()
                    os.fdatasync(f.fileno())
            f.flush()
            os.fdatasync(f.fileno())
            st = os.stat(mnt / "docker" / "out.bin")
            assert st.st_blocks * 512 > st.st_size + 64 * 1024**2  # XFS's preallocation, there while it is open
            assert 300 * 1024**2 <= held_bytes(str(mnt)) < 301 * 1024**2
        subprocess.run(["umount", str(mnt)], check=True)
