"""A Docker engine to talk to: the one DOCKER_HOST (or the default socket) names, or a private one.

`factory measure`'s tests and `bench/measure` need a real engine, and these machines run
none (docs/local-cloud.md). `DockerEngine.ensure(state_dir)` uses the engine that answers
where the docker client looks by default; when none does, it starts Debian's `dockerd`
with everything of its own under `state_dir` (data root, exec root, pid file, a unix
socket), `--iptables=false --bridge=none` so it changes nothing in this machine's
network, and stops it again in `stop()`, leaving no process and no file behind. A unix
socket's path holds at most 107 bytes: under a deeper `state_dir` (a test's tmp tree) the
engine's sockets and exec root go in a short folder of their own under /run/factory-local.

    engine = DockerEngine.ensure(Path("/tmp/engine"))
    subprocess.run(["docker", "info"], env=engine.env())
    engine.stop()
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from factory.errors import LocalCloudError
from factory.local.procs import pid_alive

# A unix socket's address holds at most 107 bytes of path (sun_path, 108 with its NUL);
# longer socket paths are replaced by short ones under SOCKET_LINKS.
UNIX_PATH_MAX = 107
SOCKET_LINKS = Path("/run/factory-local")
# The deepest socket dockerd's managed containerd makes under the exec root.
_CONTAINERD_SOCKET = "containerd/containerd.sock.ttrpc"

DOCKERD = "/usr/sbin/dockerd"
DOCKERD_OPTS = ("--iptables=false", "--bridge=none", "--log-level=warn")


def engine_answers(env: dict[str, str] | None = None, timeout: float = 10.0) -> bool:
    """Whether `docker version` reaches a server with this environment (DOCKER_HOST or the default socket)."""
    if not shutil.which("docker"):
        return False
    try:
        proc = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            env=env, capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0 and bool(proc.stdout.strip())


@dataclass
class DockerEngine:
    """An engine reachable at `host` (a DOCKER_HOST value). `pid` is set when we started it."""

    host: str | None  # None: the docker client's own default (DOCKER_HOST unset, default socket)
    state_dir: Path | None = None
    pid: int | None = None
    runtime_dir: Path | None = None  # sockets and exec root, when state_dir is too deep for them

    @property
    def started(self) -> bool:
        return self.pid is not None

    def env(self) -> dict[str, str]:
        """This process's environment with DOCKER_HOST pointing at the engine."""
        env = dict(os.environ)
        if self.host is not None:
            env["DOCKER_HOST"] = self.host
            env.pop("DOCKER_CONTEXT", None)
        return env

    @classmethod
    def ensure(cls, state_dir: Path, timeout: float = 60.0) -> DockerEngine:
        """The engine the docker client reaches by default, else a private one started under `state_dir`."""
        if engine_answers():
            return cls(host=os.environ.get("DOCKER_HOST"))
        return cls.start(state_dir, timeout=timeout)

    @classmethod
    def start(cls, state_dir: Path, timeout: float = 60.0) -> DockerEngine:
        """Start a private dockerd under `state_dir` (removed first) and wait until it answers."""
        if not Path(DOCKERD).exists():
            raise LocalCloudError(f"no Docker engine runs and {DOCKERD} is missing: apt-get install docker.io (scripts/system-deps.sh)")
        if os.geteuid() != 0:
            raise LocalCloudError("no Docker engine runs, and starting one needs root; start dockerd or set DOCKER_HOST")
        state_dir = Path(state_dir).absolute()
        if state_dir.exists():
            shutil.rmtree(state_dir)
        state_dir.mkdir(parents=True)
        runtime = state_dir
        if len(str(state_dir / "exec" / _CONTAINERD_SOCKET)) > UNIX_PATH_MAX:
            import hashlib

            runtime = SOCKET_LINKS / f"engine-{hashlib.sha256(str(state_dir).encode()).hexdigest()[:12]}"
            shutil.rmtree(runtime, ignore_errors=True)
            runtime.mkdir(mode=0o700, parents=True)
        sock = runtime / "docker.sock"
        engine = cls(host=f"unix://{sock}", state_dir=state_dir, runtime_dir=runtime if runtime != state_dir else None)
        log = open(state_dir / "dockerd.log", "ab")
        try:
            proc = subprocess.Popen(
                [DOCKERD, "--data-root", str(state_dir / "data"), "--exec-root", str(runtime / "exec"),
                 "--pidfile", str(state_dir / "dockerd.pid"), "-H", engine.host, *DOCKERD_OPTS],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        finally:
            log.close()
        engine.pid = proc.pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = (state_dir / "dockerd.log").read_text(errors="replace")[-2000:]
                engine.stop()
                raise LocalCloudError(f"dockerd stopped while starting (status {proc.returncode}):\n{tail}")
            if sock.exists() and engine_answers(engine.env(), timeout=5):
                return engine
            time.sleep(0.2)
        engine.stop()
        raise LocalCloudError(f"dockerd did not answer within {timeout:.0f}s; see {state_dir / 'dockerd.log'}")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the engine we started (its containers with it) and remove its files; a no-op otherwise."""
        if self.pid is None:
            return
        pid, self.pid = self.pid, None
        try:
            os.kill(pid, signal.SIGTERM)  # dockerd stops its containers and its managed containerd
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            if not pid_alive(pid):
                break
            time.sleep(0.1)
        else:
            try:
                os.killpg(pid, signal.SIGKILL)  # its own session: dockerd and its containerd
            except ProcessLookupError:
                pass
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        for folder in (self.runtime_dir, self.state_dir):
            if folder is not None and folder.exists():
                _unmount_under(folder)
                shutil.rmtree(folder, ignore_errors=True)


def _unmount_under(path: Path) -> None:
    """Unmount whatever an engine killed before its own clean-up left mounted under `path`."""
    prefix = str(path) + "/"
    try:
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    except OSError:
        return
    for target in sorted((m for m in mounts if m.startswith(prefix) or m == str(path)), key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True, check=False)


BUSYBOX = "/bin/busybox"  # Debian's busybox-static: one static binary, no C library needed
BUSYBOX_TOOLS = ("sh", "dd", "rm", "mkdir", "sleep", "ls", "cat", "head", "true", "false", "sync", "du", "touch", "echo", "fallocate")


def import_busybox_image(tag: str, env: dict[str, str] | None = None, changes: tuple[str, ...] = ()) -> str:
    """Make IMAGE `tag` on the engine with `docker import` from busybox-static (no registry); returns its id.

    The root holds /bin/busybox and its applets, /tmp and /work: enough for a shell command
    that writes, holds and deletes files. `changes` are Dockerfile instructions for
    `docker import --change` (e.g. "VOLUME /data").
    """
    import io
    import tarfile

    if not Path(BUSYBOX).exists():
        raise LocalCloudError(f"{BUSYBOX} is missing: apt-get install busybox-static (scripts/system-deps.sh)")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d, mode in (("bin", 0o755), ("tmp", 0o1777), ("work", 0o755)):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)
        tar.add(BUSYBOX, arcname="bin/busybox")
        for tool in BUSYBOX_TOOLS:
            info = tarfile.TarInfo(f"bin/{tool}")
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, "busybox", 0o777
            tar.addfile(info)
    args = [a for change in changes for a in ("--change", change)]
    proc = subprocess.run(["docker", "import", *args, "-", tag], input=buf.getvalue(), env=env, capture_output=True)
    if proc.returncode != 0:
        raise LocalCloudError(f"docker import {tag} failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout.decode().strip()
