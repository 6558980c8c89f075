"""Processes of the local cloud: free loopback ports, liveness, stopping a process group.

moto's server, the mirror and the build host each start a process group of their own;
these are the one copy of how factory finds a port for them, tells whether they still
run (a zombie does not), and stops them (SIGTERM, a grace period, then SIGKILL). The build
host and each local instance boot an init of theirs in new mount and PID namespaces
(start_init, child_of).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pid_alive(pid: int | None) -> bool:
    """Whether `pid` runs; a zombie (exited, not yet reaped) does not."""
    if not pid:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def stop_group(pid: int, grace: float = 5.0) -> None:
    """SIGTERM the process group led by `pid`, wait up to `grace` seconds, then SIGKILL it."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)  # reap it when it is our child
        except ChildProcessError:
            pass
        if not pid_alive(pid):
            return
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def start_init(argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`argv` (a machine's init) in new mount and PID namespaces, where it is PID 1
    (`unshare --mount --pid --fork --propagation private`), in a session of its own, its
    output appended to `log_path`. The init's own PID, seen from here: child_of(proc.pid)."""
    log = open(log_path, "ab")
    try:
        return subprocess.Popen(
            ["unshare", "--mount", "--pid", "--fork", "--propagation", "private", *argv],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True, env=env,
        )
    finally:
        log.close()


def child_of(pid: int) -> int | None:
    """The first child of `pid` (unshare --fork's: the init), None while it has none."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return None
    return int(children[0]) if children else None
