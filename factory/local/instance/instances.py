"""An instance of the local cloud, launched from a launch template the way AWS Batch does.

EC2's part, done here on this machine:

- RunInstances in moto with the launch template's id and version (moto applies the
  template's AMI and block device mappings; its instance and volume tags are passed too,
  since moto leaves them out and EC2 applies them);
- each EBS volume attached to the instance (those of the mappings at launch, and any the
  grow agent attaches later) becomes a sparse file of the volume's size on a loop device,
  after an attach delay (factory.local.instance.volumes.AttachWatcher);
- an IMDSv2 endpoint answering the instance's id, type and zone and its instance role's
  credentials (factory.local.instance.metadata);
- the instance itself: the AMI's own file tree (factory.local.builder.ami_trees) as its root, in
  mount and PID namespaces of its own, its boot units run by a small init
  (factory.local.instance.instance_init): the grow pool, Docker on its data root, the grow agent;
- TerminateInstances: the init stops Docker and the units, the namespaces end, moto deletes
  the volumes whose DeleteOnTermination says so, the loop devices and their files go.

    inst = LocalInstance.launch(cloud, template, instance_type="c6i.large", workdir=Path(...), tree=...)
    inst.docker_host            # unix://.../docker.sock: the instance's Docker engine
    inst.inside("/var/lib/docker")   # that path in the instance, seen from here
    inst.terminate()
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factory.errors import LocalCloudError
from factory.local.docker_engine import SOCKET_LINKS, UNIX_PATH_MAX  # an engine socket too deep is reached through a short link
from factory.local.procs import child_of, pid_alive, start_init

AGENT_UNIT = "factory-grow-agent.service"
STORE_UNIT = "factory-instance-store.service"
GROW_CONFIG = "/etc/factory/grow.json"
DEFAULT_ATTACH_DELAY = 2.0  # seconds: EBS attachments usually complete within a few seconds on AWS
BOOT_TIMEOUT = 300.0


@dataclass
class LaunchTemplate:
    """One version of a launch template, as DescribeLaunchTemplateVersions gives it."""

    id: str
    name: str
    version: int
    data: dict[str, Any]

    @property
    def image_id(self) -> str:
        return self.data["ImageId"]


@dataclass(frozen=True)
class RootVolume:
    """Docker's data root on the root volume, as the ECS-optimized overlay2 AMIs have it when
    no volume of its own is mounted there (a task without `storage.grow`).

    The instance's root is an overlay, where overlay2 cannot sit and whose size is this
    machine's; so the root volume's loop device (`device`, e.g. /dev/xvda, of the mapping's
    size) gets an XFS filesystem, as AL2023's root has, with `shared_bytes` taken first (the
    OS, the ECS agent and what the bake added, which share that volume on AWS), and holds
    Docker's data root."""

    device: str
    shared_bytes: int


@dataclass
class LocalInstance:
    instance_id: str
    zone: str
    instance_type: str
    image_id: str
    workdir: Path
    ec2: Any
    watcher: Any
    imds: Any
    proc: subprocess.Popen | None = None
    init_pid: int = 0
    launch_volumes: list[str] = field(default_factory=list)
    terminated: bool = False
    root_volume: RootVolume | None = None  # set when Docker's data root went on the root volume (see RootVolume)
    lvm_double: Path | None = None  # the LVM double's state folder, where it stands in for lvm2 (instance_pool)
    store: Any = None  # the instance type's NVMe instance store as loop devices (store_disks.StoreDisks), None without one

    # -- where things are ---------------------------------------------------------------

    @property
    def root(self) -> Path:
        """Where the init mounts the instance's root (inside its own mount namespace)."""
        return self.workdir / "root"

    @property
    def engine_socket(self) -> Path:
        """The instance's Docker socket, bind-mounted out to here."""
        return self.workdir / "engine" / "docker.sock"

    @property
    def socket_link(self) -> Path | None:
        """A short link to `engine_socket` when its path is too long for a unix socket
        address (a state folder deep in a project or a test's tmp tree), else None."""
        return SOCKET_LINKS / f"{self.instance_id}.sock" if len(str(self.engine_socket)) > UNIX_PATH_MAX else None

    @property
    def docker_host(self) -> str:
        """DOCKER_HOST for the instance's engine."""
        return f"unix://{self.socket_link or self.engine_socket}"

    @property
    def journal_dir(self) -> Path:
        return self.workdir / "journal"

    @property
    def cgroup_parent(self) -> str:
        return f"/factory-instance-{self.instance_id}"

    def inside(self, path: str) -> str:
        """`path` in the instance's root, seen from this process (through the init's /proc root)."""
        return f"/proc/{self.init_pid}/root{self.root}/{path.lstrip('/')}"

    @property
    def instance_store(self) -> dict | None:
        """What the instance-store boot unit made (its `instance-store-ready` line), None when it did not run."""
        from factory.local.instance.store_disks import ready_event

        return ready_event(self.journal(STORE_UNIT))

    @property
    def pool(self) -> str | None:
        """The grow pool's backend that ran ("lvm-xfs", "btrfs"), from its boot unit's journal; None without one."""
        from factory.local.instance.instance_pool import POOL_UNIT, backend_that_ran

        return backend_that_ran(self.journal(POOL_UNIT))

    def journal(self, unit: str) -> str:
        try:
            return (self.journal_dir / f"{unit}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- life cycle ---------------------------------------------------------------------

    @classmethod
    def launch(cls, ec2: Any, endpoint: str, template: LaunchTemplate, instance_type: str, workdir: Path, tree: Path, *,
               grow: bool = True, attach_delay: float = DEFAULT_ATTACH_DELAY, unit_env: dict[str, str] | None = None,
               role: str | None = None, root_volume: RootVolume | None = None, pool: str = "lvm-xfs") -> LocalInstance:
        """Launch and boot; a LocalCloudError (with the init's journal) when it does not come up.

        `root_volume`: where Docker's data root goes when no boot unit mounts a volume there.
        `pool`: the grow pool the image's `auto` finds, "lvm-xfs" as on AWS or "btrfs"
        (factory.local.instance.instance_pool)."""
        from factory.aws import aws_errors
        from factory.local.instance import instance_pool, store_disks
        from factory.local.instance.metadata import MetadataService
        from factory.local.instance.volumes import ROOT_DEVICES, AttachWatcher

        if os.geteuid() != 0:
            raise LocalCloudError("a local instance needs root (mount namespaces, loop devices, dockerd)")
        for tool in ("unshare", "losetup", "chroot", "/usr/sbin/dockerd"):
            if not shutil.which(tool):
                raise LocalCloudError(f"a local instance needs `{tool}`: make system-deps")
        workdir = Path(workdir).absolute()
        tags = [t for t in template.data.get("TagSpecifications") or [] if t.get("ResourceType") in ("instance", "volume")]
        with aws_errors(f"launching an instance from launch template {template.name} version {template.version}"):
            inst = ec2.run_instances(
                LaunchTemplate={"LaunchTemplateId": template.id, "Version": str(template.version)},
                InstanceType=instance_type, MinCount=1, MaxCount=1,
                **({"TagSpecifications": tags} if tags else {}),
            )["Instances"][0]
        iid, zone = inst["InstanceId"], inst["Placement"]["AvailabilityZone"]
        workdir = workdir / iid
        for sub in ("work", "root", "by-id", "names", "volumes", "engine", "journal"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)
        instance = cls(instance_id=iid, zone=zone, instance_type=instance_type, image_id=template.image_id, workdir=workdir,
                       ec2=ec2, watcher=None, imds=None,
                       launch_volumes=[m["Ebs"]["VolumeId"] for m in inst.get("BlockDeviceMappings", []) if "Ebs" in m])
        try:
            if instance.socket_link is not None:
                SOCKET_LINKS.mkdir(mode=0o700, parents=True, exist_ok=True)
                instance.socket_link.unlink(missing_ok=True)
                instance.socket_link.symlink_to(instance.engine_socket)
            _copy_tree(tree, workdir / "upper")
            instance.lvm_double = instance_pool.arrange(pool, workdir / "upper", workdir / "lvm-double")
            # The root volume is the overlay root; its loop device only when Docker's data goes on it.
            skip = tuple(d for d in ROOT_DEVICES if root_volume is None or d != root_volume.device)
            instance.watcher = AttachWatcher(ec2, iid, workdir / "by-id", workdir / "volumes", delay=attach_delay,
                                             name_dir=workdir / "names", skip_devices=skip).start()
            # EC2 gives a type with instance storage its blank NVMe disks at every start.
            instance.store = store_disks.attach(instance_type, iid, workdir / "by-id", workdir / "instance-store",
                                                workdir / "upper", workdir / "md-double")
            instance.imds = MetadataService.start(iid, zone, instance_type, role=role)
            instance._write_agent_config(tree, endpoint)
            # The SDKs find the instance role's credentials at IMDS (botocore honours this
            # variable in place of 169.254.169.254, which cannot be served here).
            instance._boot(tree, grow, {"AWS_EC2_METADATA_SERVICE_ENDPOINT": instance.imds.endpoint} | (unit_env or {}), root_volume)
        except BaseException:
            instance.terminate()
            raise
        return instance

    def _write_agent_config(self, tree: Path, endpoint: str) -> None:
        """The agent's settings as the image has them, pointed at the local IMDS and EC2
        endpoints (on AWS it finds both at their defaults). Written into the instance's own
        layer, as a first boot's changes would be."""
        baked = tree / GROW_CONFIG.lstrip("/")
        if not baked.is_file():
            return
        settings = json.loads(baked.read_text()) | {"imds_endpoint": self.imds.endpoint, "ec2_endpoint": endpoint}
        mine = self.workdir / "upper" / GROW_CONFIG.lstrip("/")
        mine.parent.mkdir(parents=True, exist_ok=True)
        mine.write_text(json.dumps(settings, indent=2) + "\n")

    def _boot(self, tree: Path, grow: bool, unit_env: dict[str, str], root_volume: RootVolume | None = None) -> None:
        cfg = {
            "root_volume": {"name": Path(root_volume.device).name, "shared_bytes": root_volume.shared_bytes} if root_volume else None,
            "root": str(self.root), "lower": str(tree), "upper": str(self.workdir / "upper"), "work": str(self.workdir / "work"),
            "by_id_dir": str(self.workdir / "by-id"), "names_dir": str(self.workdir / "names"),
            "engine_dir": str(self.workdir / "engine"), "journal_dir": str(self.journal_dir),
            "ready": str(self.workdir / "ready"), "failed": str(self.workdir / "failed"),
            "lvm_double": str(self.lvm_double) if self.lvm_double else None,
            "md_double": str(self.store.md_double) if self.store is not None and self.store.md_double else None,
            "cgroup_parent": self.cgroup_parent, "masked": [] if grow else [AGENT_UNIT], "unit_env": unit_env,
        }
        (self.workdir / "init.json").write_text(json.dumps(cfg, indent=2))
        self.proc = start_init(
            [sys.executable, "-m", "factory.local.instance.instance_init", str(self.workdir / "init.json")],
            self.journal_dir / "init.log", env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[3])),
        )
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            if not self.init_pid:
                self.init_pid = child_of(self.proc.pid) or 0
            if (self.workdir / "ready").exists():
                ready = json.loads((self.workdir / "ready").read_text() or "{}")
                if ready.get("root_volume"):
                    self.root_volume = RootVolume(device=f"/dev/{ready['root_volume']['name']}",
                                                  shared_bytes=int(ready["root_volume"]["shared_bytes"]))
                return
            failed = self.workdir / "failed"
            if failed.exists() or self.proc.poll() is not None:
                why = failed.read_text() if failed.exists() else f"its init exited ({self.proc.returncode})"
                raise LocalCloudError(f"local instance {self.instance_id} did not boot: {why}\n{self._tail()}")
            time.sleep(0.1)
        raise LocalCloudError(f"local instance {self.instance_id} did not boot within {BOOT_TIMEOUT:g}s\n{self._tail()}")

    def _tail(self, lines: int = 30) -> str:
        out = []
        for f in sorted(self.journal_dir.glob("*.log")):
            text = f.read_text(errors="replace").splitlines()[-lines:]
            if text:
                out.append(f"--- {f.name}\n" + "\n".join(text))
        return "\n".join(out)

    def terminate(self, timeout: float = 60.0) -> list[str]:
        """End the instance as EC2 does; returns what could not be cleaned (empty when all went)."""
        from botocore.exceptions import ClientError

        from factory.local.builder.buildhost import _remove_cgroups

        problems: list[str] = []
        if self.terminated:
            return problems
        self.terminated = True
        if self.init_pid and pid_alive(self.init_pid):
            try:
                os.kill(self.init_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while self.proc is not None and self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in (self.init_pid, self.proc.pid if self.proc else 0):
            if pid and pid_alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)  # the init's death ends its whole PID namespace
                except ProcessLookupError:
                    pass
        if self.proc is not None:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                problems.append(f"the instance's namespace holder {self.proc.pid} did not exit")
        _remove_cgroups(self.cgroup_parent)
        from factory.local.instance.instance_pool import release

        problems += release(self.lvm_double)  # the instance's mounts went with its namespace
        if self.store is not None:
            problems += self.store.release()
        try:
            self.ec2.terminate_instances(InstanceIds=[self.instance_id])
        except ClientError as exc:
            if "NotFound" not in str(exc):
                problems.append(f"TerminateInstances: {exc}")
        except Exception as exc:  # the local cloud may be gone already (Ctrl-C during down)
            problems.append(f"TerminateInstances: {exc}")
        if self.watcher is not None:
            self.watcher.stop()  # every loop device and backing file goes
        if self.imds is not None:
            self.imds.stop()
        leftovers = [m for m in _mounts() if str(self.workdir) in m]
        if leftovers:
            problems.append("mounts left: " + ", ".join(leftovers))
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self.socket_link is not None:
            self.socket_link.unlink(missing_ok=True)
        return problems


def _copy_tree(tree: Path, dest: Path) -> None:
    """The instance's root volume: its own copy of the AMI's tree (overlayfs refuses a lower
    layer inside another, so the tree is the copy's starting content, not a layer)."""
    done = subprocess.run(["cp", "-a", "--reflink=auto", str(tree), str(dest)], capture_output=True, text=True)
    if done.returncode != 0:
        raise LocalCloudError(f"could not make the instance's root from {tree}: {done.stderr.strip()}")


def _mounts() -> list[str]:
    return [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
