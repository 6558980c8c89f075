"""A throwaway build host on this machine: what Packer and Ansible bake into offline.

The host is an overlay of this machine's `/` (the lower layer, never written) with a
private upper directory, mounted in its own mount and PID namespaces (`unshare`). Inside
that root run:

- `sshd` on 127.0.0.1:<port> (root login by a generated RSA key, as Packer's temporary
  key pair on AWS is RSA; sftp enabled), so Packer's SSH communicator and Ansible reach it
  like an EC2 instance. Like Amazon Linux 2023's, it refuses `ssh-rsa` (SHA-1)
  signatures: an SSH client that can only sign RSA keys with SHA-1 fails here as it
  would time out on AWS. Its host key and the authorized key sit where an EC2 instance
  has them (`/etc/ssh/ssh_host_ed25519_key`, `~root/.ssh/authorized_keys`), so the
  bake's generalize role removes the very files this sshd uses;
- a real Docker engine (Debian's `docker.io`, overlay2) started and restarted through the
  root's `/etc/init.d/docker`, as `ansible.builtin.service` does on a host without
  systemd, with its data root on a real directory bind-mounted at `/var/lib/docker`
  (overlay2 cannot sit on overlayfs) and `--iptables=false --bridge=none`.

Every write the roles make lands in the upper directory (`BuildHost.path("/etc/...")`
shows it from outside) or in the Docker data directory, both under `state_dir`. This
machine's own `/etc`, `/home` and `/var/lib/docker` are never written. The namespace's
first process is a small init that reaps orphans and, on SIGTERM, stops Docker and
exits; the kernel then kills whatever is left in the PID namespace and drops every mount
with the mount namespace, so `stop()` leaves no process and no mount behind.

    host = BuildHost.start(Path(".factory/buildhost"))
    host.ssh_port, host.private_key_file, host.public_key
    host.run("docker", "info")          # a command inside the throwaway root
    host.path("/etc/docker/daemon.json")  # that file as written inside, seen from here
    host.stop(remove=True)

`BuildHost.load(state_dir)` finds a running host again from another process (the
local cloud's `factory local down`).

On AWS every bake gets a new builder instance of the base AMI. Here a host that a build
used is relaunched before the next build (`relaunch()`: the same port and keys, an empty
upper directory, so nothing an earlier bake wrote is on the next one, nor in the tree kept
for its AMI); a host no build has used yet (`is_fresh()`) is lent as it is. Every start
ends in `boot()`, a new EC2 instance's first boot: host key and authorized key in place,
a new machine id, Docker running, and the per-instance state an ECS-optimized instance
carries once booted (cloud-init's instance folder and log, the ECS agent's state and log,
a journal), for the bake's generalize role to remove again.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from factory.errors import LocalCloudError
from factory.local.procs import child_of, free_port, pid_alive, start_init

STATE_FILE = "buildhost.json"
FRESH_FILE = "fresh"  # present from (re)start until a build is lent the host
PYTHON_INTERPRETER = "/usr/bin/python3"  # Debian's python, seen inside the root
SSH_USER = "root"
CONFIG_DIR = "/etc/factory-buildhost"  # inside the root: sshd's config
HOST_KEY = "/etc/ssh/ssh_host_ed25519_key"  # where an EC2 instance's sshd keeps it
AUTHORIZED_KEYS = "/root/.ssh/authorized_keys"  # where cloud-init puts the key pair's key (SSH_USER's home)
# Amazon Linux 2023's DEFAULT crypto policy: no SHA-1 signatures, so no `ssh-rsa` (the
# RSA key type signed with SHA-1) for user keys, host keys or certificate authorities.
# Stated here rather than left to this OpenSSH's defaults.
NO_SHA1_SIGNATURES = (
    "PubkeyAcceptedAlgorithms -ssh-rsa,ssh-rsa-cert-v01@openssh.com\n"
    "HostKeyAlgorithms -ssh-rsa,ssh-rsa-cert-v01@openssh.com\n"
    "CASignatureAlgorithms -ssh-rsa\n"
)
DOCKER_OPTS = "--iptables=false --bridge=none"
CGROUP_ROOT = Path("/sys/fs/cgroup")

_REQUIRED_TOOLS = ("unshare", "nsenter", "mount", "chroot", "ssh-keygen", "/usr/sbin/sshd")


@dataclass
class BuildHost:
    """A running throwaway build host. Fields are what Packer and Ansible need to reach it."""

    state_dir: Path
    ssh_port: int
    pid: int  # the `unshare` process (this machine's PID namespace); its child is the init
    init_pid: int  # the namespace's init, as seen from this machine
    docker: bool
    ssh_host: str = "127.0.0.1"
    ssh_user: str = SSH_USER
    python_interpreter: str = PYTHON_INTERPRETER

    # -- where things are ------------------------------------------------------------

    @property
    def upper_dir(self) -> Path:
        """Every file created or changed inside the root, as overlayfs keeps it."""
        return self.state_dir / "upper"

    @property
    def docker_data_dir(self) -> Path:
        """The real directory mounted at /var/lib/docker inside the root."""
        return self.state_dir / "docker-data"

    @property
    def private_key_file(self) -> Path:
        return self.state_dir / "keys" / "id_rsa"

    @property
    def public_key(self) -> str:
        return (self.state_dir / "keys" / "id_rsa.pub").read_text().strip()

    @property
    def known_hosts_file(self) -> Path:
        return self.state_dir / "keys" / "known_hosts"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "buildhost.log"

    @property
    def cgroup_parent(self) -> str:
        """The cgroup the host's containers go under (removed again by `stop()`)."""
        return f"/factory-buildhost-{self.ssh_port}"

    @property
    def _merged(self) -> Path:
        return self.state_dir / "root"

    def path(self, inside: str) -> Path:
        """Where a file written inside the root at `inside` is kept on this machine.

        Files under /var/lib/docker live in the Docker data directory; everything else
        the root changed lives in the overlay's upper directory (a file the root never
        wrote is not there: it is still this machine's own, unchanged).
        """
        rel = Path(inside).relative_to("/")
        if rel.parts[:3] == ("var", "lib", "docker"):
            return self.docker_data_dir.joinpath(*rel.parts[3:])
        return self.upper_dir / rel

    # -- life cycle ------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        state_dir: Path,
        *,
        port: int | None = None,
        docker: bool = True,
        timeout: float = 60.0,
    ) -> BuildHost:
        """Make the throwaway root under `state_dir` and start sshd (and Docker) in it.

        A previous host's files in `state_dir` are removed first (stop it before).
        """
        if os.geteuid() != 0:
            raise LocalCloudError("the local build host needs root (mount namespaces, sshd, dockerd)")
        for tool in _REQUIRED_TOOLS:
            if not shutil.which(tool):
                raise LocalCloudError(f"the local build host needs `{tool}`: apt-get install util-linux openssh-server")
        if docker and not Path("/usr/sbin/dockerd").exists():
            raise LocalCloudError("the local build host needs Debian's Docker engine: apt-get install docker.io")
        state_dir = Path(state_dir).absolute()
        existing = cls.load(state_dir)
        if existing is not None and existing.alive():
            raise LocalCloudError(f"a build host already runs from {state_dir} (pid {existing.pid}); stop it first")
        _remove_tree(state_dir)
        for sub in ("upper", "work", "root", "docker-data", "keys"):
            (state_dir / sub).mkdir(parents=True, exist_ok=True)
        host = cls(state_dir=state_dir, ssh_port=port or free_port(), pid=0, init_pid=0, docker=docker)
        host._make_keys()
        return host._launch(timeout)

    def relaunch(self, timeout: float = 60.0) -> BuildHost:
        """The builder of the next bake: a new instance of the base, not the one the last
        bake changed. Stops this host and starts it again from an empty upper directory
        (every file earlier bakes wrote is gone, so the tree the next bake leaves for its
        AMI, factory.local.builder.ami_trees, holds that bake's work only), on the same SSH port with
        the same keys (the key pair imported into the local cloud stays valid).

        Docker's data directory stays: on AWS a builder pulls task images from a registry,
        and the local cloud has none, so the images on the build host's engine stand in for
        it (the bake's check removes the images it pulled, and Docker's data is never part of
        an AMI's tree). This object and any other of the same host, in this process or
        another, go on working: they read the new processes from the state file."""
        self.stop()
        for sub in ("upper", "work", "root"):
            _remove_tree(self.state_dir / sub)
            (self.state_dir / sub).mkdir(parents=True)
        self.pid = self.init_pid = 0
        return self._launch(timeout)

    def _refresh(self) -> None:
        """Take the processes the state file names: another object of this host, maybe in
        another process (a `factory bake`), may have relaunched it since this one was made."""
        f = self.state_dir / STATE_FILE
        try:
            saved = json.loads(f.read_text())
        except (OSError, ValueError):
            return
        if int(saved.get("ssh_port", 0)) == self.ssh_port:
            self.pid, self.init_pid = int(saved["pid"]), int(saved["init_pid"])

    def is_fresh(self) -> bool:
        """No build has been lent this host since it started (`take()` marks it used)."""
        return (self.state_dir / FRESH_FILE).exists()

    def take(self) -> None:
        """A build uses this host now: the next build gets a relaunched one."""
        (self.state_dir / FRESH_FILE).unlink(missing_ok=True)

    def _launch(self, timeout: float) -> BuildHost:
        """Start the namespaces, the init, sshd and Docker over the state directory's
        upper directory (empty, or as `start`/`relaunch` left it) and boot."""
        state_dir = self.state_dir
        self._write_root_config()
        init_py = state_dir / "init.py"
        init_py.write_text(_INIT_SCRIPT)
        config = {
            "merged": str(self._merged),
            "upper": str(self.upper_dir),
            "work": str(state_dir / "work"),
            "docker_data": str(self.docker_data_dir),
            "ready": str(state_dir / "ready"),
            "docker": self.docker,
            "sshd_config": f"{CONFIG_DIR}/sshd_config",
        }
        (state_dir / "init.json").write_text(json.dumps(config, indent=2))
        proc = start_init([sys.executable, str(init_py), str(state_dir / "init.json")], self.log_file)
        self.pid = proc.pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LocalCloudError(
                    f"the build host stopped while starting (status {proc.returncode}); see {self.log_file}:\n"
                    + _tail(self.log_file)
                )
            if not self.init_pid:
                self.init_pid = child_of(proc.pid) or 0
            if (state_dir / "ready").exists() and _port_open(self.ssh_port):
                self._save()
                self.boot()
                (state_dir / FRESH_FILE).touch()
                return self
            time.sleep(0.1)
        self.init_pid = self.init_pid or (child_of(proc.pid) or 0)
        self.stop()
        raise LocalCloudError(
            f"the build host did not come up within {timeout:.0f}s; see {self.log_file}:\n" + _tail(self.log_file)
        )

    @classmethod
    def load(cls, state_dir: Path) -> BuildHost | None:
        """The host started from `state_dir`, as saved by `start()`, or None."""
        f = Path(state_dir) / STATE_FILE
        if not f.exists():
            return None
        data = json.loads(f.read_text())
        data["state_dir"] = Path(data["state_dir"])
        return cls(**data)

    def alive(self) -> bool:
        self._refresh()
        return pid_alive(self.pid) and _port_open(self.ssh_port)

    def stop(self, remove: bool = False, timeout: float = 30.0) -> None:
        """Stop Docker and sshd, end the namespaces (no process, no mount left).

        With `remove`, also delete `state_dir` (the upper dir, Docker's data, the keys).
        """
        self._refresh()
        if self.init_pid and pid_alive(self.init_pid):
            try:
                os.kill(self.init_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        elif self.pid and pid_alive(self.pid):
            os.kill(self.pid, signal.SIGKILL)  # unshare --fork: its child dies with it? not always
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (pid_alive(self.pid) or pid_alive(self.init_pid)):
            _reap(self.pid)
            time.sleep(0.1)
        for pid in (self.init_pid, self.pid):
            if pid and pid_alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)  # SIGKILL of the init kills the whole namespace
                except ProcessLookupError:
                    pass
        for _ in range(50):
            _reap(self.pid)
            if not pid_alive(self.pid) and not pid_alive(self.init_pid):
                break
            time.sleep(0.1)
        _remove_cgroups(self.cgroup_parent)
        for name in (STATE_FILE, "ready", FRESH_FILE):
            (self.state_dir / name).unlink(missing_ok=True)
        if remove:
            _remove_tree(self.state_dir)

    # -- using it --------------------------------------------------------------------

    def run(self, *cmd: str, check: bool = True, timeout: float = 120.0, input: str | None = None) -> subprocess.CompletedProcess:
        """Run a command inside the throwaway root (as root, without SSH)."""
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
        self._refresh()
        full = ["nsenter", "--target", str(self.init_pid), "--mount", "--pid", "--", "chroot", str(self._merged), *cmd]
        proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout, env=env, input=input)
        if check and proc.returncode != 0:
            raise LocalCloudError(
                f"on the build host, `{' '.join(cmd)}` failed (status {proc.returncode}):\n{proc.stdout}{proc.stderr}"
            )
        return proc

    def boot(self) -> None:
        """Be a newly launched ECS-optimized instance again (see the module docstring).

        Called when the host starts and by the local cloud before each build
        (`Cloud.builder`). The host key stays the one `known_hosts_file` names;
        what a bake's generalize role must remove is put back, with a new machine id."""
        import uuid

        machine_id = uuid.uuid4().hex
        instance = "i-" + machine_id[:17]
        keys = self.state_dir / "keys"
        script = f"""set -e
umask 077
mkdir -p /etc/ssh /root/.ssh
cat > {HOST_KEY} <<'KEY'
{(keys / "ssh_host_ed25519_key").read_text().strip()}
KEY
cat > {HOST_KEY}.pub <<'KEY'
{(keys / "ssh_host_ed25519_key.pub").read_text().strip()}
KEY
cat > {AUTHORIZED_KEYS} <<'KEY'
{self.public_key}
KEY
umask 022
printf '%s\\n' {machine_id} > /etc/machine-id
chmod 0444 /etc/machine-id
mkdir -p /var/lib/cloud/instances/{instance}/sem /var/lib/cloud/data /var/log/ecs /var/lib/ecs/data \\
         /var/log/journal/{machine_id}
ln -sfn /var/lib/cloud/instances/{instance} /var/lib/cloud/instance
echo '{{"instance_id": "{instance}"}}' > /var/lib/cloud/data/instance-id.json
: > /var/lib/cloud/instances/{instance}/sem/config_ssh
echo 'cloud-init: instance {instance} booted' > /var/log/cloud-init.log
echo 'stand-in for the ECS agent state of {instance}' > /var/lib/ecs/data/agent.db
echo 'stand-in for the ECS agent log of {instance}' > /var/log/ecs/ecs-agent.log
echo 'stand-in for the journal of {machine_id}' > /var/log/journal/{machine_id}/system.journal
"""
        self.run("sh", "-c", script)
        if self.docker and self.run("docker", "info", check=False, timeout=30).returncode != 0:
            self.run("/etc/init.d/docker", "start", timeout=60)
            self._wait_for_docker()

    def _wait_for_docker(self, timeout: float = 60) -> None:
        """Until the root's Docker answers again after a start or restart."""
        deadline = time.monotonic() + timeout
        while self.run("docker", "info", check=False, timeout=30).returncode != 0:
            if time.monotonic() > deadline:
                raise LocalCloudError(f"Docker did not start again on the build host; see {self.log_file}")
            time.sleep(0.2)

    def trust_registry(self, name: str, address: str, ca_pem: str) -> None:
        """Reach a registry double by its real name (factory.local.aws.ecr_registry): `name`
        at `address` in the root's /etc/hosts, its CA in Docker's
        /etc/docker/certs.d/<name>/ca.crt. Docker is restarted: its resolver (Go's) keeps
        /etc/hosts for 5 s after each read, so a lookup soon after could still miss the
        name. Gone with the upper directory on `relaunch()`."""
        self.run("sh", "-c", 'printf "%s %s\\n" "$1" "$2" >> /etc/hosts && mkdir -p /etc/docker/certs.d/"$2" '
                             '&& cat > /etc/docker/certs.d/"$2"/ca.crt', "-", address, name, input=ca_pem)
        if self.docker:
            self.run("/etc/init.d/docker", "restart", timeout=60)
            self._wait_for_docker()

    def use_instance_profile(self, metadata_endpoint: str, aws_endpoint: str) -> None:
        """Give the builder an instance profile, as EC2 does: root's AWS config (the
        task's AWS CLI reads it) names the local metadata service
        (factory.local.instance.metadata, serving the role's credentials) and the local
        cloud's endpoint, and marks the CLI's calls `app/factory-builder` (the call log's
        `builder`). On AWS the CLI finds both by itself. Gone with the upper directory on
        `relaunch()`."""
        from factory.local.aws.aws_server import BUILDER_APP_ID

        self.run("sh", "-c", 'mkdir -p /root/.aws && printf "[default]\\nec2_metadata_service_endpoint = %s\\n'
                             'endpoint_url = %s\\nsdk_ua_app_id = %s\\n" "$1" "$2" "$3" > /root/.aws/config',
                 "-", metadata_endpoint, aws_endpoint, BUILDER_APP_ID)

    def ssh_args(self) -> list[str]:
        """An `ssh` command line reaching the host (append the remote command)."""
        return [
            "ssh", "-i", str(self.private_key_file), "-p", str(self.ssh_port),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts_file}", "-o", "StrictHostKeyChecking=yes",
            f"{self.ssh_user}@{self.ssh_host}",
        ]

    def inventory(self, name: str = "buildhost") -> str:
        """A one-host Ansible INI inventory line for this host."""
        return (
            f"{name} ansible_host={self.ssh_host} ansible_port={self.ssh_port} ansible_user={self.ssh_user} "
            f"ansible_ssh_private_key_file={self.private_key_file} "
            f"ansible_python_interpreter={self.python_interpreter} "
            f"ansible_ssh_common_args='-o UserKnownHostsFile={self.known_hosts_file} -o IdentitiesOnly=yes'\n"
        )

    # -- internals -------------------------------------------------------------------

    def _save(self) -> None:
        data = asdict(self)
        data["state_dir"] = str(self.state_dir)
        tmp = self.state_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.state_dir / STATE_FILE)

    def _make_keys(self) -> None:
        """The client key (the local cloud's key pair) and the host key, once per host."""
        keys = self.state_dir / "keys"
        _keygen(keys / "id_rsa", "factory-buildhost-client", "rsa")
        _keygen(keys / "ssh_host_ed25519_key", "factory-buildhost")

    def _write_root_config(self) -> None:
        """The root's own sshd/Docker settings and the keys in place, written into the upper dir only."""
        keys = self.state_dir / "keys"
        host_pub = (keys / "ssh_host_ed25519_key.pub").read_text().split()
        self.known_hosts_file.write_text(f"[127.0.0.1]:{self.ssh_port} {host_pub[0]} {host_pub[1]}\n")

        # sshd will not start without its host key: the first boot's keys are written
        # before the root is mounted (boot() puts them back after a bake removed them).
        host_key = self.path(HOST_KEY)
        host_key.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(keys / "ssh_host_ed25519_key", host_key)
        os.chmod(host_key, 0o600)
        # root's shell start-up files as a fresh instance of the family's AMI has them (its
        # skeleton's: the system-wide settings and nothing else), not this machine's root's:
        # bash reads ~/.bashrc for every command sshd runs (Packer's and each Ansible
        # task's), and a developer's .bashrc may start tools there (pyenv's init cost about
        # 0.1 s of CPU per command, a quarter of a bake's CPU).
        for name, text in ROOT_SHELL_FILES.items():
            rc = self.path(f"/root/{name}")
            rc.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            rc.write_text(text)
        authorized = self.path(AUTHORIZED_KEYS)
        authorized.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        authorized.write_text(self.public_key + "\n")
        os.chmod(authorized, 0o600)
        conf = self.path(CONFIG_DIR)
        conf.mkdir(parents=True, mode=0o755)
        (conf / "sshd_config").write_text(
            "# The throwaway build host's sshd (factory.local.builder.buildhost); loopback only.\n"
            f"Port {self.ssh_port}\n"
            "ListenAddress 127.0.0.1\n"
            f"HostKey {HOST_KEY}\n"
            "PermitRootLogin prohibit-password\n"
            "PubkeyAuthentication yes\n"
            "AuthorizedKeysFile .ssh/authorized_keys\n"
            + NO_SHA1_SIGNATURES +
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "StrictModes no\n"
            "UseDNS no\n"
            "PidFile /run/factory-sshd.pid\n"
            "MaxStartups 50\n"
            "MaxSessions 50\n"
            "AcceptEnv LANG LC_*\n"
            "Subsystem sftp /usr/lib/openssh/sftp-server\n"
        )
        default = self.path("/etc/default/docker")
        default.parent.mkdir(parents=True, exist_ok=True)
        default.write_text(
            "# The throwaway build host's Docker options (factory.local.builder.buildhost): no iptables\n"
            "# and no bridge, so it changes nothing in this machine's network.\n"
            f'DOCKER_OPTS="{DOCKER_OPTS} --cgroup-parent={self.cgroup_parent}"\n'
        )
        # Debian's init script raises the open-files and process limits, which this
        # machine's sandbox forbids (no CAP_SYS_RESOURCE); the root's copy falls back to
        # the hard limit instead. Everything else is Debian's script unchanged.
        script = Path("/etc/init.d/docker").read_text()
        for old, new in _INIT_D_PATCHES:
            script = script.replace(old, new)
        init_d = self.path("/etc/init.d/docker")
        init_d.parent.mkdir(parents=True, exist_ok=True)
        init_d.write_text(script)
        os.chmod(init_d, 0o755)


ROOT_SHELL_FILES = {
    ".bashrc": "# root's shell settings on the local build host (factory.local.builder.buildhost), as on a\n"
               "# fresh instance of the family's AMI: the system-wide ones only.\n"
               "[ -f /etc/bashrc ] && . /etc/bashrc\n",
    ".bash_profile": "# root's login settings on the local build host (factory.local.builder.buildhost).\n"
                     "[ -f ~/.bashrc ] && . ~/.bashrc\n",
    ".profile": "# root's login settings on the local build host (factory.local.builder.buildhost).\n",
}


_INIT_D_PATCHES = (
    ("ulimit -n 1048576", 'ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"'),
    ("ulimit -u unlimited", "ulimit -u unlimited 2>/dev/null || true"),
    ("ulimit -p unlimited", "ulimit -p unlimited 2>/dev/null || true"),
)


def _keygen(path: Path, comment: str, kind: str = "ed25519") -> None:
    bits = ["-b", "3072"] if kind == "rsa" else []
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, *bits, "-N", "", "-C", comment, "-f", str(path)],
        check=True, capture_output=True,
    )


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _reap(pid: int) -> None:
    if not pid:
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def _remove_cgroups(parent: str) -> None:
    """Remove the (empty, now that Docker is gone) cgroups made for the host's containers."""
    name = parent.strip("/")
    for top in CGROUP_ROOT.glob(f"*/{name}"):
        for d in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True) + [top]:
            if d.is_dir():
                try:
                    d.rmdir()
                except OSError:
                    pass


def _remove_tree(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


# The namespace's first process (PID 1 of the new PID namespace, this machine's Python,
# outside the chroot). Mounts the root, starts sshd and Docker inside it, reaps orphans,
# and on SIGTERM stops Docker and exits, which ends the namespaces.
_INIT_SCRIPT = r'''
import json, os, signal, subprocess, sys, time

cfg = json.load(open(sys.argv[1]))
M = cfg["merged"]
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}


def log(msg):
    print(f"[buildhost init] {msg}", flush=True)


exited = {}  # pid -> exit code of every process reaped (children and orphans)


def reap():
    """Reap every exited process (this is PID 1: orphans end up here)."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        exited[pid] = os.waitstatus_to_exitcode(status)


def run(argv, timeout=60):
    """Run argv to its end while reaping orphans; return its exit code."""
    proc = subprocess.Popen(argv, env=ENV, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reap()
        if proc.pid in exited:
            proc.returncode = exited.pop(proc.pid)
            return proc.returncode
        time.sleep(0.05)
    proc.kill()
    raise TimeoutError(f"{argv} did not finish within {timeout}s")


def sh(*cmd, check=True, timeout=60):
    rc = run(list(cmd), timeout)
    if check and rc != 0:
        raise SystemExit(f"{cmd} failed with status {rc}")
    return rc


def inside(*cmd, check=True, timeout=60):
    return sh("chroot", M, *cmd, check=check, timeout=timeout)


stopping = False


def on_term(signum, frame):
    global stopping
    stopping = True


signal.signal(signal.SIGTERM, on_term)
signal.signal(signal.SIGINT, on_term)

sh("mount", "--make-rprivate", "/")
sh("mount", "-t", "overlay", "overlay", "-o",
   f"lowerdir=/,upperdir={cfg['upper']},workdir={cfg['work']}", M)
sh("mount", "-t", "proc", "proc", f"{M}/proc")
sh("mount", "--rbind", "/sys", f"{M}/sys")
sh("mount", "--rbind", "/dev", f"{M}/dev")
sh("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", f"{M}/run")
sh("mount", "-t", "tmpfs", "-o", "mode=1777", "tmpfs", f"{M}/tmp")
os.makedirs(f"{M}/run/sshd", mode=0o755, exist_ok=True)
os.makedirs(f"{M}/run/lock", mode=0o1777, exist_ok=True)
os.makedirs(f"{M}/var/lib/docker", mode=0o711, exist_ok=True)
sh("mount", "--bind", cfg["docker_data"], f"{M}/var/lib/docker")
log("root mounted")

sshd = subprocess.Popen(["chroot", M, "/usr/sbin/sshd", "-D", "-e", "-f", cfg["sshd_config"]],
                        env=ENV, stdin=subprocess.DEVNULL)
driver = None
if cfg["docker"]:
    inside("/etc/init.d/docker", "start")
    for _ in range(300):
        out = f"{M}/run/factory-docker-driver"
        if sh("chroot", M, "sh", "-c", "docker info --format '{{.Driver}}' > /run/factory-docker-driver 2>/dev/null",
              check=False) == 0:
            driver = open(out).read().strip()
            break
        if stopping:
            break
        time.sleep(0.1)
    if driver is None:
        log("Docker did not start; its log:")
        try:
            sys.stdout.write(open(f"{M}/var/log/docker.log").read()[-4000:])
        except OSError:
            pass
        sys.exit(3)
    log(f"docker up, storage driver {driver}")
with open(cfg["ready"], "w") as f:
    json.dump({"docker_driver": driver}, f)
log("ready")

while not stopping:
    reap()
    if sshd.pid in exited:
        log(f"sshd exited ({exited[sshd.pid]}); stopping")
        break
    exited.clear()
    time.sleep(0.2)

log("stopping")
if cfg["docker"]:
    try:
        inside("/etc/init.d/docker", "stop", check=False, timeout=30)
    except Exception as exc:  # the kernel kills what is left when this process exits
        log(f"docker stop: {exc}")
try:
    sshd.terminate()
except ProcessLookupError:
    pass
log("stopped")
sys.exit(0)
'''
