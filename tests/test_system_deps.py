"""scripts/system-deps.sh when another apt or dpkg holds the package lock (as unattended
upgrades do on a fresh VM): it waits for the lock, and when it still fails it says which
command failed and why, not apt's bare exit 100. Run inside the throwaway build host, whose
overlay root has its own dpkg and apt lock files, so this machine's apt is never locked."""

from __future__ import annotations

import subprocess

import pytest
from buildhost_fixtures import requires_buildhost, start_host

from tests.conftest import REPO

pytestmark = requires_buildhost

LOCKS = ("/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock", "/var/lib/apt/lists/lock")
HOLD = (
    "import fcntl, sys, time\n"
    f"files = [open(p, 'a') for p in {LOCKS!r}]\n"
    "for f in files:\n"
    "    fcntl.lockf(f, fcntl.LOCK_EX)\n"
    "print('locked', flush=True)\n"
    "time.sleep(float(sys.argv[1]))\n"
)


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    h = start_host(tmp_path_factory.mktemp("deps") / "host", docker=False)
    try:
        h.run("sh", "-c", "cat > /root/system-deps.sh", input=(REPO / "scripts" / "system-deps.sh").read_text())
        h.run("sh", "-c", "rm -f \"$(command -v packer)\"")  # so the script has something to install
        yield h
    finally:
        h.stop(remove=True)  # ends the lock holder with the namespace


def hold_locks(host, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        ["nsenter", "--target", str(host.init_pid), "--mount", "--pid", "--", "chroot", str(host.state_dir / "root"),
         "/usr/bin/python3", "-c", HOLD, str(seconds)],
        stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_held_apt_lock_is_waited_for_then_named(host):
    hold_locks(host, 120)
    p = host.run("sh", "-c", "FACTORY_APT_LOCK_WAIT=3 bash /root/system-deps.sh aws", check=False, timeout=120)
    assert p.returncode == 100, p.stdout + p.stderr
    assert "waiting up to 3s for its lock" in p.stdout
    assert "`apt-get update -qq` failed (exit 100): another apt or dpkg held the package lock for more than 3s" in p.stderr
    assert "FACTORY_APT_LOCK_WAIT" in p.stderr and "Could not get lock" in p.stderr, p.stderr
