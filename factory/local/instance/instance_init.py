"""PID 1 of a local instance (factory.local.instance.instances): its root, its /dev, its boot units.

Run by `unshare --mount --pid --fork` as `python -m factory.local.instance.instance_init CONFIG.json`,
so it is the first process of a new PID namespace and holds a private mount namespace. It:

1. mounts the instance's root: an overlay of this machine's `/` with the instance's own
   copy of the AMI's tree (what the bake made, kept by factory.local.builder.ami_trees) as its
   upper directory, as an instance's root volume is its own copy of the AMI's snapshot; then /proc, /sys, /tmp, /run and a /dev of its own (a tmpfs with the usual
   nodes, nothing of this machine's disks);
2. plays udev: every loop device the attach watcher gives the instance appears in its /dev,
   under the name the attachment asked for (`/dev/xvdb`, as amazon-ec2-utils' rules name
   it on Nitro) and in /dev/disk/by-id (the Nitro `nvme-Amazon_Elastic_Block_Store_vol...`
   link), and goes when it is detached;
3. plays systemd, which this machine does not run: the units the bake enabled
   (`/etc/systemd/system/multi-user.target.wants/*.service` in the AMI's tree) run in
   their order, those ordered before Docker first (the grow pool), then Docker (Debian's
   dockerd with the image's /etc/docker/daemon.json, on its data root: the pool's volume,
   else the root volume's stand-in, `docker_on_root_volume`), then the rest (the grow
   agent), `Restart=always` honoured; each unit's output goes to its journal file;
4. on SIGTERM (the instance is terminated): stops the units and Docker, unmounts what it
   mounted and exits; the kernel ends whatever is left with the PID namespace.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import stat
import subprocess
import sys
import time

ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty", "btrfs-control", "loop-control")
DOCKER_SERVICE = "docker.service"
WANTS = "etc/systemd/system/multi-user.target.wants"


def log(msg: str) -> None:
    print(f"[instance init] {msg}", flush=True)


class Unit:
    def __init__(self, name: str, text: str):
        self.name = name
        self.options: dict[str, list[str]] = {}
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith(("#", ";", "[")) or "=" not in line:
                continue
            key, value = line.split("=", 1)
            self.options.setdefault(key.strip(), []).append(value.strip())

    def get(self, key: str, default: str = "") -> str:
        return (self.options.get(key) or [default])[-1]

    @property
    def before_docker(self) -> bool:
        return any(DOCKER_SERVICE in v.split() for v in self.options.get("Before", []))

    @property
    def oneshot(self) -> bool:
        return self.get("Type", "simple") == "oneshot"

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for value in self.options.get("Environment", []):
            for item in shlex.split(value):
                k, _, v = item.partition("=")
                out[k] = v
        return out

    def argv(self) -> list[str]:
        return shlex.split(self.get("ExecStart").lstrip("-@+!"))


class Init:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.root = cfg["root"]
        self.stopping = False
        self.exited: dict[int, int] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.units: list[Unit] = []
        self.restart_at: dict[str, float] = {}
        self.dev_made: set[str] = set()
        self.root_volume: dict | None = None

    # -- processes --------------------------------------------------------------------

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.exited[pid] = os.waitstatus_to_exitcode(status)

    def sh(self, *argv: str, check: bool = True, timeout: float = 120) -> int:
        proc = subprocess.Popen(list(argv), env=ENV, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.reap()
            self.sync_devices()
            if proc.pid in self.exited:
                rc = self.exited.pop(proc.pid)
                if check and rc != 0:
                    raise SystemExit(f"{' '.join(argv)} failed with status {rc}")
                return rc
            time.sleep(0.05)
        proc.kill()
        raise SystemExit(f"{' '.join(argv)} did not finish within {timeout:g}s")

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        out = open(os.path.join(self.cfg["journal_dir"], f"{name}.log"), "ab")
        try:
            proc = subprocess.Popen(["chroot", self.root, *argv], env=ENV | self.cfg.get("unit_env", {}) | env,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        finally:
            out.close()
        self.procs[name] = proc
        return proc

    # -- the root and its /dev --------------------------------------------------------

    def mount_root(self) -> None:
        r = self.root
        self.sh("mount", "--make-rprivate", "/")
        self.sh("mount", "-t", "overlay", "overlay", "-o",
                f"lowerdir=/,upperdir={self.cfg['upper']},workdir={self.cfg['work']}", r)
        self.sh("mount", "-t", "proc", "proc", f"{r}/proc")
        self.sh("mount", "--rbind", "/sys", f"{r}/sys")
        self.sh("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", f"{r}/run")
        self.sh("mount", "-t", "tmpfs", "-o", "mode=1777", "tmpfs", f"{r}/tmp")
        self.sh("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", f"{r}/dev")
        for name in DEV_NODES:
            try:
                st = os.stat(f"/dev/{name}")
            except FileNotFoundError:
                continue
            os.mknod(f"{r}/dev/{name}", stat.S_IMODE(st.st_mode) | stat.S_IFMT(st.st_mode), st.st_rdev)
        for d in ("pts", "shm", "disk/by-id"):
            os.makedirs(f"{r}/dev/{d}", exist_ok=True)
        self.sh("mount", "-t", "devpts", "-o", "newinstance,ptmxmode=0666,mode=620", "devpts", f"{r}/dev/pts")
        self.sh("mount", "-t", "tmpfs", "-o", "mode=1777", "tmpfs", f"{r}/dev/shm")
        for link, target in (("ptmx", "pts/ptmx"), ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
            os.symlink(target, f"{r}/dev/{link}")
        self.sh("mount", "--bind", self.cfg["by_id_dir"], f"{r}/dev/disk/by-id")
        os.makedirs(f"{r}/run/factory-engine", exist_ok=True)
        self.sh("mount", "--bind", self.cfg["engine_dir"], f"{r}/run/factory-engine")
        if self.cfg.get("lvm_double"):  # factory's LVM double keeps its state here (factory.local.instance.instance_pool)
            os.makedirs(f"{r}/run/factory-lvm-double", exist_ok=True)
            self.sh("mount", "--bind", self.cfg["lvm_double"], f"{r}/run/factory-lvm-double")
        if self.cfg.get("md_double"):  # factory's md double keeps its state here (factory.local.instance.store_disks)
            os.makedirs(f"{r}/run/factory-md-double", exist_ok=True)
            self.sh("mount", "--bind", self.cfg["md_double"], f"{r}/run/factory-md-double")
        log("root mounted")

    def sync_devices(self) -> None:
        """udev: a node for each loop device given to the instance, and its /dev/xvdX name."""
        names_dir, r = self.cfg["names_dir"], self.root
        wanted: dict[str, str] = {}  # name in /dev -> /dev/loopN
        for d in (names_dir, self.cfg["by_id_dir"]):
            try:
                entries = os.listdir(d)
            except FileNotFoundError:
                continue
            for entry in entries:
                try:
                    target = os.readlink(os.path.join(d, entry))
                except OSError:
                    continue
                wanted[os.path.basename(target)] = target
                if d == names_dir:
                    wanted[entry] = target
        for name, target in wanted.items():
            path = f"{r}/dev/{name}"
            if os.path.lexists(path):
                continue
            try:
                if name == os.path.basename(target):
                    st = os.stat(target)
                    os.mknod(path, 0o660 | stat.S_IFBLK, st.st_rdev)
                else:
                    os.symlink(target, path)
                self.dev_made.add(name)
            except OSError:
                continue  # the device went again; the next pass sees it
        for name in list(self.dev_made - set(wanted)):
            try:
                os.unlink(f"{r}/dev/{name}")
            except FileNotFoundError:
                pass
            self.dev_made.discard(name)

    # -- boot -------------------------------------------------------------------------

    def load_units(self) -> None:
        wants = os.path.join(self.cfg["lower"], WANTS)
        names = sorted(os.listdir(wants)) if os.path.isdir(wants) else []
        for name in names:
            if not name.endswith(".service") or name in self.cfg.get("masked", []):
                continue
            path = os.path.join(self.root, "etc/systemd/system", name)
            with open(path) as f:
                self.units.append(Unit(name, f.read()))
        self.units.sort(key=lambda u: (not u.before_docker, u.name))

    def start_unit(self, unit: Unit) -> None:
        log(f"starting {unit.name}")
        proc = self.spawn(unit.name, unit.argv(), unit.env())
        if unit.oneshot:
            deadline = time.monotonic() + 300
            while proc.pid not in self.exited:
                self.reap()
                self.sync_devices()
                if time.monotonic() > deadline or self.stopping:
                    raise SystemExit(f"{unit.name} did not finish")
                time.sleep(0.05)
            rc = self.exited.pop(proc.pid)
            if rc != 0:
                raise SystemExit(f"{unit.name} failed with status {rc}; see its journal {self.cfg['journal_dir']}/{unit.name}.log")

    def docker_on_root_volume(self) -> dict | None:
        """When no boot unit mounted a volume at Docker's data root (a task without
        `storage.grow`), put it on the root volume's stand-in (instances.RootVolume): the root
        mapping's loop device made XFS, as AL2023's root is, its OS share taken first."""
        target = f"{self.root}/var/lib/docker"
        spec = self.cfg.get("root_volume")
        if not spec or os.path.ismount(target):
            return None
        link = os.path.join(self.cfg["names_dir"], spec["name"])
        deadline = time.monotonic() + 120
        while not os.path.lexists(link):
            if time.monotonic() > deadline or self.stopping:
                raise SystemExit(f"the root volume /dev/{spec['name']} was not attached")
            self.reap()
            self.sync_devices()
            time.sleep(0.1)
        device = os.readlink(link)
        held = f"{self.root}/run/factory-root-volume"
        os.makedirs(held, exist_ok=True)
        self.sh("mkfs.xfs", "-q", "-f", device)
        self.sh("mount", device, held)
        self.sh("fallocate", "-l", str(int(spec["shared_bytes"])), f"{held}/os-agent-and-image")
        os.makedirs(f"{held}/var/lib/docker", exist_ok=True)
        os.makedirs(target, exist_ok=True)
        self.sh("mount", "--bind", f"{held}/var/lib/docker", target)
        log(f"Docker's data root on the root volume /dev/{spec['name']} ({int(spec['shared_bytes'])} bytes taken by the OS and the image)")
        return spec

    def start_docker(self) -> None:
        log("starting docker")
        argv = ["/usr/sbin/dockerd", "--iptables=false", "--bridge=none", f"--cgroup-parent={self.cfg['cgroup_parent']}",
                "-H", "unix:///var/run/docker.sock", "-H", "unix:///run/factory-engine/docker.sock",
                "--pidfile", "/run/docker.pid", "--log-level=warn"]
        self.spawn(DOCKER_SERVICE, argv, {})
        deadline = time.monotonic() + 120
        while True:
            if self.sh("chroot", self.root, "docker", "-H", "unix:///var/run/docker.sock", "info",
                       "--format", "{{.Driver}}", check=False, timeout=30) == 0:
                return
            if self.procs[DOCKER_SERVICE].pid in self.exited or time.monotonic() > deadline:
                raise SystemExit(f"Docker did not start; see {self.cfg['journal_dir']}/{DOCKER_SERVICE}.log")
            time.sleep(0.2)

    def boot(self) -> None:
        self.mount_root()
        self.load_units()
        for unit in [u for u in self.units if u.before_docker]:
            self.start_unit(unit)
        self.root_volume = self.docker_on_root_volume()
        self.start_docker()
        for unit in [u for u in self.units if not u.before_docker]:
            self.start_unit(unit)

    def watch(self) -> None:
        while not self.stopping:
            self.reap()
            self.sync_devices()
            for unit in self.units:
                proc = self.procs.get(unit.name)
                if unit.oneshot or proc is None or proc.pid not in self.exited:
                    continue
                rc = self.exited.pop(proc.pid)
                log(f"{unit.name} exited ({rc})")
                if unit.get("Restart", "no") in ("always", "on-failure") and not (unit.get("Restart") == "on-failure" and rc == 0):
                    self.restart_at[unit.name] = time.monotonic() + float(unit.get("RestartSec", "0.1").rstrip("s") or 0.1)
                else:
                    self.procs.pop(unit.name)
            for name, when in list(self.restart_at.items()):
                if time.monotonic() >= when:
                    del self.restart_at[name]
                    self.start_unit(next(u for u in self.units if u.name == name))
            time.sleep(0.1)

    def shutdown(self) -> None:
        log("stopping")
        order = [u.name for u in reversed(self.units) if not u.before_docker] + [DOCKER_SERVICE]
        for name in order:
            proc = self.procs.get(name)
            if proc is None or proc.pid in self.exited:
                continue
            try:
                proc.terminate()
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 20
            while proc.pid not in self.exited and time.monotonic() < deadline:
                self.reap()
                time.sleep(0.05)
            if proc.pid not in self.exited:
                proc.kill()
        mounts = [line.split()[1] for line in open("/proc/self/mounts").read().splitlines()]
        for target in sorted((m for m in mounts if m == self.root or m.startswith(self.root + "/")), key=len, reverse=True):
            if subprocess.run(["umount", target], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", target], capture_output=True)
        log("stopped")


def main() -> None:
    cfg = json.load(open(sys.argv[1]))
    init = Init(cfg)

    def on_term(signum, frame):
        init.stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        init.boot()
    except SystemExit as exc:
        with open(cfg["failed"], "w") as f:
            f.write(str(exc.code))
        init.shutdown()
        sys.exit(3)
    with open(cfg["ready"], "w") as f:
        json.dump({"dockerd_pid": init.procs[DOCKER_SERVICE].pid, "units": [u.name for u in init.units],
                   "root_volume": init.root_volume}, f)
    log("ready")
    init.watch()
    init.shutdown()


if __name__ == "__main__":
    main()
