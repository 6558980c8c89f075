"""`factory local run`: rehearse one task on a local instance of its launch template.

The task's current (default) launch template version is launched on the local cloud as
AWS Batch would launch it (factory.local.instance.instances), then, as Batch and Nextflow do:

- IMAGE goes from the user's Docker engine into the instance's (`docker save | docker load`,
  the local stand-in for the pull Batch makes);
- a container of IMAGE is created with the AWS CLI prefix mounted read-only (as Nextflow's
  job definitions mount `aws.batch.cliPath`'s prefix) and the task's working directory as
  its working directory; `--input` and `--index` files are copied into that directory,
  so they land on Docker's storage, where Nextflow's staging (`aws s3 cp`) puts them;
- the container runs CMD while a `factory measure` sampler (factory.disk_sampler) records
  the disk Docker's data root holds;
- what the grow agent did (each add, its trigger and time, the retries) is said from its
  journal (factory.local.instance.agent_journal);
- the instance is terminated whatever happens (Ctrl-C and SIGTERM included): volumes go as
  their DeleteOnTermination says, loop devices and processes too.

Docker's storage is the task's data volume and its pool with `storage.grow`, else the sized
root volume less what the OS and the bake take of it (instances.RootVolume). The report
says whether the task fit: it did not when the command failed for lack of space.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factory.errors import FactoryError, UsageError

GIB = 1024**3
TASK_WORKDIR = "/tmp/nxf-task"  # the task's working directory in the container (Nextflow's scratch on Batch)
DOCKER_DATA_ROOT = "/var/lib/docker"
FULL_BYTES = 64 * 1024**2  # free space under this (or 1 % of the disk) counts as full
NO_SPACE = "No space left on device"  # strerror(ENOSPC): what every tool prints when the disk is full
INSTANCE_TAG = "factory:instance"  # the grow agent tags each volume it adds with the instance's id


class NotBakedError(FactoryError):
    """The task has no launch template or no AMI tree on the local cloud."""


@dataclass
class RunReport:
    exit_code: int
    fit: bool
    capacity_gib: float
    peak_gib: float
    grown_gib: float
    volumes_added: int
    instance_id: str
    pool: str | None = None  # the grow pool's backend that ran ("lvm-xfs", "btrfs"); None without storage.grow
    out_of_space: bool = False
    no_net: str = ""  # why no grow agent ran: "--no-grow", or "no storage.grow"; "" when it did
    volumes: list[dict[str, Any]] = field(default_factory=list)  # what the agent added, as moto had them before termination
    leftovers: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Exactly the keys `--json` prints."""
        return {
            "exit_code": self.exit_code,
            "fit": self.fit,
            "capacity_gib": self.capacity_gib,
            "peak_gib": self.peak_gib,
            "grown_gib": self.grown_gib,
            "volumes_added": self.volumes_added,
            "instance_id": self.instance_id,
            "pool": self.pool,
        }

    def lines(self) -> list[str]:
        if self.fit:
            verdict = "the task fit" + (f", with the net: {self.volumes_added} volume(s) added, +{self.grown_gib:g} GiB" if self.volumes_added else "")
        elif self.out_of_space:
            verdict = "the task did NOT fit: it ran out of space (No space left on device)" + (
                f"; without the grow agent ({self.no_net}) this is the sizing alone" if self.no_net else "")
        else:
            verdict = "the task fit, but the command failed (not for lack of space)"
        return [
            f"instance {self.instance_id}: {verdict}",
            f"  exit code     {self.exit_code}",
            f"  capacity      {self.capacity_gib:g} GiB usable at start",
            f"  peak          {self.peak_gib:g} GiB held on Docker's storage",
            f"  grown         +{self.grown_gib:g} GiB in {self.volumes_added} volume(s)" + (f" ({self.no_net})" if self.no_net else ""),
            f"  pool          {self.pool or 'none: Docker on the root volume'}",
        ]


def find_launch_template(ec2: Any, task: str):
    """The task's launch template at its default version (what its compute environment launches)."""
    from factory.aws import aws_errors
    from factory.local.instance.instances import LaunchTemplate
    from factory.register.names import TAG_MANAGED, tag_dict, tasks_from_tags

    with aws_errors(f"finding the launch template of task {task}"):
        found = None
        for page in ec2.get_paginator("describe_launch_templates").paginate(Filters=[{"Name": f"tag:{TAG_MANAGED}", "Values": ["true"]}]):
            for lt in page["LaunchTemplates"]:
                if task in tasks_from_tags(tag_dict(lt.get("Tags"))):
                    found = lt
        if found is None:
            return None
        # One template and one version asked for: one answer, no paging (MaxResults) needed.
        version = ec2.describe_launch_template_versions(LaunchTemplateId=found["LaunchTemplateId"], Versions=["$Default"])["LaunchTemplateVersions"][0]  # one answer, no MaxResults
    return LaunchTemplate(id=found["LaunchTemplateId"], name=found["LaunchTemplateName"], version=int(version["VersionNumber"]),
                          data=version["LaunchTemplateData"])


def check_image(image: str, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", image], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        why = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "not found"
        raise UsageError(f"--image {image}: not in your Docker engine ({why}); build or pull it first (`docker image ls` lists what is there)")


def check_paths(paths: Sequence[Path], option: str) -> None:
    for p in paths:
        if not p.exists():
            raise UsageError(f"{option} {p}: no such file or folder")


def rehearse(local: Any, spec: Any, image: str, command: Sequence[str], *, inputs: Sequence[Path] = (), index: Sequence[Path] = (),
             grow: bool = True, attach_delay: float | None = None, out: Any = None, say: Any = None,
             pool: str = "lvm-xfs", instance_type: str | None = None) -> RunReport:
    """Launch, run, sample, terminate. `out` gets the command's output; `say` progress lines.
    `pool`: the grow pool the instance runs, "lvm-xfs" as on AWS or "btrfs" (factory.local.instance.instance_pool).
    `instance_type`: the type to launch (default the spec's first); its instance store, if any, comes with it."""
    from factory.local.builder.ami_trees import AmiTrees
    from factory.local.cloud import INSTANCE_ROLE
    from factory.local.instance import agent_journal
    from factory.local.instance.instances import AGENT_UNIT, DEFAULT_ATTACH_DELAY, LocalInstance, RootVolume

    out = out or sys.stdout
    say = say or (lambda text: None)
    if not command:
        raise UsageError("name the command to run after `--`, e.g. `factory local run TASK --image IMG -- sh -c 'echo hi'`")
    family = spec.image.family_info
    if family.storage_driver != "overlay2":
        raise UsageError(f"task {spec.name}: image.base {spec.image.base} keeps Docker's storage in a devicemapper thin pool, "
                         "which a local instance cannot reproduce (this machine has no device-mapper); `factory local run` "
                         "rehearses the overlay2 bases (ecs-al2023, ecs-al2)")
    has_net = getattr(spec.storage, "grow", None) is not None
    on_store = bool(getattr(spec.storage, "on_instance_store", False))
    check_paths(inputs, "--input")
    check_paths(index, "--index")
    check_image(image)
    bake_it = f"`factory bake {spec.name} --cloud local`"
    # Batch launches the instances, not factory: these calls are the local cloud's own.
    ec2 = local.setup_clients(spec.region).ec2()
    trees = AmiTrees(local.state_dir)
    template = find_launch_template(ec2, spec.name)
    if template is None:
        raise NotBakedError(f"task {spec.name} is not baked and registered on the local cloud: run {bake_it} first")
    tree = trees.tree(template.image_id)
    if tree is None:
        raise NotBakedError(f"task {spec.name}'s launch template {template.name} uses {template.image_id}, which was not baked "
                            f"on this local cloud: run {bake_it} first")
    instance_type = instance_type or spec.batch.instance_types[0]
    # Without storage.grow Docker's data root is on the root volume, shared with the OS and
    # what the bake added (factory.local.instance.instances.RootVolume); with
    # storage.instance_store on the NVMe store the image's boot unit mounts there.
    root_volume = None if has_net or on_store else RootVolume(device=family.root_device, shared_bytes=_root_share_bytes(tree))
    listed = instance_type in spec.batch.instance_types or instance_type.split(".")[0] in spec.batch.instance_types
    say(f"launching {instance_type} from {template.name} version {template.version} ({template.image_id})"
        + ("" if listed else f"; {instance_type} is not in the spec's batch.instance_types, so Batch would never launch it"))
    instance = None
    containers: list[str] = []
    restore = _terminate_on_signals()
    try:
        instance = LocalInstance.launch(ec2, local.endpoint, template, instance_type, local.state_dir / "instances", tree, grow=grow,
                                        attach_delay=DEFAULT_ATTACH_DELAY if attach_delay is None else attach_delay,
                                        role=INSTANCE_ROLE, root_volume=root_volume, pool=pool)
        store = instance.instance_store
        if store is not None:
            gib = store["filesystem_bytes"] / GIB
            how = f"RAID0 of {len(store['disks'])} NVMe disks ({store['device']})" if store["raid"] else f"one NVMe disk ({store['device']})"
            say(f"{instance.instance_id} booted: Docker on the instance store, {how}, XFS of {gib:.1f} GiB")
        elif not has_net:
            say(f"{instance.instance_id} booted: Docker on the root volume {family.root_device} (no storage.grow: no pool, no grow agent)")
        else:
            say(f"{instance.instance_id} booted: pool ({instance.pool}), Docker" + (", grow agent" if grow else " (no grow agent: --no-grow)"))
        report = _run(instance, spec, image, command, inputs, index, out, say, containers)
        report.pool = instance.pool if has_net else ("instance-store" if store is not None else None)
        report.no_net = ("no storage.grow: the instance store" if store is not None else "no storage.grow") if not has_net else ("" if grow else "--no-grow")
        if not report.no_net:
            for line in agent_journal.summary(instance.journal(AGENT_UNIT)):
                say(line)
        return report
    finally:
        try:
            if instance is not None:
                _stop_containers(instance, containers)
                say(f"terminating {instance.instance_id}")
                problems = instance.terminate()
                if problems:
                    print("factory: the local instance did not end cleanly: " + "; ".join(problems), file=sys.stderr)
        finally:
            restore()


def _run(instance: Any, spec: Any, image: str, command: Sequence[str], inputs: Sequence[Path], index: Sequence[Path],
         out: Any, say: Any, containers: list[str]) -> RunReport:
    from factory.disk_sampler import Sampler

    env = dict(os.environ, DOCKER_HOST=instance.docker_host)
    env.pop("DOCKER_CONTEXT", None)
    data_root = instance.inside(DOCKER_DATA_ROOT)

    least_free = [float("inf")]

    # What Docker holds: the bytes allocated to the files under its data root, on its own
    # filesystem. Not the filesystem's used blocks: those count its own log and metadata
    # (XFS's, about 0.25 GiB of a 30 GiB root), the OS's share beside Docker on the root
    # volume, and on btrfs lag behind and jump with chunk allocation.
    def used() -> int:
        st = os.statvfs(data_root)
        least_free[0] = min(least_free[0], st.f_bavail * st.f_frsize)
        return held_bytes(data_root)

    # Usable at start: what Docker holds already and what it may still write.
    st = os.statvfs(data_root)
    capacity = held_bytes(data_root) + st.f_bavail * st.f_frsize
    say(f"loading {image} into the instance's Docker (docker save | docker load)")
    _load_image(image, env)
    prefix = spec.awscli.prefix
    mounts = ["-v", f"{prefix}:{prefix}:ro"] if os.path.isdir(instance.inside(prefix)) else []
    created = subprocess.run(["docker", "create", "--network", "none", "-w", TASK_WORKDIR, *mounts, image, *command],
                             capture_output=True, text=True, env=env)
    if created.returncode != 0:
        raise FactoryError(f"could not create the task's container on the instance: {created.stderr.strip()}")
    cid = created.stdout.strip()
    containers.append(cid)
    if inputs or index:
        say(f"staging {len(inputs)} input(s) and {len(index)} index path(s) into {TASK_WORKDIR}")
        _stage(cid, [*inputs, *index], env)
    tail: deque[str] = deque(maxlen=400)
    with Sampler(used) as sampler:
        proc = subprocess.Popen(["docker", "start", "--attach", cid], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                text=True, errors="replace")
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line)
            out.write(line)
            out.flush()
        proc.wait()
        sampler.sample()  # what the task left at its end counts too
    waited = subprocess.run(["docker", "inspect", "--format", "{{.State.ExitCode}}", cid], capture_output=True, text=True, env=env)
    exit_code = int(waited.stdout.strip()) if waited.returncode == 0 and waited.stdout.strip().lstrip("-").isdigit() else proc.returncode
    volumes = _added_volumes(instance)
    # Out of space: the command failed and said so, or failed while Docker's storage was
    # (nearly) full, which the sampler saw (a tool may write its error where no one reads it).
    full = least_free[0] <= max(FULL_BYTES, 0.01 * capacity)
    out_of_space = exit_code != 0 and (full or any(NO_SPACE in line for line in tail))
    return RunReport(
        exit_code=exit_code,
        fit=not out_of_space,
        capacity_gib=round(capacity / GIB, 2),
        peak_gib=round(sampler.peak_bytes / GIB, 2),
        grown_gib=float(sum(v["Size"] for v in volumes)),
        volumes_added=len(volumes),
        instance_id=instance.instance_id,
        out_of_space=out_of_space,
        volumes=volumes,
    )


def held_bytes(top: str) -> int:
    """Bytes allocated to everything under `top` on `top`'s own filesystem (a container's
    overlay mounted inside is not walked twice), a file at most its size (in 4 KiB blocks),
    hard links once; entries that vanish while the walk runs are skipped."""
    import stat

    try:
        dev = os.lstat(top).st_dev
    except FileNotFoundError:
        return 0
    total, seen, stack = 0, set(), [top]
    while stack:
        d = stack.pop()
        try:
            entries = os.scandir(d)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        with entries:
            for e in entries:
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if st.st_dev != dev:
                    continue
                if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                    if (st.st_ino) in seen:
                        continue
                    seen.add(st.st_ino)
                held = st.st_blocks * 512
                if stat.S_ISREG(st.st_mode):
                    # Not XFS's speculative preallocation past the end of a file being
                    # written (as much again as the file, freed at close, and given back
                    # before a write would fail for lack of space): not space the task needs.
                    held = min(held, -(-st.st_size // 4096) * 4096)
                total += held
                if stat.S_ISDIR(st.st_mode):
                    stack.append(e.path)
    return total


def _root_share_bytes(tree: Path) -> int:
    """What shares the root volume with Docker's data on an instance of this AMI: the base's
    own use (factory.sizing.BASE_ROOT_USED_GIB) and what the bake added (the AMI's tree)."""
    from factory.sizing import BASE_ROOT_USED_GIB

    added = subprocess.run(["du", "-s", "--block-size=1", str(tree)], capture_output=True, text=True)
    tree_bytes = int(added.stdout.split()[0]) if added.returncode == 0 and added.stdout.strip() else 0
    return int(BASE_ROOT_USED_GIB * GIB) + tree_bytes


def _stop_containers(instance: Any, containers: Sequence[str]) -> None:
    """An interrupted run stops its job first, as Batch's TerminateJob does, so Docker's own
    shutdown does not wait out the container's stop timeout."""
    if not containers:
        return
    env = dict(os.environ, DOCKER_HOST=instance.docker_host)
    env.pop("DOCKER_CONTEXT", None)
    try:
        subprocess.run(["docker", "rm", "--force", *containers], capture_output=True, env=env, timeout=60)
    except subprocess.TimeoutExpired:
        pass  # the instance's termination ends it anyway


def _load_image(image: str, env: dict[str, str]) -> None:
    user_env = {k: v for k, v in os.environ.items()}
    save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=user_env)
    load = subprocess.run(["docker", "load", "--quiet"], stdin=save.stdout, capture_output=True, text=True, env=env)
    assert save.stdout is not None and save.stderr is not None
    save.stdout.close()
    save_err = save.stderr.read().decode(errors="replace")
    save.wait()
    if save.returncode != 0 or load.returncode != 0:
        raise FactoryError(f"could not load {image} into the instance's Docker: {save_err.strip()} {load.stderr.strip()}".strip())


def _stage(cid: str, paths: Sequence[Path], env: dict[str, str]) -> None:
    """Copy files and folders into the container's working directory (a tar stream into `docker cp -`)."""
    proc = subprocess.Popen(["docker", "cp", "-", f"{cid}:/"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    assert proc.stdin is not None
    try:
        with tarfile.open(fileobj=proc.stdin, mode="w|") as tar:
            parts = TASK_WORKDIR.strip("/").split("/")
            for i in range(len(parts)):
                info = tarfile.TarInfo("/".join(parts[: i + 1]))
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
                tar.addfile(info)
            for p in paths:
                tar.add(str(p), arcname=f"{TASK_WORKDIR.strip('/')}/{p.name}")
    except BrokenPipeError:
        pass  # docker cp failed: its message follows
    finally:
        proc.stdin.close()
    assert proc.stderr is not None
    err = proc.stderr.read()
    proc.wait()
    if proc.returncode != 0:
        raise FactoryError(f"could not stage the inputs into {TASK_WORKDIR}: {err.decode(errors='replace').strip()}")


def _added_volumes(instance: Any) -> list[dict[str, Any]]:
    """The volumes the grow agent added to this instance (it tags each with the instance's id; paged)."""
    vols: list[dict[str, Any]] = []
    for page in instance.ec2.get_paginator("describe_volumes").paginate(
            Filters=[{"Name": f"tag:{INSTANCE_TAG}", "Values": [instance.instance_id]}]):
        vols += page["Volumes"]
    return vols


def _terminate_on_signals():
    """Ctrl-C and SIGTERM (a `kill`, a CI's timeout) end the run the same way: KeyboardInterrupt,
    so the instance is terminated. SIGINT is set too: a shell starts background commands
    with it ignored, and a run must never leave an instance behind."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
