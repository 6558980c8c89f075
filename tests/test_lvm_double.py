"""factory's LVM double (factory/local/instance/lvm_double) against lvm2: the sizes real lvm2 gives
(its pvcreate, vgcreate and vgs work without device-mapper), the refusals lvm2 makes, and
a logical volume that is a real block device of the LV's size, grown online."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.grow_fixtures import loop_device, requires_lvm_xfs

MIB = 1024**2


@pytest.fixture
def double(tmp_path):
    """Runs one of the double's commands: CompletedProcess (text)."""
    from factory.local.instance import lvm_double

    env = dict(os.environ) | lvm_double.install(tmp_path / "bin", tmp_path / "state")
    with lvm_double.exclusive():
        yield lambda *argv: subprocess.run(list(argv), capture_output=True, text=True, env=env)
        lvm_double.release(tmp_path / "state")


def real_lvm(device: str, *argv: str) -> subprocess.CompletedProcess:
    """Real lvm2 seeing only `device` (no other PV on this machine)."""
    config = f'devices {{ filter = [ "a|^{device}$|", "r|.*|" ] obtain_device_list_from_udev = 0 }}'
    return subprocess.run(["/usr/sbin/lvm", argv[0], "--config", config, *argv[1:]], capture_output=True, text=True,
                          env=dict(os.environ, LVM_SUPPRESS_FD_WARNINGS="1"))


@requires_lvm_xfs
@pytest.mark.parametrize("size_mib", [512, 1003, 2048])
def test_extents_and_sizes_are_real_lvm2s(tmp_path, double, size_mib):
    vg = f"sizecheck{os.getpid()}"
    with loop_device(tmp_path, "real", size_mib) as real, loop_device(tmp_path, "mine", size_mib) as mine:
        try:
            assert real_lvm(real, "vgcreate", "-y", vg, real).returncode == 0
            want = real_lvm(real, "vgs", "--noheadings", "--units", "b", "-o", "vg_extent_size,vg_extent_count,vg_size,vg_free", vg)
            pe = real_lvm(real, "pvs", "--noheadings", "--units", "b", "-o", "pe_start,pv_pe_count", real)
        finally:
            real_lvm(real, "vgremove", "-ff", "-y", vg)
            real_lvm(real, "pvremove", "-ff", "-y", real)
        assert double("vgcreate", "-y", "factory", mine).returncode == 0
        got = double("vgs", "--noheadings", "--units", "b", "-o", "vg_extent_size,vg_extent_count,vg_size,vg_free", "factory")
        assert got.stdout.split() == want.stdout.split() and want.stdout.split()
        assert double("pvs", "--noheadings", "--units", "b", "-o", "pe_start,pv_pe_count", mine).stdout.split() == pe.stdout.split()
        # the label is lvm2's own: blkid finds an LVM PV, as on AWS
        assert subprocess.run(["blkid", "-p", "-o", "value", "-s", "TYPE", mine], capture_output=True, text=True).stdout.strip() == "LVM2_member"


@requires_lvm_xfs
def test_it_refuses_what_lvm2_refuses(tmp_path, double):
    with loop_device(tmp_path, "a", 256) as a, loop_device(tmp_path, "b", 256) as b:
        assert double("pvcreate", "-y", a).returncode == 0
        assert double("vgcreate", "-y", "factory", a).returncode == 0
        in_use = double("vgcreate", "-y", "factory", b)
        assert in_use.returncode == 5 and "A volume group called factory already exists." in in_use.stderr
        again = double("pvcreate", "-y", a)
        assert again.returncode == 5 and f'Can\'t initialize physical volume "{a}" of volume group "factory" without -ff' in again.stderr
        assert double("vgcreate", "-y", "other", b).returncode == 0  # b becomes a PV on the way, as with lvm2
        taken = double("vgextend", "-y", "factory", b)
        assert taken.returncode == 5 and f"Physical volume '{b}' is already in volume group 'other'" in taken.stderr
        free = 63  # (256 MiB - 1 MiB) / 4 MiB
        too_big = double("lvcreate", "-y", "-l", str(free + 1), "-n", "docker", "factory")
        assert too_big.returncode == 5
        assert f'Volume group "factory" has insufficient free space ({free} extents): {free + 1} required.' in too_big.stderr
        assert double("lvcreate", "-y", "-l", "60", "-n", "docker", "factory").returncode == 0
        twice = double("lvcreate", "-y", "-l", "1", "-n", "docker", "factory")
        assert twice.returncode == 5 and 'Logical Volume "docker" already exists in volume group "factory"' in twice.stderr
        past = double("lvextend", "-l", "+4", "/dev/factory/docker")
        assert past.returncode == 5 and "Insufficient free space: 4 extents needed, but only 3 available" in past.stderr
        nothing = double("vgs", "--noheadings", "-o", "vg_free", "nosuch")
        assert nothing.returncode == 5 and 'Volume group "nosuch" not found' in nothing.stderr
        unknown = double("lvcreate", "--type", "thin-pool", "-l", "1", "-n", "x", "factory")
        assert unknown.returncode == 3 and "LVM double" in unknown.stderr
        assert double("vgremove", "-ff", "-y", "factory").returncode == 0


@requires_lvm_xfs
def test_the_logical_volume_is_a_device_of_its_size_grown_online(tmp_path, double):
    with loop_device(tmp_path, "a", 256) as a, loop_device(tmp_path, "b", 256) as b:
        assert double("vgcreate", "-y", "factory", a).returncode == 0
        made = double("lvcreate", "-y", "-l", "100%FREE", "-n", "docker", "factory")
        assert made.stdout.strip() == 'Logical volume "docker" created.'
        lv = os.path.realpath("/dev/factory/docker")
        assert lv.startswith("/dev/loop") and lv not in (a, b)
        assert int(subprocess.run(["blockdev", "--getsize64", lv], capture_output=True, text=True).stdout) == 63 * 4 * MIB
        assert double("vgextend", "-y", "factory", b).returncode == 0
        assert double("vgs", "--noheadings", "--units", "b", "-o", "vg_free", "factory").stdout.strip() == f"{63 * 4 * MIB}B"
        grown = double("lvextend", "-l", "+100%FREE", "/dev/factory/docker")
        assert grown.returncode == 0, grown.stderr
        assert "(63 extents) to" in grown.stdout and "(126 extents)" in grown.stdout
        assert int(subprocess.run(["blockdev", "--getsize64", lv], capture_output=True, text=True).stdout) == 126 * 4 * MIB
        assert double("vgs", "--noheadings", "--units", "b", "-o", "vg_free", "factory").stdout.strip() == "0B"
        assert sorted(double("pvs", "--noheadings", "-o", "pv_name", "-S", "vg_name=factory").stdout.split()) == sorted([a, b])
        assert double("vgchange", "-an", "factory").returncode == 0
        assert not os.path.exists("/dev/factory/docker")
        assert double("vgremove", "-ff", "-y", "factory").returncode == 0
