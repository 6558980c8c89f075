"""factory's md double (factory/local/instance/md_double): mdadm's commands as the
instance-store boot unit runs them, where the kernel has no md. The sizes md gives (from
mdadm's super1.c and the kernel's raid0.c, cited in the package), mdadm's refusals, and
an array that is a real block device of the array's size that XFS formats and mounts."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.grow_fixtures import loop_device

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loop devices need root")
NAME = f"factory-test{os.getpid() % 100000}"


@pytest.fixture
def mdadm(tmp_path):
    """Runs the double's mdadm (real mdadm where this kernel has md: the same assertions hold)."""
    from factory.local.instance import md_double

    env = dict(os.environ)
    if md_double.md_missing():
        md_double.install(tmp_path / "bin", tmp_path / "state")
        env["PATH"] = f"{tmp_path / 'bin'}:{env['PATH']}"
    yield lambda *argv: subprocess.run(["mdadm", *argv], capture_output=True, text=True, env=env)
    subprocess.run(["mdadm", "--stop", f"/dev/md/{NAME}"], capture_output=True, env=env)
    md_double.release(tmp_path / "state")


def test_sizes_follow_mdadm_and_raid0():
    from factory.local.instance.md_double.mdadm import data_offset_sectors, member_data_bytes, raid0_bytes

    # 300 GB (m5d's disks): the full 128 MiB headroom, 128 KiB of bitmap space, 12 KiB of
    # metadata, rounded up to 1 MiB: 129 MiB; the rest in whole 512 KiB chunks.
    assert data_offset_sectors(300 * 10**9 // 512) == 129 * 2048
    assert member_data_bytes(300 * 10**9) == (300 * 10**9 - 129 * 1024**2) // (512 * 1024) * 512 * 1024
    assert raid0_bytes([300 * 10**9] * 2) == 2 * member_data_bytes(300 * 10**9)
    # 1 GiB: the headroom halves until 1024 x headroom fits the disk (1 MiB), +4 KiB bitmap: 2 MiB
    assert data_offset_sectors(2 * 1024 * 1024) == 2 * 2048


def test_create_detail_and_stop_a_raid0(tmp_path, mdadm):
    from factory.local.instance.md_double.mdadm import raid0_bytes

    with loop_device(tmp_path, "a", 1024) as a, loop_device(tmp_path, "b", 1024) as b:
        made = mdadm("--create", f"/dev/md/{NAME}", "--run", "--level=0", "--metadata=1.2", f"--name={NAME}",
                     "--raid-devices=2", a, b)
        assert made.returncode == 0, made.stderr
        assert f"array /dev/md/{NAME} started" in made.stderr
        array = os.path.realpath(f"/dev/md/{NAME}")
        with open(array, "rb") as f:
            assert f.seek(0, os.SEEK_END) == raid0_bytes([1024**3] * 2)
        info = dict(line.split("=", 1) for line in mdadm("--detail", "--export", f"/dev/md/{NAME}").stdout.splitlines())
        assert (info["MD_LEVEL"], info["MD_DEVICES"], info["MD_METADATA"]) == ("raid0", "2", "1.2")
        assert info[f"MD_DEVICE_{a.lstrip('/').replace('/', '_')}_ROLE"] == "0"
        # XFS as the boot unit makes it, on the array's block device
        fs = subprocess.run(["mkfs.xfs", "-f", "-K", "-n", "ftype=1", "-L", "factory-ds", array], capture_output=True, text=True)
        assert fs.returncode == 0, fs.stderr
        # refusals: the same disks again, the same name again
        busy = mdadm("--create", "/dev/md/other", "--run", "--level=0", "--raid-devices=2", a, b)
        assert busy.returncode == 1 and "Device or resource busy" in busy.stderr
        again = mdadm("--create", f"/dev/md/{NAME}", "--run", "--level=0", "--raid-devices=2", a, b)
        assert again.returncode == 1 and "is already active" in again.stderr
        stopped = mdadm("--stop", f"/dev/md/{NAME}")
        assert stopped.returncode == 0 and f"stopped /dev/md/{NAME}" in stopped.stderr
        assert not os.path.lexists(f"/dev/md/{NAME}")
        gone = mdadm("--detail", "--export", f"/dev/md/{NAME}")
        assert gone.returncode == 1 and "No such file or directory" in gone.stderr


def test_refusals_name_what_is_wrong(tmp_path, mdadm):
    with loop_device(tmp_path, "a", 256) as a:
        few = mdadm("--create", f"/dev/md/{NAME}", "--run", "--level=0", "--raid-devices=2", a)
        assert few.returncode == 1 and "enough devices" in few.stderr
        many = mdadm("--create", f"/dev/md/{NAME}", "--run", "--level=0", "--raid-devices=1", a, a)
        assert many.returncode == 1 and "more devices (2) than are in the array(1)" in many.stderr
        (tmp_path / "plain").write_text("")
        plain = mdadm("--create", f"/dev/md/{NAME}", "--run", "--level=0", "--raid-devices=2", a, str(tmp_path / "plain"))
        assert plain.returncode == 1 and "is not a block device" in plain.stderr
        missing = mdadm("--create", f"/dev/md/{NAME}", "--run", "--level=0", "--raid-devices=2", a, "/dev/nonexistent9")
        assert missing.returncode == 1 and "cannot open /dev/nonexistent9" in missing.stderr
    assert mdadm("--stop", "/dev/md/nothing-here").returncode == 1


def test_what_the_double_does_not_do_is_refused_naming_it(tmp_path):
    """The double's own refusals: run through the double even where real mdadm could run."""
    from factory.local.instance import md_double

    md_double.install(tmp_path / "bin", tmp_path / "state")
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}")

    def mdadm(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(["mdadm", *argv], capture_output=True, text=True, env=env)

    mirror = mdadm("--create", f"/dev/md/{NAME}", "--level=1", "--raid-devices=2", "/dev/null", "/dev/null")
    assert mirror.returncode == 2 and "factory's md double makes raid0 only" in mirror.stderr
    scan = mdadm("--assemble", "--scan")
    assert scan.returncode == 2 and "md_double" in scan.stderr
