"""`factory local run`: a task rehearsed on a local instance of its launch template.

One local cloud and one baked, registered growing task for the module (a bake takes about
two minutes); each test launches its own instance from that task's launch template: the
AMI's tree as root, a loop device per volume, the pool, a real dockerd on it and the real
grow agent against the local cloud. After every run nothing may be left: no loop device,
mount, process, cgroup or volume of the instance.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from buildhost_fixtures import requires_buildhost
from docker_fixtures import IMAGE, requires_docker

from tests.grow_fixtures import requires_btrfs, requires_lvm_xfs

pytestmark = [pytest.mark.slow, requires_buildhost, requires_docker, requires_lvm_xfs]

FACTORY = str(Path(sys.executable).parent / "factory")
TASK = "rehearse"
ROOT_TASK = "rehearse-root"  # the same task without storage.grow
# A 3 GiB data volume (about 2.9 GiB usable as LVM + XFS, 2.5 as btrfs, which keeps its metadata twice), growable to 40.
SPEC = """name: {name}
description: A task rehearsed on a local instance.
region: us-east-1
image:
  base: ecs-al2023
  architecture: x86_64
storage:
  benchmarks: benchmarks/rehearse.csv
  max_input_gib: 0.4
  concurrent_tasks: 1
  headroom: 0.1
  container_images_gib: 0.1
  grow:
    max_gib: 40
awscli:
  prefix: /home/ec2-user/miniconda
batch:
  instance_types: [c6i.large]
  max_vcpus: 4
  provisioning: on-demand
nextflow:
  process: REHEARSE
"""
BENCH = "input_gib,index_gib,scratch_gib,output_gib\n0.1,0.05,0.1,0.05\n0.2,0.05,0.2,0.05\n0.4,0.05,0.3,0.1\n"
# 4000 MiB in 100 MiB files, each flushed to the device, at a few hundred MiB/s: well past
# the 2.5 GiB the instance starts with. Exits 1 at the first failed write, dd saying why on stderr
# (not into a file: that file would be on the full disk too).
WRITER = ("i=0; while [ $i -lt 40 ]; do dd if=/dev/zero of=f$i bs=1M count=100 conv=fsync status=none || exit 1; "
          "i=$((i+1)); sleep 0.1; done; echo wrote 4000 MiB")
# The same 4000 MiB, but paced by the disk rather than the clock: 1800 MiB (past the agent's
# 2 GiB floor of free space, within the 2.5 GiB the instance starts with), then a wait until
# Docker's storage has grown (at most 300 s: exit 3 if it never does), then the rest. With
# faults slowing the add, a writer at full speed would race it; this one cannot lose the
# race, so what the test sees is whether the retried add arrives at all, and only once.
PACED_WRITER = ("total() { df -Pk . | awk 'NR==2 {print $2}'; }; start=$(total); "
                "i=0; while [ $i -lt 18 ]; do dd if=/dev/zero of=f$i bs=1M count=100 conv=fsync status=none || exit 1; i=$((i+1)); done; "
                "n=0; while [ $(total) -le $start ]; do n=$((n+1)); if [ $n -gt 300 ]; then echo never grew; exit 3; fi; sleep 1; done; "
                "while [ $i -lt 40 ]; do dd if=/dev/zero of=f$i bs=1M count=100 conv=fsync status=none || exit 1; i=$((i+1)); done; "
                "echo wrote 4000 MiB")
REPORT_KEYS = {"exit_code", "fit", "capacity_gib", "peak_gib", "grown_gib", "volumes_added", "instance_id", "pool"}
WROTE_GIB = 4000 / 1024  # what WRITER and PACED_WRITER leave on the disk


@pytest.fixture(scope="module")
def rehearsed(tmp_path_factory, docker_engine):
    """A local cloud with TASK baked and registered (factory bake --cloud local), and the env to reach it."""
    from factory.local import cloud as local_cloud

    work = tmp_path_factory.mktemp("local-run")
    specs = work / "specs"
    (specs / "benchmarks").mkdir(parents=True)
    (specs / "benchmarks" / "rehearse.csv").write_text(BENCH)
    (specs / f"{TASK}.yaml").write_text(SPEC.format(name=TASK))
    # In a folder of its own: a sibling in the same folder would join TASK's tier and its registration.
    other = work / "other-specs"
    (other / "benchmarks").mkdir(parents=True)
    (other / "benchmarks" / "rehearse.csv").write_text(BENCH)
    (other / "unbaked.yaml").write_text(SPEC.format(name="unbaked"))
    # Deep, as a project's folder may be: the instances' Docker sockets are past a unix
    # socket's 107-byte address there, and reached through their short links.
    state = work / "projects" / "genomics-pipelines-on-aws-batch" / ".factory"
    lc = local_cloud.up(state, "us-east-1")
    env = docker_engine.env() | {"FACTORY_STATE_DIR": str(state)}
    try:
        baked = subprocess.run([FACTORY, "bake", TASK, "--cloud", "local", "--specs-dir", str(specs), "--build-dir", str(work / "build"), "--json"],
                               capture_output=True, text=True, env=env, timeout=900)
        assert baked.returncode == 0, baked.stdout[-3000:] + baked.stderr[-3000:]
        yield {"env": env, "cloud": lc, "specs": specs, "other_specs": other, "state": state, "work": work}
    finally:
        local_cloud.down(state)


@pytest.fixture(scope="module")
def root_task(rehearsed):
    """A task without storage.grow baked and registered on the same local cloud (in a folder
    of its own, so it is a tier of its own): Docker's data on its sized root volume."""
    specs = rehearsed["work"] / "root-specs"
    (specs / "benchmarks").mkdir(parents=True)
    (specs / "benchmarks" / "rehearse.csv").write_text(BENCH)
    spec = SPEC.format(name=ROOT_TASK).replace("  grow:\n    max_gib: 40\n", "")
    assert "grow" not in spec
    (specs / f"{ROOT_TASK}.yaml").write_text(spec)
    baked = subprocess.run([FACTORY, "bake", ROOT_TASK, "--cloud", "local", "--specs-dir", str(specs), "--build-dir",
                            str(rehearsed["work"] / "root-build")], capture_output=True, text=True, env=rehearsed["env"], timeout=900)
    assert baked.returncode == 0, baked.stdout[-3000:] + baked.stderr[-3000:]
    return specs


def local_run(rehearsed, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([FACTORY, "local", "run", TASK, "--specs-dir", str(rehearsed["specs"]), "--image", IMAGE, *args],
                          capture_output=True, text=True, env=rehearsed["env"], timeout=timeout)


def ec2_of(rehearsed):
    return rehearsed["cloud"].clients("us-east-1").ec2()


def assert_nothing_left(rehearsed, instance_id: str) -> None:
    """No loop device, mount, process, cgroup or volume of the instance; the instance terminated."""
    state = str(rehearsed["state"])
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert state not in loops, loops
    mounts = Path("/proc/self/mounts").read_text()
    assert f"{state}/instances" not in mounts
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        assert f"{state}/instances" not in cmdline, f"process {pid} left: {cmdline}"
    assert not list(Path("/sys/fs/cgroup").glob(f"*factory-instance-{instance_id}*"))
    assert not (rehearsed["state"] / "instances" / instance_id).exists()
    assert not Path(f"/run/factory-local/{instance_id}.sock").is_symlink()
    ec2 = ec2_of(rehearsed)
    inst = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]  # one id: one answer
    assert inst["State"]["Name"] in ("shutting-down", "terminated")
    attached = [v["VolumeId"] for p in ec2.get_paginator("describe_volumes").paginate(
        Filters=[{"Name": "attachment.instance-id", "Values": [instance_id]}]) for v in p["Volumes"]]
    tagged = [v["VolumeId"] for p in ec2.get_paginator("describe_volumes").paginate(
        Filters=[{"Name": "tag:factory:instance", "Values": [instance_id]}]) for v in p["Volumes"]]
    assert attached == [] and tagged == [], (attached, tagged)


def test_a_task_not_baked_on_the_local_cloud_is_refused_with_the_command_that_bakes_it(rehearsed):
    proc = subprocess.run([FACTORY, "local", "run", "unbaked", "--specs-dir", str(rehearsed["other_specs"]), "--image", IMAGE, "--", "true"],
                          capture_output=True, text=True, env=rehearsed["env"], timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "`factory bake unbaked --cloud local`" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_an_image_missing_from_the_users_engine_is_refused(rehearsed):
    proc = local_run(rehearsed, "--image", "no-such-image:never", "--", "true")
    assert proc.returncode == 2, proc.stderr
    assert "--image no-such-image:never: not in your Docker engine" in proc.stderr and "Traceback" not in proc.stderr


def test_a_fast_writer_grows_the_disk_and_fits(rehearsed, docker_env, tmp_path):
    """Past its starting capacity at a few hundred MiB/s: the agent adds encrypted volumes,
    tagged with the task and the instance, and they go with the instance."""
    from factory.local.instance import rehearsal
    from factory.spec import find_spec

    (tmp_path / "reads.fq").write_text("@r1\nACGT\n+\nIIII\n")
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "seq.bin").write_bytes(b"x" * 4096)
    out = io.StringIO()
    spec = find_spec(TASK, rehearsed["specs"])
    report = rehearsal.rehearse(
        rehearsed["cloud"], spec, IMAGE,
        ["sh", "-c", "ls reads.fq index/seq.bin; test -x /home/ec2-user/miniconda/bin/aws && echo prefix-mounted; "
                   "touch /home/ec2-user/miniconda/rw 2>/dev/null && echo prefix-writable; " + WRITER],
        inputs=[tmp_path / "reads.fq"], index=[tmp_path / "index"], out=out)
    text = out.getvalue()
    assert report.exit_code == 0, text
    assert "reads.fq" in text and "index/seq.bin" in text  # staged into the working directory
    assert "prefix-mounted" in text and "prefix-writable" not in text  # the AWS CLI prefix, mounted read-only
    assert "wrote 4000 MiB" in text
    assert report.fit and report.volumes_added >= 1 and report.grown_gib >= 1
    assert report.pool == "lvm-xfs", report  # the pool AWS instances run, by default
    assert report.capacity_gib < 3 < report.peak_gib, report  # it held more than it started with
    assert WROTE_GIB <= report.peak_gib < WROTE_GIB + 0.1, report  # all it wrote, and the image: no more, no less
    for vol in report.volumes:
        tags = {t["Key"]: t["Value"] for t in vol.get("Tags", [])}
        assert tags.get("factory:task") == TASK and tags.get("factory:instance") == report.instance_id, tags
        assert vol["Encrypted"]
    assert_nothing_left(rehearsed, report.instance_id)


@requires_btrfs
def test_the_btrfs_pool_is_rehearsed_as_a_backend_of_its_own(rehearsed):
    """--pool btrfs: the image's `auto` finds btrfs-progs and makes a btrfs pool; the report
    says so, and its peak is what the task held (not btrfs's lagging, chunk-sized used blocks)."""
    proc = local_run(rehearsed, "--pool", "btrfs", "--json", "--", "sh", "-c", WRITER)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)  # stdout is the JSON alone: the writer's output went to stderr
    assert set(report) == REPORT_KEYS and report["pool"] == "btrfs", report
    assert report["fit"] is True and report["volumes_added"] >= 1, report
    assert report["capacity_gib"] < 3 and WROTE_GIB <= report["peak_gib"] < WROTE_GIB + 0.1, report
    assert "wrote 4000 MiB" in proc.stderr
    assert_nothing_left(rehearsed, report["instance_id"])


def test_without_the_net_the_same_writer_runs_out_of_space(rehearsed):
    proc = local_run(rehearsed, "--no-grow", "--", "sh", "-c", WRITER)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "did NOT fit: it ran out of space" in proc.stdout, proc.stdout
    assert "No space left on device" in proc.stdout
    instance_id = proc.stdout.split("instance ", 1)[1].split(":", 1)[0]
    assert_nothing_left(rehearsed, instance_id)


def test_faults_on_volume_create_and_attach_are_retried_and_it_still_fits(rehearsed):
    from factory.local.aws import faults

    endpoint = rehearsed["cloud"].endpoint
    for armed in (["ec2:CreateVolume", "--kind", "throttle", "--times", "2"], ["ec2:AttachVolume", "--kind", "drop"]):
        subprocess.run([FACTORY, "local", "fault", *armed], env=rehearsed["env"], check=True, capture_output=True, timeout=60)
    assert len(faults.armed(endpoint)) == 2
    try:
        proc = local_run(rehearsed, "--json", "--", "sh", "-c", PACED_WRITER)
        left = faults.armed(endpoint)
    finally:
        faults.clear(endpoint)
    assert left == [], left  # every armed fault was hit
    report = json.loads(proc.stdout)
    assert set(report) == REPORT_KEYS
    assert report["exit_code"] == proc.returncode == 0, proc.stderr[-3000:]
    assert report["fit"] is True, report
    assert report["volumes_added"] == 1, report  # a retried create or attach made no second volume
    assert report["pool"] == "lvm-xfs" and WROTE_GIB <= report["peak_gib"] < WROTE_GIB + 0.1, report
    assert "wrote 4000 MiB" in proc.stderr  # the command's output goes to stderr with --json
    # what the agent did, from its journal: the throttled creates and the dropped attach, retried
    said = [line for line in proc.stderr.splitlines() if line.startswith("factory: grow agent: ")]
    retried = next((line for line in said if "retried" in line), "")
    assert "ec2:CreateVolume 2x (RequestLimitExceeded)" in retried and "ec2:AttachVolume 1x" in retried, said
    assert any(line.startswith("factory: grow agent: +") and "GiB (vol-" in line for line in said), said
    assert_nothing_left(rehearsed, report["instance_id"])


def test_a_task_without_grow_runs_on_its_root_volume_less_what_the_os_and_the_image_take(rehearsed, root_task):
    from factory.local.instance.rehearsal import find_launch_template
    from factory.sizing import BASE_ROOT_USED_GIB

    writer = "dd if=/dev/zero of=f bs=1M count=300 conv=fsync status=none && echo wrote 300 MiB"
    proc = subprocess.run([FACTORY, "local", "run", ROOT_TASK, "--specs-dir", str(root_task), "--image", IMAGE, "--json", "--",
                           "sh", "-c", writer], capture_output=True, text=True, env=rehearsed["env"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["fit"] is True and report["volumes_added"] == 0 and report["grown_gib"] == 0, report
    assert "wrote 300 MiB" in proc.stderr
    assert "Docker on the root volume /dev/xvda (no storage.grow: no pool, no grow agent)" in proc.stderr, proc.stderr
    assert "grow agent:" not in proc.stderr
    template = find_launch_template(ec2_of(rehearsed), ROOT_TASK)
    root_gib = next(m["Ebs"]["VolumeSize"] for m in template.data["BlockDeviceMappings"] if m["DeviceName"] == "/dev/xvda")
    # the root volume less the base's share and the bake's tree (under 2 GiB), and XFS's own few percent
    assert root_gib - BASE_ROOT_USED_GIB - 2 - 0.03 * root_gib < report["capacity_gib"] < root_gib - BASE_ROOT_USED_GIB, (root_gib, report)
    assert report["pool"] is None, report
    # the 300 MiB written and the image, not the OS's share nor XFS's own log and metadata
    assert 0.29 <= report["peak_gib"] < 0.35, report
    assert_nothing_left(rehearsed, report["instance_id"])


def test_a_legacy_devicemapper_task_is_refused_naming_what_is_rehearsed(rehearsed, tmp_path):
    specs = tmp_path / "specs"
    (specs / "benchmarks").mkdir(parents=True)
    (specs / "benchmarks" / "rehearse.csv").write_text(BENCH)
    spec = SPEC.format(name="legacy").replace("  grow:\n    max_gib: 40\n", "").replace("base: ecs-al2023", "base: ecs-al1")
    (specs / "legacy.yaml").write_text(spec)
    proc = subprocess.run([FACTORY, "local", "run", "legacy", "--specs-dir", str(specs), "--image", IMAGE, "--", "true"],
                          capture_output=True, text=True, env=rehearsed["env"], timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "devicemapper thin pool" in proc.stderr and "ecs-al2023, ecs-al2" in proc.stderr, proc.stderr


def test_ctrl_c_and_sigterm_both_end_the_run_as_an_interruption():
    """Both go through one handler (so the Ctrl-C test below covers SIGTERM's path), installed
    even when SIGINT was ignored at start (a shell's background job), and put back after."""
    from factory.local.instance.rehearsal import _terminate_on_signals

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        restore = _terminate_on_signals()
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with pytest.raises(KeyboardInterrupt):
                    signal.raise_signal(sig)
        finally:
            restore()
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _stuck(proc: subprocess.Popen) -> str:
    """Where a process that should have ended waits (each thread's kernel wait channel and
    its Python stack on stderr: the test starts it with PYTHONFAULTHANDLER, so SIGABRT makes
    it print every thread's stack), then the process ended: what a failed interrupt test
    needs to say."""
    threads = Path(f"/proc/{proc.pid}/task")
    waits = {t.name: (t / "wchan").read_text() for t in threads.iterdir()} if threads.is_dir() else {}
    proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack, then the process dies
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return f"threads waiting in {waits}; stderr: {err[-6000:]}"


def test_an_interrupted_run_terminates_the_instance(rehearsed):
    sig = signal.SIGINT
    proc = subprocess.Popen([FACTORY, "local", "run", TASK, "--specs-dir", str(rehearsed["specs"]), "--image", IMAGE, "--",
                             "sh", "-c", "echo running; sleep 600"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(rehearsed["env"], PYTHONFAULTHANDLER="1"))
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the container prints once it runs
    assert line.strip() == "running", line + (proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
    state = rehearsed["state"] / "instances"
    instance_id = next(p.name for p in state.iterdir() if p.name.startswith("i-"))
    proc.send_signal(sig)
    t = time.monotonic()
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"factory local run still runs 120 s after {sig.name}: {_stuck(proc)}")
    assert time.monotonic() - t < 60
    assert proc.returncode == 130, proc.stderr.read() if proc.stderr else ""
    assert_nothing_left(rehearsed, instance_id)


# -- storage.instance_store: docker (issue 20 §2) ------------------------------------------

STORE_TASK = "star-align-nvme"  # the shipped spec, baked and registered as it is


@pytest.fixture(scope="module")
def store_task(rehearsed):
    """specs/star-align-nvme.yaml baked and registered on the same local cloud (a tier of its
    own: no other task keeps Docker on the instance store)."""
    from tests.conftest import SPECS

    baked = subprocess.run([FACTORY, "bake", STORE_TASK, "--cloud", "local", "--specs-dir", str(SPECS), "--build-dir",
                            str(rehearsed["work"] / "store-build"), "--json"], capture_output=True, text=True, env=rehearsed["env"], timeout=900)
    assert baked.returncode == 0, baked.stdout[-3000:] + baked.stderr[-3000:]
    return SPECS


def store_run(rehearsed, specs, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    writer = "dd if=/dev/zero of=f bs=1M count=200 conv=fsync status=none && echo wrote 200 MiB"
    return subprocess.run([FACTORY, "local", "run", STORE_TASK, "--specs-dir", str(specs), "--image", IMAGE, "--json", *args,
                           "--", "sh", "-c", writer], capture_output=True, text=True, env=rehearsed["env"], timeout=timeout)


def test_the_instance_store_spec_bakes_its_boot_unit_and_registers_a_root_for_the_os_alone(rehearsed, store_task):
    from factory.local.builder.ami_trees import AmiTrees
    from factory.local.instance.rehearsal import find_launch_template

    template = find_launch_template(ec2_of(rehearsed), STORE_TASK)
    root = next(m["Ebs"] for m in template.data["BlockDeviceMappings"] if m["DeviceName"] == "/dev/xvda")
    assert root["VolumeSize"] == 30 and root["Encrypted"] is True  # the AMI's own root: the OS alone
    tree = AmiTrees(rehearsed["state"]).tree(template.image_id)
    units = tree / "etc" / "systemd" / "system"
    assert (units / "multi-user.target.wants" / "factory-instance-store.service").is_symlink()
    assert "Requires=factory-instance-store.service" in (units / "docker.service.d" / "factory-instance-store.conf").read_text()
    assert "Requires=factory-instance-store.service" in (units / "ecs.service.d" / "factory-instance-store.conf").read_text()
    assert (tree / "opt" / "factory" / "instance-store" / "factory_instance_store.py").is_file()
    assert not (units / "multi-user.target.wants" / "factory-grow-pool.service").exists()


def test_a_task_on_one_nvme_disk_runs_on_the_instance_store(rehearsed, store_task):
    from factory.instance_store import table

    proc = store_run(rehearsed, store_task)  # r6id.2xlarge, the spec's first: one 474 GB disk
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["pool"] == "instance-store" and report["fit"] is True, report
    assert "Docker on the instance store, one NVMe disk (/dev/loop" in proc.stderr, proc.stderr
    disk_gib = table()["r6id.2xlarge"].capacity_gib  # 441.4 GiB; XFS keeps under 1% of it
    assert 0.99 * disk_gib < report["capacity_gib"] < disk_gib, report
    assert 0.19 <= report["peak_gib"] < 0.25, report
    assert_nothing_left(rehearsed, report["instance_id"])


def test_several_nvme_disks_are_raid0_made_by_mdadm_or_its_double(rehearsed, store_task):
    from factory.local.instance import md_double
    from factory.local.instance.md_double.mdadm import raid0_bytes

    proc = store_run(rehearsed, store_task, "--instance-type", "m5d.4xlarge")  # two 300 GB disks
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["pool"] == "instance-store", report
    assert "Docker on the instance store, RAID0 of 2 NVMe disks (/dev/md/factory-docker)" in proc.stderr, proc.stderr
    array_gib = raid0_bytes([300 * 10**9] * 2) / 1024**3  # what md makes of them (the double where md is missing)
    assert 0.99 * array_gib < report["capacity_gib"] < array_gib, (array_gib, report)
    assert md_double.md_missing() is None or "wrote 200 MiB" in proc.stderr
    assert_nothing_left(rehearsed, report["instance_id"])


def test_a_type_without_instance_store_never_starts_docker(rehearsed, store_task):
    proc = store_run(rehearsed, store_task, "--instance-type", "c6i.large")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "factory-instance-store.service failed" in proc.stderr, proc.stderr[-3000:]
    assert "no NVMe instance store on this instance" in proc.stderr, proc.stderr[-3000:]
    assert "docker.service.log" not in proc.stderr  # Docker was never started
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert str(rehearsed["state"]) not in loops
