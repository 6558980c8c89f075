"""The grow_agent role, run for real: ansible-playbook over SSH into the throwaway build
host after miniconda_awscli (the agent runs with the prefix's Python and its botocore);
then the installed boot command makes a loop device a pool inside the build host."""

from __future__ import annotations

import json

import pytest
from buildhost_fixtures import changed, requires_buildhost, role_playbook, run_playbook, show, start_host

from tests.grow_fixtures import loop_device, requires_btrfs

PREFIX = "/home/ec2-user/miniconda"
UNITS = "/etc/systemd/system"

pytestmark = [pytest.mark.slow, requires_buildhost, requires_btrfs]


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    from factory.local.builder.mirror import Mirror

    base = tmp_path_factory.mktemp("grow-role")
    mirror = Mirror.start(base / "mirror")
    h = start_host(base / "host", docker=False)
    try:
        # An AL2023 builder as a local bake's (its dnf installs the role's lvm2 and
        # xfsprogs; Debian's btrfs-progs kept for the btrfs pool this module makes).
        from factory.local.builder.family_root import LOCAL_POOL, look_like

        look_like(h, "al2023", keep=LOCAL_POOL)
        yield h, mirror
    finally:
        h.stop(remove=True)
        mirror.stop()


@pytest.fixture(scope="module")
def installed(host, tmp_path_factory):
    """The role run once on the build host (after miniconda_awscli): (host, play, vars, first run, folder)."""
    h, mirror = host
    tmp = tmp_path_factory.mktemp("grow-role-play")
    ev = {
        "ansible_python_interpreter": h.python_interpreter,
        "miniconda_awscli_prefix": PREFIX,
        "miniconda_awscli_installer_url": mirror.installer_url,
        "miniconda_awscli_installer_checksum": f"sha256:{mirror.installer_sha256}",
        "grow_agent_enabled": True,
        "grow_agent_task": "star-align",
        "grow_agent_max_gib": 900,
        "grow_agent_python": f"{PREFIX}/bin/python",
        "grow_agent_settings": {"floor_gib": 5},
    }
    play = role_playbook(tmp, "miniconda_awscli", "grow_agent")
    return h, play, ev, run_playbook(h, play, ev, tmp), tmp


def test_the_role_installs_the_agent_and_its_boot_units_idempotently(installed):
    h, play, ev, first, tmp = installed
    assert first.returncode == 0, show(first)
    assert "grows /var/lib/docker up to 900 GiB for star-align" in first.stdout

    config = json.loads(h.path("/etc/factory/grow.json").read_text())
    assert config == {"task": "star-align", "max_gib": 900, "volume_type": "gp3", "mountpoint": "/var/lib/docker",
                      "pool_backend": "auto", "floor_gib": 5}
    pool_unit = h.path(f"{UNITS}/factory-grow-pool.service").read_text()
    assert "Before=docker.service" in pool_unit
    assert f"ExecStart={PREFIX}/bin/python -m factory_grow.pool ensure /dev/xvdb /var/lib/docker" in pool_unit
    agent_unit = h.path(f"{UNITS}/factory-grow-agent.service").read_text()
    assert "Restart=always" in agent_unit and "--config /etc/factory/grow.json" in agent_unit
    assert "Requires=factory-grow-pool.service" in h.path(f"{UNITS}/docker.service.d/factory-grow.conf").read_text()
    for unit in ("factory-grow-pool.service", "factory-grow-agent.service"):
        assert h.run("readlink", f"{UNITS}/multi-user.target.wants/{unit}").stdout.strip() == f"{UNITS}/{unit}"

    second = run_playbook(h, play, ev, tmp)
    assert second.returncode == 0, show(second)
    assert changed(second) == 0, show(second)


def test_the_installed_boot_command_makes_the_pool_inside_the_host(installed, tmp_path):
    """What factory-grow-pool.service runs at boot, run in the build host's own mount
    namespace with the prefix's Python: a fresh device becomes a mounted btrfs pool."""
    h, _, _, first, _ = installed
    assert first.returncode == 0, show(first)
    with loop_device(tmp_path, "data", 512) as dev:
        ran = h.run("env", "PYTHONPATH=/opt/factory/grow", f"{PREFIX}/bin/python", "-m", "factory_grow.pool",
                    "ensure", dev, "/var/lib/docker-grow", "--backend", "btrfs", "--wait", "5", check=False)
        try:
            assert ran.returncode == 0, ran.stdout + ran.stderr
            assert json.loads(ran.stdout)["event"] == "pool-ready"
            assert " /var/lib/docker-grow btrfs " in h.run("cat", "/proc/self/mounts").stdout
        finally:
            h.run("umount", "/var/lib/docker-grow", check=False)
    missing = h.run("env", "PYTHONPATH=/opt/factory/grow", f"{PREFIX}/bin/python", "-m", "factory_grow.pool",
                    "ensure", "/dev/xvdq", "/var/lib/docker-grow", "--wait", "0.5", check=False)
    assert missing.returncode == 1 and "is it in the launch template?" in missing.stdout
