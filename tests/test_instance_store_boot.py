"""The instance-store boot script (ansible/roles/instance_store/files/factory_instance_store.py)
run as the boot unit runs it, on real files: which disks it takes (by NVMe model, never an
EBS volume, each once), and a type without a store failing loudly. The whole boot path
(RAID0, XFS, Docker on it) runs in tests/test_local_run_instance_store.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO

SCRIPT = REPO / "ansible" / "roles" / "instance_store" / "files" / "factory_instance_store.py"
UNIT = REPO / "ansible" / "roles" / "instance_store" / "templates" / "factory-instance-store.service.j2"
DROP_IN = REPO / "ansible" / "roles" / "instance_store" / "templates" / "requires-instance-store.conf.j2"


def load():
    import importlib.util

    spec = importlib.util.spec_from_file_location("factory_instance_store", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_disks_are_found_by_model_each_once_never_ebs(tmp_path):
    m = load()
    by_id, dev = tmp_path / "by-id", tmp_path / "dev"
    by_id.mkdir(), dev.mkdir()
    for name in ("nvme0n1", "nvme1n1", "nvme2n1", "nvme3n1"):
        (dev / name).write_text("")
    # As udev links them on a Nitro instance: the model and serial, the namespace's `_1`,
    # a partition, and the EBS root volume under its own model.
    links = {
        "nvme-Amazon_EC2_NVMe_Instance_Storage_AWS1B2C3D4E5F6A7B8C9": "nvme2n1",
        "nvme-Amazon_EC2_NVMe_Instance_Storage_AWS1B2C3D4E5F6A7B8C9_1": "nvme2n1",
        "nvme-Amazon_EC2_NVMe_Instance_Storage_AWS0A1B2C3D4E5F6A7B8": "nvme1n1",
        "nvme-Amazon_EC2_NVMe_Instance_Storage_AWS0A1B2C3D4E5F6A7B8-part1": "nvme3n1",
        "nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0": "nvme0n1",
        "nvme-Amazon_EC2_NVMe_Instance_Storage_AWSgone": "nvme9n1",  # a link whose device went
    }
    for link, target in links.items():
        os.symlink(dev / target, by_id / link)
    assert m.find_disks(str(by_id)) == [str(dev / "nvme1n1"), str(dev / "nvme2n1")]


def test_a_type_without_a_store_fails_loudly_and_mounts_nothing(tmp_path):
    by_id, mnt = tmp_path / "by-id", tmp_path / "docker"
    by_id.mkdir()
    os.symlink("/dev/null", by_id / "nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0")
    done = subprocess.run([sys.executable, str(SCRIPT), "ensure", str(mnt), "--by-id", str(by_id), "--wait", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "factory-instance-store: no NVMe instance store on this instance" in done.stderr
    assert "Docker and the ECS agent stay stopped rather than fill the root volume" in done.stderr
    event = json.loads(done.stdout.splitlines()[-1])
    assert event["event"] == "instance-store-failed"
    assert not mnt.exists()


def test_a_stale_array_is_stopped_and_made_anew(tmp_path, monkeypatch):
    """awslabs/amazon-eks-ami PR #2755: an array (or mdadm.conf) from before must not skip
    the rebuild. The script never reads mdadm.conf; an array holding the disks is stopped."""
    m = load()
    calls = []
    monkeypatch.setattr(m, "arrays_holding", lambda disks: ["/dev/md127"])
    monkeypatch.setattr(m, "run", lambda *argv: calls.append(argv) or "")
    monkeypatch.setattr(m, "detail", lambda device: {"MD_LEVEL": "raid0", "MD_DEVICES": "2"})
    monkeypatch.setattr(m.os.path, "exists", lambda p: True)
    assert m.raid0(["/dev/nvme1n1", "/dev/nvme2n1"], 0) == m.ARRAY
    assert calls[0] == ("mdadm", "--stop", "/dev/md127")
    assert calls[1][:2] == ("mdadm", "--create") and "--raid-devices=2" in calls[1] and "--level=0" in calls[1]
    assert "/etc/mdadm" not in SCRIPT.read_text() and "--scan" not in SCRIPT.read_text()  # no config read, none assembled


def test_a_wrong_array_is_refused(tmp_path, monkeypatch):
    m = load()
    monkeypatch.setattr(m, "arrays_holding", lambda disks: [])
    monkeypatch.setattr(m, "run", lambda *argv: "")
    monkeypatch.setattr(m, "detail", lambda device: {"MD_LEVEL": "raid1", "MD_DEVICES": "2"})
    monkeypatch.setattr(m.os.path, "exists", lambda p: True)
    try:
        m.raid0(["/dev/a", "/dev/b"], 0)
    except m.Failed as exc:
        assert "is raid1 over 2 disk(s), not raid0 over 2" in str(exc)
    else:
        raise AssertionError("a raid1 array was taken")


def test_docker_and_the_ecs_agent_require_the_unit_which_runs_before_both():
    unit = UNIT.read_text()
    assert "Before={{ instance_store_docker_service }} {{ instance_store_ecs_service }}" in unit
    assert "Type=oneshot" in unit and "ensure {{ instance_store_mountpoint }}" in unit
    drop_in = DROP_IN.read_text()
    assert "Requires=factory-instance-store.service" in drop_in and "After=factory-instance-store.service" in drop_in
